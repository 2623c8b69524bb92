"""checkpoint.resolve_checkpoint_path: a file, a fold folder, or a run folder of one fold (moma train --protocol all)."""

import pytest

from moma.checkpoint import resolve_checkpoint_path


def test_a_run_folder_of_one_fold_resolves_to_its_checkpoint_and_of_two_asks_for_the_fold(tmp_path):
    (tmp_path / "run" / "all").mkdir(parents=True)
    ckpt = tmp_path / "run" / "all" / "best.safetensors"
    ckpt.write_bytes(b"x")
    assert resolve_checkpoint_path(tmp_path / "run") == ckpt
    assert resolve_checkpoint_path(tmp_path / "run" / "all") == ckpt
    assert resolve_checkpoint_path(ckpt) == ckpt
    (tmp_path / "run" / "other").mkdir()
    (tmp_path / "run" / "other" / "best.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="2 folds hold one"):
        resolve_checkpoint_path(tmp_path / "run")
