"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def emodb_root() -> Path:
    """Root of the real EmoDB corpus (holding ``wav/``); the test is skipped when it is absent.

    Looked up at ``$MOMA_EMODB`` or else ``../shared/corpora/emodb`` beside the repository checkout.
    """
    env = os.environ.get("MOMA_EMODB")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/corpora/emodb"
    if not (root / "wav").is_dir():
        pytest.skip(f"EmoDB not found at {root} (set MOMA_EMODB)")
    return root
