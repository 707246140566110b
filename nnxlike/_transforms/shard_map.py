"""``shard_map`` over functions taking objects, with per-filter specs (``StateAxes``).

Design note. Like ``vmap`` (``iteration.py``), every Variable of the lifted
arguments gets one entry: the argument's ``in_specs`` entry (a ``PartitionSpec``)
or, for a ``StateAxes``, the spec of the first filter it matches. ``jax.shard_map``
then maps the flat list of arrays with those specs; inside, each Variable holds its
per-device shard. Changes are written back with the same specs (a Variable with
``P()`` must end equal on every device: reduce with ``jax.lax.pmean``/``psum``).

One trace in the common case: the function is traced expecting the structure to
stay as it was (no new attribute, no object returned), so the out specs of the
arrays are the in specs. If the structure changed, that trace stops and a second
one runs with the specs learned by the first: Variables that came in keep their
in spec, new ones take the out spec of the output object holding them (or the
in spec of the argument they were attached to).

Randomness: RNG keys are passed like any Variable (normally ``P()``), so every
device draws the same numbers; fold in ``jax.lax.axis_index`` for per-device
randomness.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.sharding import PartitionSpec

from nnxlike import _errors, _graph
from nnxlike._graph import flatten, is_graph_node
from nnxlike._transforms import _core
from nnxlike._transforms.iteration import StateAxes, _object_prefix

_SPEC_FIX = (
    "Give a jax.sharding.PartitionSpec (applied to every Variable of the object, "
    "e.g. `P()` to replicate) or an nnx.StateAxes mapping filters to "
    "PartitionSpecs, e.g. `nnx.StateAxes({nnx.BatchStat: P(), ...: P()})` (an "
    "nnx.StateSharding or an nnx.prefix result works too)."
)


def _per_var(x: Any) -> bool:
    """A spec that chooses per Variable: StateAxes, StateSharding, nnx.prefix's."""
    return isinstance(x, (StateAxes, _graph.Object)) or (
        not isinstance(x, type) and callable(getattr(type(x), "map_prefix", None))
    )


def _is_obj_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec) or _per_var(x)


class _Restructured(Exception):
    """Raised inside the first trace when the structure changed (see the note)."""

    def __init__(self, arr_specs: tuple):
        super().__init__("internal: nnx.shard_map restructure")
        self.arr_specs = arr_specs


class _Node:
    """A graph node seen as one pytree leaf (in messages, by its type)."""

    def __init__(self, node: Any):
        self.name = type(node).__name__

    def __repr__(self) -> str:
        return f"<{self.name} object>"


class _Repeat:
    """``spec`` for ``n`` leaves (not a list: a prefix tree may hold lists)."""

    def __init__(self, spec: Any, n: int):
        self.spec, self.n = spec, n


def _is_spec_leaf(x: Any) -> bool:
    return x is None or _is_obj_spec(x)


def _broadcast_specs(specs: Any, tree: Any, where: str) -> list:
    """One spec per leaf of ``tree`` (graph nodes as leaves) from a prefix tree."""
    if _is_spec_leaf(specs):
        return [specs] * len(jtu.tree_leaves(tree, is_leaf=is_graph_node))
    # Objects are not pytrees: stand-ins keep jax.tree.map from walking into them.
    stand_in = jtu.tree_map(
        lambda x: _Node(x) if is_graph_node(x) else x, tree, is_leaf=is_graph_node
    )
    try:
        per_sub = jax.tree.map(
            lambda s, sub: _Repeat(s, len(jtu.tree_leaves(sub))),
            specs,
            stand_in,
            is_leaf=_is_spec_leaf,
        )
    except (ValueError, TypeError):
        raise ValueError(
            f"nnx.shard_map: {where} = {specs!r} does not match the structure of "
            f"the value it describes, {stand_in!r}: it must be a prefix of it. Give "
            "a PartitionSpec for arrays and a PartitionSpec or nnx.StateAxes for "
            "each object."
        ) from None
    repeats = jtu.tree_leaves(per_sub, is_leaf=lambda x: isinstance(x, _Repeat))
    return [r.spec for r in repeats for _ in range(r.n)]


def _spec_of(spec: Any, path: tuple, var: Any, where: str) -> PartitionSpec:
    """The PartitionSpec of the Variable ``var`` at ``path`` under ``spec``."""
    if isinstance(spec, _graph.Object):  # nnx.prefix(obj, ..., graph=False)
        spec = _object_prefix(spec)
    if _per_var(spec) and type(spec) is not StateAxes:
        pick = getattr(spec, "axis_of", None) or spec.map_prefix
        s = pick(path, var)
        s = getattr(s, "spec", s)  # a NamedSharding gives its PartitionSpec
        if not isinstance(s, PartitionSpec):
            raise TypeError(
                f"nnx.shard_map: {where}: {type(spec).__name__} gives {s!r} for "
                f"the {type(var).__name__} at {_errors.path_str(path)!r}, which "
                "is not a PartitionSpec. Under shard_map every Variable takes a "
                "jax.sharding.PartitionSpec, e.g. `P()` to replicate."
            )
        return s
    if isinstance(spec, StateAxes):
        for flt, pred, s in zip(spec.filters, spec._preds, spec.axes):
            if pred(path, var):
                if not isinstance(s, PartitionSpec):
                    raise TypeError(
                        f"nnx.shard_map: {where}: StateAxes maps filter "
                        f"{getattr(flt, '__name__', flt)!r} to {s!r}, which is not "
                        "a PartitionSpec. Under shard_map each filter maps to a "
                        "jax.sharding.PartitionSpec, e.g. `nnx.BatchStat: P()`."
                    )
                return s
        raise _errors.StructureError(
            f"nnx.shard_map: {where}: the Variable at "
            f"{_errors.path_str(path)!r} ({type(var).__name__}) matches none of the "
            f"StateAxes filters {spec.filters}. End the mapping with `...: P()` "
            "(or another PartitionSpec) to cover the rest."
        )
    return spec


def _check_shape(spec: PartitionSpec, var: Any, path: tuple, where: str, mesh: Any):
    shape = tuple(jnp.shape(var._raw_value))
    if len(spec) > len(shape):
        raise ValueError(
            f"nnx.shard_map: {where}: {spec} has {len(spec)} entries but the "
            f"{type(var).__name__} at {_errors.path_str(path)!r} has shape {shape} "
            f"(rank {len(shape)}). Use at most one entry per array axis, e.g. "
            f"`{PartitionSpec(*tuple(spec)[: len(shape)])}`, or a StateAxes giving "
            "this Variable its own spec."
        )
    if mesh is None:
        return
    for dim, entry in enumerate(spec):
        if entry is None:
            continue
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        if not all(a in mesh.shape for a in axes):
            continue  # jax reports unknown mesh axes itself
        n = math.prod(mesh.shape[a] for a in axes)
        if shape[dim] % n:
            raise ValueError(
                f"nnx.shard_map: {where}: {spec} splits axis {dim} of the "
                f"{type(var).__name__} at {_errors.path_str(path)!r} (shape {shape}) "
                f"{n} ways, but its size {shape[dim]} is not divisible by {n}. "
                "Replicate it (`P()`) with a StateAxes entry, or resize it."
            )


def _per_arg(in_specs: Any, n: int) -> tuple:
    if _is_spec_leaf(in_specs):
        return (in_specs,) * n
    if not isinstance(in_specs, (tuple, list)):
        raise TypeError(
            "nnx.shard_map: in_specs must be a PartitionSpec, an nnx.StateAxes, or "
            f"a tuple with one entry per positional argument; got {in_specs!r}."
        )
    if len(in_specs) != n:
        raise ValueError(
            f"nnx.shard_map: in_specs has {len(in_specs)} entries but the function "
            f"got {n} positional arguments; give one spec per argument."
        )
    return tuple(in_specs)


def _assign(lifted: _core.Lifted, args: tuple, in_specs: Any, mesh: Any):
    """Spec per Variable (lifted order), per plain leaf, and per lifted node."""
    per_arg = _per_arg(in_specs, len(args))
    leaf_specs: list = []
    leaf_where: list = []
    for i, (arg, spec) in enumerate(zip(args, per_arg)):
        where = f"in_specs[{i}]"
        if is_graph_node(arg) and not _is_obj_spec(spec):
            raise TypeError(
                f"nnx.shard_map: {where} is {spec!r} for argument {i}, a "
                f"{type(arg).__name__}. {_SPEC_FIX}"
            )
        specs = _broadcast_specs(spec, arg, where)
        leaf_specs += specs
        leaf_where += [where] * len(specs)
    node_specs, node_where = [], []
    graph_pos = set(lifted.graph_pos)
    jleaf_specs = []
    for i, (spec, where) in enumerate(zip(leaf_specs, leaf_where)):
        if i in graph_pos:
            if not _is_obj_spec(spec):
                node = lifted.nodes[lifted.graph_pos.index(i)]
                raise TypeError(
                    f"nnx.shard_map: {where} gives {spec!r} for a "
                    f"{type(node).__name__}. {_SPEC_FIX}"
                )
            node_specs.append(spec)
            node_where.append(where)
        else:
            if not isinstance(spec, PartitionSpec):
                raise TypeError(
                    f"nnx.shard_map: {where} gives {spec!r} for a plain "
                    f"{type(lifted.leaves[i]).__name__}; arrays take a "
                    "jax.sharding.PartitionSpec (StateAxes is for objects)."
                )
            jleaf_specs.append(spec)
    var_index = {id(v): j for j, v in enumerate(lifted.flat.leaves)}
    var_specs: list = [None] * len(var_index)
    for node, spec, where in zip(lifted.nodes, node_specs, node_where):
        flat = flatten(node)
        for path, v in zip(flat.graphdef.paths, flat.leaves):
            j = var_index[id(v)]
            s = _spec_of(spec, path, v, where)
            if var_specs[j] is None:
                _check_shape(s, v, path, where, mesh)
                var_specs[j] = s
            elif var_specs[j] != s:  # shared, but sharded two ways: refuse
                raise ValueError(
                    f"nnx.shard_map: Inconsistent aliasing detected. The following "
                    f"nodes have different prefixes: the same {type(v).__name__} "
                    f"at {_errors.path_str(path)!r} gets {s} from {where} and "
                    f"{var_specs[j]} from an earlier argument. Give it one spec."
                )
    return var_specs, jleaf_specs, node_specs


def _new_arr_specs(
    lifted: _core.Lifted,
    var_specs: list,
    node_specs: list,
    copies: _core.Copies,
    collected: _core.Collected,
    out: Any,
    out_specs: Any,
) -> tuple:
    """Out spec per collected array after a structure change (see the note)."""
    out_leaves = jtu.tree_leaves(out, is_leaf=is_graph_node)
    out_nodes = tuple(x for x in out_leaves if is_graph_node(x))
    all_specs = _broadcast_specs(out_specs, out, "out_specs")
    out_node_specs = [s for s, x in zip(all_specs, out_leaves) if is_graph_node(x)]
    flat = flatten((copies.nodes, out_nodes))
    obj_pos = {id(o): k for k, o in enumerate(lifted.flat.objects)}
    leaf_of_obj = {obj_pos[id(v)]: j for j, v in enumerate(lifted.flat.leaves)}
    specs = []
    for j, (path, v) in enumerate(zip(flat.graphdef.paths, flat.leaves)):
        obj_i = collected.leaf_objs[j]
        origin = collected.origins[obj_i] if obj_i >= 0 else -1
        if origin in leaf_of_obj:
            specs.append(var_specs[leaf_of_obj[origin]])
            continue
        part, k, rest = path[0], path[1], path[2:]
        if part == 0:
            spec, where = node_specs[k], "in_specs"
        else:
            spec, where = out_node_specs[k], "out_specs"
            if not _is_obj_spec(spec):
                raise TypeError(
                    f"nnx.shard_map: out_specs gives {spec!r} for a returned "
                    f"{type(out_nodes[k]).__name__}. {_SPEC_FIX}"
                )
        s = _spec_of(spec, rest, v, where)
        _check_shape(s, v, rest, where, None)
        specs.append(s)
    return tuple(specs)


def _jax_out_specs(out_specs: Any) -> Any:
    """The user's out_specs for the plain outputs (objects' entries are unused)."""
    return jax.tree.map(
        lambda s: PartitionSpec() if _per_var(s) else s,
        out_specs,
        is_leaf=_is_spec_leaf,
    )


def shard_map(
    f: Callable | None = None,
    *,
    mesh: Any = None,
    in_specs: Any,
    out_specs: Any,
    axis_names: Any = frozenset(),
    check_vma: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.shard_map`` over functions taking objects (see the module note).

    ``in_specs``/``out_specs`` have one entry per positional argument / output
    (a single entry applies to all). For an object the entry is a
    ``PartitionSpec`` applied to every Variable of it, or an ``nnx.StateAxes``
    mapping filters to PartitionSpecs; arrays take a PartitionSpec as in
    ``jax.shard_map``. Inside, each Variable holds its per-device shard; changes
    to the objects (parameters, BatchNorm statistics, RNG counts, new
    attributes) are written back to the caller's objects, with the same specs.
    A Variable with ``P()`` must end equal on every device (``jax.lax.pmean`` its
    updates); ``check_vma`` is passed to ``jax.shard_map``. On a mesh of
    Explicit axes (``jax.make_mesh``'s default) jax requires every input to be
    placed as its spec says already (``jax.reshard``); Auto axes take any input.

    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import nnxlike as nnx
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> @nnx.shard_map(mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    ... def forward(model, x):
    ...     return model(x)
    >>> forward(model, jnp.ones((4, 3))).shape
    (4, 2)
    """
    if f is None:
        return functools.partial(
            shard_map,
            mesh=mesh,
            in_specs=in_specs,
            out_specs=out_specs,
            axis_names=axis_names,
            check_vma=check_vma,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "shard_map")
    jax_out_specs = _jax_out_specs(out_specs)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            fname = getattr(f, "__qualname__", repr(f))
            raise TypeError(
                f"nnx.shard_map({fname}): got keyword argument(s) {sorted(kwargs)}, "
                "but in_specs only describes positional arguments. Pass them "
                f"positionally, or bind constants with functools.partial({fname}, "
                "...)."
            )
        lifted = _core.Lifted.from_args(
            args, graph=graph, graph_updates=graph_updates, fn="shard_map"
        )
        var_specs, jleaf_specs, node_specs = _assign(lifted, args, in_specs, mesh)
        graph_pos = set(lifted.graph_pos)
        jleaves = tuple(x for i, x in enumerate(lifted.leaves) if i not in graph_pos)
        statics: list = []

        def run(arr_specs: tuple | None):
            def pure(arrays, jl):
                leaves = list(lifted.leaves)
                it = iter(jl)
                for i in range(len(leaves)):
                    if i not in graph_pos:
                        leaves[i] = next(it)
                tree, copies = lifted.rebuild(list(arrays), leaves)
                out = f(*tree)
                collected = _core.collect(lifted, copies, out)
                if not collected.unchanged:
                    specs = _new_arr_specs(
                        lifted, var_specs, node_specs, copies, collected, out, out_specs
                    )
                    if arr_specs is None:
                        raise _Restructured(specs)
                    if specs != arr_specs:
                        raise _errors.StructureError(
                            "nnx.shard_map: the function changed the structure of "
                            "its objects differently in two traces; it must be "
                            "deterministic in Python."
                        )
                statics.append(collected.static())
                masked = collected.out_treedef.unflatten(collected.out_leaves)
                return tuple(collected.arrays), masked

            specs = tuple(var_specs) if arr_specs is None else arr_specs
            mapped = jax.shard_map(
                pure,
                mesh=mesh,
                in_specs=(tuple(var_specs), tuple(jleaf_specs)),
                out_specs=(specs, jax_out_specs),
                axis_names=axis_names,
                check_vma=check_vma,
            )
            return mapped(tuple(lifted.arrays()), jleaves)

        try:
            new_arrays, masked = run(None)
        except _Restructured as r:
            new_arrays, masked = run(r.arr_specs)
        static = statics[-1]
        out_leaves = static[2].flatten_up_to(masked)
        return _core.write_back(lifted, static, list(new_arrays), out_leaves)

    return wrapper
