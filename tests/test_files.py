"""moma.files: atomic writes, claimed folders."""

import multiprocessing as mp
import os
import signal
import stat

import pytest

from moma.files import claim_directory, replace_atomically, write_text_atomic


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


fcntl = pytest.importorskip("fcntl", reason="folders are claimed with flock, POSIX only")


def test_a_claimed_folder_is_refused_to_a_second_claim_until_released(tmp_path):
    with claim_directory(tmp_path / "fold") as owner:
        assert owner is None
        with claim_directory(tmp_path / "fold") as second:  # a second open file description: refused
            assert second is not None and second["pid"] == os.getpid() and second["since"] != "?"
        with claim_directory(tmp_path / "other") as elsewhere:
            assert elsewhere is None  # claims are per folder
    with claim_directory(tmp_path / "fold") as again:
        assert again is None


def _claim_and_wait(path, ready):
    with claim_directory(path):
        ready.set()
        signal.pause()


def test_a_killed_owner_leaves_no_claim_behind(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    owner = ctx.Process(target=_claim_and_wait, args=(tmp_path / "fold", ready))
    owner.start()
    try:
        assert ready.wait(60)
        with claim_directory(tmp_path / "fold") as held:
            assert held is not None and held["pid"] == owner.pid
    finally:
        owner.kill()  # SIGKILL: no cleanup code of the owner runs
        owner.join(30)
    with claim_directory(tmp_path / "fold") as after:
        assert after is None  # the kernel dropped the dead process's lock: nothing stale to remove
