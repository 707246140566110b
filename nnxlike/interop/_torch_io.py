"""Matching a PyTorch state dict to a model: names, mapping, checks, write, export.

Design note: one top-down walk of the model (``_plan``) places every conversion
rule of ``_torch_layouts`` at a torch-style name built from attribute names, the
way ``torch.nn.Module.state_dict`` builds them (``nnx.Sequential``'s ``layers``
level is skipped: torch's ``Sequential`` keeps its children directly). Params and
BatchStats that no layout claims convert as themselves under their attribute name
(a custom ``nn.Parameter``); other Variables (RNG state, caches, masks) are not
torch state. Shared modules are visited under every path, as torch lists tied
weights under every name, and a Variable counts as filled when any of its names
filled it. Loading checks everything before writing anything, and reports every
problem in one ``TorchStateDictError``; nothing is written when it raises.

An ``.npz`` file is read lazily (``_NpzEntry``): the member list and each
``.npy`` header (shape, dtype) come first, checked against the zip's declared
sizes, and an array is decompressed only once its shape has matched the model,
with bounded reads that stop at the size its header gives. A zip bomb therefore
costs at most the memory of the model it is loaded into.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from nnxlike._atomic import NotARegularFileError, open_regular
from nnxlike._containers import Sequential
from nnxlike._errors import NnxError, path_str
from nnxlike._module import Module
from nnxlike._object import Object
from nnxlike._variables import BatchStat, Param, Variable
from nnxlike.interop import _torch_layouts as layouts
from nnxlike.interop._safetensors import load_safetensors

MappingLike = Mapping[str, Any] | Callable[[str], str | None] | None

_MAX_LISTED = 25  # per section of the error message


class TorchStateDictError(NnxError, ValueError):
    """A PyTorch state dict does not fit the model (names, shapes or values)."""


class LoadReport(NamedTuple):
    """What ``load_torch_state_dict`` left out, like torch's ``_IncompatibleKeys``.

    Unpacks as ``missing_keys, unexpected_keys = report``. Both are torch-style
    names: ``missing_keys`` are entries the model needs that the state dict lacks
    (their parameters keep their old values), ``unexpected_keys`` entries of the
    state dict that have no place in the model.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Placed(NamedTuple):
    rule: layouts.Rule
    names: tuple[str, ...]  # default torch names of the rule's sources
    targets: tuple[tuple[tuple, Variable], ...]  # (our full path, Variable)
    owner: str  # the converting layer's type, for messages


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _plan(model: Any) -> tuple[list[_Placed], list[str]]:
    """Every rule placed at its default torch names; and unsupported layers."""
    if not isinstance(model, Object):
        raise TypeError(
            f"expected an nnxlike Module (or another nnx object), got "
            f"{type(model).__name__}. For a State, merge it first: "
            "`model = nnx.merge(graphdef, state)`."
        )
    placed: list[_Placed] = []
    unsupported: list[str] = []

    def generic(path: tuple, tprefix: tuple, key: Any, var: Variable, owner: str):
        rule = layouts._one(str(key), var.shape, (key,), var)
        name = _join(*tprefix, str(key))
        placed.append(_Placed(rule, (name,), (((*path, key), var),), owner))

    def visit(node: Any, path: tuple, tprefix: tuple, ancestors: frozenset) -> None:
        if id(node) in ancestors:  # a cycle: this node is being visited already
            return
        ancestors = ancestors | {id(node)}
        owner = type(node).__name__
        consumed: tuple = ()
        claimed: set[int] = set()
        if isinstance(node, Module):
            try:
                layout = layouts.layout_of(node)
            except layouts.Unsupported as e:
                unsupported.append(f"{path_str(path)} ({owner}): {e}.")
                layout = None
            if layout is not None:
                rules, consumed = layout
                for rule in rules:
                    names = tuple(_join(*tprefix, s) for s in rule.sources)
                    targets = tuple(((*path, *p), v) for p, v in rule.targets)
                    placed.append(_Placed(rule, names, targets, owner))
                    claimed.update(id(v) for _, v in rule.targets)
        if isinstance(node, Object):
            children = node._nnx_children()
        else:  # a tuple held as an attribute
            children = list(enumerate(node))
        for key, value in children:
            if key in consumed:
                continue
            # torch.nn.Sequential holds its layers directly: `0.weight`, not
            # `layers.0.weight`.
            skip = isinstance(node, Sequential) and key == "layers"
            child_t = tprefix if skip else (*tprefix, str(key))
            if isinstance(value, Variable):
                if id(value) not in claimed and isinstance(value, (Param, BatchStat)):
                    generic(path, tprefix, key, value, owner)
            elif isinstance(value, (Object, tuple)):
                visit(value, (*path, key), child_t, ancestors)

    visit(model, (), (), frozenset())
    return placed, unsupported


# -- mapping -------------------------------------------------------------------------


def _split_path(path: Any) -> list:
    if isinstance(path, tuple):
        return list(path)
    text = str(path).replace("[", "/").replace("]", "").replace(".", "/")
    return [p for p in text.split("/") if p]


def _resolve(model: Any, path: Any) -> str:
    """Our module path (``"blocks/0"``, ``"blocks.0"``, ``("blocks", 0)``) as the
    torch-style prefix the default naming gives it."""
    node, tprefix, walked = model, [], []
    for part in _split_path(path):
        if isinstance(node, Sequential):
            node = node.layers
            if part == "layers":  # "model/layers/0" and "model/0" both work
                walked.append(part)
                continue
        if isinstance(node, Object):
            children = dict(node._nnx_children())
        else:
            children = dict(enumerate(node)) if isinstance(node, tuple) else {}
        children = {  # graph children only, not configuration
            k: v
            for k, v in children.items()
            if isinstance(v, (Object, Variable, tuple))
        }
        key = part
        if key not in children and isinstance(part, str) and part.isdigit():
            key = int(part)
        if key not in children:
            raise TorchStateDictError(
                f"mapping: our path {path!r} does not exist in "
                f"{type(model).__name__}: {type(node).__name__} at "
                f"{path_str(tuple(walked))} has no child {part!r}; its children "
                f"are {list(children)}. Write paths by attribute name, e.g. "
                "'encoder/layers/0' (or 'encoder.layers.0')."
            )
        walked.append(key)
        tprefix.append(str(key))
        node = children[key]
    return ".".join(tprefix)


def _under(name: str, prefix: str) -> str | None:
    """The rest of ``name`` below ``prefix`` ('' for itself), or None if outside."""
    if not prefix:
        return name
    if name == prefix:
        return ""
    if name.startswith(prefix + "."):
        return name[len(prefix) + 1 :]
    return None


def _translators(model: Any, mapping: MappingLike, exporting: bool = False):
    """``(incoming, outgoing)``: torch name -> our default name, and back.

    A callable maps one way only: their names to ours on load, ours to theirs on
    export; on load, names are then reported as the callable's results.
    """
    if mapping is None:
        return (lambda k: k), (lambda n: n)
    if callable(mapping) and not isinstance(mapping, Mapping):
        return (None, mapping) if exporting else (mapping, lambda n: n)
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"mapping must be a dict {{torch_prefix: our_path}} or a callable, got "
            f"{type(mapping).__name__}."
        )
    table = [
        (str(theirs), None if ours is None else _resolve(model, ours))
        for theirs, ours in mapping.items()
    ]

    def incoming(key: str) -> str | None:
        best = None
        for theirs, ours in table:
            rest = _under(key, theirs)
            if rest is not None and (best is None or len(theirs) > len(best[0])):
                best = (theirs, ours, rest)
        if best is None:
            return key
        _, ours, rest = best
        return None if ours is None else _join(ours, rest)

    def outgoing(name: str) -> str | None:
        best = None
        for theirs, ours in table:
            rest = None if ours is None else _under(name, ours)
            if rest is not None and (best is None or len(ours) > len(best[1])):
                best = (theirs, ours, rest)
        return name if best is None else _join(best[0], best[2])

    return incoming, outgoing


# -- input -------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        # A torch.Tensor (torch is never imported here: the user already has it).
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            torch = sys.modules[type(value).__module__.split(".")[0]]
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


_NPY_HEADER_MAX = 10_000  # NumPy's own default limit for .npy headers
_CHUNK = 1 << 20


class _NpzEntry:
    """One array of an ``.npz`` file, known by its header, read on demand."""

    def __init__(self, path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        self.path, self.zf, self.info = path, zf, info
        self.name = info.filename[: -len(".npy")]
        try:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    read = np.lib.format.read_array_header_1_0
                elif version == (2, 0):
                    read = np.lib.format.read_array_header_2_0
                else:
                    raise ValueError(f".npy format version {version} is not read")
                shape, fortran, dtype = read(f, max_header_size=_NPY_HEADER_MAX)
                self.offset = f.tell()
        except _NPZ_ERRORS as e:
            raise self._fail(f"has an unreadable .npy header ({e})") from None
        if dtype.hasobject or dtype.names or dtype.subdtype:
            raise self._fail(
                f"holds dtype {dtype}, which needs pickle or is not a plain array"
            )
        if len(shape) > 64 or math.prod(d for d in shape if d) >= 2**63:
            raise self._fail(f"declares shape {shape}, larger than NumPy allows")
        self.shape, self.dtype, self.fortran = tuple(shape), dtype, fortran
        self.size = math.prod(self.shape)
        self.nbytes = self.size * dtype.itemsize
        if info.file_size != self.offset + self.nbytes:
            raise self._fail(
                f"declares {info.file_size} bytes in the zip directory, but its "
                f".npy header ({dtype}{list(self.shape)}) makes "
                f"{self.offset + self.nbytes}: the file is damaged or crafted"
            )

    def _fail(self, what: str) -> TorchStateDictError:
        return TorchStateDictError(
            f"{self.path!r}: entry {self.info.filename!r} {what}. Write the file "
            "again with plain numeric arrays (`np.savez(path, **state_dict)`)."
        )

    def load(self) -> np.ndarray:
        """Decompress into a new array, never reading past the declared size."""
        order = "F" if self.fortran else "C"
        a = np.empty(self.shape, self.dtype, order=order)
        flat = (a.T if self.fortran else a).reshape(-1).view(np.uint8)
        try:
            with self.zf.open(self.info) as f:
                f.seek(self.offset)
                done = 0
                while done < self.nbytes:
                    got = f.readinto(flat[done : done + _CHUNK])
                    if not got:
                        raise ValueError(f"ends after {done} of {self.nbytes} bytes")
                    done += got
                if f.read(1):
                    raise ValueError(f"holds more than the {self.nbytes} bytes it says")
        except _NPZ_ERRORS as e:
            raise self._fail(f"cannot be read ({e})") from None
        return a


_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
_NPZ_ERRORS += (NotImplementedError, RuntimeError, KeyError, SyntaxError)


def _read_npz(path: str) -> dict[str, _NpzEntry]:
    try:
        f = open_regular(path)
    except NotARegularFileError as e:
        msg = f"{path!r} is not a regular file ({e.strerror})."
        raise TorchStateDictError(msg) from None
    try:
        zf = zipfile.ZipFile(f)
    except _NPZ_ERRORS as e:
        f.close()
        raise TorchStateDictError(
            f"{path!r} is not a readable .npz (zip) file ({e}). Write it again "
            "with `np.savez(path, **state_dict)`."
        ) from None
    zf._nnx_file = f  # ZipFile does not close a file it was given: _close_zip does
    try:
        return _npz_entries(path, zf)
    except BaseException:
        _close_zip(zf)
        raise


def _close_zip(zf: zipfile.ZipFile) -> None:
    zf.close()
    zf._nnx_file.close()


def _npz_entries(path: str, zf: zipfile.ZipFile) -> dict[str, _NpzEntry]:
    entries: dict[str, _NpzEntry] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise TorchStateDictError(
                f"{path!r}: entry {info.filename!r} is not a .npy array; an .npz "
                "file holds `name.npy` entries only."
            )
        entry = _NpzEntry(path, zf, info)
        if entry.name in entries:
            raise TorchStateDictError(f"{path!r}: entry {info.filename!r} is twice.")
        entries[entry.name] = entry
    return entries


def _materialize(a: Any) -> np.ndarray:
    return a.load() if isinstance(a, _NpzEntry) else a


def read_state_dict(state_dict: Any) -> dict[str, Any]:
    """A mapping of names to arrays, or a ``.safetensors``/``.npz`` path, as numpy.

    The arrays of an ``.npz`` come as ``_NpzEntry`` (shape, dtype and size known,
    data read by ``_materialize``).
    """
    if isinstance(state_dict, (str, os.PathLike)):
        path = os.fspath(state_dict)
        if path.endswith(".safetensors"):
            return load_safetensors(path)
        if path.endswith(".npz"):
            return _read_npz(path)
        raise TorchStateDictError(
            f"load_torch_state_dict: cannot read {path!r}: expected a .safetensors "
            "or .npz file. For a torch.save() checkpoint, load it with torch and "
            "pass the dict: `load_torch_state_dict(model, torch.load(path))`, or "
            "convert it once: `safetensors.torch.save_file(sd, 'model.safetensors')`."
        )
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "load_torch_state_dict: state_dict must be a mapping of names to arrays "
            "(`torch_model.state_dict()`, a dict of numpy arrays) or a path to a "
            f".safetensors/.npz file, got {type(state_dict).__name__}."
        )
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        raise TypeError(f"load_torch_state_dict: keys must be strings, got {bad[:5]}.")
    return {k: _to_numpy(v) for k, v in state_dict.items()}


# -- load ----------------------------------------------------------------------------


def _is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def _ours(p: _Placed) -> str:
    """``fc1.kernel (Linear)``: where an entry goes, for messages."""
    return f"{', '.join(path_str(t) for t, _ in p.targets)} ({p.owner})"


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"    {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"    ... and {len(lines) - _MAX_LISTED} more")
    return [f"  {title}:", *shown]


def load(
    model: Any,
    state_dict: Any,
    *,
    mapping: MappingLike = None,
    strict: bool = True,
) -> LoadReport:
    arrays = read_state_dict(state_dict)
    try:
        return _load(model, arrays, mapping, strict)
    finally:
        zips = {id(a.zf): a.zf for a in arrays.values() if isinstance(a, _NpzEntry)}
        for zf in zips.values():
            _close_zip(zf)


def _load(model: Any, arrays: dict, mapping: MappingLike, strict: bool) -> LoadReport:
    placed, unsupported = _plan(model)
    incoming, outgoing = _translators(model, mapping)

    expected: dict[str, tuple[int, int]] = {}
    for i, p in enumerate(placed):
        for j, name in enumerate(p.names):
            expected.setdefault(name, (i, j))

    provided: dict[str, tuple[str, np.ndarray]] = {}  # our name -> (their key, array)
    unexpected: list[str] = []
    clashes: list[str] = []
    for key, array in arrays.items():
        name = incoming(key)
        if name is None:
            continue  # dropped on purpose by the mapping
        if name in provided:
            clashes.append(f"{provided[name][0]!r} and {key!r} both map to {name!r}")
        elif name in expected:
            provided[name] = (key, array)
        else:
            unexpected.append(key)

    def shown(name: str) -> str:
        theirs = outgoing(name)
        return repr(theirs) if theirs == name else f"{theirs!r} (our {name!r})"

    mismatched: list[str] = []
    problems: list[str] = []
    writes: dict[int, tuple[Variable, np.ndarray]] = {}
    for p in placed:
        if not p.targets or not all(n in provided for n in p.names):
            continue
        sources, ok = [], True
        for name, shape in zip(p.names, p.rule.shapes):
            key, a = provided[name]
            fits = a.shape == shape or (
                p.rule.reshape_ok and a.size == int(np.prod(shape, dtype=np.int64))
            )
            if not fits:
                extra = " (or as many elements)" if p.rule.reshape_ok else ""
                mismatched.append(
                    f"{key!r} -> {_ours(p)}: expected torch shape {shape}{extra}, "
                    f"got {a.shape}"
                )
                ok = False
            elif _is_float(a.dtype) != _is_float(p.targets[0][1].dtype):
                problems.append(
                    f"{key!r}: dtype {a.dtype} cannot fill {path_str(p.targets[0][0])} "
                    f"of dtype {p.targets[0][1].dtype} (floating and integer data "
                    "do not mix); cast it first"
                )
                ok = False
            else:
                sources.append(_materialize(a).reshape(shape))
        if not ok:
            continue
        try:
            values = p.rule.load(*sources)
        except layouts.Unconvertible as e:
            keys = ", ".join(repr(provided[n][0]) for n in p.names)
            problems.append(f"{keys} -> {_ours(p)}: {e}")
            continue
        for (_, var), value in zip(p.targets, values):
            value = np.asarray(value).reshape(var.shape).astype(np.dtype(var.dtype))
            writes[id(var)] = (var, value)

    missing: list[str] = []
    missing_lines: list[str] = []
    for p in placed:
        if p.rule.optional or all(id(v) in writes for _, v in p.targets):
            continue
        for name, shape in zip(p.names, p.rule.shapes):
            if name not in provided:
                theirs = outgoing(name)
                missing.append(theirs if theirs is not None else name)
                missing_lines.append(
                    f"{shown(name)} -> {_ours(p)}: torch shape {shape}"
                )

    blocking = mismatched or problems or clashes
    if strict:
        blocking = blocking or unexpected or missing or unsupported
    if blocking:
        unexpected_lines = []
        for key in unexpected:
            hint = difflib.get_close_matches(key, missing, n=1, cutoff=0.75)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            unexpected_lines.append(f"{key!r} {arrays[key].shape}{extra}")
        show_names = strict or not (mismatched or problems or clashes)
        body = [
            *_listing("unsupported layers", unsupported if strict else []),
            *_listing("wrong shape", mismatched),
            *_listing("cannot convert", problems),
            *_listing("clashing names", clashes),
            *_listing(
                "unexpected (in the state dict, no place in the model)",
                unexpected_lines if show_names else [],
            ),
            *_listing(
                "missing (model parameters with no entry)",
                missing_lines if show_names else [],
            ),
        ]
        count = len(mismatched) + len(problems) + len(clashes)
        count += len(unsupported) if strict else 0
        count += len(unexpected) + len(missing_lines) if show_names else 0
        raise TorchStateDictError(
            "\n".join(
                [
                    f"load_torch_state_dict into {type(model).__name__}: the state "
                    f"dict does not fit the model ({count} "
                    f"problem{'s' if count != 1 else ''}; nothing was loaded).",
                    *body,
                    "Fix: rename entries with `mapping={'their.prefix': "
                    "'our/module/path'}` (or a callable from their name to ours), "
                    "drop entries with `mapping={'their.prefix': None}`, or load "
                    "what fits with `strict=False` (shapes must still match). The "
                    "names this model expects: "
                    "`list(nnxlike.interop.torch.to_torch_state_dict(model))`.",
                ]
            )
        )
    for var, value in writes.values():
        old = var.value
        new = jnp.asarray(value)
        if isinstance(old, jax.Array):  # keep the old placement / sharding
            new = jax.device_put(new, old.sharding)
        var.value = new
    return LoadReport(missing, unexpected)


# -- export --------------------------------------------------------------------------


def export(model: Any, *, mapping: MappingLike = None) -> dict[str, np.ndarray]:
    placed, unsupported = _plan(model)
    if unsupported:
        raise TorchStateDictError(
            "to_torch_state_dict: these layers have no PyTorch counterpart:\n  "
            + "\n  ".join(unsupported)
        )
    _, outgoing = _translators(model, mapping, exporting=True)
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for p in placed:
        values = p.rule.save(*(np.asarray(v.value) for _, v in p.targets))
        for name, shape, value in zip(p.names, p.rule.shapes, values):
            theirs = outgoing(name)
            if theirs is None:
                continue
            if theirs in out and origin[theirs] != name:
                raise TorchStateDictError(
                    f"to_torch_state_dict: {origin[theirs]!r} and {name!r} both map "
                    f"to {theirs!r}; fix the mapping so that names stay distinct."
                )
            origin[theirs] = name
            out[theirs] = np.array(np.reshape(value, shape), order="C", copy=True)
    return out
