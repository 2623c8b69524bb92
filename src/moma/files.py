"""Files that a killed process must leave whole or not at all, and folders one process works in at a time.

Every result, cache entry, checkpoint, manifest and export is written through
:func:`replace_atomically`: the content goes to a temporary file in the same
folder, which is then ``os.replace``-d onto the final name. A process killed
mid-write leaves at most a stray ``.*.tmp`` file, never a truncated file under
the final name, and concurrent writers of the same name never interleave.

:func:`claim_directory` keeps a second process (another ``moma cv`` on the same
folder, or the pool workers a killed parent left running) from training into a
folder that a live process is training into.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: folders are not claimed
    fcntl = None  # type: ignore[assignment]

__all__ = ["claim_directory", "replace_atomically", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]

CLAIM_FILE = ".claim"  # in the claimed folder: the owner's pid, host and start time (JSON), locked while it runs


def replace_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then move it onto ``path``.

    ``write`` receives a path (not a handle) so that writers which open files
    themselves (safetensors, numpy memmaps) fit too. The temporary name keeps
    ``path``'s suffix, since some writers (``np.save``) append one otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a file written in place would have: the old
        # file's when replacing one, else readable by all (a checkpoint or report is meant to be shared)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """``data`` as JSON (one-space indent by default: results stay readable and diffable)."""
    return write_text_atomic(path, json.dumps(data, indent=indent))


@contextmanager
def claim_directory(path: str | Path) -> Iterator[dict[str, Any] | None]:
    """Claim ``path`` for this process for the duration of the block.

    Yields None when the claim holds, or the record (``pid``, ``host``, ``since``) of the process that holds
    it already, in which case nothing is claimed and the caller must leave the folder alone. The claim is an
    exclusive ``flock`` on ``path/.claim``, so the kernel drops it when its process ends however it ends
    (killed, crashed): a folder is never left claimed by a dead process, and no stale lock needs removing.
    The file stays behind after release (removing it could let two processes lock two different files);
    only the lock counts. Where ``fcntl`` does not exist (not POSIX) every claim holds.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield None
        return
    fd = os.open(path / CLAIM_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):  # the owner is between truncating and writing its record
                owner = {}
            yield {"pid": owner.get("pid", "?"), "host": owner.get("host", "?"), "since": owner.get("since", "?")}
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        yield None
    finally:
        os.close(fd)  # releases the lock
