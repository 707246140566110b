"""``nnx.jvp`` and ``nnx.vjp`` over objects.

Design note: the same plan as ``nnx.grad`` (``autodiff.py``). The primals are
lifted once (``_core.Lifted``); for a primal holding objects, the Variables that
match ``wrt`` (``Param`` by default) are the differentiated inputs and its
tangent / cotangent is a ``State`` keyed by paths inside that primal. Every other
Variable (BatchNorm statistics, RNG counters) rides along undifferentiated and is
written back once the forward pass has run, like in ``jit``. Primals without
objects are differentiated as plain pytrees, as ``jax.jvp`` / ``jax.vjp`` would.
A primal that mixes objects and arrays (``(model, x)``) is an object primal: only
its Variables are differentiated. In tree mode (``graph=False`` or
``graph_updates=False``) every array leaf of every primal is differentiated and
(co)tangents are shaped like the primals (an object of cotangents for an
object), as in flax.nnx.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from nnxlike import _config
from nnxlike._filters import Filter
from nnxlike._graph import flatten, is_graph_node, unflatten
from nnxlike._state import State
from nnxlike._transforms import _core
from nnxlike._transforms.autodiff import (
    _contains_graph,
    _describe,
    _wrt,
    interleave,
    select_variables,
    state_of,
)
from nnxlike._variables import Variable


class _Plan:
    """Which Variables and leaves of which primal are differentiated.

    Per primal, one of: ``("plain", treedef, positions)`` (no objects: every
    leaf, as ``jax.vjp``), ``("object", chosen)`` (graph mode: the ``wrt``
    Variables, a State comes back) or ``("tree", treedef, items)`` (tree mode,
    ``graph=False`` or ``graph_updates=False``: every array leaf, and the
    cotangent is shaped like the primal, as in flax.nnx).
    """

    def __init__(
        self, primals: tuple, wrt: Filter | None, modes: tuple = (None, None), fn="jvp"
    ):
        graph, graph_updates = _config.resolve(*modes)
        wrt = _wrt(wrt, not (graph and graph_updates), fn)
        self.lifted = _core.Lifted.from_args(
            (primals, {}), graph=graph, graph_updates=graph_updates, fn=fn
        )
        tree_mode = not (graph and graph_updates)
        var_index = self.lifted.index_by_id()
        self.kinds: list[tuple] = []
        self.diff_idx: list[int] = []
        self.diff_leaf: list[int] = []  # positions in lifted.leaves
        pos = 0
        for p in primals:
            leaves, treedef = jtu.tree_flatten(p, is_leaf=is_graph_node)
            positions = list(range(pos, pos + len(leaves)))
            pos += len(leaves)
            if not any(is_graph_node(x) for x in leaves):
                self.diff_leaf.extend(positions)
                self.kinds.append(("plain", treedef, positions))
            elif not tree_mode:
                chosen = select_variables(p, wrt, var_index, self.diff_idx)
                self.kinds.append(("object", chosen))
            else:
                items = []
                for j, leaf in zip(positions, leaves):
                    if is_graph_node(leaf):
                        chosen = select_variables(leaf, ..., var_index, self.diff_idx)
                        items.append(("node", j, chosen))
                    else:
                        self.diff_leaf.append(j)
                        items.append(("leaf", j, None))
                self.kinds.append(("tree", treedef, items))
        diff = set(self.diff_idx)
        n = len(self.lifted.flat.leaves)
        self.nondiff_idx = [i for i in range(n) if i not in diff]

    def diff_arrays(self) -> list:
        arrays = self.lifted.arrays()
        return [arrays[i] for i in self.diff_idx]

    def diff_leaves(self) -> list:
        return [self.lifted.leaves[j] for j in self.diff_leaf]

    def nondiff_arrays(self) -> list:
        arrays = self.lifted.arrays()
        return [arrays[i] for i in self.nondiff_idx]

    def pure(self, f: Callable, name: str, has_aux: bool, nondiff: list, box: dict):
        """``(diff_arrays, diff_leaves) -> (out, (new_arrays, aux_leaves))``."""

        def run(diff_arrays: list, diff_leaves: list):
            full = interleave(self.diff_idx, diff_arrays, self.nondiff_idx, nondiff)
            leaves = list(self.lifted.leaves)
            for j, x in zip(self.diff_leaf, diff_leaves):
                leaves[j] = x
            (args, _), copies = self.lifted.rebuild(full, leaves)
            out = f(*args)
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        f"{name}({getattr(f, '__name__', 'f')}, has_aux=True): the "
                        "function must return a pair (out, aux), got "
                        f"{_describe(out)}."
                    )
                out, aux = out
            else:
                aux = None
            if _contains_graph(out):
                raise TypeError(
                    f"{name}({getattr(f, '__name__', 'f')}): the differentiated "
                    "output holds an nnx object; return arrays (put objects in the "
                    "aux output with has_aux=True)."
                )
            collected = _core.collect(self.lifted, copies, aux)
            box["static"] = collected.static()
            return out, (collected.arrays, collected.out_leaves)

        return run

    def finish(self, box: dict, new: tuple) -> Any:
        """Write the forward pass's Variable changes back; return the aux output."""
        new_arrays, aux_leaves = new
        return _core.write_back(self.lifted, box["static"], new_arrays, aux_leaves)

    def results(self, values: list, leaf_values: list) -> tuple:
        """Per primal: its (co)tangent from per-Variable and per-leaf values."""
        by_idx = dict(zip(self.diff_idx, values))
        by_leaf = dict(zip(self.diff_leaf, leaf_values))
        variables = self.lifted.flat.leaves
        rebuilt = None
        out = []
        for kind in self.kinds:
            if kind[0] == "plain":
                out.append(kind[1].unflatten([by_leaf[j] for j in kind[2]]))
            elif kind[0] == "object":
                out.append(state_of(kind[1], by_idx, variables))
            else:
                if rebuilt is None:  # objects of cotangents, sharing kept
                    arrays = self.lifted.arrays()
                    g = [by_idx.get(i, a) for i, a in enumerate(arrays)]
                    rebuilt = unflatten(self.lifted.flat.graphdef, g)
                graph_pos = self.lifted.graph_pos
                out.append(
                    kind[1].unflatten(
                        [
                            rebuilt[graph_pos.index(j)] if how == "node" else by_leaf[j]
                            for how, j, _ in kind[2]
                        ]
                    )
                )
        return tuple(out)


def _tangent_values(t: Any, picked: list, where: str) -> dict[int, Any]:
    """``{variable index: tangent array}`` from a State / object / dict tangent."""
    is_object = is_graph_node(t)
    if is_object:
        flat = flatten(t)
        given = {
            p: v._raw_value
            for p, v in zip(flat.graphdef.paths, flat.leaves)
            if isinstance(v, Variable)
        }
    else:
        if isinstance(t, dict):
            t = State(t)
        if not isinstance(t, State):
            raise TypeError(
                f"{where}: the tangent of an object primal must be an nnx.State "
                f"(e.g. `nnx.state(model, nnx.Param)` mapped to tangents), an "
                f"object of the same structure, or a nested dict; got "
                f"{type(t).__name__}."
            )
        given = {
            p: v.value if isinstance(v, Variable) else v
            for p, v in t.flat_dict().items()
        }
    wanted = {p for p, _ in picked}
    # An object tangent holds every Variable; a State must hold only wanted ones.
    extra = [] if is_object else [p for p in given if p not in wanted]
    if extra:
        raise ValueError(
            f"{where}: the tangent has paths {extra} that are not differentiated "
            f"Variables of the primal; the differentiated paths are "
            f"{sorted(wanted, key=str)}."
        )
    return {idx: given[p] for p, idx in picked if p in given}


def jvp(
    f: Callable | None = None,
    primals: tuple | list | None = None,
    tangents: tuple | list | None = None,
    *,
    has_aux: bool = False,
    wrt: Filter | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``jax.jvp``, lifted over objects (see the module note).

    The tangent of an object primal is an ``nnx.State`` of its differentiated
    Variables (``wrt``, ``Param`` by default), an object of the same structure,
    or a nested dict; paths it leaves out get a zero tangent. Variable changes
    made by ``f`` (BatchNorm statistics, RNG counters) are written back.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((3, 2))
    >>> t = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    >>> y, y_dot = nnx.jvp(lambda m, x: m(x), (model, x), (t, jnp.zeros_like(x)))
    >>> y_dot.ravel().tolist()  # d/dw (x @ w + b) along all-ones = sum(x) + 1
    [3.0, 3.0, 3.0]

    ``nnx.jvp(f)`` and ``nnx.jvp(has_aux=..., graph=...)`` without primals
    return the function of ``(primals, tangents)`` (decorator use, as flax.nnx).

    Returns:
        ``(primals_out, tangents_out)``, or ``(primals_out, tangents_out, aux)``
        with ``has_aux=True``.
    """
    modes = {"graph": graph, "graph_updates": graph_updates}
    if f is None:
        return functools.partial(jvp, has_aux=has_aux, wrt=wrt, **modes)
    if primals is None or tangents is None:
        return functools.partial(jvp, f, has_aux=has_aux, wrt=wrt, **modes)
    _core.refuse_bound_method(f, "jvp")
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp: got {len(primals)} primal(s) but {len(tangents)} tangent(s); "
            "give one tangent per primal."
        )
    plan = _Plan(primals, wrt, (graph, graph_updates), "jvp")
    given: dict[int, Any] = {}
    by_leaf: dict[int, Any] = {}
    for k, (t, kind) in enumerate(zip(tangents, plan.kinds)):
        where = f"jvp: tangent {k}"
        if kind[0] == "object":
            for idx, v in _tangent_values(t, kind[1], where).items():
                given.setdefault(idx, v)
            continue
        t_leaves = kind[1].flatten_up_to(t)
        if kind[0] == "plain":
            by_leaf.update(zip(kind[2], t_leaves))
            continue
        for (how, j, chosen), tl in zip(kind[2], t_leaves):
            if how == "leaf":
                by_leaf[j] = tl
            else:
                for idx, v in _tangent_values(tl, chosen, where).items():
                    given.setdefault(idx, v)
    diff = plan.diff_arrays()
    t_diff = []
    for idx, a in zip(plan.diff_idx, diff):
        t = given.get(idx)
        t_diff.append(jnp.zeros_like(a) if t is None else jnp.asarray(t, a.dtype))
    t_leaves = [by_leaf[j] for j in plan.diff_leaf]
    box: dict[str, Any] = {}
    run = plan.pure(f, "jvp", has_aux, plan.nondiff_arrays(), box)
    out, out_dot, new = jax.jvp(
        run, (diff, plan.diff_leaves()), (t_diff, t_leaves), has_aux=True
    )
    aux = plan.finish(box, new)
    return (out, out_dot, aux) if has_aux else (out, out_dot)


def vjp(
    f: Callable | None = None,
    *primals: Any,
    has_aux: bool = False,
    wrt: Filter | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``jax.vjp``, lifted over objects (see the module note).

    ``vjp_fn(cotangent)`` returns one cotangent per primal: an ``nnx.State`` of
    the differentiated Variables (``wrt``, ``Param`` by default) for an object
    primal, a pytree like the primal otherwise. Variable changes made by ``f``
    in the forward pass are written back when ``vjp`` returns.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> y, vjp_fn = nnx.vjp(lambda m, x: m(x), model, jnp.ones((3, 2)))
    >>> g_model, g_x = vjp_fn(jnp.ones_like(y))
    >>> g_model["kernel"].value.ravel().tolist(), g_model["bias"].value.tolist()
    ([3.0, 3.0], [3.0])

    ``nnx.vjp(f)`` and ``nnx.vjp(has_aux=..., graph=...)`` without primals
    return the function of the primals (decorator use, as flax.nnx).

    Returns:
        ``(primals_out, vjp_fn)``, or ``(primals_out, vjp_fn, aux)`` with
        ``has_aux=True``.
    """
    modes = {"graph": graph, "graph_updates": graph_updates}
    if f is None:
        return functools.partial(vjp, has_aux=has_aux, wrt=wrt, **modes)
    if not primals:  # nnx.vjp(f): a function of the primals
        return functools.partial(vjp, f, has_aux=has_aux, wrt=wrt, **modes)
    _core.refuse_bound_method(f, "vjp")
    plan = _Plan(primals, wrt, (graph, graph_updates), "vjp")
    box: dict[str, Any] = {}
    run = plan.pure(f, "vjp", has_aux, plan.nondiff_arrays(), box)
    out, pullback, new = jax.vjp(
        run, plan.diff_arrays(), plan.diff_leaves(), has_aux=True
    )
    aux = plan.finish(box, new)

    def vjp_fn(cotangent: Any) -> tuple:
        g_diff, g_leaves = pullback(cotangent)
        return plan.results(list(g_diff), list(g_leaves))

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)
