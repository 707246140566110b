"""Atomic file replacement: a file is either the old one or the complete new one.

Used by every writer in nnxlike (checkpoints, safetensors, downloaded data). The
bytes go to a temporary file in the same folder (``.NAME.tmp-HOST-PID-RANDOM``, created
with ``open(..., "xb")`` so the usual umask applies), which is flushed and
``fsync``ed, renamed onto ``NAME`` with ``os.replace``, and then the folder is
``fsync``ed so the rename itself survives a power cut. On any error, including
``KeyboardInterrupt``, the temporary file is removed; after ``kill -9`` it stays
behind, under a name no reader looks for, until ``remove_stale_temporaries``
(called by ``CheckpointManager.save``) finds its writer gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_HOST = socket.gethostname()
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")


def temporary_name(path: Path) -> Path:
    """``.NAME.tmp-HOST-PID-RANDOM``: hidden, and traceable to the writing process."""
    suffix = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.tmp-{suffix}")


def remove_stale_temporaries(directory: Path, final_name: re.Pattern) -> list[Path]:
    """Delete temporaries left in ``directory`` by writers that were killed.

    Only files whose final name matches ``final_name``, written on this host by a
    process that no longer exists, are removed: a save still running here, or on
    another host sharing the folder, is never touched.
    """
    removed = []
    for entry in os.listdir(directory):
        m = _TEMPORARY.fullmatch(entry)
        if not m or not final_name.fullmatch(m["name"]) or m["host"] != _HOST:
            continue
        if _alive(int(m["pid"])):
            continue
        path = Path(directory) / entry
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists (owned by someone else), or unknown
        return True
    return True


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
