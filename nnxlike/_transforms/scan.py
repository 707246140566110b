"""``nnx.scan`` over objects: carried state, per-step slices, stacked results.

Design note. Every Variable of the arguments gets an axis, as under ``vmap``
(``iteration`` owns that bookkeeping: ``StateAxes``, ``Carry``, sharding names):

- an int axis: sliced per iteration, and the per-iteration values stacked back
  (scan over a stack of layers); Variables *created* inside a scanned argument,
  or returned in the outputs (a new Module, new Params), are stacked the same
  way, along the axis their argument's ``in_axes`` (or ``out_axes``) gives them;
- ``nnx.Carry`` or ``None``: carried from one iteration to the next (BatchNorm
  statistics, counters, RNG counters keep advancing), so no write is lost. One
  exception, as under ``vmap``: when some RNG key is scanned (the caller split
  streams explicitly), the streams left with axis ``None`` are broadcast: every
  iteration draws the same keys (flax's recurrent-dropout idiom), and the
  counter of the last iteration is written back.

The carry output must hold the very objects of the carry input (flax's rule).
The loop body is one function per decorated ``scan``, and everything a call
depends on travels as pytree structure (``_Spec``, ``_Out``), so JAX's cache of
traced scan bodies serves every later call with the same structure: the user
function is traced once per structure and shapes, as in flax.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _graph
from nnxlike._graph import is_graph_node
from nnxlike._transforms import _core
from nnxlike._transforms.iteration import (
    _NO_METADATA,
    Carry,
    StateAxes,
    _as_positional,
    _assign_axes,
    _broadcast_prefix,
    _CarryType,
    _node_axes,
    _object_prefix,
    _partition_name,
    _per_arg,
    _restack_names,
    _strip_mapped_names,
    _var_defs,
)
from nnxlike._variables import (
    PARTITION_NAME,
    RngKey,
    RngState,
    Variable,
    new_variable,
)

_ARRAYS = (jax.Array, np.ndarray, np.generic, int, float, bool, complex)


def _carry_index(axes: Any) -> Any:
    """``"all"`` for ``Carry``, the position of ``Carry`` in a tuple, or None."""
    if isinstance(axes, _CarryType):
        return "all"
    if isinstance(axes, (tuple, list)):
        for i, a in enumerate(axes):
            if isinstance(a, _CarryType):
                return i
    return None


def _check_scan_axes(in_axes: Any, out_axes: Any) -> None:
    """What scan cannot do, said when it is decorated (as flax.nnx does)."""
    ins = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,)
    if sum(isinstance(a, _CarryType) for a in ins) > 1:
        raise ValueError(
            f"nnx.scan: Found multiple Carry definitions in in_axes={in_axes!r}; "
            "one argument is the carry (group several values in a tuple)."
        )
    outs = out_axes if isinstance(out_axes, (tuple, list)) else (out_axes,)
    if sum(isinstance(a, _CarryType) for a in outs) > 1:
        raise ValueError(
            f"nnx.scan: Found multiple Carry definitions in out_axes={out_axes!r}; "
            "one output is the carry (group several values in a tuple)."
        )
    for a in outs:
        bad = a is None or (isinstance(a, StateAxes) and None in a.axes)
        if bad:
            raise ValueError(
                f"nnx.scan: Cannot broadcast output state. Got {a!r} in "
                f"out_axes={out_axes!r}: scan stacks every output along an axis "
                "(or carries it with nnx.Carry); an unmapped output has no value "
                "per step. Use an int axis, or return it through the carry."
            )
    for name, axes in (("in_axes", in_axes), ("out_axes", out_axes)):
        nested = jtu.tree_leaves(
            [
                a
                for a in (axes if isinstance(axes, (tuple, list)) else ())
                if isinstance(a, (tuple, list, dict))
            ],
            is_leaf=lambda x: isinstance(x, _CarryType),
        )
        if any(isinstance(a, _CarryType) for a in nested):
            raise ValueError(
                f"nnx.scan: Carry must be a top-level entry of {name}, it cannot be "
                f"nested. Got {name}={axes!r}; make the whole argument the carry: "
                "`in_axes=(nnx.Carry, 0)`."
            )
    if (_carry_index(in_axes) is None) != (_carry_index(out_axes) is None):
        raise ValueError(
            "If one of in_axes or out_axes has Carry, the other must also have "
            f"Carry. Got in_axes={in_axes!r}, out_axes={out_axes!r}: the carry "
            "goes in and comes out of every iteration, e.g. "
            "`in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0)`."
        )


def scan(
    f: Callable | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    _split_transpose: bool = False,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    transform_metadata: Mapping = _NO_METADATA,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.scan`` over functions taking objects (see the module note).

    ``in_axes`` gives each positional argument an int axis (scanned), ``None``
    (broadcast, carried when written) or ``nnx.Carry`` (the loop carry; at most
    one). ``out_axes`` says the same of the outputs: ``nnx.Carry`` marks the
    carry output, ints stack the per-iteration outputs (arrays, new Variables,
    new Modules) along that axis.

    Inside the function a scanned Variable's ``sharding_names`` lack the entry of
    the scanned axis (they match the per-iteration array); the caller's Variable
    keeps its stacked names. ``transform_metadata``
    (``{nnx.PARTITION_NAME: name}``) is accepted as in ``vmap``: Variables
    created inside get ``name`` at their stacked axis.

    Scan over a stack of layers made with ``vmap``:

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> @nnx.vmap(in_axes=None, out_axes=0, axis_size=3)
    ... def make(rngs):
    ...     return nnx.Linear(4, 4, rngs=rngs)
    >>> stack = make(nnx.Rngs(0))
    >>> @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    ... def forward(x, layer):
    ...     return nnx.relu(layer(x))
    >>> forward(jnp.ones((2, 4)), stack).shape
    (2, 4)

    Creating the stack with ``scan`` instead (new Modules are stacked):

    >>> @nnx.split_rngs(splits=3)
    ... @nnx.scan(in_axes=0, out_axes=0)
    ... def create(rngs):
    ...     return nnx.Linear(4, 4, rngs=rngs)
    >>> create(nnx.Rngs(0)).kernel.shape
    (3, 4, 4)
    """
    if f is None:
        return functools.partial(
            scan,
            length=length,
            reverse=reverse,
            unroll=unroll,
            _split_transpose=_split_transpose,
            in_axes=in_axes,
            out_axes=out_axes,
            transform_metadata=transform_metadata,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "scan")
    _check_scan_axes(in_axes, out_axes)
    axis_keys = _partition_name(transform_metadata, "scan")  # keys to strip
    # One body per decoration: JAX caches its trace.
    body = _make_body(f, out_axes, transform_metadata.get(PARTITION_NAME, _NO_HOOKS))

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = _as_positional("scan", f, args, kwargs)
        if isinstance(in_axes, _CarryType) and len(args) != 1:
            raise ValueError(
                "When in_axes=Carry, the function must take exactly one argument, "
                f"got {len(args)} arguments (nnx.scan({_name(f)})). Group them in "
                "a tuple carry, or give each argument its own in_axes entry: "
                "`in_axes=(nnx.Carry, 0)`."
            )
        axes = _per_arg(in_axes, len(args), "scan")
        carry_idx = _carry_index(axes)
        lifted = _core.Lifted.from_args(
            args, graph=graph, graph_updates=graph_updates, fn="scan"
        )
        var_axis, leaf_axis = _assign_axes(lifted, args, axes, "scan")
        inner, removed = _strip_mapped_names(
            lifted, _names_to_strip(lifted, var_axis, transform_metadata), axis_keys
        )
        spec = _Spec(inner, lifted.mode, args, axes, var_axis, leaf_axis, carry_idx)

        # Phase 1: split the arrays into carry, per-iteration slices, constants.
        arrays = lifted.arrays()
        gp = set(spec.graph_pos)
        jleaves = [x for i, x in enumerate(lifted.leaves) if i not in gp]
        init = (
            spec,
            [arrays[i] for i in spec.carried],
            [jleaves[p] for p in spec.c_leaves],
            [arrays[i] for i in spec.fixed],
            [jleaves[p] for p in spec.b_leaves],
        )
        xs = (
            [_to_front(arrays[i], var_axis[i]) for i in spec.scanned],
            [
                _to_front(_scanned_leaf(jleaves[p], args, p), leaf_axis[p])
                for p in spec.x_leaves
            ],
        )
        # Phase 2: one jax.lax.scan over the pure body.
        (_, c_vars, c_leaves, _, _), (out, y_vals, y_leaves) = jax.lax.scan(
            body,
            init,
            xs,
            length=length,
            reverse=reverse,
            unroll=unroll,
            _split_transpose=_split_transpose,
        )
        # Phase 3: write back (carried state as it ended, the rest restacked).
        static, routing, out_leaf_axes = out.info
        new_arrays: list = []
        shapes: list = []
        arr_axes: list = []
        it = iter(y_vals)
        for kind, where in routing:
            if kind == "c":
                new_arrays.append(c_vars[where])
                shapes.append(_NO_SHAPE)
                arr_axes.append(None)
                continue
            y = next(it)
            if kind == "s":
                new_arrays.append(_from_front(y, where))
            else:  # a broadcast RNG stream: what the last iteration left
                new_arrays.append(jax.tree.map(_last if not reverse else _first, y))
            shapes.append(y if hasattr(y, "shape") else _NO_SHAPE)
            arr_axes.append(where if kind == "s" else None)
        out_leaves = [
            None if ax is None else _from_front(y, ax)
            for y, ax in zip(y_leaves, out_leaf_axes)
        ]
        if not static[4]:  # structure changed: the GraphDef carries the metadata
            static = _restack_names(static, arr_axes, shapes, removed, axis_keys)
        ys_tree = _core.write_back(lifted, static, new_arrays, out_leaves)
        carry_tree = None
        if carry_idx is not None:
            carry_tree = _rebuild_carry(
                args[0 if carry_idx == "all" else carry_idx], c_leaves
            )
        return _join_out(carry_tree, ys_tree, out_axes)

    return wrapper


def _names_to_strip(lifted: _core.Lifted, var_axis: list, metadata: Mapping) -> list:
    """The axes whose ``sharding_names`` entry the body does not see.

    With ``transform_metadata={nnx.PARTITION_NAME: ...}`` every scanned axis; without
    it only entries that are None (a stack made by ``vmap`` without a name), so a
    named entry is left for an ``nnx.transform_metadata`` inside to remove, as in
    flax.
    """
    if PARTITION_NAME in metadata:
        return var_axis
    out = list(var_axis)
    for i, (v, a) in enumerate(zip(lifted.flat.leaves, var_axis)):
        names = getattr(v, "_metadata", {}).get("sharding_names")
        if isinstance(a, int) and isinstance(names, tuple) and names:
            if names[a % len(names)] is not None:
                out[i] = None
    return out


class _NoShape:
    shape = ()


_NO_SHAPE = _NoShape()
_MISSING = object()
_NO_HOOKS = object()  # no PARTITION_NAME in transform_metadata: no axis hooks


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable) and not isinstance(x, _core.RawSlot)


def _name(f: Any) -> str:
    return getattr(f, "__qualname__", None) or repr(f)


def _last(a: Any) -> Any:
    return a[-1]


def _first(a: Any) -> Any:
    return a[0]


def _to_front(x: Any, axis: int) -> Any:
    if axis == 0:
        return x
    return jax.tree.map(lambda a: jnp.moveaxis(a, axis, 0), x)


def _from_front(x: Any, axis: int) -> Any:
    if axis == 0:
        return x
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, axis), x)


def _scanned_leaf(x: Any, args: tuple, p: int) -> Any:
    if not isinstance(x, (jax.Array, np.ndarray)):
        paths = jtu.tree_flatten_with_path(args, is_leaf=is_graph_node)[0]
        plain = [kp for kp, leaf in paths if not is_graph_node(leaf)]
        where = jtu.keystr(plain[p])
        raise ValueError(
            f"nnx.scan: Expected an array to scan over at args{where}, got "
            f"{type(x).__name__}. Give it in_axes None (the same value in every "
            "iteration), or pass an array."
        )
    return x


# -- what a call is made of, as pytree structure ------------------------------------


class _Spec:
    """Everything the body needs besides arrays; the hashable part of the carry.

    Equal specs mean equal traces (same GraphDef, pytree structure, axes and
    constants), which is what lets JAX reuse the traced body.
    """

    def __init__(self, lifted, mode, args, axes, var_axis, leaf_axis, carry_idx):
        self.graph_pos = lifted.graph_pos
        self.carry_idx = carry_idx
        self.mode = mode
        self.var_axis = tuple(var_axis)
        keys = [i for i, v in enumerate(lifted.flat.leaves) if isinstance(v, RngKey)]
        explicit = any(isinstance(var_axis[i], int) for i in keys)
        self.fixed = tuple(
            i
            for i, a in enumerate(var_axis)
            if explicit and a is None and isinstance(lifted.flat.leaves[i], RngState)
        )
        fixed = set(self.fixed)
        self.carried = tuple(
            i
            for i, a in enumerate(var_axis)
            if not isinstance(a, int) and i not in fixed
        )
        self.scanned = tuple(i for i, a in enumerate(var_axis) if isinstance(a, int))
        # Plain JAX leaves (in order, graph positions left out).
        template = []
        self.c_leaves, self.x_leaves, self.b_leaves = [], [], []
        gp = set(self.graph_pos)
        jpos = [i for i in range(len(lifted.leaves)) if i not in gp]
        for p, (i, ax) in enumerate(zip(jpos, leaf_axis)):
            x = lifted.leaves[i]
            if isinstance(ax, _CarryType):
                self.c_leaves.append(p)
            elif isinstance(ax, int):
                self.x_leaves.append(p)
            elif isinstance(x, _ARRAYS):
                self.b_leaves.append(p)
            else:  # a constant (a string, a function): part of the structure
                template.append((p, x))
                continue
            template.append((p, None))
        self.template = tuple(template)
        self.c_leaves = tuple(self.c_leaves)
        self.x_leaves = tuple(self.x_leaves)
        self.b_leaves = tuple(self.b_leaves)
        self.node_axis = tuple(_node_axes(args, axes))
        self.node_arg = tuple(_node_args(args))
        # Input object index -> lifted leaf index, and path -> leaf index.
        flat = lifted.flat
        leaf_of = {id(v): i for i, v in enumerate(flat.leaves)}
        self.obj_leaf = tuple(leaf_of.get(id(o), -1) for o in flat.objects)
        self.path_leaf = {p: i for i, p in enumerate(flat.graphdef.paths)}
        self.var_leaves = frozenset(self.obj_leaf)
        self.lifted = _core.Lifted(
            lifted.treedef,
            [],
            lifted.graph_pos,
            (),
            _graph.Flat(flat.graphdef, [], []),
            mode,
        )
        self.key = (
            flat.graphdef,
            lifted.treedef,
            self.var_axis,
            tuple(leaf_axis),
            self.template,
            self.node_axis,
            self.carry_idx,
            self.mode,
            self.fixed,
        )
        try:
            self._hash = hash(self.key)
        except TypeError:  # an unhashable constant or prefix: equal by content
            self._hash = hash(self.key[:3])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec) and (
            other is self or (other._hash == self._hash and other.key == self.key)
        )

    def __hash__(self) -> int:
        return self._hash

    def leaves(self, c: list, x: list, b: list) -> list:
        """The plain JAX leaves of the arguments, constants included."""
        out = [None] * len(self.template)
        for p, const in self.template:
            out[p] = const
        for ps, vals in ((self.c_leaves, c), (self.x_leaves, x), (self.b_leaves, b)):
            for p, v in zip(ps, vals):
                out[p] = v
        return out


class _Out:
    """The static result of tracing the body: (Collected.static(), routing, axes)."""

    def __init__(self, info: tuple):
        self.info = info

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Out) and other.info == self.info

    def __hash__(self) -> int:
        return hash(self.info[1:])


jtu.register_pytree_node(_Spec, lambda s: ((), s), lambda s, _: s)
jtu.register_pytree_node(_Out, lambda o: ((), o), lambda o, _: o)


def _node_args(args: tuple) -> list:
    """The JAX key path (as text) of each graph node of the arguments."""
    paths = jtu.tree_flatten_with_path(args, is_leaf=is_graph_node)[0]
    return [jtu.keystr(kp) for kp, x in paths if is_graph_node(x)]


# -- the loop body ------------------------------------------------------------------


def _make_body(f: Callable, out_axes: Any, axis_name: Any) -> Callable:
    """The pure loop body. With ``transform_metadata={nnx.PARTITION_NAME: name}``
    it runs the Variables' axis hooks as flax does, once per trace:
    ``remove_axis(axis, name)`` on each scanned Variable the function sees, and
    ``add_axis(axis, name)`` on each Variable stacked on the way out."""
    out_carry = _carry_index(out_axes)
    hooks = axis_name is not _NO_HOOKS

    def body(carry, xs):
        spec, c_vars, c_leaves, b_vars, b_leaves = carry
        x_vars, x_leaves = xs
        arrays: list = [None] * len(spec.var_axis)
        for idx, vals in (
            (spec.carried, c_vars),
            (spec.scanned, x_vars),
            (spec.fixed, b_vars),
        ):
            for i, a in zip(idx, vals):
                arrays[i] = a
        jleaves = spec.leaves(c_leaves, x_leaves, b_leaves)
        full = [None] * (len(spec.graph_pos) + len(jleaves))
        gp = set(spec.graph_pos)
        it = iter(jleaves)
        for i in range(len(full)):
            if i not in gp:
                full[i] = next(it)
        built: dict = {}
        nodes = _graph.unflatten(spec.lifted.flat.graphdef, arrays, built=built)
        copies = _core.Copies(nodes, {id(o): i for i, o in built.items()})
        tree = spec.lifted.rebuild_with(nodes, full)
        if hooks:
            for o, i in enumerate(spec.obj_leaf):
                v = built.get(o)
                if i >= 0 and isinstance(spec.var_axis[i], int) and _is_variable(v):
                    v.remove_axis(spec.var_axis[i], axis_name)
        out = f(*tree)
        carry_out, ys, ys_axes = _split_out(out, out_axes, out_carry)
        new_c_leaves: list = []
        if spec.carry_idx is not None:
            carry_in = tree[0 if spec.carry_idx == "all" else spec.carry_idx]
            new_c_leaves = _check_carry(carry_in, carry_out, spec.mode)
        collected = _core.collect(spec.lifted, copies, ys)
        _check_no_aliases(collected, ys)
        routing, c_new, y_vals = _route(spec, collected, ys, ys_axes)
        if hooks:
            out_nodes = [
                x
                for x in jtu.tree_leaves(ys, is_leaf=is_graph_node)
                if is_graph_node(x)
            ]
            walked = _graph.flatten((copies.nodes, tuple(out_nodes))).leaves
            for (kind, ax), v in zip(routing, walked):
                if kind == "s" and _is_variable(v):
                    v.add_axis(ax, axis_name)
        per_leaf = _broadcast_prefix(ys_axes, ys)
        graph_out = set(collected.out_graph_pos)
        leaf_axes = tuple(None if i in graph_out else a for i, a in enumerate(per_leaf))
        for a in leaf_axes:
            if a is not None and (not isinstance(a, int) or isinstance(a, bool)):
                raise ValueError(
                    f"nnx.scan: out_axes gives a plain array output the axis {a!r}; "
                    "arrays are stacked along an int axis (StateAxes and prefixes "
                    "apply to objects). Use e.g. `out_axes=(nnx.Carry, 0)`."
                )
        info = (collected.static(), routing, leaf_axes)
        return (
            (spec, c_new, new_c_leaves, b_vars, b_leaves),
            (_Out(info), y_vals, collected.out_leaves),
        )

    return body


def _split_out(out: Any, out_axes: Any, out_carry: Any):
    """(carry, ys, axes of ys) from the function's output."""
    if out_carry == "all":
        return out, None, 0
    if out_carry is None:
        return None, out, out_axes
    if not (isinstance(out, tuple) and len(out) == len(out_axes)):
        n = len(out_axes)
        want = "a pair (carry, y)" if n == 2 else f"a tuple of {n} values"
        got = type(out).__name__
        if isinstance(out, tuple):
            got += f" of length {len(out)}"
        raise TypeError(
            f"nnx.scan: with out_axes={out_axes!r} the function must return "
            f"{want}, the carry at position {out_carry}; got {got}. Return "
            "`carry, y`, or use out_axes=nnx.Carry to return only the carry."
        )
    ys = tuple(None if i == out_carry else y for i, y in enumerate(out))
    axes = tuple(0 if i == out_carry else a for i, a in enumerate(out_axes))
    return out[out_carry], ys, axes


def _check_carry(carry_in: Any, carry_out: Any, mode: Any) -> list:
    """The carry must hold the same objects; returns its new JAX leaves."""
    in_leaves, in_def = jtu.tree_flatten(carry_in, is_leaf=is_graph_node)
    out_flat, out_def = jtu.tree_flatten_with_path(carry_out, is_leaf=is_graph_node)
    if in_def != out_def:
        raise _errors.StructureError(
            _errors.SCAN_CARRY_STRUCTURE.format(got=out_def, expected=in_def)
        )
    phrase = (
        "Carry references must be the same between iterations"
        if mode is None
        else "scan Variable identity must be preserved across iterations"
    )
    leaves = []
    for a, (kp, b) in zip(in_leaves, out_flat):
        if is_graph_node(a) or is_graph_node(b):
            if a is not b:
                raise ValueError(
                    _errors.SCAN_CARRY_IDENTITY.format(
                        phrase=phrase, type=type(b).__name__, where=jtu.keystr(kp)
                    )
                )
        else:
            leaves.append(b)
    return leaves


def _check_no_aliases(collected: _core.Collected, ys: Any) -> None:
    """An output may not be (or hold) an object that came in as an argument."""
    if not collected.out_graph_pos:
        return
    tree = collected.graphdef.tree
    in_part, out_part = tree[3][0], tree[3][1]
    inside = set(_indices(in_part)[0])
    defined, refs, _ = _indices(out_part)
    origins = collected.origins
    bad = [i for i in defined if origins[i] >= 0] + [i for i in refs if i in inside]
    if not bad:
        return
    paths = jtu.tree_flatten_with_path(ys, is_leaf=is_graph_node)[0]
    out_paths = [jtu.keystr(kp) for kp, x in paths if is_graph_node(x)]
    types = _indices(tree)[2]
    where, kind = "", "object"
    for m, child in enumerate(out_part[3]):
        d, r, _ = _indices(child)
        hit = [i for i in bad if i in set(d) | set(r)]
        if hit:
            where = out_paths[m] if m < len(out_paths) else ""
            kind = types.get(hit[0], "object")
            break
    raise ValueError(_errors.SCAN_ALIASING.format(where=where, type=kind))


def _indices(d: tuple) -> tuple[list, list, dict]:
    """(indices defined, indices referenced, type names) in a GraphDef subtree."""
    defined: list = []
    refs: list = []
    types: dict = {}

    def walk(d: tuple) -> None:
        kind = d[0]
        if kind == _graph.VAR:
            defined.append(d[2])
            types[d[2]] = d[1].__name__
        elif kind == _graph.REF:
            refs.append(d[1])
        elif kind == _graph.NODE:
            if d[2] >= 0:
                defined.append(d[2])
                types[d[2]] = d[1].__name__
            for c in d[3]:
                walk(c if d[1] in (list, tuple) else c[1])
        elif kind == _graph.PYTREE:
            for _, c in d[2]:
                walk(c)

    walk(d)
    return defined, refs, types


def _route(spec: _Spec, collected: _core.Collected, ys: Any, ys_axes: Any):
    """Where each collected array goes: the carry, or the stacked outputs."""
    gd = collected.graphdef
    origins = collected.origins
    carried_pos = {i: k for k, i in enumerate(spec.carried)}
    fixed = set(spec.fixed)
    c_new: list = [_MISSING] * len(spec.carried)
    routing: list = []
    y_vals: list = []
    var_defs: dict | None = None
    out_axes_per_node: list | None = None
    for j, (path, arr) in enumerate(zip(gd.paths, collected.arrays)):
        obj = collected.leaf_objs[j]
        if obj >= 0:
            o = origins[obj]
            i = spec.obj_leaf[o] if o >= 0 else -1
        elif path[0] == 0:  # a raw array held by an argument object
            i = spec.path_leaf.get(path[1:], -1)
            if i in spec.var_leaves:
                i = -1  # that path held a Variable before: this array is new
        else:
            i = -1
        if i >= 0:
            if i in carried_pos:
                c_new[carried_pos[i]] = arr
                routing.append(("c", carried_pos[i]))
            else:
                y_vals.append(arr)
                routing.append(("r", 0) if i in fixed else ("s", spec.var_axis[i]))
            continue
        # New state: stacked along the axis its argument (or output) gives it.
        if obj >= 0:
            if var_defs is None:
                var_defs = _var_defs(gd.tree)
            cls, meta = var_defs[obj]
            probe: Any = new_variable(cls, None, dict(meta))
            what = f"a new {cls.__name__}"
        else:
            probe, what = arr, "a new array attribute"
        if path[0] == 0:
            axis = spec.node_axis[path[1]]
            where = f"args{spec.node_arg[path[1]]}.{_errors.path_str(path[2:])}"
        else:
            if out_axes_per_node is None:
                per_leaf = _broadcast_prefix(ys_axes, ys)
                out_axes_per_node = [per_leaf[p] for p in collected.out_graph_pos]
            axis = out_axes_per_node[path[1]]
            where = f"out.{_errors.path_str(path[2:])}"
        if isinstance(axis, _graph.Object):
            axis = _object_prefix(axis)
        if isinstance(axis, StateAxes):
            axis = axis.axis_of(path[2:], probe)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise _errors.StructureError(
                _errors.SCAN_NEW_STATE_AXIS.format(what=what, where=where, axis=axis)
            )
        y_vals.append(arr)
        routing.append(("s", axis))
    for i, k in carried_pos.items():
        if c_new[k] is _MISSING:
            v_path = spec.lifted.flat.graphdef.paths[i]
            raise _errors.StructureError(
                _errors.SCAN_CARRY_REMOVED.format(
                    type="Variable", where=_errors.path_str(v_path)
                )
            )
    return tuple(routing), c_new, y_vals


# -- the result ---------------------------------------------------------------------


def _rebuild_carry(arg: Any, c_leaves: list) -> Any:
    """The caller's carry argument with its arrays replaced by the final ones."""
    leaves, treedef = jtu.tree_flatten(arg, is_leaf=is_graph_node)
    it = iter(c_leaves)
    return treedef.unflatten([x if is_graph_node(x) else next(it) for x in leaves])


def _join_out(carry: Any, ys: Any, out_axes: Any) -> Any:
    k = _carry_index(out_axes)
    if k == "all":
        return carry
    if k is None:
        return ys
    return tuple(carry if i == k else y for i, y in enumerate(ys))
