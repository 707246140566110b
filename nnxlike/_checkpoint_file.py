"""The checkpoint file: leaves to bytes and back, atomically, with checksums.

Design note: this file owns the on-disk format that ``nnxlike.checkpoint``
documents (magic, preamble, raw little-endian arrays, JSON header at the end) and
nothing about trees: it writes a list of ``(path, value, kind)`` leaves and reads
records back. Invariants: a file under its final name is always complete (write
to a temporary name, ``fsync``, ``os.replace``, ``fsync`` the directory); reading
never runs code (JSON and raw bytes; dtypes from a whitelist of numeric and
``ml_dtypes`` names); every byte of the file is covered by a check (the records'
byte ranges tile the data section, the header and each array carry a SHA-256),
so damage is reported, never returned as values. A crafted file costs memory and
time in proportion to its size, never to the numbers it declares: the header is
capped (``MAX_HEADER_BYTES``, ``MAX_RECORDS``), shapes must be NumPy-sized, paths
unique and tree-shaped, and FIFOs or devices under a checkpoint's name are refused
before they can block ``open``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from nnxlike import _errors
from nnxlike._atomic import NotARegularFileError, atomic_write, open_regular

MAGIC = b"\x93NNXCKPT"
VERSION = 1
FORMAT = "nnxlike.checkpoint"
PREAMBLE = struct.Struct("<8sIIQQ32s")  # magic, version, reserved, offset, len, sha
MAX_HEADER_BYTES = 256 * 2**20  # about a million records; a model has thousands
MAX_RECORDS = 1_000_000
MAX_NDIM = 64  # NumPy's limit
MAX_DEPTH = 1000  # keys in one path; a model nests a few dozen
# ml_dtypes that JAX cannot hold as arrays (nor so restore): refused at save
_NOT_IN_JAX = {"float6_e2m3fn", "float6_e3m2fn", "int1", "uint1"}


class CheckpointError(_errors.NnxError):
    """Base class of the errors ``nnx.checkpoint`` raises."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file (or the requested step) does not exist."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is truncated, damaged, or not an nnxlike checkpoint."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint's paths, shapes or dtypes differ from the target's.

    ``mismatches`` lists every difference as a ``Mismatch``.
    """

    def __init__(self, message: str, mismatches: list):
        super().__init__(message)
        self.mismatches = mismatches


class CheckpointMismatchWarning(UserWarning):
    """``restore(..., strict=False)`` skipped some paths; ``mismatches`` lists them."""

    def __init__(self, message: str, mismatches: list):
        super().__init__(message)
        self.mismatches = mismatches


def corrupt(file: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        _errors.CHECKPOINT_CORRUPT.format(file=os.fspath(file), what=what)
    )


# -- leaves ----------------------------------------------------------------------------

PY_DTYPES = {"bool": np.bool_, "int": np.int64, "float": np.float64}
PY_DTYPES["complex"] = np.complex128
PY_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}


def is_key(dtype: Any) -> bool:
    """True for typed PRNG key dtypes (``jax.random.key``)."""
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def python_kind(x: Any) -> str | None:
    """``"int"``, ``"float"``, ``"bool"`` or ``"complex"`` for a Python number."""
    if isinstance(x, np.generic):
        return None
    for t in (bool, int, float, complex):  # bool first: it is an int
        if isinstance(x, t):
            return t.__name__
    return None


def dtype_from_name(name: Any) -> np.dtype | None:
    """The dtype called ``name`` if it is a plain numeric or ml_dtypes one."""
    if not isinstance(name, str):
        return None
    try:
        dt = np.dtype(getattr(ml_dtypes, name, name))
    except (TypeError, ValueError):
        return None
    numeric = dt.kind in "biufc" or (
        dt.kind == "V" and dt.type.__module__.startswith("ml_dtypes")
    )
    if not numeric or dt.name != name or dt.names or dt.subdtype:
        return None
    if (
        name in _NOT_IN_JAX
        or dt in (np.longdouble, np.clongdouble)
        and (dt.itemsize > 16 if dt.kind == "c" else dt.itemsize > 8)
    ):
        return None  # extended precision: platform-dependent, and not in JAX
    return dt


def _host_bytes(x: Any) -> tuple[np.ndarray, dict]:
    """The little-endian bytes of a leaf (a flat uint8 view) and its record fields."""
    rec: dict = {}
    py = python_kind(x)
    if py is not None:
        rec["python"] = py
        data = np.asarray(x, dtype=PY_DTYPES[py])
    elif is_key(x.dtype):
        rec["key"] = {
            "impl": str(jax.random.key_impl(x)),
            "dtype": str(x.dtype),
            "shape": list(x.shape),
        }
        data = np.asarray(jax.random.key_data(x))
    else:
        data = np.asarray(x)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    data = np.require(data, requirements="C")
    rec["dtype"] = data.dtype.name
    rec["shape"] = list(data.shape)
    return data.reshape(-1).view(np.uint8), rec


def to_jax(data: np.ndarray, rec: dict, file: Path) -> jax.Array:
    """A read array as a JAX array on the default device (typed keys rewrapped)."""
    key = rec.get("key")
    if key is None:
        return jnp.asarray(data)
    where = _errors.path_str(tuple(rec["path"]))
    try:
        out = jax.random.wrap_key_data(jnp.asarray(data), impl=key["impl"])
    except (ValueError, TypeError) as e:
        msg = str(e).split(";")[0]
        raise corrupt(
            file, f"describes {where!r} as a key that cannot be rebuilt ({msg})"
        ) from None
    if str(out.dtype) != key["dtype"] or list(out.shape) != key["shape"]:
        raise corrupt(
            file,
            f"describes {where!r} as {key['dtype']}{key['shape']}, but its data "
            f"makes {out.dtype}{list(out.shape)}",
        )
    return out


# -- writing ---------------------------------------------------------------------------


def write_atomic(path: Path, leaves: list, *, overwrite: bool = True) -> None:
    """Write ``(path, value, kind)`` leaves to ``path``: complete or not at all.

    Without ``overwrite``, a file that exists under ``path`` when the new one is
    complete (another saver won the race) raises ``FileExistsError`` and is kept.
    """
    with atomic_write(path, overwrite=overwrite) as f:
        _write(f, leaves)


def _write(f: Any, leaves: list) -> None:
    f.write(bytes(PREAMBLE.size))  # placeholder, written last
    offset = PREAMBLE.size
    records = []
    for path, x, kind in leaves:
        data, rec = _host_bytes(x)  # one array on the host at a time
        f.write(data)
        records.append(
            {
                "path": list(path),
                "kind": kind.__name__ if kind is not None else None,
                **rec,
                "offset": offset,
                "nbytes": data.nbytes,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        offset += data.nbytes
    from nnxlike._version import __version__

    header = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "nnxlike_version": __version__,
            "leaves": records,
        }
    ).encode("utf-8")
    f.write(header)
    f.seek(0)
    digest = hashlib.sha256(header).digest()
    f.write(PREAMBLE.pack(MAGIC, VERSION, 0, offset, len(header), digest))


# -- reading ---------------------------------------------------------------------------


class Reader:
    """An open checkpoint whose preamble and header have been verified."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = open_regular(path)
        except FileNotFoundError:
            raise CheckpointNotFoundError(
                f"restore: no checkpoint at {os.fspath(path)}. Check the path; "
                "a CheckpointManager lists its steps with `manager.all_steps()`."
            ) from None
        except NotARegularFileError as e:
            kind = e.strerror.rpartition(" is ")[2]
            raise corrupt(
                path, f"is {kind}, not a regular file; a checkpoint is a file"
            ) from None
        try:
            self.records = self._read_header()
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def _read_header(self) -> list[dict]:
        f, path = self.file, self.path
        size = os.fstat(f.fileno()).st_size
        head = f.read(PREAMBLE.size)
        if len(head) < PREAMBLE.size:
            raise corrupt(
                path,
                f"is {size} bytes long, shorter than the {PREAMBLE.size}-byte "
                "preamble every checkpoint starts with (truncated, or not a "
                "checkpoint)",
            )
        magic, version, reserved, h_off, h_len, h_sha = PREAMBLE.unpack(head)
        if head == bytes(PREAMBLE.size):  # save writes the preamble last
            raise corrupt(
                path,
                "has an empty preamble: it is the temporary file of a save that "
                "was interrupted before it finished",
            )
        if magic != MAGIC:
            raise corrupt(
                path,
                f"does not start with the nnxlike checkpoint magic {MAGIC!r} (found "
                f"{magic!r}): it is not an nnxlike checkpoint, or its first bytes "
                "are damaged",
            )
        if version != VERSION:
            raise corrupt(
                path,
                f"has format version {version}; this nnxlike reads version "
                f"{VERSION} (a newer nnxlike wrote it, or the preamble is damaged)",
            )
        if reserved != 0:
            raise corrupt(path, "has a damaged preamble (reserved field not zero)")
        if h_len > MAX_HEADER_BYTES:
            raise corrupt(
                path,
                f"declares a {h_len}-byte header, more than the {MAX_HEADER_BYTES} "
                "bytes (MAX_HEADER_BYTES) any checkpoint needs: its preamble is "
                "damaged or crafted",
            )
        if h_off < PREAMBLE.size or h_off + h_len != size:
            raise corrupt(
                path,
                f"is {size} bytes long but its preamble says {h_off + h_len}: it is "
                "truncated (an interrupted copy?) or its preamble is damaged",
            )
        f.seek(h_off)
        header = f.read(h_len)
        if hashlib.sha256(header).digest() != h_sha:
            raise corrupt(
                path,
                f"has a header (bytes {h_off} to {size}) that does not match its "
                "SHA-256 checksum",
            )
        try:
            meta = json.loads(header.decode("utf-8"))
            records = meta["leaves"]
            if meta["format"] != FORMAT or not isinstance(records, list):
                raise ValueError("not an nnxlike checkpoint header")
            if len(records) > MAX_RECORDS:
                raise ValueError(
                    f"{len(records)} records, more than MAX_RECORDS={MAX_RECORDS}"
                )
            end = PREAMBLE.size
            for rec in records:
                if not isinstance(rec, dict):
                    raise ValueError(f"a record is a {type(rec).__name__}, not a dict")
                end = _validate_record(rec, end)
            if end != h_off:
                raise ValueError("the arrays do not fill the data section")
            _check_tree(records)
        except RecursionError:
            raise corrupt(path, "has a malformed header (nested too deeply)") from None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
            raise corrupt(path, f"has a malformed header ({e})") from None
        return records

    def read(self, rec: dict) -> np.ndarray:
        """The array of ``rec``, its checksum verified (a writable host copy)."""
        buf = bytearray(rec["nbytes"])
        self.file.seek(rec["offset"])
        got = self.file.readinto(buf)
        where = _errors.path_str(tuple(rec["path"]))
        if got != len(buf):
            raise corrupt(
                self.path, f"ends inside the bytes of {where!r} (it shrank while read)"
            )
        if hashlib.sha256(buf).hexdigest() != rec["sha256"]:
            raise corrupt(
                self.path,
                f"holds bytes for {where!r} (offset {rec['offset']}, "
                f"{rec['nbytes']} bytes) that do not match their SHA-256 checksum",
            )
        dtype = dtype_from_name(rec["dtype"])
        if dtype.kind in "biufc":  # ml_dtypes have no byte order to set
            dtype = dtype.newbyteorder("<")
        return np.frombuffer(buf, dtype=dtype).reshape(rec["shape"])


_REPR = reprlib.Repr()  # Python 3.11 takes no arguments here
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist, _REPR.maxlevel = 8, 3


def _short(x: Any) -> str:
    """``repr`` cut short: a crafted header cannot make a message of megabytes."""
    return _REPR.repr(x)


def _where(path: list) -> str:
    text = _errors.path_str(tuple(path))
    return text if len(text) <= 200 else text[:200] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_record(rec: dict, offset: int) -> int:
    """Check one header record; return the offset where the next one starts."""
    path = rec["path"]
    if not isinstance(path, list) or not all(
        isinstance(k, str) or _is_int(k) for k in path
    ):
        raise ValueError(f"bad path {_short(path)}")
    if len(path) > MAX_DEPTH:
        raise ValueError(f"a path {len(path)} keys deep (at most {MAX_DEPTH})")
    where = _where(path)
    dtype = dtype_from_name(rec["dtype"])
    if dtype is None:
        raise ValueError(f"{where}: unknown or unsafe dtype {_short(rec['dtype'])}")
    shape, nbytes = rec["shape"], rec["nbytes"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"{where}: bad shape {_short(shape)}")
    if len(shape) > MAX_NDIM or math.prod(d for d in shape if d) >= 2**63:
        raise ValueError(f"{where}: shape {_short(shape)} is larger than NumPy allows")
    if not _is_int(nbytes) or nbytes != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"{where}: {_short(nbytes)} bytes for {_short(rec['dtype'])}{_short(shape)}"
        )
    if not _is_int(rec["offset"]) or rec["offset"] != offset:
        raise ValueError(f"{where}: offset {_short(rec['offset'])}, expected {offset}")
    if not isinstance(rec["sha256"], str) or not re.fullmatch(
        r"[0-9a-f]{64}", rec["sha256"]
    ):
        raise ValueError(f"{where}: bad sha256")
    if rec["kind"] is not None and not isinstance(rec["kind"], str):
        raise ValueError(f"{where}: bad kind {_short(rec['kind'])}")
    key = rec.get("key")
    if key is not None and not (
        isinstance(key, dict)
        and isinstance(key["impl"], str)
        and isinstance(key["dtype"], str)
        and isinstance(key["shape"], list)
        and len(key["shape"]) <= MAX_NDIM
        and all(_is_int(d) and 0 <= d < 2**63 for d in key["shape"])
    ):
        raise ValueError(f"{where}: bad key description")
    python = rec.get("python")
    if python is not None and (python not in PY_DTYPES or shape or key is not None):
        raise ValueError(f"{where}: bad python type {_short(python)}")
    if python is not None and np.dtype(PY_DTYPES[python]).name != rec["dtype"]:
        raise ValueError(f"{where}: a Python {python} stored as {_short(rec['dtype'])}")
    return offset + nbytes


def _check_tree(records: list) -> None:
    """Paths are unique and no path runs through another: each names one leaf."""
    leaves, inner = set(), set()
    for rec in records:
        path = tuple((type(k), k) for k in rec["path"])  # 0 and "0" differ
        where = _where(rec["path"])
        if path in leaves:
            raise ValueError(f"{where!r} appears twice")
        if path in inner or any(path[:i] in leaves for i in range(len(path))):
            raise ValueError(f"{where!r} is both a leaf and a node holding leaves")
        leaves.add(path)
        inner.update(path[:i] for i in range(len(path)))
