"""Atomic file replacement: a file is either the old one or the complete new one.

Used by every writer in nnxlike (checkpoints, safetensors, downloaded data). The
bytes go to a temporary file in the same folder (``.NAME.tmp-PID-RANDOM``, created
with ``open(..., "xb")`` so the usual umask applies), which is flushed and
``fsync``ed, renamed onto ``NAME`` with ``os.replace``, and then the folder is
``fsync``ed so the rename itself survives a power cut. On any error, including
``KeyboardInterrupt``, the temporary file is removed; after ``kill -9`` it may
stay behind, under a name no reader looks for.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points there
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its mode
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    try:  # not possible on every platform (Windows cannot open a directory)
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
