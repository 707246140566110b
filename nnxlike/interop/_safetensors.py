"""A reader and writer for the ``.safetensors`` format, with numpy only.

Design note: the format is an 8-byte little-endian ``u64`` header length ``N``,
then ``N`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {str: str}}``, then the byte buffer; offsets are relative
to the buffer. The reader trusts nothing: it checks the header length against the
file size, every dtype, shape and offset, and that the tensors tile the buffer
exactly (in range, contiguous, no overlap, no hole), and names the offending entry
in a ``SafetensorsError``; a crafted header (nested too deeply, duplicate names,
more than ``MAX_TENSORS`` entries, shapes NumPy cannot make, BOOL bytes other
than 0 and 1) is one too, so memory and time stay proportional to the file's
size. FIFOs and devices are refused before ``open`` could block. Each tensor is
read straight into its own numpy array (one copy, no file handle or memory map
kept). The format has no checksum: a flipped bit inside a tensor's data reads
back as another value (use ``nnx.checkpoint`` for files that detect it). The
writer lays tensors out in the order given (0-d arrays stay 0-d), pads the header
with spaces to a multiple of 8 (as the reference implementation does) and
replaces the target atomically (temporary file, ``fsync``, ``os.replace``).
Deliberately not done: lazy loading of single tensors; big-endian arrays are
written little-endian, as the format requires.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from nnxlike._atomic import NotARegularFileError, atomic_write, open_regular
from nnxlike._errors import NnxError

# Header cap of the reference implementation: a larger header is malformed.
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1_000_000
MAX_NDIM = 64  # NumPy's limit

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {dt.newbyteorder("="): name for name, dt in DTYPES.items()}


class SafetensorsError(NnxError, ValueError):
    """A ``.safetensors`` file is malformed, or an array cannot be written to one."""


def _fail(path: Any, what: str, fix: str = "") -> SafetensorsError:
    msg = f"safetensors file {os.fspath(path)!r}: {what}"
    return SafetensorsError(msg + (f" {fix}" if fix else ""))


_CORRUPT = (
    "The file is truncated or not a .safetensors file; write it again (e.g. "
    "`safetensors.torch.save_file(model.state_dict(), path)` or "
    "`nnxlike.interop.torch.save_safetensors(path, tensors)`)."
)


def _parse_header(path: Any, f: Any, size: int) -> tuple:
    if size < 8:
        raise _fail(
            path, f"has {size} bytes; the header length alone needs 8.", _CORRUPT
        )
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise _fail(
            path,
            f"header length {n} (first 8 bytes, little-endian u64) exceeds the "
            f"{size - 8} bytes that follow it.",
            _CORRUPT,
        )
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _fail(path, "header JSON is nested too deeply.", _CORRUPT) from None
    except ValueError as e:  # bad UTF-8 or JSON, a duplicate name, a huge number
        raise _fail(path, f"header is not valid UTF-8 JSON ({e}).", _CORRUPT) from None
    if not isinstance(header, dict):
        got = type(header).__name__
        raise _fail(path, f"header must be a JSON object, got {got}.", _CORRUPT)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings.", _CORRUPT)
    return header, metadata, 8 + n


def _no_duplicates(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the name {_short(dup)} appears twice")
    return out


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_entries(path: Any, header: dict, buffer_size: int) -> list:
    if len(header) > MAX_TENSORS:
        raise _fail(
            path,
            f"header lists {len(header)} tensors, more than MAX_TENSORS={MAX_TENSORS}.",
            _CORRUPT,
        )
    entries = []
    for name, info in header.items():
        where = f"tensor {_short(name)}"
        if not isinstance(info, dict) or set(info) != {
            "dtype",
            "shape",
            "data_offsets",
        }:
            raise _fail(
                path,
                f"{where}: expected keys dtype, shape, data_offsets; got "
                f"{_short(info)}.",
                _CORRUPT,
            )
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _fail(
                path,
                f"{where}: unsupported dtype {_short(dtype)}; supported: "
                f"{', '.join(DTYPES)}.",
            )
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):
            raise _fail(path, f"{where}: bad shape {_short(shape)}.", _CORRUPT)
        if len(shape) > MAX_NDIM or math.prod(d for d in shape if d) >= 2**63:
            raise _fail(
                path, f"{where}: shape {_short(shape)} is larger than NumPy allows."
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer_size
        ):
            raise _fail(
                path,
                f"{where}: data_offsets {_short(offsets)} out of range for a "
                f"{buffer_size}-byte data buffer.",
                _CORRUPT,
            )
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: exact
        if offsets[1] - offsets[0] != nbytes:
            raise _fail(
                path,
                f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} "
                f"bytes, but {dtype} of shape {tuple(shape)} needs {nbytes}.",
                _CORRUPT,
            )
        entries.append((offsets[0], offsets[1], name, DTYPES[dtype], tuple(shape)))
    # The tensors must tile the buffer: sorted by offset, each starts where the
    # previous one ended, and the last ends at the end of the file.
    end, prev = 0, None
    for begin, stop, name, _, _ in sorted(entries, key=lambda e: (e[0], e[1])):
        if begin != end:
            kind = "overlaps" if begin < end else "leaves a gap after"
            after = (
                f"tensor {_short(prev)}"
                if prev is not None
                else "the start of the buffer"
            )
            raise _fail(
                path,
                f"tensor {_short(name)} at data_offsets [{begin}, {stop}] {kind} "
                f"{after} (which ends at {end}); tensors must be contiguous and "
                "must not "
                "overlap.",
                _CORRUPT,
            )
        end, prev = stop, name
    if end != buffer_size:
        raise _fail(
            path,
            f"the tensors cover {end} bytes of a {buffer_size}-byte data buffer "
            "(trailing bytes).",
            _CORRUPT,
        )
    return entries


def load_safetensors(
    path: str | os.PathLike, *, with_metadata: bool = False
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a ``.safetensors`` file into numpy arrays.

    Tensors come back in the header's order; ``BF16``/``F8_*`` arrays use the
    ``ml_dtypes`` types JAX uses. With ``with_metadata=True`` the result is
    ``(tensors, metadata)``. A malformed file raises ``SafetensorsError`` naming
    the problem (header length, offsets out of range, overlap, truncation).
    """
    try:
        opened = open_regular(path)
    except NotARegularFileError as e:
        raise _fail(path, f"is not a regular file ({e.strerror}).") from None
    with opened as f:
        size = os.fstat(f.fileno()).st_size
        header, metadata, start = _parse_header(path, f, size)
        entries = _check_entries(path, header, size - start)
        out = {}
        for begin, stop, name, dtype, shape in entries:  # the header's order
            # Read straight into the result: one copy, no buffer to keep alive.
            a = np.empty(shape, dtype)
            f.seek(start + begin)
            if f.readinto(a.reshape(-1).view(np.uint8)) != stop - begin:
                raise _fail(path, f"tensor {_short(name)} is truncated.", _CORRUPT)
            if dtype == np.bool_ and a.view(np.uint8).max(initial=0) > 1:
                raise _fail(
                    path,
                    f"tensor {_short(name)} is BOOL but holds bytes other than 0 "
                    "and 1.",
                    _CORRUPT,
                )
            out[name] = a
    return (out, metadata) if with_metadata else out


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (name -> array) to ``path`` atomically.

    Arrays may be anything ``numpy.asarray`` accepts (JAX arrays included). The
    file is written to a temporary file in the same folder, flushed to disk and
    renamed over ``path``, so a crash leaves the old file or the new one, never a
    torn one.
    """
    header: dict[str, Any] = {}
    if metadata:
        bad = [
            k
            for k, v in metadata.items()
            if not (isinstance(k, str) and isinstance(v, str))
        ]
        if bad:
            raise SafetensorsError(
                f"save_safetensors: metadata must map str to str; offending keys "
                f"{bad!r}. Convert values first: `{{k: str(v) for k, v in ...}}`."
            )
        header["__metadata__"] = dict(metadata)
    arrays, offset = [], 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise SafetensorsError(
                f"save_safetensors: tensor names must be strings other than "
                f"'__metadata__', got {name!r}."
            )
        a = np.asarray(value, order="C")  # not ascontiguousarray: it makes 0-d 1-d
        dtype_name = _NAMES.get(a.dtype.newbyteorder("="))
        if dtype_name is None:
            raise SafetensorsError(
                f"save_safetensors: tensor {name!r} has dtype {a.dtype}, which "
                f".safetensors cannot hold; supported: "
                f"{', '.join(str(d) for d in DTYPES.values())}. Cast it first: "
                "`a.astype(np.float32)`."
            )
        a = a.astype(DTYPES[dtype_name], copy=False)  # little-endian
        header[name] = {
            "dtype": dtype_name,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        arrays.append(a)
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    _atomic_write(path, [len(blob).to_bytes(8, "little"), blob, *arrays])


def _atomic_write(path: str | os.PathLike, chunks: list) -> None:
    with atomic_write(path) as f:
        for chunk in chunks:
            if isinstance(chunk, np.ndarray):  # raw bytes, any dtype and rank
                chunk = chunk.reshape(-1).view(np.uint8)
            f.write(chunk)
