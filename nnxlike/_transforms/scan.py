"""``nnx.scan`` over objects: carried state, per-step slices, stacked results.

State with axis ``None`` or ``Carry`` is carried from one iteration to the next (RNG
counters and BatchNorm statistics keep advancing); state with an int axis is sliced
per iteration and the per-iteration results are stacked back (scan over a stack of
layers). The structure must not change inside. The axis bookkeeping (``StateAxes``,
``Carry``, sharding names) is shared with ``vmap`` in ``iteration``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from nnxlike import _errors
from nnxlike._graph import is_graph_node
from nnxlike._transforms import _core
from nnxlike._transforms.iteration import (
    _NO_METADATA,
    Carry,
    StateAxes,
    _as_positional,
    _assign_axes,
    _CarryType,
    _jax_leaves,
    _merge_jax_leaves,
    _partition_name,
    _per_arg,
    _strip_mapped_names,
)


def _check_scan_axes(in_axes: Any, out_axes: Any) -> None:
    """What scan cannot do, said when it is decorated (as flax.nnx does)."""
    ins = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,)
    if sum(isinstance(a, _CarryType) for a in ins) > 1:
        raise ValueError(
            f"nnx.scan: Found multiple Carry definitions in in_axes={in_axes!r}; "
            "one argument is the carry (group several values in a tuple)."
        )
    outs = out_axes if isinstance(out_axes, (tuple, list)) else (out_axes,)
    for a in outs:
        bad = a is None or (isinstance(a, StateAxes) and None in a.axes)
        if bad:
            raise ValueError(
                f"nnx.scan: Cannot broadcast output state. Got {a!r} in "
                f"out_axes={out_axes!r}: scan stacks every output along an axis "
                "(or carries it with nnx.Carry); an unmapped output has no value "
                "per step. Use an int axis, or return it through the carry."
            )


def scan(
    f: Callable | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    transform_metadata: Mapping = _NO_METADATA,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.scan`` over functions taking objects (see the module note).

    Inside the function a scanned Variable's ``sharding_names`` lack the entry of
    the scanned axis (they match the per-iteration array); the caller's Variable
    keeps its stacked names. Carried state is untouched. ``transform_metadata``
    (``{nnx.PARTITION_NAME: name}``) is accepted as in ``vmap``; since ``scan``
    creates no Variables, each scanned one simply gets its own entry back.

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
    """
    if f is None:
        return functools.partial(
            scan,
            length=length,
            reverse=reverse,
            unroll=unroll,
            in_axes=in_axes,
            out_axes=out_axes,
            transform_metadata=transform_metadata,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "scan")
    _check_scan_axes(in_axes, out_axes)
    axis_keys = _partition_name(transform_metadata, "scan")  # keys to strip

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = _as_positional("scan", f, args, kwargs)
        axes = _per_arg(in_axes, len(args), "scan")
        carry_args = [i for i, a in enumerate(axes) if isinstance(a, _CarryType)]
        if len(carry_args) > 1:
            raise ValueError("scan: at most one argument can be nnx.Carry.")
        lifted = _core.Lifted.from_args(
            args, graph=graph, graph_updates=graph_updates, fn="scan"
        )
        var_axis, leaf_axis = _assign_axes(lifted, args, axes, "scan")
        lifted, _ = _strip_mapped_names(lifted, var_axis, axis_keys)
        carried_vars = [i for i, a in enumerate(var_axis) if not isinstance(a, int)]
        scanned_vars = [i for i, a in enumerate(var_axis) if isinstance(a, int)]
        carried_leaves = [
            i for i, a in enumerate(leaf_axis) if isinstance(a, _CarryType)
        ]
        scanned_leaves = [i for i, a in enumerate(leaf_axis) if isinstance(a, int)]
        arrays = lifted.arrays()
        jleaves = _jax_leaves(lifted)
        statics: list = []

        def body(carry, xs):
            c_vars, c_leaves = carry
            x_vars, x_leaves = xs
            full = list(arrays)
            for i, a in zip(carried_vars, c_vars):
                full[i] = a
            for i, a in zip(scanned_vars, x_vars):
                full[i] = a
            leaves = list(jleaves)
            for i, a in zip(carried_leaves, c_leaves):
                leaves[i] = a
            for i, a in zip(scanned_leaves, x_leaves):
                leaves[i] = a
            tree, copies = lifted.rebuild(full, _merge_jax_leaves(lifted, leaves))
            out = f(*tree)
            carry_out, ys = _split_out(out, out_axes)
            collected = _core.collect(lifted, copies, ys)
            if not collected.unchanged:
                raise _errors.StructureError(
                    "scan: the function changed the structure of its object arguments "
                    "(added or removed an attribute, or returned an object). Create "
                    "attributes before the scan and return arrays."
                )
            statics.append(collected.static())
            new_c_leaves = _carry_leaves(carry_out, c_leaves)
            new = collected.arrays
            return (
                ([new[i] for i in carried_vars], new_c_leaves),
                ([new[i] for i in scanned_vars], collected.out_leaves),
            )

        init = ([arrays[i] for i in carried_vars], [jleaves[i] for i in carried_leaves])
        xs = (
            [jnp.moveaxis(arrays[i], var_axis[i], 0) for i in scanned_vars],
            [jnp.moveaxis(jleaves[i], leaf_axis[i], 0) for i in scanned_leaves],
        )
        (c_vars, c_leaves), (y_vars, ys) = jax.lax.scan(
            body, init, xs, length=length, reverse=reverse, unroll=unroll
        )
        # Write back: carried state as it ended, scanned state restacked.
        variables = lifted.flat.leaves
        for i, a in zip(carried_vars, c_vars):
            _core._set_raw(variables[i], a)
        for i, a in zip(scanned_vars, y_vars):
            _core._set_raw(variables[i], jnp.moveaxis(a, 0, var_axis[i]))
        if lifted.slots:
            _core.flush_slots(lifted)
        static = statics[-1]
        ys_tree = static[2].unflatten(ys)
        ys_tree = _move_out_axes(ys_tree, out_axes)
        carry_tree = _rebuild_carry(lifted, args, carry_args, c_leaves, carried_leaves)
        return _join_out(carry_tree, ys_tree, out_axes)

    return wrapper


def _split_out(out: Any, out_axes: Any):
    if isinstance(out_axes, _CarryType):
        return out, None
    if (
        isinstance(out_axes, tuple)
        and len(out_axes) == 2
        and isinstance(out_axes[0], _CarryType)
    ):
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "scan: with out_axes=(nnx.Carry, ...) the function must return a pair "
                f"(carry, y), got {type(out).__name__}."
            )
        return out[0], out[1]
    return None, out


def _carry_leaves(carry_out: Any, c_leaves: list) -> list:
    leaves = [
        x
        for x in jtu.tree_leaves(carry_out, is_leaf=is_graph_node)
        if not is_graph_node(x)
    ]
    if len(leaves) != len(c_leaves):
        raise _errors.StructureError(
            f"scan: the carry returned has {len(leaves)} array(s) but the carry "
            f"passed in has {len(c_leaves)}; the carry must keep its structure."
        )
    return leaves


def _rebuild_carry(lifted, args, carry_args, c_leaves, carried_leaves):
    if not carry_args:
        return None
    arg = args[carry_args[0]]
    leaves = jtu.tree_leaves(arg, is_leaf=is_graph_node)
    it = iter(c_leaves)
    new = [x if is_graph_node(x) else next(it) for x in leaves]
    return jtu.tree_structure(arg, is_leaf=is_graph_node).unflatten(new)


def _move_out_axes(ys: Any, out_axes: Any) -> Any:
    axis = out_axes[1] if isinstance(out_axes, tuple) else out_axes
    if isinstance(axis, int) and axis != 0:
        return jax.tree.map(lambda y: jnp.moveaxis(y, 0, axis), ys)
    return ys


def _join_out(carry: Any, ys: Any, out_axes: Any) -> Any:
    if isinstance(out_axes, _CarryType):
        return carry
    if (
        isinstance(out_axes, tuple)
        and len(out_axes) == 2
        and isinstance(out_axes[0], _CarryType)
    ):
        return carry, ys
    return ys
