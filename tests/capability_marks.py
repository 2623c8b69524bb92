"""Skip markers for tests that need a capability this machine may lack (probed, never assumed)."""

import pytest

from moma.capabilities import bf16_unsupported_reason

_BF16_CPU = bf16_unsupported_reason("cpu")
needs_cpu_bf16 = pytest.mark.skipif(_BF16_CPU is not None, reason=f"bf16 autocast on the CPU: {_BF16_CPU}")
