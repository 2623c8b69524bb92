"""moma.files: atomic writes."""

import stat

import pytest

from moma.files import replace_atomically, write_text_atomic


def test_atomic_write_gives_a_shared_file_not_mkstemps_private_one(tmp_path):
    path = write_text_atomic(tmp_path / "report.md", "hello\n")
    assert path.read_text() == "hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp's 0600 would hide a checkpoint from other users
    path.chmod(0o640)
    write_text_atomic(path, "again\n")  # replacing keeps the mode the file had
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "again\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "x.json", "{}")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_atomically(path, boom)
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
