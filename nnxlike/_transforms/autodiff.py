"""``nnx.grad`` and ``nnx.value_and_grad`` over objects.

Design note: the arguments are lifted once (``_core.Lifted``); the Variables of
the differentiated arguments that match the ``wrt`` filter (``Param`` by default,
or ``DiffState(argnum, filter)``) become the differentiated input of one
``jax.value_and_grad`` call, everything else (BatchNorm statistics, RNG counters,
other arguments) rides along undifferentiated and is written back like in
``jit``. Gradients of an object argument come back as a ``State`` keyed by paths
inside that argument, the form ``Optimizer.update`` takes. Arguments without
objects are differentiated as plain pytrees, as ``jax.grad`` would.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu

from nnxlike import _errors
from nnxlike._filters import Filter, to_predicate
from nnxlike._graph import flatten, is_graph_node
from nnxlike._state import State
from nnxlike._transforms import _core, _traps
from nnxlike._variables import Param, new_variable


@dataclasses.dataclass(frozen=True)
class DiffState:
    """Differentiate argument ``argnum`` with respect to Variables matching ``filter``.

    >>> import nnxlike as nnx
    >>> nnx.DiffState(0, nnx.Param)
    DiffState(argnum=0, filter=<class 'nnxlike._variables.Param'>)
    """

    argnum: int
    filter: Filter = Param


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
    wrt: Filter = Param,
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
        # Which Variables are differentiated, per spec (paths inside that arg).
        graph_specs: list[tuple[int, list[tuple]]] = []  # (spec pos, [(path, idx)])
        plain_argnums: list[int] = []
        diff_idx: list[int] = []
        for (argnum, filt), explicit in zip(specs, explicit_filters):
            arg = args[argnum]
            if isinstance(arg, State) and not explicit:
                filt = ...  # a State is a pytree: all of it, as flax.nnx does
            if _contains_graph(arg):
                chosen = select_variables(arg, filt, var_index, diff_idx)
                graph_specs.append((len(graph_specs) + len(plain_argnums), chosen))
            else:
                plain_argnums.append(argnum % len(args))
                graph_specs.append((-1, []))
        if not diff_idx and not plain_argnums:
            # An empty gradient would train nothing, silently (issue 12.15).
            raise ValueError(_empty_selection(f, specs, args))
        diff_set = set(diff_idx)
        nondiff_idx = [i for i in range(len(lifted.flat.leaves)) if i not in diff_set]
        arrays = lifted.arrays()
        box: dict[str, Any] = {}

        def pure(diff_arrays, plain_diff, nondiff_arrays):
            full = interleave(diff_idx, diff_arrays, nondiff_idx, nondiff_arrays)
            (args2, kwargs2), copies = lifted.rebuild(full)
            args2 = list(args2)
            for k, argnum in enumerate(plain_argnums):
                args2[argnum] = plain_diff[k]
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

        (loss, (new_arrays, aux_leaves)), (g_diff, g_plain) = jax.value_and_grad(
            pure,
            argnums=(0, 1),
            has_aux=True,
            holomorphic=holomorphic,
            allow_int=allow_int,
        )(
            [arrays[i] for i in diff_idx],
            tuple(args[a] for a in plain_argnums),
            [arrays[i] for i in nondiff_idx],
        )
        aux = _core.write_back(lifted, box["static"], new_arrays, aux_leaves)

        # Assemble gradients: a State per object argument, pytrees for the rest.
        grad_of = dict(zip(diff_idx, g_diff))
        variables = lifted.flat.leaves
        grads = []
        plain_iter = iter(g_plain)
        for kind, chosen in graph_specs:
            if kind < 0:
                grads.append(next(plain_iter))
                continue
            grads.append(state_of(chosen, grad_of, variables))
        g = grads[0] if single else tuple(grads)
        value = (loss, aux) if has_aux else loss
        return value, g

    return wrapper


def grad(
    f: Callable | None = None,
    *,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    wrt: Filter = Param,
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


def select_variables(arg: Any, filt: Any, var_index: dict, diff_idx: list) -> list:
    """``[(path, index)]`` of the Variables in ``arg`` that ``filt`` picks.

    ``var_index`` maps ``id(variable)`` to its index among the lifted Variables;
    each picked index is appended to ``diff_idx`` once (shared Variables).
    """
    pred = to_predicate(filt)
    flat = flatten(arg)
    chosen = []
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        idx = var_index.get(id(v))
        if idx is not None and pred(path, v):
            chosen.append((path, idx))
            if idx not in diff_idx:
                diff_idx.append(idx)
    return chosen


def interleave(diff_idx: list, diff: list, nondiff_idx: list, nondiff: list) -> list:
    """The lifted arrays in order, from the differentiated and the other ones."""
    full: list = [None] * (len(diff_idx) + len(nondiff_idx))
    for i, a in zip(diff_idx, diff):
        full[i] = a
    for i, a in zip(nondiff_idx, nondiff):
        full[i] = a
    return full
