"""``nnx.grad`` and ``nnx.value_and_grad`` over objects.

Design note: the arguments are lifted once (``_core.Lifted``); the Variables of
the differentiated arguments that match the ``wrt`` filter (``Param`` by default,
or ``DiffState(argnum, filter)``) become the differentiated input of one
``jax.value_and_grad`` call, everything else (BatchNorm statistics, RNG counters,
other arguments) rides along undifferentiated and is written back like in
``jit``. Gradients keep each differentiated argument's pytree shape, with a
``State`` keyed by paths for every object in it (a Variable for a Variable), the
form ``Optimizer.update`` takes; a Variable shared by two objects gets its
gradient once, where it is first reached. Plain leaves are differentiated as
``jax.grad`` would.

Tree mode (``graph=False`` or ``graph_updates=False``), as flax.nnx: every array
leaf of a differentiated argument is differentiated (``wrt`` and ``DiffState``
do not apply; a ``DiffState`` is refused) and the gradients are objects of the
arguments' structure (a ``Linear`` of gradients), rebuilt from the one GraphDef
so that sharing between them is kept.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu

from nnxlike import _config, _errors
from nnxlike._filters import Filter, to_predicate
from nnxlike._graph import flatten, is_graph_node, unflatten
from nnxlike._state import State
from nnxlike._transforms import _core, _traps
from nnxlike._variables import Param, Variable, new_variable


@dataclasses.dataclass(frozen=True)
class DiffState:
    """Differentiate argument ``argnum`` with respect to Variables matching ``filter``.

    >>> import nnxlike as nnx
    >>> nnx.DiffState(0, nnx.Param)
    DiffState(argnum=0, filter=<class 'nnxlike._variables.Param'>)
    """

    argnum: int
    filter: Filter = Param

    def map_prefix(self, path: tuple, variable: Any) -> bool:
        """Whether the Variable at ``path`` is differentiated (a prefix mapping)."""
        return to_predicate(self.filter)(path, variable)


def _contains_graph(x: Any) -> bool:
    return any(
        is_graph_node(leaf) for leaf in jtu.tree_leaves(x, is_leaf=is_graph_node)
    )


def _describe(x: Any) -> str:
    # Inside the trace the loss is a tracer; name what the user returned.
    if isinstance(x, jax.Array):
        return f"a single array of shape {tuple(x.shape)}"
    if isinstance(x, tuple):
        return f"a tuple of length {len(x)}"
    return type(x).__name__


def _wrt(wrt: Filter | None, tree_mode: bool, fn: str) -> Filter:
    """The ``wrt`` filter (``Param`` by default); tree mode differentiates all."""
    if wrt is not None and tree_mode:
        # Ignoring it would differentiate other Variables than asked, silently.
        raise ValueError(
            f"nnx.{fn}(wrt={_errors.filter_repr(wrt)}) with graph=False or "
            "graph_updates=False: without graph updates every array leaf of the "
            "differentiated arguments is differentiated, so `wrt` cannot apply. "
            f"Split the Variables to differentiate into their own argument "
            f"(`graphdef, params, rest = nnx.split(model, {_errors.filter_repr(wrt)}, "
            "...)`), or use graph mode with graph updates (the defaults)."
        )
    return Param if wrt is None else wrt


def _specs(argnums: int | DiffState | Sequence[int | DiffState], wrt: Filter):
    single = isinstance(argnums, (int, DiffState))
    items = (argnums,) if single else tuple(argnums)
    specs = []
    for a in items:
        if isinstance(a, DiffState):
            specs.append((a.argnum, a.filter))
        elif isinstance(a, int):
            specs.append((a, wrt))
        else:
            raise TypeError(
                f"grad: argnums entries must be ints or nnx.DiffState, got {a!r}."
            )
    return single, specs


def value_and_grad(
    f: Callable | None = None,
    *,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    wrt: Filter | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``jax.value_and_grad``, lifted over objects (see the module note).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> loss_fn = lambda m, x: m(x).sum()
    >>> loss, grads = nnx.value_and_grad(loss_fn)(model, jnp.ones((4, 2)))
    >>> grads.kernel.value.tolist(), grads.bias.value.tolist()
    ([[4.0], [4.0]], [4.0])
    """
    if f is None:
        return functools.partial(
            value_and_grad,
            argnums=argnums,
            has_aux=has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            wrt=wrt,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "grad")
    # Resolved when decorated, as flax does (set_graph_mode around the def).
    graph, graph_updates = _config.resolve(graph, graph_updates)
    _core.check_prefix(argnums, "argnums", "grad", graph, graph_updates)
    # Tree mode (graph=False or graph_updates=False): flax differentiates the
    # arguments as pytrees, every array leaf, and returns gradients shaped like
    # the arguments (a Linear of gradients for a Linear).
    tree_mode = not (graph and graph_updates)
    wrt = _wrt(wrt, tree_mode, "grad")
    single, specs = _specs(argnums, wrt)
    explicit_filters = [
        isinstance(a, DiffState)
        for a in ((argnums,) if single else tuple(argnums))  # type: ignore[arg-type]
    ]

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for argnum, _ in specs:
            if not -len(args) <= argnum < len(args):
                raise IndexError(
                    f"grad({getattr(f, '__name__', 'f')}): argnums={argnum} but the "
                    f"function was called with {len(args)} positional argument(s)."
                )
        lifted = _core.Lifted.from_args(
            (args, kwargs), graph=graph, graph_updates=graph_updates, fn="grad"
        )
        var_index = lifted.index_by_id()
        # Where each positional argument's leaves start in lifted.leaves.
        starts = [0]
        for a in args:
            starts.append(starts[-1] + len(jtu.tree_leaves(a, is_leaf=is_graph_node)))
        # Per spec: the argument's treedef and, per leaf, how to build its
        # gradient: ("state", chosen, is_variable) for a graph node in graph
        # mode, ("node", pos) in tree mode, ("leaf", pos) for a plain JAX leaf.
        parts: list[tuple[Any, list]] = []
        diff_idx: list[int] = []
        diff_leaf: list[int] = []
        for (argnum, filt), explicit in zip(specs, explicit_filters):
            argnum %= len(args)
            arg = args[argnum]
            if isinstance(arg, State) and not explicit:
                filt = ...  # a State is a pytree: all of it, as flax.nnx does
            if tree_mode:
                filt = ...
            a_leaves, a_treedef = jtu.tree_flatten(arg, is_leaf=is_graph_node)
            how = []
            for j, leaf in enumerate(a_leaves):
                pos = starts[argnum] + j
                if not is_graph_node(leaf):
                    if pos not in diff_leaf:
                        diff_leaf.append(pos)
                    how.append(("leaf", pos))
                elif tree_mode:
                    select_variables(leaf, ..., var_index, diff_idx)
                    how.append(("node", pos))
                else:
                    chosen = select_variables(leaf, filt, var_index, diff_idx, True)
                    how.append(("state", chosen, isinstance(leaf, Variable)))
            parts.append((a_treedef, how))
        if not diff_idx and not diff_leaf:
            # An empty gradient would train nothing, silently (issue 12.15).
            raise ValueError(_empty_selection(f, specs, args))
        if tree_mode and graph:
            _check_diff_aliasing(lifted, args, kwargs, specs)
        diff_set = set(diff_idx)
        nondiff_idx = [i for i in range(len(lifted.flat.leaves)) if i not in diff_set]
        arrays = lifted.arrays()
        box: dict[str, Any] = {}

        def pure(diff_arrays, diff_leaves, nondiff_arrays):
            full = interleave(diff_idx, diff_arrays, nondiff_idx, nondiff_arrays)
            leaves = list(lifted.leaves)
            for pos, x in zip(diff_leaf, diff_leaves):
                leaves[pos] = x
            (args2, kwargs2), copies = lifted.rebuild(full, leaves)
            try:
                out = f(*args2, **kwargs2)
            except _errors.TraceContextError as e:  # name the path and the writer
                raise _traps.explain_trace_context(e, f, "nnx.grad") from None
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        f"grad({getattr(f, '__name__', 'f')}, has_aux=True): the "
                        "function must return a pair (loss, aux), got "
                        f"{_describe(out)}."
                    )
                loss, aux = out
            else:
                loss, aux = out, None
            collected = _core.collect(lifted, copies, aux)
            box["static"] = collected.static()
            return loss, (collected.arrays, collected.out_leaves)

        (loss, (new_arrays, aux_leaves)), (g_diff, g_leaves) = jax.value_and_grad(
            pure,
            argnums=(0, 1),
            has_aux=True,
            holomorphic=holomorphic,
            allow_int=allow_int,
        )(
            [arrays[i] for i in diff_idx],
            [lifted.leaves[i] for i in diff_leaf],
            [arrays[i] for i in nondiff_idx],
        )
        aux = _core.write_back(lifted, box["static"], new_arrays, aux_leaves)

        # Assemble gradients, shaped like each differentiated argument.
        grad_of = dict(zip(diff_idx, g_diff))
        leaf_grad = dict(zip(diff_leaf, g_leaves))
        variables = lifted.flat.leaves
        rebuilt = None
        if tree_mode:
            # Objects of gradients with the arguments' structure (sharing kept).
            g_arrays = [grad_of.get(i, a) for i, a in enumerate(arrays)]
            rebuilt = unflatten(lifted.flat.graphdef, g_arrays)
        grads = []
        for a_treedef, how in parts:
            g_leaves_out = []
            for item in how:
                if item[0] == "leaf":
                    g_leaves_out.append(leaf_grad[item[1]])
                elif item[0] == "node":
                    g_leaves_out.append(_node_at(lifted, rebuilt, item[1]))
                else:
                    _, chosen, is_var = item
                    if is_var and chosen:
                        i = chosen[0][1]
                        g_leaves_out.append(_like(variables[i], grad_of[i]))
                    else:
                        g_leaves_out.append(state_of(chosen, grad_of, variables))
            grads.append(a_treedef.unflatten(g_leaves_out))
        g = grads[0] if single else tuple(grads)
        value = (loss, aux) if has_aux else loss
        return value, g

    return wrapper


def _node_at(lifted: _core.Lifted, rebuilt: tuple, pos: int) -> Any:
    """The rebuilt graph node standing at leaf position ``pos`` of the arguments."""
    return rebuilt[lifted.graph_pos.index(pos)]


def _like(variable: Any, value: Any) -> Any:
    """A gradient leaf shaped like ``variable`` (a raw array stays raw)."""
    if type(variable) is _core.RawSlot:
        return value
    return new_variable(type(variable), value, variable._metadata)


def _check_diff_aliasing(lifted, args: tuple, kwargs: dict, specs: list) -> None:
    """graph_updates=False: a Variable both differentiated and not is ambiguous."""
    diff_pos = {argnum % len(args) for argnum, _ in specs}
    groups = [(f"args[{i}]", a, i in diff_pos) for i, a in enumerate(args)] + [
        (k, v, False) for k, v in kwargs.items()
    ]
    _core.check_consistent_aliasing("grad", groups)


def grad(
    f: Callable | None = None,
    *,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    wrt: Filter | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``jax.grad``, lifted over objects; returns a ``State`` for objects.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> grads = nnx.grad(lambda m, x: (m(x) ** 2).mean())(model, jnp.ones((5, 3)))
    >>> {k: v.shape for k, v in grads.to_pure_dict().items()}
    {'kernel': (3, 2), 'bias': (2,)}
    """
    if f is None:
        return functools.partial(
            grad,
            argnums=argnums,
            has_aux=has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            wrt=wrt,
            graph=graph,
            graph_updates=graph_updates,
        )
    vg = value_and_grad(
        f,
        argnums=argnums,
        has_aux=has_aux,
        holomorphic=holomorphic,
        allow_int=allow_int,
        wrt=wrt,
        graph=graph,
        graph_updates=graph_updates,
    )

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    return wrapper


def _empty_selection(f: Callable, specs: list, args: tuple) -> str:
    """The message for differentiated arguments whose filters select nothing."""
    lines = []
    for argnum, filt in specs:
        arg = args[argnum]
        flat = flatten(arg)
        held = [
            f"{_errors.path_str(p)} ({type(v).__name__})"
            for p, v in zip(flat.graphdef.paths, flat.leaves)
        ]
        shown = ", ".join(held[:10]) + (
            f", ... ({len(held) - 10} more)" if len(held) > 10 else ""
        )
        lines.append(
            f"  argument {argnum} ({type(arg).__name__}) with filter "
            f"{_errors.filter_repr(filt)}; it holds: {shown or 'no Variables'}"
        )
    return _errors.GRAD_SELECTS_NOTHING.format(
        fn=getattr(f, "__name__", "f"), lines="\n".join(lines), argnum=specs[0][0]
    )


def state_of(chosen: list, value_of: dict, variables: list) -> State:
    """A State holding ``value_of[i]`` for each ``(path, i)`` in ``chosen``.

    Each leaf keeps the kind and metadata of Variable ``variables[i]`` (gradients,
    tangents and cotangents look like the parameters they belong to).
    """
    return State.from_flat(
        [p for p, _ in chosen],
        [
            value_of[i]
            if type(variables[i]) is _core.RawSlot  # a raw array: a raw leaf
            else new_variable(type(variables[i]), value_of[i], variables[i]._metadata)
            for _, i in chosen
        ],
    )


def select_variables(
    arg: Any, filt: Any, var_index: dict, diff_idx: list, dedup: bool = False
) -> list:
    """``[(path, index)]`` of the Variables in ``arg`` that ``filt`` picks.

    ``var_index`` maps ``id(variable)`` to its index among the lifted Variables;
    each picked index is appended to ``diff_idx`` once (shared Variables). With
    ``dedup``, a Variable already picked for an earlier node is left out of
    ``chosen`` (flax.nnx: a shared Variable's gradient is given once, where it
    is first reached).
    """
    pred = to_predicate(filt)
    flat = flatten(arg)
    chosen = []
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        idx = var_index.get(id(v))
        if idx is not None and pred(path, v):
            if idx not in diff_idx:
                diff_idx.append(idx)
            elif dedup:
                continue
            chosen.append((path, idx))
    return chosen


def interleave(diff_idx: list, diff: list, nondiff_idx: list, nondiff: list) -> list:
    """The lifted arrays in order, from the differentiated and the other ones."""
    full: list = [None] * (len(diff_idx) + len(nondiff_idx))
    for i, a in zip(diff_idx, diff):
        full[i] = a
    for i, a in zip(nondiff_idx, nondiff):
        full[i] = a
    return full
