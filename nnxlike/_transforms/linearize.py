"""``nnx.jvp`` and ``nnx.vjp`` over objects.

Design note: the same plan as ``nnx.grad`` (``autodiff.py``). The primals are
lifted once (``_core.Lifted``); for a primal holding objects, the Variables that
match ``wrt`` (``Param`` by default) are the differentiated inputs and its
tangent / cotangent is a ``State`` keyed by paths inside that primal. Every other
Variable (BatchNorm statistics, RNG counters) rides along undifferentiated and is
written back once the forward pass has run, like in ``jit``. Primals without
objects are differentiated as plain pytrees, as ``jax.jvp`` / ``jax.vjp`` would.
A primal that mixes objects and arrays (``(model, x)``) is an object primal: only
its Variables are differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnxlike._filters import Filter
from nnxlike._graph import flatten, is_graph_node
from nnxlike._state import State
from nnxlike._transforms import _core
from nnxlike._transforms.autodiff import (
    _contains_graph,
    _describe,
    interleave,
    select_variables,
    state_of,
)
from nnxlike._variables import Param, Variable


class _Plan:
    """Which Variables of which primal are differentiated."""

    def __init__(self, primals: tuple, wrt: Filter, modes: tuple = (None, None)):
        graph, graph_updates = modes
        self.lifted = _core.Lifted.from_args(
            (primals, {}), graph=graph, graph_updates=graph_updates, fn="jvp"
        )
        var_index = self.lifted.index_by_id()
        # Per primal: None for a plain primal, else [(path, variable index)].
        self.chosen: list[list[tuple] | None] = []
        self.diff_idx: list[int] = []
        for p in primals:
            if not _contains_graph(p):
                self.chosen.append(None)
                continue
            self.chosen.append(select_variables(p, wrt, var_index, self.diff_idx))
        diff = set(self.diff_idx)
        n = len(self.lifted.flat.leaves)
        self.nondiff_idx = [i for i in range(n) if i not in diff]
        self.plain = [i for i, c in enumerate(self.chosen) if c is None]

    def diff_arrays(self) -> list:
        arrays = self.lifted.arrays()
        return [arrays[i] for i in self.diff_idx]

    def nondiff_arrays(self) -> list:
        arrays = self.lifted.arrays()
        return [arrays[i] for i in self.nondiff_idx]

    def pure(self, f: Callable, name: str, has_aux: bool, nondiff: list, box: dict):
        """``(diff_arrays, plain_primals) -> (out, (new_arrays, aux_leaves))``."""

        def run(diff_arrays: list, plain: tuple):
            full = interleave(self.diff_idx, diff_arrays, self.nondiff_idx, nondiff)
            (args, _), copies = self.lifted.rebuild(full)
            args = list(args)
            for k, pos in enumerate(self.plain):
                args[pos] = plain[k]
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

    def states(self, values: list) -> list:
        """Per-Variable values (``diff_idx`` order) as one State per object primal."""
        by_idx = dict(zip(self.diff_idx, values))
        variables = self.lifted.flat.leaves
        out = []
        for picked in self.chosen:
            if picked is None:
                out.append(None)
                continue
            out.append(state_of(picked, by_idx, variables))
        return out


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
    f: Callable,
    primals: tuple | list,
    tangents: tuple | list,
    *,
    has_aux: bool = False,
    wrt: Filter = Param,
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

    Returns:
        ``(primals_out, tangents_out)``, or ``(primals_out, tangents_out, aux)``
        with ``has_aux=True``.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp: got {len(primals)} primal(s) but {len(tangents)} tangent(s); "
            "give one tangent per primal."
        )
    plan = _Plan(primals, wrt, (graph, graph_updates))
    t_diff: list = []
    diff = plan.diff_arrays()
    given: dict[int, Any] = {}
    for k, (t, picked) in enumerate(zip(tangents, plan.chosen)):
        if picked is not None:
            for idx, v in _tangent_values(t, picked, f"jvp: tangent {k}").items():
                given.setdefault(idx, v)
    for idx, a in zip(plan.diff_idx, diff):
        t = given.get(idx)
        t_diff.append(jnp.zeros_like(a) if t is None else jnp.asarray(t, a.dtype))
    plain = tuple(primals[i] for i in plan.plain)
    t_plain = tuple(tangents[i] for i in plan.plain)
    box: dict[str, Any] = {}
    run = plan.pure(f, "jvp", has_aux, plan.nondiff_arrays(), box)
    out, out_dot, new = jax.jvp(run, (diff, plain), (t_diff, t_plain), has_aux=True)
    aux = plan.finish(box, new)
    return (out, out_dot, aux) if has_aux else (out, out_dot)


def vjp(
    f: Callable,
    *primals: Any,
    has_aux: bool = False,
    wrt: Filter = Param,
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

    Returns:
        ``(primals_out, vjp_fn)``, or ``(primals_out, vjp_fn, aux)`` with
        ``has_aux=True``.
    """
    plan = _Plan(primals, wrt, (graph, graph_updates))
    box: dict[str, Any] = {}
    run = plan.pure(f, "vjp", has_aux, plan.nondiff_arrays(), box)
    plain = tuple(primals[i] for i in plan.plain)
    out, pullback, new = jax.vjp(run, plan.diff_arrays(), plain, has_aux=True)
    aux = plan.finish(box, new)

    def vjp_fn(cotangent: Any) -> tuple:
        g_diff, g_plain = pullback(cotangent)
        result = plan.states(list(g_diff))
        for k, pos in enumerate(plan.plain):
            result[pos] = g_plain[k]
        return tuple(result)

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)
