"""``nnx.custom_vjp``: ``jax.custom_vjp`` for functions taking objects."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from nnxlike._transforms import _core
from nnxlike._variables import Variable, new_variable


class custom_vjp:  # noqa: N801 - mirrors jax.custom_vjp
    """``jax.custom_vjp`` for functions whose arguments may be objects.

    ``fwd(*args) -> (out, residuals)`` and ``bwd(residuals, g) -> cotangents``,
    where the cotangent of an object argument is a ``State`` shaped like
    ``nnx.state(arg)`` (missing paths count as zero). The function must not
    mutate its object arguments.
    """

    def __new__(cls, fun: Callable | None = None, *args: Any, **kwargs: Any):
        if fun is None:  # @nnx.custom_vjp(nondiff_argnums=...)
            return functools.partial(cls, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        fun: Callable,
        nondiff_argnums: tuple[int, ...] = (),
        *,
        graph: bool | None = None,
        graph_updates: bool | None = None,
    ):
        _core.refuse_bound_method(fun, "custom_vjp")
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.graph = graph
        self.graph_updates = graph_updates
        self.fwd: Callable | None = None
        self.bwd: Callable | None = None

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any) -> Any:
        from nnxlike._graph import is_graph_node, merge, split
        from nnxlike._state import State

        if self.fwd is None or self.bwd is None:
            raise TypeError(
                f"custom_vjp({self.fun.__name__}): call .defvjp(fwd, bwd) first."
            )
        is_obj = [
            any(is_graph_node(x) for x in jax.tree.leaves(a, is_leaf=is_graph_node))
            for a in args
        ]
        graphdefs = {}
        inputs = []
        for i, (a, obj) in enumerate(zip(args, is_obj)):
            if obj:
                gd, st = split(a, graph=self.graph)
                graphdefs[i] = gd
                inputs.append(st)
            else:
                inputs.append(a)
        nondiff = self.nondiff_argnums

        def rebuild(xs):
            return [
                merge(graphdefs[i], x) if i in graphdefs else x
                for i, x in enumerate(xs)
            ]

        fun, fwd, bwd = self.fun, self.fwd, self.bwd

        @functools.partial(jax.custom_vjp, nondiff_argnums=nondiff)
        def pure(*xs):
            return fun(*rebuild(xs))

        def pure_fwd(*xs):
            return fwd(*rebuild(xs))

        def pure_bwd(*rest):
            *nd, res, g = rest
            cts = list(bwd(*nd, res, g))
            diff_pos = [i for i in range(len(inputs)) if i not in nondiff]
            if len(cts) != len(diff_pos):
                raise TypeError(
                    f"custom_vjp({fun.__name__}): bwd returned {len(cts)} "
                    f"cotangents for {len(diff_pos)} differentiable arguments."
                )
            out = []
            for ct, i in zip(cts, diff_pos):
                if i in graphdefs:
                    primal = inputs[i]
                    given = ct.flat_dict() if isinstance(ct, State) else {}
                    pairs = [
                        (
                            p,
                            given[p]
                            if p in given
                            else jax.tree.map(jax.numpy.zeros_like, leaf),
                        )
                        for p, leaf in primal.flat_state()
                    ]
                    ct = State.from_flat(
                        [p for p, _ in pairs],
                        [
                            _match_leaf(leaf, c)
                            for (_, leaf), (_, c) in zip(primal.flat_state(), pairs)
                        ],
                    )
                out.append(ct)
            return tuple(out)

        pure.defvjp(pure_fwd, pure_bwd)
        return pure(*inputs)


def _match_leaf(primal_leaf: Any, ct: Any) -> Any:
    if isinstance(primal_leaf, Variable):
        value = ct._raw_value if isinstance(ct, Variable) else ct
        return new_variable(type(primal_leaf), value, primal_leaf._metadata)
    return ct
