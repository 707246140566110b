"""Checkpoints that never lose data: ``save``, ``restore`` and ``CheckpointManager``.

Save any mix of object graphs and pytrees — a model, an ``nnx.Optimizer``, an
``nnx.Rngs``, metrics, a ``State``, a step number, and tuples, lists or dicts of
these — to one file, and restore it into a target of the same structure:

>>> import tempfile, os
>>> import jax.numpy as jnp
>>> import nnxlike as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> path = os.path.join(tempfile.mkdtemp(), "model.nnx")
>>> nnx.checkpoint.save(path, {"model": model, "step": 100})
>>> abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
>>> out = nnx.checkpoint.restore(path, {"model": abstract, "step": 0})
>>> out["step"], out["model"] is abstract, abstract.kernel.value.shape
(100, True, (2, 3))
>>> bool((abstract.kernel.value == model.kernel.value).all())
True

**What is saved.** Every Variable's value (each shared Variable once, at the first
path that reaches it, as in ``nnx.state``), every array and every Python or NumPy
number in plain containers and other pytrees. Typed PRNG keys are saved as their
``jax.random.key_data`` plus the implementation name and rebuilt with
``jax.random.wrap_key_data``. Static structure (layer sizes, ``optax``
transformations, strings) is not saved: it comes from the target.

**Restoring.** Object graphs in the target (Modules, Optimizer, Rngs, metrics,
Variables — including abstract ones from ``nnx.eval_shape``, which hold
``jax.ShapeDtypeStruct`` and no memory) are filled in place and returned as the
same objects. Everything else (a ``State``, dicts, lists, tuples, numbers) is
returned as a new value of the same structure. An array is placed with
``jax.device_put(array, sharding)`` when the target names a sharding: the
``ShapeDtypeStruct.sharding`` of an abstract leaf (as from
``nnx.get_abstract_model``), else the Variable's ``sharding_names`` metadata on
its ``mesh`` (or the mesh set with ``jax.set_mesh``), else the sharding of a
committed target array; otherwise it goes to the default device. Without a
target, ``restore(path)`` returns nested plain dicts of arrays keyed like
``State.to_pure_dict()``: JAX arrays, except NumPy arrays for dtypes JAX would
narrow (64-bit numbers when ``jax_enable_x64`` is off), which come back exact.

**Mismatches.** Every path of the target must be in the file with the same shape
and dtype, and the file must hold nothing else. Otherwise ``restore`` raises one
``CheckpointMismatchError`` listing every difference by path (``.mismatches``
has them as ``Mismatch`` records) before anything is changed. With
``strict=False`` it restores the paths that match, keeps the target's values
elsewhere, and warns once with a ``CheckpointMismatchWarning`` whose
``.mismatches`` lists the rest. Variable kinds are recorded but not compared.

**Atomic writes.** ``save`` writes to a temporary file in the same directory
(``.NAME.tmp-HOST-PID-RANDOM``), flushes and ``fsync``s it, renames it onto the final
name with ``os.replace`` (``overwrite=True``) or hard-links it there, which fails
if the name exists (``overwrite=False``: of two concurrent savers exactly one
wins, the other gets ``FileExistsError``), and ``fsync``s the directory. A crash
or ``kill -9`` at any moment leaves either the previous file or the new one under
the final name, never a partial file. A temporary file may be left behind; every
save first removes those of its file whose writer on this host is gone, so they
cannot fill the disk. A full disk is an ``OSError`` (``ENOSPC``) that says so,
and the previous file stays intact.

**Untrusted files.** A crafted file costs time and memory in proportion to its
size: the header is capped (``MAX_HEADER_BYTES``, ``MAX_RECORDS``), nesting,
path depth and shapes are bounded, a path may appear once and never run through
another leaf, and a FIFO or device under the name is refused before ``open``.
Every problem is a ``CorruptCheckpointError`` naming the file and the entry.

**Format (version 1).** No pickle: loading parses JSON and copies bytes, so it can
never run code. One file; every integer little-endian:

| offset | size | content |
| --- | --- | --- |
| 0 | 8 | magic ``b"\\x93NNXCKPT"`` |
| 8 | 4 | format version, uint32 (1) |
| 12 | 4 | reserved, uint32, zero |
| 16 | 8 | header offset ``H``, uint64 |
| 24 | 8 | header length ``L``, uint64 |
| 32 | 32 | SHA-256 of the header bytes |
| 64 | ``H - 64`` | the arrays' raw bytes, C order, little-endian, back to back |
| ``H`` | ``L`` | the header, UTF-8 JSON; the file ends here |

The header (at the end, so a save streams each array once and hashes it on the
way) is ``{"format": "nnxlike.checkpoint", "version": 1, "leaves": [...]}``
with one record per array, in walk order:

```json
{"path": ["model", "kernel"], "kind": "Param", "dtype": "bfloat16",
 "shape": [2, 3], "offset": 64, "nbytes": 12, "sha256": "9f2c..."}
```

``path`` holds attribute names and dict keys (strings) and list or tuple indices
(integers); ``kind`` is the Variable class name or null; ``dtype`` is a NumPy or
``ml_dtypes`` name (``float32``, ``bfloat16``, ``float8_e4m3fn``, ...), so every
dtype round-trips bit for bit. Optional fields: ``"python": "int"`` (also
``float``, ``bool``, ``complex``) for a number saved from a Python scalar, and
``"key": {"impl": "threefry2x32", "dtype": "key<fry>", "shape": []}`` for a typed
key, whose bytes are its key data. The records' byte ranges tile ``[64, H)``
exactly, so every byte of the file is covered by a check: the preamble is
validated field by field and the header and each array by SHA-256. A truncated
or damaged file raises ``CorruptCheckpointError`` naming the file, the path and
what is wrong — never garbage values.

``nnx.checkpoint`` is also callable: ``nnx.checkpoint(f)`` is ``nnx.remat(f)``
(flax.nnx's name for rematerialisation), so both uses keep working.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _graph
from nnxlike._atomic import remove_stale_temporaries
from nnxlike._checkpoint_file import (
    PY_DTYPES,
    PY_TYPES,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointMismatchWarning,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    Reader,
    dtype_from_name,
    is_key,
    python_kind,
    to_jax,
    write_atomic,
)
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import Variable, new_variable

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "CheckpointMismatchWarning",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "Mismatch",
    "restore",
    "save",
]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One difference between a checkpoint and a restore target.

    ``problem`` is ``"missing"`` (in the target, not in the checkpoint),
    ``"unexpected"`` (in the checkpoint, not in the target), ``"shape"`` or
    ``"dtype"``; ``expected`` and ``found`` describe the target's and the
    checkpoint's leaf, like ``Param float32[2, 3]`` (None where there is none).
    """

    path: tuple
    problem: str
    expected: str | None
    found: str | None

    def __str__(self) -> str:
        where = _errors.path_str(self.path)
        if self.problem == "missing":
            return f"{where}: missing from the checkpoint (target: {self.expected})"
        if self.problem == "unexpected":
            return f"{where}: in the checkpoint ({self.found}) but not in the target"
        return (
            f"{where}: {self.problem} differs: the target expects {self.expected}, "
            f"the checkpoint has {self.found}"
        )


# -- one walk over any tree ------------------------------------------------------------

_KEEP = object()  # a visit's answer meaning "leave this leaf as it is"
_LEAVES = (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)
_LEAVES += (bool, int, float, complex)

# visit(path, value, kind, metadata) -> the new value, or _KEEP
Visit = Callable[[tuple, Any, Any, Any], Any]


def _walk(tree: Any, visit: Visit) -> Any:
    """Call ``visit`` on every array or number in ``tree``, depth first.

    Returns the tree with the leaves ``visit`` replaced, or ``_KEEP`` when it
    replaced none. Variables are written in place, each once however many paths
    reach it (the first path counts, as in ``nnx.state``); plain containers and
    States are rebuilt. The order, and so the paths, depend only on the tree's
    structure, so saving and restoring see the same leaves.
    """
    seen: set[int] = set()

    def variable(v: Variable, path: tuple) -> None:
        if id(v) in seen:
            return
        seen.add(id(v))
        new = node(v._raw_value, path, type(v), v._metadata)
        if new is not _KEEP:
            v.set_value(new)

    def graph(x: Any, path: tuple) -> None:
        flat = _graph.flatten(x)
        raw_paths, raw_values = [], []
        for p, leaf in zip(flat.graphdef.paths, flat.leaves):
            if isinstance(leaf, Variable):
                variable(leaf, (*path, *p))
                continue
            new = node(leaf, (*path, *p), None, None)
            if new is not _KEEP:
                raw_paths.append(p)
                raw_values.append(new)
        if raw_paths:
            _graph.update(x, State.from_flat(raw_paths, raw_values))

    def items(pairs: list, path: tuple, kind: Any, meta: Any) -> list | None:
        new = [node(v, (*path, k), kind, meta) for k, v in pairs]
        if all(n is _KEEP for n in new):
            return None
        return [v if n is _KEEP else n for (_, v), n in zip(pairs, new)]

    def node(x: Any, path: tuple, kind: Any, meta: Any) -> Any:
        if isinstance(x, Variable):
            variable(x, path)
            return _KEEP
        if isinstance(x, Object):
            graph(x, path)
            return _KEEP
        if isinstance(x, _LEAVES):
            return visit(path, x, kind, meta)
        t = type(x)
        if t is dict or isinstance(x, State):
            pairs = list(x.items())
            new = items(pairs, path, kind, meta)
            if new is None:
                return _KEEP
            rebuilt = zip((k for k, _ in pairs), new)
            return State(rebuilt) if isinstance(x, State) else dict(rebuilt)
        if t is list or t is tuple:
            new = items(list(enumerate(x)), path, kind, meta)
            return _KEEP if new is None else t(new)
        # Any other pytree (NamedTuples, optax states, dataclasses): one level.
        children, treedef = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
        if treedef.num_nodes == 1:
            return _KEEP  # a static value (None, str, ...): structure, not state
        pairs = [(_key(p[0]), v) for p, v in children]
        new = items(pairs, path, kind, meta)
        return _KEEP if new is None else treedef.unflatten(new)

    return node(tree, (), None, None)


def _key(entry: Any) -> Any:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey, ...
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _spec(x: Any) -> tuple[str, tuple]:
    """(dtype name, shape) of a target leaf, as the file records describe them."""
    py = python_kind(x)
    if py is not None:
        return np.dtype(PY_DTYPES[py]).name, ()
    if is_key(x.dtype):
        return str(x.dtype), tuple(x.shape)
    return np.dtype(x.dtype).name, tuple(np.shape(x))


def _record_spec(rec: dict) -> tuple[str, tuple]:
    key = rec.get("key")
    if key is not None:
        return key["dtype"], tuple(key["shape"])
    return rec["dtype"], tuple(rec["shape"])


def _describe(kind: str | None, dtype: str, shape: Any) -> str:
    dims = ", ".join(str(d) for d in shape)
    return f"{kind + ' ' if kind else ''}{dtype}[{dims}]"


# -- save ------------------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, *, overwrite: bool = False) -> None:
    """Save every array of ``tree`` to the file ``path``, atomically.

    Args:
        path: the checkpoint file to write (parent directories are created).
        tree: an object graph (Module, Optimizer, Rngs, metric, Variable), a
            ``State``, an array or number, or any dict, list, tuple or pytree of
            these.
        overwrite: replace an existing file. The replacement is atomic: until the
            new file is complete and on disk, the old one stays under ``path``.
            Without it an existing ``path`` is an error.

    >>> import tempfile, os
    >>> import nnxlike as nnx
    >>> path = os.path.join(tempfile.mkdtemp(), "rngs.nnx")
    >>> nnx.checkpoint.save(path, nnx.Rngs(0))
    >>> nnx.checkpoint.restore(path)["default"]["key"].dtype
    key<fry>
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        raise IsADirectoryError(
            f"save: {os.fspath(path)} is a directory; give a file name, e.g. "
            f"`{os.path.join(os.fspath(path), 'model.nnx')}`."
        )
    if not overwrite and os.path.lexists(path):  # early; the link below decides
        raise FileExistsError(_exists_message(path, ""))
    leaves: list = []

    def collect(p: tuple, x: Any, kind: Any, meta: Any) -> Any:
        _check_savable(p, x)  # every check before the disk is touched
        leaves.append((p, x, kind))
        return _KEEP

    _walk(tree, collect)
    # Temporaries of killed saves of this file would fill the disk save by save.
    remove_stale_temporaries(path.parent, re.compile(re.escape(path.name)))
    try:
        write_atomic(path, leaves, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(
            _exists_message(path, " (another save created it while this one wrote)")
        ) from None


def _exists_message(path: Path, when: str) -> str:
    return (
        f"save: {os.fspath(path)} already exists{when}; it was kept. Pass "
        "`nnx.checkpoint.save(path, tree, overwrite=True)` to replace it "
        "atomically, or save under a new name."
    )


def _check_savable(path: tuple, x: Any) -> None:
    where = _errors.path_str(path)
    for k in path:
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            raise CheckpointError(
                f"save: the key {k!r} ({type(k).__name__}) on the path {where!r} "
                "cannot be stored; checkpoint paths hold strings and integers only. "
                "Use string keys: `{str(key): value}`."
            )
    if isinstance(x, jax.core.Tracer):
        raise CheckpointError(
            f"save: the value at {where!r} is a JAX tracer: save was called inside "
            "a transform (jit, grad, vmap, ...). Save outside it, after the step "
            "returns."
        )
    if isinstance(x, jax.ShapeDtypeStruct):
        raise CheckpointError(
            f"save: the value at {where!r} is abstract ({x}) and holds no data (a "
            "model from nnx.eval_shape?). Restore or initialise it before saving."
        )
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise CheckpointError(
            f"save: the array at {where!r} spans the devices of "
            f"{len({d.process_index for d in x.sharding.device_set})} processes; "
            "nnx.checkpoint.save and CheckpointManager write single-host files. "
            "Save multi-host state with orbax-checkpoint, on every process: "
            "`ocp.CheckpointManager(directory).save(step, "
            "args=ocp.args.StandardSave(nnx.state(model)))` (docs/distributed.md, "
            "'Checkpoints')."
        )
    py = python_kind(x)
    if py == "int" and not -(2**63) <= x < 2**63:
        raise CheckpointError(f"save: the integer at {where!r} does not fit in int64.")
    dtype = np.dtype(PY_DTYPES[py]) if py else x.dtype
    if not is_key(dtype) and np.dtype(dtype) in (np.longdouble, np.clongdouble):
        if dtype_from_name(np.dtype(dtype).name) is None:
            raise CheckpointError(
                f"save: the array at {where!r} has dtype {dtype} (np.longdouble "
                "extended precision), whose size and meaning differ between "
                "platforms and which JAX cannot hold, so it could not be restored. "
                "Cast it first: `x.astype(np.float64)` (or np.complex128)."
            )
    if not is_key(dtype) and dtype_from_name(np.dtype(dtype).name) is None:
        raise CheckpointError(
            f"save: the array at {where!r} has dtype {dtype}, which a checkpoint "
            "cannot hold (numbers, booleans and ml_dtypes only)."
        )


# -- restore ---------------------------------------------------------------------------


def restore(path: str | os.PathLike, target: Any = None, *, strict: bool = True) -> Any:
    """Restore the checkpoint at ``path`` into ``target`` and return it.

    Args:
        path: a file written by ``save``.
        target: a tree of the same structure as the one saved. Object graphs
            (concrete, or abstract from ``nnx.eval_shape``) are filled in place
            and returned; States, containers and numbers come back as new values.
            ``None`` returns the file's contents as nested plain dicts.
        strict: when the checkpoint and the target differ (missing or extra
            paths, other shapes or dtypes), raise one ``CheckpointMismatchError``
            listing every difference. ``False`` restores the paths that match,
            keeps the target's values elsewhere and warns with a
            ``CheckpointMismatchWarning`` listing the rest.

    Nothing in the target changes unless every array it needs was read back
    intact.

    >>> import tempfile, os
    >>> import nnxlike as nnx
    >>> path = os.path.join(tempfile.mkdtemp(), "state.nnx")
    >>> nnx.checkpoint.save(path, nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> state = nnx.checkpoint.restore(path, nnx.state(abstract))
    >>> type(state).__name__, state.kernel.value.shape, state.kernel.type.__name__
    ('State', (2, 3), 'Param')
    """
    path = Path(os.fspath(path))
    with Reader(path) as reader:
        if target is None:
            return _restore_pure(reader)
        by_path = {tuple(rec["path"]): rec for rec in reader.records}
        wanted: list = []

        def collect(p: tuple, x: Any, kind: Any, meta: Any) -> Any:
            wanted.append((p, x, kind, meta))
            return _KEEP

        _walk(target, collect)
        mismatches = _compare(wanted, by_path)
        lines = "\n".join(f"  - {m}" for m in mismatches)
        if mismatches and strict:
            raise CheckpointMismatchError(
                _errors.CHECKPOINT_MISMATCH.format(
                    file=os.fspath(path), n=len(mismatches), lines=lines
                ),
                mismatches,
            )
        skip = {m.path for m in mismatches}
        values = {}
        for p, x, _, meta in wanted:  # read and verify all before writing any
            if p not in skip:
                rec = by_path[p]
                values[p] = _restored_value(reader.read(rec), rec, x, meta, path)
    if mismatches:
        warnings.warn(
            CheckpointMismatchWarning(
                f"restore(strict=False): {os.fspath(path)} differs from the target at "
                f"{len(mismatches)} path(s); the target keeps its values there:\n"
                f"{lines}",
                mismatches,
            ),
            stacklevel=2,
        )
    out = _walk(target, lambda p, x, kind, meta: values.get(p, _KEEP))
    return target if out is _KEEP else out


def _compare(wanted: list, by_path: dict) -> list[Mismatch]:
    out = []
    for p, x, kind, _ in wanted:
        dtype, shape = _spec(x)
        expected = _describe(kind.__name__ if kind else None, dtype, shape)
        rec = by_path.get(p)
        if rec is None:
            out.append(Mismatch(p, "missing", expected, None))
            continue
        r_dtype, r_shape = _record_spec(rec)
        found = _describe(rec["kind"], r_dtype, r_shape)
        if r_shape != shape:
            out.append(Mismatch(p, "shape", expected, found))
        elif r_dtype != dtype:
            out.append(Mismatch(p, "dtype", expected, found))
    targeted = {p for p, *_ in wanted}
    for p, rec in by_path.items():
        if p not in targeted:
            found = _describe(rec["kind"], *_record_spec(rec))
            out.append(Mismatch(p, "unexpected", None, found))
    return out


def _restored_value(
    data: np.ndarray, rec: dict, target: Any, meta: Any, file: Path
) -> Any:
    """The restored leaf in the target's form: number, NumPy array or placed array."""
    py = python_kind(target)
    if py is not None:
        return PY_TYPES[py](data[()])
    if isinstance(target, np.generic):
        return data[()]
    if isinstance(target, np.ndarray):
        return data
    sharding = _sharding(target, meta)
    array = to_jax(data, rec, file) if sharding is None or "key" in rec else data
    return array if sharding is None else jax.device_put(array, sharding)


def _sharding(target: Any, meta: Any) -> jax.sharding.Sharding | None:
    """Where the target says a restored array should live (None: default device).

    In order: an abstract leaf's ``ShapeDtypeStruct.sharding``; the Variable's
    ``sharding_names`` on its ``mesh`` metadata or the mesh set with
    ``jax.set_mesh`` (resolved as ``nnx.get_named_sharding`` does); the sharding
    of a concrete target array that was placed explicitly (committed).
    """
    if isinstance(target, jax.ShapeDtypeStruct) and target.sharding is not None:
        return target.sharding
    if meta and meta.get("sharding_names") is not None:
        mesh = meta.get("mesh")
        if mesh is None:
            try:
                mesh = jax.sharding.get_mesh()
            except ValueError:  # inside a trace: no concrete mesh
                mesh = None
        if mesh is not None and not mesh.empty:
            from nnxlike import spmd

            leaf = new_variable(Variable, target, meta)
            return spmd.get_named_sharding(leaf, mesh).value
    if isinstance(target, jax.Array) and getattr(target, "committed", False):
        return target.sharding
    return None


def _restore_pure(reader: Reader) -> Any:
    root: dict = {}
    for rec in reader.records:
        data = reader.read(rec)
        if "python" in rec:
            value = data[()].item()
        elif (
            "key" not in rec and jax.dtypes.canonicalize_dtype(data.dtype) != data.dtype
        ):
            value = data  # JAX would narrow it (64-bit without x64): keep it exact
        else:
            value = to_jax(data, rec, reader.path)
        path = tuple(rec["path"])
        if not path:
            return value
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return root


# -- CheckpointManager -----------------------------------------------------------------

_STEP_FILE = re.compile(r"step_(\d+)\.nnx")


def _step(step: Any, where: str) -> int:
    """``step`` as a non-negative int; a float, bool or other type is an error.

    ``int(2.5)`` would be 2 and overwrite step 2: a step is never rounded.
    """
    if isinstance(step, (bool, np.bool_)) or (
        hasattr(step, "dtype") and np.dtype(step.dtype) == np.bool_
    ):
        raise TypeError(
            f"{where}: step must be an integer, got the bool {step!r}. Pass the "
            "step counter: `manager.save(step, tree)` with `step` an int."
        )
    try:
        out = operator.index(step)  # int, NumPy integers, 0-d integer arrays
    except TypeError:
        raise TypeError(
            f"{where}: step must be an integer, got {step!r} "
            f"({type(step).__name__}). Steps name files and are never rounded "
            "(int(2.5) would overwrite step 2); count steps with an int, or pass "
            "`int(optimizer.step.value)`."
        ) from None
    if out < 0:
        raise ValueError(f"{where}: step must be >= 0, got {out}.")
    return out


class CheckpointManager:
    """Numbered checkpoints in one directory: save every K steps, keep the last N.

    Files are named ``step_<step>.nnx`` (zero-padded to 8 digits). The steps are
    read from the directory listing, so a new manager on the same directory
    resumes where the last one stopped; temporary files of interrupted saves do
    not count, and each ``save`` first deletes those whose writer (on this host)
    is gone. A step is a non-negative integer (``int``, a NumPy integer or a 0-d
    integer array); a float or bool step is an error, never rounded. A file that
    looks like a step but is not named as this manager names it (``step_5.nnx``,
    written by hand or by other code) is ignored: it is not a step, is never
    deleted, and ``restore`` names it with the fix when a step is not found.

    Args:
        directory: where the checkpoints live (created if needed).
        max_to_keep: keep only the newest this many (``None``: keep all).
        save_interval_steps: ``save(step, ...)`` writes only when
            ``step % save_interval_steps == 0`` (or with ``force=True``).

    >>> import tempfile
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> manager = nnx.checkpoint.CheckpointManager(
    ...     tempfile.mkdtemp(), max_to_keep=2, save_interval_steps=10
    ... )
    >>> [manager.save(step, model) for step in range(0, 35, 5)]
    [True, False, True, False, True, False, True]
    >>> manager.all_steps(), manager.latest_step()
    ([20, 30], 30)
    >>> manager.restore(target=model) is model
    True
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        save_interval_steps: int = 1,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(
                "CheckpointManager: max_to_keep must be at least 1, or None to keep "
                f"every checkpoint; got {max_to_keep}."
            )
        if save_interval_steps < 1:
            raise ValueError(
                "CheckpointManager: save_interval_steps must be at least 1, got "
                f"{save_interval_steps}."
            )
        self.directory = Path(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.save_interval_steps = save_interval_steps
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, step: int) -> Path:
        """The file that holds ``step``."""
        return self.directory / f"step_{_step(step, 'CheckpointManager.path'):08d}.nnx"

    def _scan(self) -> tuple[list[int], list[str]]:
        """The steps, and the names that look like steps but are not ours."""
        steps, ignored = [], []
        for name in os.listdir(self.directory):
            m = _STEP_FILE.fullmatch(name)
            if m is None:
                continue
            step = int(m.group(1))
            if name == f"step_{step:08d}.nnx":
                steps.append(step)
            else:
                ignored.append(
                    f"{name} (not this manager's name for step {step}: "
                    f"`step_{step:08d}.nnx`; rename it to use it)"
                )
        return sorted(steps), sorted(ignored)

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return self._scan()[0]

    def _ignored_note(self) -> str:
        ignored = self._scan()[1]
        if not ignored:
            return ""
        return " Ignored: " + "; ".join(ignored) + "."

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: Any, *, force: bool = False) -> bool:
        """Save ``tree`` as ``step`` if the interval says so; return whether it did.

        Saving a step that exists replaces it atomically. After a save the
        checkpoints with the lowest steps beyond ``max_to_keep`` are deleted
        (never the one just saved).
        """
        step = _step(step, "CheckpointManager.save")
        if not force and step % self.save_interval_steps:
            return False
        remove_stale_temporaries(self.directory, _STEP_FILE)  # before: disk space
        save(self.path(step), tree, overwrite=True)
        if self.max_to_keep is not None:
            for old in self.all_steps()[: -self.max_to_keep]:
                if old != step:  # after a rewind the new save is the oldest
                    self.path(old).unlink(missing_ok=True)
        return True

    def restore(
        self, step: int | None = None, target: Any = None, *, strict: bool = True
    ) -> Any:
        """Restore ``step`` (default: the latest) into ``target``; see ``restore``."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(
                    f"CheckpointManager.restore: no checkpoints in {self.directory} "
                    "yet. Save one first (`manager.save(step, tree)`), or check the "
                    f"directory.{self._ignored_note()}"
                )
        elif not self.path(step).exists():
            raise CheckpointNotFoundError(
                f"CheckpointManager.restore: no checkpoint for step {step} in "
                f"{self.directory}; saved steps: {self.all_steps()}."
                f"{self._ignored_note()}"
            )
        return restore(self.path(step), target, strict=strict)


# -- nnx.checkpoint(f) is nnx.remat(f) -------------------------------------------------


class _CallableModule(types.ModuleType):
    """This module, callable: ``nnx.checkpoint(f)`` is flax.nnx's alias of remat."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from nnxlike._transforms.control import remat

        return remat(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
