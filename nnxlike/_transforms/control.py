"""Control flow and the other one-shot transforms over objects.

Design note: ``cond``, ``switch``, ``remat``, ``eval_shape``, ``while_loop``,
``fori_loop`` and ``custom_vjp`` all follow ``_core``'s phases: lift the
arguments, hand JAX a pure function of arrays, write results back. Loops carry
the objects' arrays through the loop, so the structure must not change inside
the body (an error says so); branches must leave the same structure in every
branch (JAX checks the arrays, we check the GraphDefs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu

from nnxlike import _config, _errors, _hijax, _tracking
from nnxlike._graph import unflatten
from nnxlike._transforms import _core
from nnxlike._variables import Variable


def _jax_leaves(lifted: _core.Lifted) -> list:
    return [x for i, x in enumerate(lifted.leaves) if i not in lifted.graph_pos]


def _with_jax_leaves(lifted: _core.Lifted, jleaves: Sequence) -> list:
    leaves = list(lifted.leaves)
    it = iter(jleaves)
    for i in range(len(leaves)):
        if i not in lifted.graph_pos:
            leaves[i] = next(it)
    return leaves


def _lifted_call(lifted: _core.Lifted, fn: Callable, statics: list, unpack=True):
    """A pure function ``(arrays, jax_leaves) -> (new_arrays, out_leaves)``."""

    def pure(arrays, jleaves):
        tree, copies = lifted.rebuild(arrays, _with_jax_leaves(lifted, jleaves))
        out = fn(*tree) if unpack else fn(tree)
        collected = _core.collect(lifted, copies, out)
        statics.append(collected.static())
        return collected.arrays, collected.out_leaves

    return pure


def cond(
    pred: Any,
    true_fun: Callable,
    false_fun: Callable,
    *operands: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.cond`` with objects among the operands, updated in place.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> counter = nnx.Variable(jnp.array(0))
    >>> def inc(c): c.value = c.value + 1
    >>> def dec(c): c.value = c.value - 1
    >>> nnx.cond(jnp.array(True), inc, dec, counter)
    >>> int(counter.value)
    1
    """
    return switch(
        jax.numpy.where(pred, 0, 1),
        (true_fun, false_fun),
        *operands,
        graph=graph,
        graph_updates=graph_updates,
        _fn="cond",
    )


def switch(
    index: Any,
    branches: Sequence[Callable],
    *operands: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    _fn: str = "switch",
) -> Any:
    """``jax.lax.switch`` with objects among the operands, updated in place."""
    lifted = _core.Lifted.from_args(
        operands, graph=graph, graph_updates=graph_updates, fn=_fn
    )
    statics: list = []

    def checked(branch: Callable) -> Callable:
        pure = _lifted_call(lifted, branch, statics)

        # Compare GraphDefs as each branch is traced: a branch that adds a
        # Variable returns more arrays, and jax.lax.switch would otherwise fail
        # first with a message about list lengths instead of attributes.
        def run(arrays, jleaves):
            out = pure(arrays, jleaves)
            if statics[-1][0] != statics[0][0]:
                raise _errors.StructureError(
                    "cond/switch: the branches leave the objects with different "
                    "structures (an attribute added or removed in one branch only). "
                    "Make every branch create the same attributes, or create them "
                    "before the cond."
                )
            return out

        return run

    new_arrays, out_leaves = jax.lax.switch(
        index, [checked(b) for b in branches], lifted.arrays(), _jax_leaves(lifted)
    )
    return _core.write_back(lifted, statics[0], new_arrays, out_leaves)


def remat(
    f: Callable | None = None,
    *,
    prevent_cse: bool = True,
    static_argnums: int | tuple[int, ...] = (),
    policy: Callable | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.checkpoint`` (rematerialisation) over a function taking objects."""
    if f is None:
        return functools.partial(
            remat,
            prevent_cse=prevent_cse,
            static_argnums=static_argnums,
            policy=policy,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "remat")
    static = (static_argnums,) if isinstance(static_argnums, int) else static_argnums

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        call, dyn = _core.bind_static(f, args, static)
        lifted = _core.Lifted.from_args(
            dyn, graph=graph, graph_updates=graph_updates, fn="remat"
        )
        statics: list = []
        pure = _lifted_call(lifted, call, statics)
        new_arrays, out_leaves = jax.checkpoint(
            pure, prevent_cse=prevent_cse, policy=policy
        )(lifted.arrays(), _jax_leaves(lifted))
        return _core.write_back(lifted, statics[-1], new_arrays, out_leaves)

    return wrapper


checkpoint = remat


def eval_shape(
    f: Callable,
    *args: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``f`` abstractly: objects it returns hold ``ShapeDtypeStruct`` values.

    No memory is allocated for parameters, so this is how to build a large model
    "on paper" (e.g. to plan sharding or to restore a checkpoint into).

    >>> import nnxlike as nnx
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(1024, 1024, rngs=nnx.Rngs(0)))
    >>> type(abstract.kernel.value).__name__, abstract.kernel.value.shape
    ('ShapeDtypeStruct', (1024, 1024))
    """
    _core.refuse_bound_method(f, "eval_shape")
    graph, graph_updates = _config.resolve(graph, graph_updates)
    if graph and not graph_updates:
        # As flax.nnx: without graph updates eval_shape sees its arguments as a
        # pytree, where one Variable reached twice is a duplicate.
        _refuse_duplicates("eval_shape", (args, kwargs))
    lifted = _core.Lifted.from_args(
        (args, kwargs), graph=graph, graph_updates=graph_updates, fn="eval_shape"
    )
    statics: list = []

    def call(tree):
        a, k = tree
        return f(*a, **k)

    inner = _lifted_call(lifted, call, statics, unpack=False)
    boxed: list = []

    def pure(arrays, jleaves):
        # hijax Variables hold a box: its contents get the abstract value, and
        # the result is boxed again below (eval_shape would give a BoxTy).
        new, out = inner(arrays, jleaves)
        boxed[:] = [i for i, a in enumerate(new) if _hijax.is_box(a)]
        return [_hijax.get(a) if _hijax.is_box(a) else a for a in new], out

    new_arrays, out_leaves = jax.eval_shape(pure, lifted.arrays(), _jax_leaves(lifted))
    for i in boxed:
        new_arrays[i] = _hijax.new_box(new_arrays[i])
    graphdef, _origins, out_treedef, out_graph_pos, _ = statics[-1][:5]
    # Abstract results never overwrite the caller's objects: build new ones.
    _, out_nodes = unflatten(graphdef, new_arrays)
    full = list(out_leaves)
    for i, node in zip(out_graph_pos, out_nodes):
        full[i] = node
    return out_treedef.unflatten(full)


def _refuse_duplicates(fn: str, tree: Any) -> None:
    """A Variable at two pytree positions of ``tree`` raises flax's message."""
    first: dict[int, str] = {}
    is_var = lambda x: isinstance(x, Variable)  # noqa: E731
    for path, leaf in jtu.tree_leaves_with_path(tree, is_leaf=is_var):
        if not isinstance(leaf, Variable):
            continue
        where = jtu.keystr(path)
        if id(leaf) in first:
            raise ValueError(
                _errors.VARIABLE_ALIASING.format(
                    var=type(leaf).__name__, first=first[id(leaf)], second=where, fn=fn
                )
            )
        first[id(leaf)] = where


# -- loops ------------------------------------------------------------------------


def _loop_body(lifted: _core.Lifted, name: str):
    """Helpers turning a loop value into carry arrays and back."""

    def to_tree(carry):
        arrays, jleaves = carry
        tree, copies = lifted.rebuild(arrays, _with_jax_leaves(lifted, jleaves))
        return tree, copies

    def from_tree(tree, copies) -> tuple:
        out = _core.Lifted.from_args(tree)
        if out.flat.graphdef != lifted.flat.graphdef or out.treedef != lifted.treedef:
            raise _errors.StructureError(
                f"{name}: the body must return a value with the same structure as "
                f"the initial value (same objects, same attributes, same pytree), "
                f"got a different one. Create new attributes before the loop."
            )
        for k, obj in enumerate(out.flat.objects):
            if isinstance(obj, Variable) and copies.origin.get(id(obj)) != k:
                # A new Variable in place of the carried one: JAX would carry
                # its value, but it is not the object the caller holds.
                path = out.flat.graphdef.paths[out.flat.leaves.index(obj)]
                raise ValueError(
                    f"{name}: Variable identity must be preserved across "
                    f"iterations: the body replaced the {type(obj).__name__} at "
                    f"{_errors.path_str(path)} with a new Variable. Update it in "
                    "place instead (`variable[...] = new_value`)."
                )
        return (out.arrays(), _jax_leaves(out))

    return to_tree, from_tree


def _finish_loop(lifted: _core.Lifted, carry) -> Any:
    arrays, jleaves = carry
    try:
        for v, a in zip(lifted.flat.leaves, arrays):
            _core._set_raw(v, a)
    finally:
        _tracking.note_value_write()
    if lifted.slots:
        _core.flush_slots(lifted)
    return lifted.rebuild_with(lifted.nodes, _with_jax_leaves(lifted, jleaves))


def while_loop(
    cond_fun: Callable,
    body_fun: Callable,
    init_val: Any,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.while_loop`` whose value may hold objects (updated in place).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> v = nnx.Variable(jnp.array(1))
    >>> def body(v):
    ...     v.value = v.value * 2
    ...     return v
    >>> _ = nnx.while_loop(lambda v: v.value < 100, body, v)
    >>> int(v.value)
    128
    """
    lifted = _core.Lifted.from_args(
        init_val, graph=graph, graph_updates=graph_updates, fn="while_loop"
    )
    to_tree, from_tree = _loop_body(lifted, "while_loop")

    def pure_cond(carry):
        tree, _ = to_tree(carry)
        return cond_fun(tree)

    def pure_body(carry):
        tree, copies = to_tree(carry)
        return from_tree(body_fun(tree), copies)

    carry = jax.lax.while_loop(
        pure_cond, pure_body, (lifted.arrays(), _jax_leaves(lifted))
    )
    return _finish_loop(lifted, carry)


def fori_loop(
    lower: int,
    upper: int,
    body_fun: Callable,
    init_val: Any,
    *,
    unroll: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.fori_loop`` whose value may hold objects (updated in place)."""
    lifted = _core.Lifted.from_args(
        init_val, graph=graph, graph_updates=graph_updates, fn="fori_loop"
    )
    to_tree, from_tree = _loop_body(lifted, "fori_loop")

    def pure_body(i, carry):
        tree, copies = to_tree(carry)
        return from_tree(body_fun(i, tree), copies)

    kwargs = {} if unroll is None else {"unroll": unroll}
    carry = jax.lax.fori_loop(
        lower, upper, pure_body, (lifted.arrays(), _jax_leaves(lifted)), **kwargs
    )
    return _finish_loop(lifted, carry)
