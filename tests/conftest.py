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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One tiny trained MOMA checkpoint (:func:`helpers.make_tiny_checkpoint`) shared by every test module that
    needs a default one: trained once per session instead of once per module. Tests read it and write
    elsewhere (a test that needs another architecture or config trains its own)."""
    from helpers import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))
