"""Files that a killed process must leave whole or not at all.

Every result, cache entry, checkpoint, manifest and export is written through
:func:`replace_atomically`: the content goes to a temporary file in the same
folder, which is then ``os.replace``-d onto the final name. A process killed
mid-write leaves at most a stray ``.*.tmp`` file, never a truncated file under
the final name, and concurrent writers of the same name never interleave.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["replace_atomically", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


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
