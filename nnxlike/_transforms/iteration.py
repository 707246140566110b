"""``vmap`` over objects, with per-filter axes (``StateAxes``); shared with ``scan``.

Design note. Every Variable of the lifted arguments gets one axis: the argument's
``in_axes`` entry (an int, ``None`` for broadcast, ``Carry`` for scan's carry) or,
for a ``StateAxes``, the axis of the first filter it matches. JAX then maps or
scans the flat list of arrays with those axes and we write results back with the
same axes.

Randomness under ``vmap``: an RNG key that is broadcast (axis ``None``) is folded
with the lane index inside the vmapped function, so every lane draws different
numbers by default (flax.nnx's default is the opposite); the caller's key is left
as it was and its counter advances once. Pass ``split_rngs=False`` to get the
same numbers in every lane.

``scan``: object state with axis ``None`` or ``Carry`` is carried from one
iteration to the next (RNG counters and BatchNorm statistics keep advancing);
state with an int axis is sliced per iteration and the per-iteration results are
stacked back (scan over a stack of layers). The structure must not change inside.

Calls: the first call with a given structure traces twice (an abstract probe
learns the output structure and so each output array's axis, then the real map);
later eager calls with the same structure, axes and shapes reuse that map and its
out axes (``_MapEntry``), so ``nnx.pmap`` compiles once, like ``jax.pmap``.
``pmap`` (``misc.py``) is this machinery with ``jax.pmap`` as the map.

Sharding metadata (``sharding_names``, one entry per array axis) follows the
arrays: a Variable mapped into the transform along axis ``a`` sees its names
without entry ``a`` inside, and gets that entry back afterwards; a Variable
created inside gets ``transform_metadata[nnx.PARTITION_NAME]`` (default None)
inserted at its out axis, so ``nnx.get_partition_spec`` works on a stack. Only
Variables that carry ``sharding_names`` are touched, by rewriting their metadata
in the GraphDef: the lifted one inside, the collected one for the write-back.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _config, _errors, _graph, _tracking
from nnxlike._extract import TreeState
from nnxlike._filters import to_predicate
from nnxlike._graph import flatten, is_graph_node
from nnxlike._state import State
from nnxlike._transforms import _core
from nnxlike._variables import (
    PARTITION_NAME,
    RngKey,
    Variable,
    new_variable,
    normalize_sharding_names,
)


class _CarryType:
    """Marker for the carry argument/output of ``scan``."""

    def __repr__(self) -> str:
        return "nnx.Carry"


Carry = _CarryType()


class StateAxes(Mapping):
    """Per-filter axes for an object argument: ``StateAxes({nnx.Param: 0, ...: None})``.

    The first filter a Variable matches (by path and kind) gives its axis. A
    ``State`` whose leaves were replaced by axes also works: each path gets the
    axis stored at it. ``StateAxes`` is a read-only mapping from filters to axes,
    as in flax.nnx.

    >>> import nnxlike as nnx
    >>> axes = nnx.StateAxes({nnx.Param: 0, ...: None})
    >>> axes
    StateAxes({Param: 0, Ellipsis: None})
    >>> axes.map_prefix(("kernel",), nnx.Param(1.0)), axes[...]
    (0, None)
    """

    def __init__(self, mapping: Any, /):
        from nnxlike._state import State

        if isinstance(mapping, State):
            mapping = _path_filters(mapping)
        pairs = tuple(mapping.items() if isinstance(mapping, Mapping) else mapping)
        self.filters = tuple(f for f, _ in pairs)
        self.axes = tuple(a for _, a in pairs)
        self._preds = tuple(to_predicate(f) for f in self.filters)

    def axis_of(self, path: tuple, var: Any) -> Any:
        for pred, axis in zip(self._preds, self.axes):
            if pred(path, var):
                return axis
        raise _errors.StructureError(
            f"StateAxes: the Variable at {_errors.path_str(path)!r} "
            f"({type(var).__name__}) matches none of the filters {self.filters}. "
            "End the mapping with `...: None` (or an axis) to cover the rest."
        )

    def map_prefix(self, path: tuple, variable: Any) -> Any:
        """The axis of the Variable at ``path`` (the first filter it matches)."""
        return self.axis_of(path, variable)

    def items(self) -> Any:
        return zip(self.filters, self.axes)

    def __getitem__(self, key: Any) -> Any:
        return self.axes[self.filters.index(key)]

    def __iter__(self) -> Any:
        return iter(self.filters)

    def __len__(self) -> int:
        return len(self.filters)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StateAxes)
            and type(other) is type(self)
            and self.filters == other.filters
            and self.axes == other.axes
        )

    def __hash__(self) -> int:
        return hash((self.filters, self.axes))

    def __repr__(self) -> str:
        items = ", ".join(
            f"{getattr(f, '__name__', repr(f))}: {a!r}"
            for f, a in zip(self.filters, self.axes)
        )
        return f"StateAxes({{{items}}})"


class _PathIn:
    """Matches the Variables at the given paths (a State given to StateAxes)."""

    def __init__(self, paths: Iterable[tuple]):
        self.paths = frozenset(paths)

    def __call__(self, path: tuple, value: Any) -> bool:
        return tuple(path) in self.paths

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PathIn) and other.paths == self.paths

    def __hash__(self) -> int:
        return hash(self.paths)

    def __repr__(self) -> str:
        return f"PathIn({', '.join(map(repr, sorted(self.paths, key=repr)))})"


def _path_filters(state: Any) -> dict:
    """``{PathIn(paths): axis}`` from a State whose leaves are axes (flax's form)."""
    by_axis: dict = {}
    for path, value in state.flat_state():
        if isinstance(value, Variable):
            value = value.get_value()
        by_axis.setdefault(value, []).append(tuple(path))
    return {_PathIn(paths): axis for axis, paths in by_axis.items()}


def _per_arg(axes: Any, n: int, name: str) -> tuple:
    if isinstance(axes, (int, StateAxes, _CarryType)) or axes is None:
        return (axes,) * n
    axes = tuple(axes)
    if len(axes) != n:
        raise ValueError(
            f"{name}: in_axes has {len(axes)} entries but the function got {n} "
            "positional arguments; give one axis per argument (or a single int)."
        )
    return axes


def _assign_axes(lifted: _core.Lifted, args: tuple, in_axes: tuple, name: str):
    """Axis per Variable (lifted order) and per plain JAX leaf (lifted order)."""
    var_index = lifted.index_by_id()
    var_axis: list = [None] * len(lifted.flat.leaves)
    assigned = [False] * len(var_axis)
    seen_at: dict[int, list] = {}  # Variable index -> [(path, axis)], for errors
    conflicts: list[int] = []
    leaf_axis: list = []
    for argnum, (arg, arg_axes) in enumerate(zip(args, in_axes)):
        leaves = jtu.tree_flatten_with_path(arg, is_leaf=is_graph_node)[0]
        if isinstance(arg_axes, (tuple, list, dict)):
            # A prefix tree inside the argument, as jax allows: (0, (None, 0)).
            per_leaf = _broadcast_prefix(arg_axes, arg)
        else:
            per_leaf = [arg_axes] * len(leaves)
        for (kp, leaf), axis in zip(leaves, per_leaf):
            if isinstance(axis, _graph.Object):  # nnx.prefix(..., graph=False)
                axis = _object_prefix(axis)
            if is_graph_node(leaf):
                flat = flatten(leaf)
                base = (argnum, *_jax_path(kp))
                for path, v in zip(flat.graphdef.paths, flat.leaves):
                    i = var_index[id(v)]
                    ax = axis.axis_of(path, v) if isinstance(axis, StateAxes) else axis
                    seen_at.setdefault(i, []).append(((*base, *path), ax))
                    if not assigned[i]:
                        var_axis[i] = ax
                        assigned[i] = True
                    elif var_axis[i] != ax and i not in conflicts:
                        # One Variable reached through two arguments with two
                        # axes: mapping it both ways is impossible, and taking
                        # the first silently would be wrong.
                        conflicts.append(i)
            else:
                if isinstance(axis, StateAxes):
                    raise TypeError(
                        f"{name}: StateAxes applies to object arguments (Modules, "
                        f"Rngs, Variables); got a plain {type(leaf).__name__}. Use "
                        "an int or None for array arguments."
                    )
                leaf_axis.append(axis)
    if conflicts:
        nodes = [(type(lifted.flat.leaves[i]).__name__, seen_at[i]) for i in conflicts]
        _raise_inconsistent(name, nodes)
    return var_axis, leaf_axis


def _raise_inconsistent(name: str, nodes: list) -> None:
    """flax's "Inconsistent aliasing" error: ``nodes`` is [(kind, [(path, axis)])]."""
    lines = []
    for kind, paths_axes in nodes:
        lines.append(f"Node: {kind}")
        lines += [
            f"  {'/'.join(map(str, p)) if p else '<root>'}: {a}" for p, a in paths_axes
        ]
    fn = name.removeprefix("nnx.")
    raise ValueError(
        _errors.INCONSISTENT_ALIASING.format(fn=fn, nodes="\n".join(lines))
    )


def _broadcast_prefix(axes: Any, out: Any) -> list:
    """One axis per leaf of ``out`` (graph nodes as leaves) from a prefix tree."""
    if isinstance(axes, (int, _CarryType)) or axes is None:
        return [axes] * len(jtu.tree_leaves(out, is_leaf=is_graph_node))
    # Each prefix leaf expands to one axis per leaf of its subtree. The expansion
    # is wrapped in a tuple subclass so that lists inside ``axes`` itself (an
    # ``in_axes=([0, None],)`` prefix) are not mistaken for expansions.
    per_sub = jax.tree.map(
        lambda ax, sub: _Expanded(
            [ax] * len(jtu.tree_leaves(sub, is_leaf=is_graph_node))
        ),
        axes,
        out,
        is_leaf=lambda x: x is None or is_graph_node(x),
    )
    return list(
        itertools.chain.from_iterable(
            jtu.tree_leaves(per_sub, is_leaf=lambda x: isinstance(x, _Expanded))
        )
    )


class _Expanded(tuple):
    """Not a registered pytree node type: a leaf for ``jax.tree`` functions."""

    __slots__ = ()


def _out_axes_for(
    static: tuple,
    lifted: _core.Lifted,
    var_axis: list,
    out_leaf_axes: list,
    default_new: Any,
):
    """Axes for collected arrays: origin Variables keep their input axis."""
    _, origins, out_treedef, out_graph_pos, _, leaf_objs = static
    lifted_leaf_of_obj = {}
    objs = lifted.flat.objects
    var_pos = {id(v): i for i, v in enumerate(lifted.flat.leaves)}
    for obj_i, obj in enumerate(objs):
        if id(obj) in var_pos:
            lifted_leaf_of_obj[obj_i] = var_pos[id(obj)]
    axes = []
    for obj_i in leaf_objs:
        origin = origins[obj_i] if obj_i >= 0 else -1
        if origin >= 0 and origin in lifted_leaf_of_obj:
            axes.append(var_axis[lifted_leaf_of_obj[origin]])
        else:
            axes.append(default_new)
    return axes


# -- sharding metadata of stacked Variables ----------------------------------------

_NO_METADATA: Mapping = MappingProxyType({})
_NAMES = "sharding_names"


def _partition_name(transform_metadata: Mapping, name: str) -> dict[str, Any]:
    """``{metadata key: entry for the new axis}`` from ``transform_metadata``.

    ``nnx.PARTITION_NAME`` names the axis in ``sharding_names`` (always present,
    default None); every other key is a Variable metadata name whose per-axis
    tuple gets the given entry, as in flax.nnx (e.g. ``{"nickname": "nick"}``
    for Variables created with ``nickname=("in", "out")``).
    """
    bad = [k for k in transform_metadata if not isinstance(k, str)]
    if bad:
        raise TypeError(
            f"nnx.{name}: transform_metadata keys are Variable metadata names "
            f"(str) or nnx.PARTITION_NAME; got {bad!r}. Example: "
            f"`transform_metadata={{nnx.PARTITION_NAME: 'layers'}}`."
        )
    # Any other key is taken as metadata, so a misspelt partition key would be
    # silently ignored: refuse keys that look like one.
    typo = [k for k in transform_metadata if k != PARTITION_NAME and "partition" in k]
    if typo:
        raise ValueError(
            f"nnx.{name}: transform_metadata key(s) {typo} look like the partition "
            f"key, which is nnx.PARTITION_NAME ({PARTITION_NAME!r}): "
            f"`transform_metadata={{nnx.PARTITION_NAME: 'layers'}}`. Other keys "
            f"name Variable metadata tuples that get the new axis."
        )
    entry = transform_metadata.get(PARTITION_NAME)
    where = f"nnx.{name}(transform_metadata={{nnx.PARTITION_NAME: ...}})"
    out = {_NAMES: normalize_sharding_names((entry,), where)[0]}
    for key, value in transform_metadata.items():
        if key != PARTITION_NAME:
            out[key] = value
    return out


def _map_vars(tree: tuple, fn: Callable) -> tuple:
    """``tree`` with ``fn(leaf_index, entry)`` applied to every VAR entry.

    Subtrees where nothing changed are the same tuples (no copy).
    """
    pos = 0

    def walk(d: tuple) -> tuple:
        nonlocal pos
        kind = d[0]
        if kind == _graph.VAR:
            pos += 1
            return fn(pos - 1, d)
        if kind == _graph.LEAF:
            pos += 1
            return d
        if kind != _graph.NODE:
            return d
        if d[1] in (list, tuple):
            new = tuple([walk(c) for c in d[3]])
            same = all(n is c for n, c in zip(new, d[3]))
        else:
            new = tuple([(k, walk(c)) for k, c in d[3]])
            same = all(n[1] is c[1] for n, c in zip(new, d[3]))
        return d if same else (d[0], d[1], d[2], new)

    return walk(tree)


def _with_meta(d: tuple, updates: dict) -> tuple:
    meta = tuple((k, updates.get(k, m)) for k, m in d[3])
    return (d[0], d[1], d[2], meta)


def _strip_mapped_names(
    lifted: _core.Lifted, var_axis: list, keys: Iterable[str] = (_NAMES,)
) -> tuple:
    """Remove the mapped axis from the per-axis metadata (``keys``) seen inside.

    Returns the Lifted to rebuild and collect with (``lifted`` itself when no
    mapped Variable has such metadata) and ``{input object index: {key: (axis,
    entry)}}``. Tuples whose length is not the array's rank are left as they are.
    """
    removed: dict[int, dict] = {}  # leaf index -> {key: (axis, entry)}
    leaves = lifted.flat.leaves
    for i, a in enumerate(var_axis):
        if not isinstance(a, int):
            continue
        meta = getattr(leaves[i], "_metadata", {})
        ndim = np.ndim(getattr(leaves[i], "_raw_value", None))
        for key in keys:
            names = meta.get(key)
            if ndim == 0 or not isinstance(names, tuple) or len(names) != ndim:
                continue
            removed.setdefault(i, {})[key] = (a % ndim, names[a % ndim])
    if not removed:
        return lifted, {}

    def strip(j: int, d: tuple) -> tuple:
        r = removed.get(j)
        if r is None:
            return d
        meta = dict(d[3])
        return _with_meta(
            d, {k: meta[k][:ax] + meta[k][ax + 1 :] for k, (ax, _) in r.items()}
        )

    flat = lifted.flat
    inner = _graph.GraphDef(_map_vars(flat.graphdef.tree, strip), flat.graphdef.paths)
    obj_of = {id(o): k for k, o in enumerate(flat.objects)}
    by_obj = {obj_of[id(leaves[i])]: r for i, r in removed.items()}
    stripped = _core.Lifted(
        lifted.treedef,
        lifted.leaves,
        lifted.graph_pos,
        lifted.nodes,
        _graph.Flat(inner, flat.leaves, flat.objects),
    )
    return stripped, by_obj


def _restack_names(
    static: tuple, arr_axes: list, shapes: list, removed: dict, new_entries: dict
) -> tuple:
    """``static`` with the out axes inserted into the collected per-axis metadata.

    A Variable mapped in gets back the entries removed on the way in; one created
    inside gets ``new_entries[key]`` (``_partition_name``'s result) at its out
    axis, for each key whose tuple matches the per-lane rank (read from the
    probe's ``shapes``).
    """
    graphdef, origins = static[0], static[1]

    def add(j: int, d: tuple) -> tuple:
        if not d[3]:
            return d
        meta = dict(d[3])
        origin = origins[d[2]]
        updates = {}
        if origin >= 0:
            for key, (ax, entry) in removed.get(origin, {}).items():
                names = meta.get(key)
                if isinstance(names, tuple):
                    updates[key] = names[:ax] + (entry,) + names[ax:]
        else:
            ax = arr_axes[j]
            rank = len(shapes[j].shape) - 1  # the probe stacked along axis 0
            if not isinstance(ax, int):
                return d
            ax %= rank + 1
            for key, entry in new_entries.items():
                names = meta.get(key)
                if isinstance(names, tuple) and len(names) == rank:
                    updates[key] = names[:ax] + (entry,) + names[ax:]
        return _with_meta(d, updates) if updates else d

    tree = _map_vars(graphdef.tree, add)
    if tree is graphdef.tree:
        return static
    return (_graph.GraphDef(tree, graphdef.paths), *static[1:])


def _as_positional(name: str, f: Callable, args: tuple, kwargs: dict) -> tuple:
    """Keyword arguments bound to their positional parameters (as flax does), so
    in_axes, which describes positional arguments, covers them."""
    try:
        bound = inspect.signature(f).bind(*args, **kwargs)
    except (TypeError, ValueError):
        _no_kwargs(name, f, kwargs)
    if bound.kwargs:  # keyword-only or **kwargs parameters: no position
        _no_kwargs(name, f, bound.kwargs)
    return tuple(bound.args)


def _no_kwargs(name: str, f: Callable, kwargs: dict) -> None:
    fname = getattr(f, "__qualname__", repr(f))
    raise TypeError(
        f"nnx.{name}({fname}): got keyword argument(s) {sorted(kwargs)}, but "
        f"in_axes only describes positional arguments. Pass them positionally "
        f"(and give each an in_axes entry), or bind constants first with "
        f"functools.partial({fname}, ...)."
    )


def vmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    split_rngs: bool = True,
    transform_metadata: Mapping = _NO_METADATA,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vmap`` over functions taking objects (see the module note).

    ``transform_metadata={nnx.PARTITION_NAME: "layers"}`` names the new axis in
    the ``sharding_names`` of the Variables the function creates (a stack of
    layers sharded along "layers"). Without it the new axis is named None, so the
    names still have one entry per array axis (flax.nnx leaves them one short).
    A Variable mapped in along axis ``a`` sees its names without entry ``a``
    inside the function and has them as before afterwards.

    An ensemble of 4 models, created in one call:

    >>> import nnxlike as nnx
    >>> @nnx.vmap(in_axes=None, out_axes=0, axis_size=4)
    ... def make(rngs):
    ...     return nnx.Linear(2, 3, rngs=rngs)
    >>> ensemble = make(nnx.Rngs(0))
    >>> ensemble.kernel.shape
    (4, 2, 3)
    >>> bool((ensemble.kernel.value[0] != ensemble.kernel.value[1]).any())
    True
    """
    if f is None:
        return functools.partial(
            vmap,
            in_axes=in_axes,
            out_axes=out_axes,
            axis_name=axis_name,
            axis_size=axis_size,
            spmd_axis_name=spmd_axis_name,
            split_rngs=split_rngs,
            transform_metadata=transform_metadata,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "vmap")

    def make_map(pure: Callable, in_ax: Any, out_ax: Any, probe: bool) -> Callable:
        return jax.vmap(
            pure,
            in_axes=in_ax,
            out_axes=out_ax,
            axis_name=axis_name,
            axis_size=axis_size,
            spmd_axis_name=spmd_axis_name,
        )

    return map_transform(
        f,
        "vmap",
        make_map,
        in_axes=in_axes,
        out_axes=out_axes,
        axis_size=axis_size,
        split_rngs=split_rngs,
        transform_metadata=transform_metadata,
        graph=graph,
        graph_updates=graph_updates,
    )


def map_transform(
    f: Callable,
    fn: str,
    make_map: Callable,
    *,
    in_axes: Any,
    out_axes: Any,
    axis_size: int | None,
    split_rngs: bool,
    transform_metadata: Mapping,
    graph: bool | None,
    graph_updates: bool | None,
) -> Callable:
    """The lifted ``vmap``/``pmap``: ``make_map(pure, in_axes, out_axes, probe)``
    returns the JAX map (``probe=True``: the abstract first pass, always a vmap)."""
    partition_name = _partition_name(transform_metadata, fn)
    # Variable.add_axis/remove_axis hooks run when a partition name is given
    # (flax.nnx's rule), with that name.
    hook = (
        (transform_metadata[PARTITION_NAME],)
        if PARTITION_NAME in transform_metadata
        else None
    )
    _check_prefix(in_axes, "in_axes", fn, graph, graph_updates)
    _check_prefix(out_axes, "out_axes", fn, graph, graph_updates)
    # Eager calls with the structure, axes and shapes of an earlier call reuse
    # its JAX map and out axes (see _MapEntry): no probe trace, and jax.pmap's
    # compiled program is reused instead of compiled again on every call.
    cache: dict = {}

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = _as_positional(fn, f, args, kwargs)
        if not _config.resolve(graph, graph_updates)[0]:
            _check_no_aliases(fn, args)
        axes = _per_arg(in_axes, len(args), fn)
        lifted = _core.Lifted.from_args(
            args, graph=graph, graph_updates=graph_updates, fn=fn
        )
        var_axis, leaf_axis = _assign_axes(lifted, args, axes, fn)
        lifted, removed = _strip_mapped_names(lifted, var_axis, partition_name)
        keys = [i for i, v in enumerate(lifted.flat.leaves) if isinstance(v, RngKey)]
        # A broadcast key is folded with the lane index (lanes draw different
        # numbers), unless some key is mapped: then the caller splits streams
        # explicitly (flax's nnx.split_rngs) and the others stay broadcast.
        explicit = any(var_axis[i] is not None for i in keys)
        fold = [i for i in keys if split_rngs and not explicit and var_axis[i] is None]
        jleaves = _jax_leaves(lifted)
        # The lane index comes in as a mapped input (not jax.lax.axis_index), so
        # no axis name is needed and JAX's out_axes errors keep their paths.
        lanes = (
            _lanes(axis_size, lifted, var_axis, leaf_axis, jleaves) if fold else None
        )
        key = None
        if not _tracking.under_trace():
            key = _cache_key(lifted, var_axis, leaf_axis, fold, lanes, jleaves)
            entry = cache.get(key)
            if entry is not None:
                out = entry.call(lifted, removed, partition_name, hook, jleaves, lanes)
                if out is not _MISS:
                    return out
                del cache[key]  # the function's output structure changed
        statics: list = []
        leaf_axes_box: list = []
        aliases_box: list = []

        def pure(arrays, jleaves, lanes):
            arrays = list(arrays)
            originals = {i: arrays[i] for i in fold}
            if lanes is not None:
                for i in fold:
                    arrays[i] = _fold_key(arrays[i], lanes)
            leaves = _merge_jax_leaves(lifted, jleaves)
            tree, copies = lifted.rebuild(arrays, leaves)
            if hook is not None:
                _remove_axis_hooks(lifted, copies, var_axis, hook[0])
            out = f(*tree)
            # One entry per box, the latest trace's (a cached map traces again).
            aliases_box[:] = [_output_aliases(fn, lifted, copies, out)]
            collected = _core.collect(lifted, copies, out)
            statics.append(collected.static())
            del statics[:-1]
            leaf_axes_box[:] = [_broadcast_prefix(out_axes, out)]
            new_arrays = list(collected.arrays)
            if fold:  # give back the caller's unfolded keys
                origin_of = collected.origins
                fold_objs = {_obj_index_of_leaf(lifted, i): i for i in fold}
                for j, obj_i in enumerate(collected.leaf_objs):
                    src = origin_of[obj_i] if obj_i >= 0 else -1
                    if src in fold_objs:
                        new_arrays[j] = originals[fold_objs[src]]
            return new_arrays, collected.out_leaves

        in_ax = (list(var_axis), list(leaf_axis), None if lanes is None else 0)
        # First pass (abstract) learns the output structure so that each output
        # array gets the right axis; it costs one extra trace, not a run.
        probe = make_map(pure, in_ax, 0, True)
        probe_arrays, _ = jax.eval_shape(probe, lifted.arrays(), jleaves, lanes)
        static = statics[-1]
        out_leaf_axes = _graph_as_none(leaf_axes_box[-1], static)
        _check_returned_axes(
            fn, lifted, var_axis, aliases_box[-1], leaf_axes_box[-1], static[3]
        )
        default_new = out_axes if isinstance(out_axes, int) else 0
        arr_axes = _out_axes_for(static, lifted, var_axis, out_leaf_axes, default_new)
        arr_axes = _new_var_axes(static, arr_axes, leaf_axes_box[-1])
        arr_axes = _arg_axes_for_new(static, arr_axes, _node_axes(args, axes))
        mapped = make_map(pure, in_ax, (arr_axes, out_leaf_axes), False)
        try:
            new_arrays, out_leaves = mapped(lifted.arrays(), jleaves, lanes)
        except ValueError as e:
            _explain_out_axes(fn, e, statics[-1])
            raise
        if key is not None:
            if len(cache) >= _CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[key] = _MapEntry(mapped, statics, arr_axes, probe_arrays)
        return _finish(
            lifted,
            statics[-1],
            arr_axes,
            probe_arrays,
            removed,
            partition_name,
            hook,
            new_arrays,
            out_leaves,
        )

    return wrapper


def _finish(
    lifted,
    static,
    arr_axes,
    probe_arrays,
    removed,
    partition_name,
    hook,
    arrays,
    leaves,
) -> Any:
    if not static[4]:  # structure changed: the GraphDef carries the metadata
        static = _restack_names(static, arr_axes, probe_arrays, removed, partition_name)
    out = _core.write_back(lifted, static, arrays, leaves)
    if hook is not None:
        _add_axis_hooks(lifted, static, arr_axes, out, hook[0])
    return out


def _remove_axis_hooks(lifted, copies, var_axis: list, name: Any) -> None:
    """``remove_axis(axis, name)`` on each copy of a Variable mapped in."""
    pos = {id(v): j for j, v in enumerate(lifted.flat.leaves)}
    leaf_of_obj = {
        k: pos[id(o)] for k, o in enumerate(lifted.flat.objects) if id(o) in pos
    }
    for _, v in _graph.iter_graph(copies.nodes, graph=True):
        if isinstance(v, Variable) and not isinstance(v, _core.RawSlot):
            j = leaf_of_obj.get(copies.origin.get(id(v)))
            if j is not None and isinstance(var_axis[j], int):
                v.remove_axis(var_axis[j], name)


def _add_axis_hooks(lifted, static, arr_axes: list, out: Any, name: Any) -> None:
    """``add_axis(axis, name)`` on each Variable the map stacked, once written back.

    The written-back objects (the arguments, then the output's objects) have the
    collected structure, so their Variables line up with ``arr_axes``.
    """
    if static[4]:
        leaves = lifted.flat.leaves
    else:
        out_nodes = tuple(
            x for x in jtu.tree_leaves(out, is_leaf=is_graph_node) if is_graph_node(x)
        )
        leaves = flatten((lifted.nodes, out_nodes)).leaves
    for v, ax in zip(leaves, arr_axes):
        if isinstance(v, Variable) and not isinstance(v, _core.RawSlot):
            if isinstance(ax, int):
                v.add_axis(ax, name)


_CACHE_SIZE = 8
_MISS = object()


class _MapEntry:
    """A JAX map built for one call structure, reused by later eager calls.

    Its pure function closes over the first call's ``Lifted`` only for the
    structure (GraphDef, treedef, positions), which the cache key pins; the
    arrays always come from the current call. ``jax.vmap`` traces again on every
    call: if the output structure then differs from the cached one (Python
    state in the function), the entry is dropped and the call redone fully.
    ``jax.pmap`` reuses its compiled program, as ``jax.jit`` does.
    """

    __slots__ = ("mapped", "statics", "static", "arr_axes", "probe_arrays")

    def __init__(self, mapped, statics, arr_axes, probe_arrays):
        self.mapped, self.statics = mapped, statics  # statics: [latest trace's]
        self.static = statics[-1]
        self.arr_axes, self.probe_arrays = arr_axes, probe_arrays

    def _changed(self) -> bool:
        traced = self.statics[-1]
        return traced is not None and traced != self.static

    def call(self, lifted, removed, partition_name, hook, jleaves, lanes) -> Any:
        self.statics[:] = [None]
        try:
            new_arrays, out_leaves = self.mapped(lifted.arrays(), jleaves, lanes)
        except (ValueError, TypeError):
            if self._changed():  # the cached out axes no longer fit
                return _MISS
            raise
        if self._changed():
            return _MISS
        return _finish(
            lifted,
            self.static,
            self.arr_axes,
            self.probe_arrays,
            removed,
            partition_name,
            hook,
            new_arrays,
            out_leaves,
        )


def _cache_key(lifted, var_axis, leaf_axis, fold, lanes, jleaves) -> Any:
    """Everything the map and its out axes depend on, or None if unhashable."""
    avals = tuple(
        (np.shape(x), getattr(x, "dtype", type(x)))
        for x in itertools.chain(lifted.arrays(), jleaves)
    )
    key = (
        lifted.flat.graphdef,
        lifted.treedef,
        lifted.graph_pos,
        lifted.mode,
        tuple(var_axis),
        tuple(leaf_axis),
        tuple(fold),
        None if lanes is None else lanes.shape,
        avals,
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check_prefix(
    prefix: Any, name: str, fn: str, graph: bool | None, graph_updates: bool | None
) -> None:
    """Refuse, when decorating, prefixes flax.nnx refuses (with its key phrases)."""
    graph, graph_updates = _config.resolve(graph, graph_updates)

    def is_leaf(x: Any) -> bool:
        return x is None or isinstance(x, (Variable, StateAxes)) or is_graph_node(x)

    for kp, leaf in jtu.tree_flatten_with_path(prefix, is_leaf=is_leaf)[0]:
        info = dict(type=type(leaf).__name__, path=jtu.keystr(kp), name=name, fn=fn)
        if isinstance(leaf, Variable):
            raise ValueError(_errors.PREFIX_VARIABLE.format(**info))
        if type(leaf) is StateAxes and not (graph and graph_updates):
            raise ValueError(_errors.PREFIX_STATE_AXES.format(**info))
        # An object whose leaves are axes (nnx.prefix(..., graph=False)) is a
        # prefix in either mode; one holding Variables is a mistake.
        if graph and is_graph_node(leaf) and _holds_variables(leaf):
            raise ValueError(_errors.PREFIX_GRAPH_NODE.format(**info))


def _holds_variables(node: Any) -> bool:
    return any(isinstance(v, Variable) for _, v in _graph.iter_graph(node, graph=True))


def _var_text(v: Variable) -> str:
    shape = getattr(v._raw_value, "shape", None)
    return f"{type(v).__name__}" + (f" of shape {tuple(shape)}" if shape else "")


def _check_no_aliases(fn: str, args: tuple) -> None:
    """Tree mode: one Variable twice among the arguments is refused (as flax)."""
    seen: dict[int, str] = {}
    leaves = jtu.tree_flatten_with_path(args, is_leaf=lambda x: isinstance(x, Variable))
    for kp, leaf in leaves[0]:
        if not isinstance(leaf, Variable):
            continue
        path = "args" + jtu.keystr(kp)
        if id(leaf) in seen:
            raise ValueError(
                _errors.VARIABLE_ALIASING.format(
                    var=_var_text(leaf), first=seen[id(leaf)], second=path, fn=fn
                )
            )
        seen[id(leaf)] = path


def _output_aliases(fn: str, lifted: _core.Lifted, copies: _core.Copies, out: Any):
    """Input Variables the function returns: ``[(out node, path, lifted index)]``.

    Refuses a returned Variable the function captured instead of getting it as
    an argument, and (without graph updates, as flax) any returned input one.
    """
    nodes = [x for x in jtu.tree_leaves(out, is_leaf=is_graph_node) if is_graph_node(x)]
    if not nodes:
        return []
    found = []
    trace = _tracking.get_trace_state()
    pos = {id(v): j for j, v in enumerate(lifted.flat.leaves)}
    for k, node in enumerate(nodes):
        for path, v in _graph.iter_graph(node, graph=True):
            if not isinstance(v, Variable) or isinstance(v, _core.RawSlot):
                continue
            where = f"out[{k}]" + "".join(f"[{p!r}]" for p in path)
            o = copies.origin.get(id(v))
            if o is None:
                if v._trace_state != trace:
                    phrase = (
                        "Cannot extract graph node from different trace level:"
                        if lifted.mode is None
                        else "Cannot return captured Variable:"
                    )
                    raise ValueError(
                        _errors.CAPTURED_RETURN.format(
                            fn=fn, phrase=phrase, var=_var_text(v), path=where
                        )
                    )
                continue
            j = pos[id(lifted.flat.objects[o])]
            if lifted.mode is not None:
                first = "args" + "".join(
                    f"[{p!r}]" for p in lifted.flat.graphdef.paths[j]
                )
                raise ValueError(
                    _errors.VARIABLE_ALIASING.format(
                        var=_var_text(v), first=first, second=where, fn=fn
                    )
                )
            found.append((k, path, j))
    return found


def _check_returned_axes(
    fn: str,
    lifted: _core.Lifted,
    var_axis: list,
    aliases: list,
    leaf_axes: list,
    out_graph_pos: tuple,
) -> None:
    """A returned input Variable must get back the axis it came in with."""
    bad: dict[int, list] = {}
    for k, path, j in aliases:
        ax = leaf_axes[out_graph_pos[k]]
        if isinstance(ax, _graph.Object):
            ax = _object_prefix(ax)
        if isinstance(ax, StateAxes):
            ax = ax.axis_of(path, lifted.flat.leaves[j])
        if ax != var_axis[j]:
            entry = bad.setdefault(j, [(lifted.flat.graphdef.paths[j], var_axis[j])])
            entry.append((("out", k, *path), ax))
    if bad:
        _raise_inconsistent(
            fn, [(type(lifted.flat.leaves[j]).__name__, pa) for j, pa in bad.items()]
        )


def _lanes(
    axis_size: int | None,
    lifted: _core.Lifted,
    var_axis: list,
    leaf_axis: list,
    jleaves: list,
) -> jax.Array | None:
    """``arange(lanes)``: the lane index each broadcast RNG key is folded with."""
    n = axis_size
    if n is None:
        arrays = [v._raw_value for v in lifted.flat.leaves]
        for x, a in itertools.chain(zip(arrays, var_axis), zip(jleaves, leaf_axis)):
            if isinstance(a, int) and np.ndim(x) > 0:
                n = np.shape(x)[a]
                break
    if n is None:
        return None  # nothing is mapped: JAX says so
    return jax.numpy.arange(n, dtype=np.uint32)


def _explain_out_axes(fn: str, error: ValueError, static: tuple) -> None:
    """JAX's "got axis spec None but output was batched" names the Variable."""
    m = re.match(r"at vmap out_axes\[0\]\[(\d+)\], (got axis spec .*)", str(error))
    if m is None:
        return
    j = int(m.group(1))
    graphdef, _origins, _, _, _, leaf_objs = static
    if j >= len(graphdef.paths):
        return
    path = graphdef.paths[j]
    where = f"argument {path[1]}" if path[0] == 0 else f"returned object {path[1]}"
    raise ValueError(
        f"at vmap ({fn}): the Variable at {_errors.path_str(path[2:])!r} of "
        f"{where} {m.group(2)}. It came in broadcast (axis None) but its new "
        "value differs per lane; give it an axis (e.g. `nnx.StateAxes({Kind: 0, "
        "...: None})`) or make its update the same in every lane."
    ) from error


def _graph_as_none(leaf_axes: list, static: tuple) -> list:
    # Output objects leave a None placeholder among the plain output leaves.
    graph_pos = set(static[3])
    return [None if i in graph_pos else a for i, a in enumerate(leaf_axes)]


def _new_var_axes(static: tuple, arr_axes: list, leaf_axes: list) -> list:
    """New Variables inside an output object take that output's axis."""
    graphdef, origins, _, out_graph_pos, _, leaf_objs = static
    if not out_graph_pos:
        return arr_axes
    # The collected graph is (copies, out_nodes); find which out node owns each
    # new Variable by walking the out part of the GraphDef.
    owner: dict[int, int] = {}
    out_children = graphdef.tree[3][1][3]
    for k, child in enumerate(out_children):
        for idx in _indices_in(child):
            owner.setdefault(idx, k)
    axes = list(arr_axes)
    var_defs: dict[int, tuple] = {}
    for j, obj_i in enumerate(leaf_objs):
        if obj_i >= 0 and origins[obj_i] < 0 and obj_i in owner:
            ax = leaf_axes[out_graph_pos[owner[obj_i]]]
            if isinstance(ax, _graph.Object):  # nnx.prefix(..., graph=False)
                ax = _object_prefix(ax)
            if isinstance(ax, StateAxes):  # out_axes=StateAxes({...}) per Variable
                if not var_defs:
                    var_defs = _var_defs(graphdef.tree)
                cls, meta = var_defs[obj_i]
                path = graphdef.paths[j][2:]  # inside (copies, out_nodes)[1][k]
                ax = ax.axis_of(path, new_variable(cls, None, dict(meta)))
            axes[j] = ax
    return axes


def _var_defs(d: tuple, out: dict | None = None) -> dict[int, tuple]:
    """``{variable index: (kind, metadata)}`` for every Variable of a GraphDef."""
    from nnxlike import _graph

    out = {} if out is None else out
    kind = d[0]
    if kind == _graph.VAR:
        out[d[2]] = (d[1], d[3])
    elif kind == _graph.NODE:
        for c in d[3]:
            _var_defs(c if d[1] in (list, tuple) else c[1], out)
    elif kind == _graph.PYTREE:
        for _, c in d[2]:
            _var_defs(c, out)
    return out


def _indices_in(d: tuple) -> list:
    """Every node and Variable index inside a GraphDef subtree."""
    from nnxlike import _graph

    kind = d[0]
    if kind == _graph.VAR:
        return [d[2]]
    if kind != _graph.NODE:
        return []
    cls = d[1]
    out = [d[2]] if d[2] >= 0 else []
    for c in d[3]:
        out += _indices_in(c if cls in (list, tuple) else c[1])
    return out


def _obj_index_of_leaf(lifted: _core.Lifted, leaf_i: int) -> int:
    target = lifted.flat.leaves[leaf_i]
    for k, obj in enumerate(lifted.flat.objects):
        if obj is target:
            return k
    return -1


def _fold_key(key: jax.Array, lane: jax.Array) -> jax.Array:
    if key.ndim == 0:
        return jax.random.fold_in(key, lane)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, lane)


def _jax_leaves(lifted: _core.Lifted) -> list:
    return [x for i, x in enumerate(lifted.leaves) if i not in lifted.graph_pos]


def _merge_jax_leaves(lifted: _core.Lifted, jleaves: Any) -> list:
    leaves = list(lifted.leaves)
    it = iter(jleaves)
    for i in range(len(leaves)):
        if i not in lifted.graph_pos:
            leaves[i] = next(it)
    return leaves


def _jax_path(keypath: tuple) -> tuple:
    """A JAX key path as an nnx path (attribute names, keys, indices)."""
    return tuple(_graph._key_of(k) for k in keypath)


def _object_prefix(prefix: Any) -> StateAxes:
    """An object-shaped prefix (``nnx.prefix`` in tree mode) as per-path axes."""
    leaves = jtu.tree_flatten_with_path(prefix, is_leaf=lambda x: x is None)[0]
    return _PathAxes({_jax_path(kp): v for kp, v in leaves})


class _PathAxes(StateAxes, TreeState):
    """Axes chosen per Variable path (what ``nnx.prefix`` builds for an object).

    flax's ``TreeState``: allowed without graph updates, unlike a ``StateAxes``.
    """

    def __init__(self, by_path: dict):
        self.by_path = by_path
        self.filters, self.axes, self._preds = (), (), ()

    @property
    def state(self) -> Any:  # TreeState's view: the axes as a State by path
        return State.from_flat(tuple(self.by_path), tuple(self.by_path.values()))

    def axis_of(self, path: tuple, var: Any) -> Any:
        try:
            return self.by_path[path]
        except KeyError:
            raise _errors.StructureError(
                f"nnx.prefix: no axis for the Variable at {_errors.path_str(path)!r}: "
                "the prefix was computed for another object. Compute it from the "
                "objects passed to the transform, in the same order."
            ) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PathAxes) and other.by_path == self.by_path

    def __hash__(self) -> int:
        return hash(tuple(self.by_path.items()))

    def __repr__(self) -> str:
        return f"prefix({self.by_path!r})"


def prefix(node: Any, filter_map: Any, /, *, graph: bool | None = None) -> Any:
    """In-axes (or out-axes) for ``node``: ``filter_map(path, leaf)`` per leaf.

    ``filter_map`` is a callable ``(path, leaf) -> axis`` or a mapping from
    filters to axes (the first matching filter wins). The result has the shape of
    ``node`` (containers are kept; each object becomes per-path axes), so it can
    be passed as an ``in_axes`` entry of ``nnx.vmap``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> d = {"a": nnx.Param(jnp.array(2)), "b": nnx.BatchStat(jnp.arange(5))}
    >>> axes = nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0})
    >>> axes
    {'a': None, 'b': 0}
    >>> nnx.vmap(lambda d: d["a"][...] * d["b"][...], in_axes=(axes,))(d).tolist()
    [0, 2, 4, 6, 8]
    """
    if callable(filter_map) and not isinstance(filter_map, Mapping):
        axis_for = filter_map
    else:
        preds = [(to_predicate(f), a) for f, a in dict(filter_map).items()]

        def axis_for(path: tuple, leaf: Any) -> Any:
            for pred, a in preds:
                if pred(path, leaf):
                    return a
            raise _errors.StructureError(
                f"nnx.prefix: No filter matched the leaf at "
                f"{_errors.path_str(path)!r} ({type(leaf).__name__}); filters: "
                f"{list(dict(filter_map))}. End the mapping with `...: None`."
            )

    if not _config.resolve(graph, None)[0]:
        # Tree mode: a pytree of the same structure with every Variable (and
        # array) replaced by its axis, usable as in_axes of jax.vmap as well.
        _graph.check_tree(node, "prefix")
        return jtu.tree_map_with_path(
            lambda kp, x: axis_for(_jax_path(kp), x),
            node,
            is_leaf=lambda x: isinstance(x, Variable),
        )

    def visit(x: Any, path: tuple) -> Any:
        if isinstance(x, _graph.Object):
            flat = flatten(x)
            return _PathAxes(
                {
                    p: axis_for((*path, *p), v)
                    for p, v in zip(flat.graphdef.paths, flat.leaves)
                }
            )
        if isinstance(x, (list, tuple)):
            return type(x)(visit(v, (*path, i)) for i, v in enumerate(x))
        if isinstance(x, dict):
            return {k: visit(v, (*path, k)) for k, v in x.items()}
        return axis_for(path, x)

    return visit(node, ())


def _node_axes(args: tuple, axes: tuple) -> list:
    """The in_axes entry of each graph node of the arguments (lifted order)."""
    out = []
    for arg, arg_axes in zip(args, axes):
        leaves = jtu.tree_leaves(arg, is_leaf=is_graph_node)
        if isinstance(arg_axes, (tuple, list, dict)):
            per_leaf = _broadcast_prefix(arg_axes, arg)
        else:
            per_leaf = [arg_axes] * len(leaves)
        for leaf, axis in zip(leaves, per_leaf):
            if is_graph_node(leaf):
                if isinstance(axis, _graph.Object):  # nnx.prefix(..., graph=False)
                    axis = _object_prefix(axis)
                out.append(axis)
    return out


def _arg_axes_for_new(static: tuple, arr_axes: list, node_axes: list) -> list:
    """A Variable created inside an argument given a ``StateAxes`` takes the axis
    of the filter it matches (flax splits the arguments after the call with their
    in_axes): ``vmap(in_axes=(StateAxes({nnx.Param: 0, ...: None}), ...))`` on an
    ``__init__`` stacks the new Params and leaves the other new state unmapped."""
    if not any(isinstance(a, StateAxes) for a in node_axes):
        return arr_axes
    graphdef, origins, _, _, _, leaf_objs = static
    var_defs: dict | None = None
    axes = list(arr_axes)
    for j, obj_i in enumerate(leaf_objs):
        path = graphdef.paths[j]
        if obj_i < 0 or origins[obj_i] >= 0 or path[0] != 0:
            continue  # a raw array, an input Variable, or one in an output
        axis = node_axes[path[1]]
        if isinstance(axis, StateAxes):
            if var_defs is None:
                var_defs = _var_defs(graphdef.tree)
            cls, meta = var_defs[obj_i]
            axes[j] = axis.axis_of(path[2:], new_variable(cls, None, dict(meta)))
    return axes
