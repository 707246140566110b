"""Atomic file writes (a file is the old one or the complete new one), safe opens.

Used by every writer in nnxlike (checkpoints, safetensors). The bytes go to a
temporary file in the same folder (``.NAME.tmp-HOST-PID-RANDOM``, created with
``open(..., "xb")`` so the usual umask applies), which is flushed and ``fsync``ed,
then given the final name, and then the folder is ``fsync``ed so the new name
itself survives a power cut.

Two ways to give the final name: ``overwrite=True`` renames over ``NAME`` with
``os.replace``; ``overwrite=False`` hard-links the temporary file to ``NAME``
(``os.link`` fails if ``NAME`` exists, so of two concurrent writers exactly one
wins and the other gets ``FileExistsError``) and unlinks the temporary name. Where
hard links are not supported, ``NAME`` is first reserved with
``os.open(O_CREAT | O_EXCL)`` (an empty file, briefly visible) and then replaced.

On any error, including ``KeyboardInterrupt``, the temporary file is removed; a
full disk becomes an ``OSError`` that says so. After ``kill -9`` the temporary file
stays behind, under a name no reader looks for, until ``remove_stale_temporaries``
(called before every checkpoint save) finds its writer gone.

Readers open files with ``open_regular``, which refuses FIFOs, devices and
directories instead of blocking on them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_HOST = socket.gethostname()
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# link(2) errors meaning "this file system has no hard links", not "name taken"
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}
_NO_LINKS.add(getattr(errno, "ENOSYS", errno.EPERM))


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
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for entry in entries:
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
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):  # exists elsewhere, or unknown
        return True
    return True


def disk_full_error(path: Path, error: OSError) -> OSError:
    """The ``OSError`` a full disk gives, saying what happened and what is safe."""
    what = os.strerror(error.errno) if error.errno else "disk full"
    return OSError(
        error.errno,
        f"writing {os.fspath(path)} failed: {what} (the disk or quota is full). "
        f"The file under that name is unchanged and the partial temporary file was "
        f"removed. Free some space (stale temporaries `.{path.name}.tmp-*` of "
        "killed saves are safe to delete) or save somewhere else",
    )


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Open a binary file that becomes ``path`` only when the block completes.

    With ``overwrite=False`` an existing ``path`` (even one created by another
    writer while this one was writing) raises ``FileExistsError`` and is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        try:
            with open(tmp, "xb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points
            if overwrite:
                with contextlib.suppress(FileNotFoundError):  # keep a replaced mode
                    os.chmod(tmp, path.stat().st_mode & 0o7777)
                os.replace(tmp, path)
            else:
                _link_exclusive(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                f"{os.fspath(path)} already exists (another writer created it while "
                "this one was writing); it was kept and nothing was replaced",
            ) from None
        except OSError as e:
            if e.errno in _FULL:
                raise disk_full_error(path, e) from e
            raise
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or any failure
    fsync_directory(path.parent)


def _link_exclusive(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (atomic test and set)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except (AttributeError, NotImplementedError):
        pass
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
    # No hard links here: reserve the name (fails if taken), then replace it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


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


# -- reading ---------------------------------------------------------------------------

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotARegularFileError(OSError):
    """``open_regular`` found a FIFO, device, socket or directory under the name."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file, without blocking.

    A FIFO named like a data file would block ``open()`` until some writer comes
    (forever), a device can stream without end: both are refused with a
    ``NotARegularFileError`` saying what the name is. The name is checked before
    opening, and the opened descriptor again (``O_NONBLOCK``, then ``fstat``), so
    swapping the file in between does not get past the check.
    """
    path = os.fspath(path)
    mode = os.stat(path).st_mode  # FileNotFoundError as usual
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(errno.EINVAL, f"{path} is {_kind(mode)}", path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(errno.EINVAL, f"{path} is {_kind(mode)}", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
