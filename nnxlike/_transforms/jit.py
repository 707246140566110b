"""``nnx.jit``: ``jax.jit`` over objects, with write-back and a fast path.

Design note. Slow path (first call, or after any structural change): flatten the
arguments (``Lifted``), call one ``jax.jit``-compiled pure function
``_pure(static, donated_arrays, kept_arrays, leaves)`` whose static argument holds
the GraphDef, and write the results back (``_core.write_back``).

Fast path (every later call): the flattened arguments are cached per argument
set, keyed by the identities of the graph nodes and the pytree structure, and
valid while the global structure version (``_tracking``) is unchanged. A call is
then: read the raw arrays of the cached Variables, one call into the compiled
function, store the returned arrays into the same Variables. No graph walk, no
State, no GraphDef hashing (the static key is the same object every call).

What the traced function returns besides arrays (output structure, whether the
graph changed) is learnt at trace time and kept in ``_out_static`` by static key.
"""

from __future__ import annotations

import collections
import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _tracking
from nnxlike._graph import flatten, is_graph_node
from nnxlike._object import Object
from nnxlike._transforms import _core
from nnxlike._variables import Variable

_CACHE_SIZE = 16
_set_raw = _core._set_raw
_get_raw = Variable._raw_value.__get__
_consume = collections.deque(maxlen=0).extend
_GRAPH_TYPES = (Object, Variable)
_LEAF_TYPES = (jax.Array, np.ndarray, np.generic, float, int, complex)
_tracer_type = jax.core.Tracer


def _as_tuple(x: int | Sequence[int] | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int):
        return (x,)
    return tuple(x)


class JitWrapped:
    """The callable ``nnx.jit`` returns. ``.lower`` / ``.trace`` / ``.eval_shape``
    give access to JAX's AOT API on the lifted function."""

    def __init__(
        self,
        fun: Callable,
        *,
        static_argnums: int | Sequence[int] | None = None,
        static_argnames: str | Sequence[str] | None = None,
        donate_argnums: int | Sequence[int] | None = None,
        donate_argnames: str | Sequence[str] | None = None,
        in_shardings: Any = None,
        out_shardings: Any = None,
        **jit_kwargs: Any,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.bound_self = None
        if inspect.ismethod(fun) and is_graph_node(fun.__self__):
            # nnx.jit(model.__call__): the object becomes a real argument, so
            # its writes are lifted instead of tripping the closure check.
            self.fun = fun.__func__
            self.bound_self = fun.__self__
        self.static_argnums = _as_tuple(static_argnums)
        self.static_argnames = (
            (static_argnames,)
            if isinstance(static_argnames, str)
            else tuple(static_argnames or ())
        )
        self.donate_argnums = _as_tuple(donate_argnums)
        self.donate_argnames = (
            (donate_argnames,)
            if isinstance(donate_argnames, str)
            else tuple(donate_argnames or ())
        )
        self._plain_signature = (
            self.bound_self is None
            and not self.static_argnums
            and not self.static_argnames
        )
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self._out_static: dict[Any, tuple] = {}
        self._cache: OrderedDict = OrderedDict()
        # Positional layout of _pure: (static, donated, kept, leaves_d, leaves_k).
        donate = (1, 3) if (self.donate_argnums or self.donate_argnames) else ()
        self._jitted = jax.jit(
            self._pure, static_argnums=(0,), donate_argnums=donate, **jit_kwargs
        )

    # -- descriptor: @nnx.jit on a method ---------------------------------------
    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- phase 0: separate static arguments ---------------------------------------
    def _split_static(self, args: tuple, kwargs: dict):
        if self.bound_self is not None:
            args = (self.bound_self, *args)
        if not self.static_argnums and not self.static_argnames:
            return args, kwargs, ()
        n = len(args)
        nums = tuple(i % n for i in self.static_argnums if -n <= i < n)
        static = tuple((i, args[i]) for i in nums) + tuple(
            (k, kwargs[k]) for k in self.static_argnames if k in kwargs
        )
        dyn_args = tuple(a for i, a in enumerate(args) if i not in nums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        return dyn_args, dyn_kwargs, static

    def _rejoin_static(self, dyn_args: tuple, dyn_kwargs: dict, static: tuple):
        if not static:
            return dyn_args, dyn_kwargs
        args = list(dyn_args)
        kwargs = dict(dyn_kwargs)
        for key, value in static:
            if isinstance(key, int):
                args.insert(key, value)
            else:
                kwargs[key] = value
        return tuple(args), kwargs

    # -- the pure function JAX compiles ---------------------------------------------
    def _pure(self, static, donated, kept, leaves_donated, leaves_kept):
        lifted = static.lifted
        # Reassemble the Variable arrays and the plain JAX leaves in order.
        arrays: list = [None] * (len(donated) + len(kept))
        for i, a in zip(static.donated_idx, donated):
            arrays[i] = a
        for i, a in zip(static.kept_idx, kept):
            arrays[i] = a
        if self.in_shardings is not None:
            arrays = _constrain_tree(arrays, self.in_shardings)
        leaves = list(lifted.leaves)
        it_d, it_k = iter(leaves_donated), iter(leaves_kept)
        for i, flag in zip(static.jax_leaf_pos, static.leaf_donated):
            leaves[i] = next(it_d) if flag else next(it_k)
        # Merge fresh copies, call the user's function, flatten what it left.
        (dyn_args, dyn_kwargs), copies = lifted.rebuild(arrays, leaves)
        args, kwargs = self._rejoin_static(dyn_args, dyn_kwargs, static.static_args)
        out = self.fun(*args, **kwargs)
        collected = _core.collect(lifted, copies, out)
        self._out_static[static] = collected.static()
        out_leaves = collected.out_leaves
        if self.out_shardings is not None:
            out_leaves = _constrain_tree(out_leaves, self.out_shardings)
        return collected.arrays, out_leaves

    # -- slow path: full flatten -------------------------------------------------------
    def _build_entry(self, dyn_args, dyn_kwargs, static_args) -> _StaticKey:
        lifted = _core.Lifted.from_args((dyn_args, dyn_kwargs), track=True)
        n = len(lifted.flat.leaves)
        jax_leaf_pos = tuple(
            i for i in range(len(lifted.leaves)) if i not in lifted.graph_pos
        )
        donated_vars: set[int] = set()
        leaf_donated = (False,) * len(jax_leaf_pos)
        if self.donate_argnums or self.donate_argnames:
            donated_vars, leaf_donated = self._donation(
                lifted, dyn_args, dyn_kwargs, static_args, jax_leaf_pos
            )
        return _StaticKey(
            lifted,
            static_args,
            tuple(i for i in range(n) if i in donated_vars),
            tuple(i for i in range(n) if i not in donated_vars),
            jax_leaf_pos,
            leaf_donated,
            _tracking.STRUCTURE_VERSION[0],
        )

    def _donation(self, lifted, dyn_args, dyn_kwargs, static_args, jax_leaf_pos):
        """Which Variable indices, and which plain leaves, are donated."""
        static_pos = {i for i, _ in static_args if isinstance(i, int)}
        orig = [
            i for i in range(len(dyn_args) + len(static_pos)) if i not in static_pos
        ]
        flags = (
            tuple(
                jax.tree.map(
                    lambda _, d=orig[j] in self.donate_argnums: d,
                    a,
                    is_leaf=is_graph_node,
                )
                for j, a in enumerate(dyn_args)
            ),
            {
                k: jax.tree.map(
                    lambda _, d=k in self.donate_argnames: d, v, is_leaf=is_graph_node
                )
                for k, v in dyn_kwargs.items()
            },
        )
        flat_flags = jtu.tree_leaves(flags)
        var_index = {id(v): i for i, v in enumerate(lifted.flat.leaves)}
        donated: set[int] = set()
        kept: set[int] = set()
        for pos, node in zip(lifted.graph_pos, _graph_nodes_of(dyn_args, dyn_kwargs)):
            target = donated if flat_flags[pos] else kept
            for v in flatten(node).leaves:
                if id(v) in var_index:
                    target.add(var_index[id(v)])
        # A Variable also reachable from a non-donated argument is not donated.
        return donated - kept, tuple(bool(flat_flags[i]) for i in jax_leaf_pos)

    # -- the call ------------------------------------------------------------------------
    def _key(self, args: tuple, kwargs: dict):
        """(dyn args, dyn kwargs, static args, flat leaves, cache key)."""
        if self._plain_signature and not kwargs:
            # Common case, no pytree walk: every argument is an object or a leaf.
            key = []
            for a in args:
                if isinstance(a, _GRAPH_TYPES):
                    key.append(id(a))
                elif isinstance(a, _LEAF_TYPES):
                    key.append(-1)
                else:
                    break
            else:
                return args, kwargs, (), args, tuple(key)
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        leaves, treedef = jtu.tree_flatten(
            (dyn_args, dyn_kwargs), is_leaf=is_graph_node
        )
        key = (treedef, static_args, *[id(x) for x in leaves if is_graph_node(x)])
        try:
            hash(key)
        except TypeError:  # unhashable static argument
            raise TypeError(
                f"nnx.jit({getattr(self.fun, '__name__', 'fun')}): static arguments "
                f"must be hashable, got {[type(v).__name__ for _, v in static_args]}."
                " Pass tuples instead of lists, or make the argument dynamic."
            ) from None
        return dyn_args, dyn_kwargs, static_args, leaves, key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dyn_args, dyn_kwargs, static_args, leaves, key = self._key(args, kwargs)
        entry = self._cache.get(key)
        if entry is None or entry.version != _tracking.STRUCTURE_VERSION[0]:
            entry = self._build_entry(dyn_args, dyn_kwargs, static_args)
            if not _has_tracer(entry.variables):
                self._cache[key] = entry
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        variables = entry.variables
        # Gather: raw arrays of the cached Variables, plain leaves as they came.
        if entry.donated_idx:
            donated = [variables[i]._raw_value for i in entry.donated_idx]
            kept = [variables[i]._raw_value for i in entry.kept_idx]
        else:
            donated = []
            kept = list(map(_get_raw, variables))
        if entry.any_leaf_donated:
            jl = [leaves[i] for i in entry.jax_leaf_pos]
            leaves_d = [x for x, f in zip(jl, entry.leaf_donated) if f]
            leaves_k = [x for x, f in zip(jl, entry.leaf_donated) if not f]
        else:
            leaves_d = []
            leaves_k = [leaves[i] for i in entry.jax_leaf_pos]
        new_arrays, out_leaves = self._jitted(entry, donated, kept, leaves_d, leaves_k)
        # Scatter: store results into the same Variables (or rebuild structure).
        out_static = entry.out_static
        if out_static is None:
            out_static = entry.out_static = self._out_static[entry]
        if out_static[4]:
            _consume(map(_set_raw, variables, new_arrays))
            return out_static[2].unflatten(out_leaves)
        self._cache.pop(key, None)
        return _core.write_back(entry.lifted, out_static, new_arrays, out_leaves)

    # -- AOT access ------------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any):
        """``jax.jit(...).lower`` on the lifted function (memory analysis, HLO)."""
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        leaves = jtu.tree_leaves((dyn_args, dyn_kwargs), is_leaf=is_graph_node)
        entry = self._build_entry(dyn_args, dyn_kwargs, static_args)
        arrays = [v._raw_value for v in entry.variables]
        jl = [leaves[i] for i in entry.jax_leaf_pos]
        return self._jitted.lower(
            entry,
            [arrays[i] for i in entry.donated_idx],
            [arrays[i] for i in entry.kept_idx],
            [x for x, f in zip(jl, entry.leaf_donated) if f],
            [x for x, f in zip(jl, entry.leaf_donated) if not f],
        )


class _StaticKey:
    """The static argument of the compiled function, and the fast-path cache entry.

    Hash and equality cover what determines the trace (GraphDef, pytree structure,
    static arguments, donation layout), not object identities, so a new model of
    the same structure reuses the compiled function.
    """

    __slots__ = (
        "lifted",
        "static_args",
        "donated_idx",
        "kept_idx",
        "jax_leaf_pos",
        "leaf_donated",
        "any_leaf_donated",
        "version",
        "variables",
        "out_static",
        "_cmp",
        "_hash",
    )

    def __init__(
        self,
        lifted,
        static_args,
        donated_idx,
        kept_idx,
        jax_leaf_pos,
        leaf_donated,
        version,
    ):
        self.lifted = lifted
        self.static_args = static_args
        self.donated_idx = donated_idx
        self.kept_idx = kept_idx
        self.jax_leaf_pos = jax_leaf_pos
        self.leaf_donated = leaf_donated
        self.any_leaf_donated = any(leaf_donated)
        self.version = version
        self.variables = lifted.flat.leaves
        self.out_static = None
        self._cmp = (
            lifted.flat.graphdef,
            lifted.treedef,
            lifted.graph_pos,
            static_args,
            donated_idx,
            leaf_donated,
        )
        self._hash = hash(self._cmp)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _StaticKey)
            and self._hash == other._hash
            and self._cmp == other._cmp
        )


def _graph_nodes_of(dyn_args, dyn_kwargs) -> list:
    return [
        x
        for x in jtu.tree_leaves((dyn_args, dyn_kwargs), is_leaf=is_graph_node)
        if is_graph_node(x)
    ]


def _has_tracer(variables: list) -> bool:
    for v in variables:
        for leaf in jtu.tree_leaves(v._raw_value):
            if isinstance(leaf, _tracer_type):
                return True
    return False


def _constrain_tree(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x: (
            jax.lax.with_sharding_constraint(x, shardings)
            if isinstance(x, jax.Array)
            else x
        ),
        tree,
    )


def jit(
    fun: Callable | None = None,
    *,
    static_argnums: int | Sequence[int] | None = None,
    static_argnames: str | Sequence[str] | None = None,
    donate_argnums: int | Sequence[int] | None = None,
    donate_argnames: str | Sequence[str] | None = None,
    in_shardings: Any = None,
    out_shardings: Any = None,
    **jit_kwargs: Any,
) -> Any:
    """Compile ``fun`` with ``jax.jit``; objects passed in are updated in place.

    Usable as ``@nnx.jit``, ``@nnx.jit(static_argnums=...)``, on functions and on
    methods. Every change the function makes to Modules, Variables and Rngs in its
    arguments (values, RNG counters, new attributes) is written back.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> @nnx.jit
    ... def zero_bias(model, x):
    ...     model.bias.value = jnp.zeros(3) + 1.0
    ...     return model(x)
    >>> zero_bias(model, jnp.ones((1, 2))).shape, model.bias.value.tolist()
    ((1, 3), [1.0, 1.0, 1.0])
    """
    kwargs = dict(
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        donate_argnames=donate_argnames,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        **jit_kwargs,
    )
    if fun is None:
        return lambda f: JitWrapped(f, **kwargs)
    return JitWrapped(fun, **kwargs)
