"""``pmap``, ``checkify`` and ``make_jaxpr`` over functions taking objects.

Design note: each follows ``_core``'s phases (lift the arguments, hand JAX a
pure function of arrays, collect, write back), as ``control.py``'s transforms
do. ``pmap`` is ``nnx.vmap``'s machinery (``iteration.map_transform``) with
``jax.pmap`` as the map, so it takes the same axes (StateAxes, ``nnx.prefix``
results, per-argument tuples); ``make_jaxpr`` only traces, so it writes nothing
back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
from jax.experimental import checkify as _checkify

from nnxlike._graph import iter_graph, unflatten
from nnxlike._transforms import _core, iteration
from nnxlike._transforms.control import _jax_leaves, _lifted_call
from nnxlike._variables import Variable

__all__ = ["checkify", "make_jaxpr", "pmap", "transform_metadata"]


def _lift(args: tuple, kwargs: dict, graph, graph_updates, fn: str):
    lifted = _core.Lifted.from_args(
        (args, kwargs), graph=graph, graph_updates=graph_updates, fn=fn
    )
    return lifted


def checkify(
    f: Callable,
    errors: Any = _checkify.user_checks,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``jax.experimental.checkify.checkify`` over a function taking objects.

    The wrapped function returns ``(error, output)``; changes to the objects
    passed in are written back, as with every ``nnx.`` transform.

    >>> import jax.numpy as jnp
    >>> from jax.experimental import checkify
    >>> import nnxlike as nnx
    >>> count = nnx.Variable(jnp.array(0))
    >>> def step(c, x):
    ...     checkify.check(x > 0, "x must be positive")
    ...     c[...] += 1
    ...     return x * 2
    >>> err, y = nnx.checkify(step)(count, jnp.array(3.0))
    >>> err.get() is None, float(y), int(count[...])
    (True, 6.0, 1)
    >>> err, _ = nnx.checkify(step)(count, jnp.array(-1.0))
    >>> err.get().split(" (")[0]
    'x must be positive'
    """
    _core.refuse_bound_method(f, "checkify")

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> tuple:
        lifted = _lift(args, kwargs, graph, graph_updates, "checkify")
        statics: list = []
        pure = _lifted_call(lifted, lambda t: f(*t[0], **t[1]), statics, unpack=False)
        err, (new_arrays, out_leaves) = _checkify.checkify(pure, errors=errors)(
            lifted.arrays(), _jax_leaves(lifted)
        )
        return err, _core.write_back(lifted, statics[-1], new_arrays, out_leaves)

    return wrapper


def make_jaxpr(
    f: Callable,
    *,
    return_shape: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **jax_kwargs: Any,
) -> Callable:
    """``jax.make_jaxpr`` over a function taking objects (nothing is written back).

    The jaxpr's inputs are the objects' arrays followed by the other array
    arguments; with ``return_shape=True`` the output's shape structure comes too.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> jaxpr = nnx.make_jaxpr(lambda m, x: m(x))(model, jnp.ones((1, 2)))
    >>> [str(v.aval) for v in jaxpr.jaxpr.invars]
    ['float32[2,3]', 'float32[3]', 'float32[1,2]']
    >>> _, shape = nnx.make_jaxpr(lambda m, x: m(x), return_shape=True)(
    ...     model, jnp.ones((1, 2)))
    >>> shape.shape
    (1, 3)
    """
    _core.refuse_bound_method(f, "make_jaxpr")
    if graph_updates:
        # Nothing is written back, so there is no graph update to make (flax
        # refuses the explicit request the same way; the default works).
        raise ValueError(
            "nnx.make_jaxpr does not support graph_updates=True. It only traces "
            "`f` and writes nothing back to the objects; drop graph_updates=True "
            "(or pass graph_updates=False)."
        )

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        lifted = _lift(args, kwargs, graph, graph_updates, "make_jaxpr")
        statics: list = []
        pure = _lifted_call(lifted, lambda t: f(*t[0], **t[1]), statics, unpack=False)
        jaxpr, (new_arrays, out_leaves) = jax.make_jaxpr(
            pure, return_shape=True, **jax_kwargs
        )(lifted.arrays(), _jax_leaves(lifted))
        if not return_shape:
            return jaxpr
        graphdef, _origins, out_treedef, out_graph_pos, _ = statics[-1][:5]
        _, out_nodes = unflatten(graphdef, new_arrays)
        full = list(out_leaves)
        for i, node in zip(out_graph_pos, out_nodes):
            full[i] = node
        return jaxpr, out_treedef.unflatten(full)

    return wrapper


def pmap(
    f: Callable | None = None,
    axis_name: Any = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    static_broadcasted_argnums: int | tuple[int, ...] = (),
    devices: Any = None,
    backend: str | None = None,
    axis_size: int | None = None,
    donate_argnums: int | tuple[int, ...] = (),
    transform_metadata: Mapping = MappingProxyType({}),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.pmap`` over a function taking objects, written back in place.

    ``nnx.vmap`` over devices: ``in_axes``/``out_axes`` take the same forms (an
    int or None, a tuple with one entry per argument, ``nnx.StateAxes`` or an
    ``nnx.prefix`` result for an object), new Variables come back stacked along
    their out axis, and the objects passed in hold the per-device values
    afterwards. As under ``nnx.vmap``, a broadcast RNG key is folded with the
    device index (devices draw different numbers) unless some key is mapped.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> n = jax.local_device_count()
    >>> w = nnx.Param(jnp.ones((n, 3)))
    >>> @nnx.pmap(axis_name="d")
    ... def scale(w, x):
    ...     w[...] = w[...] * x
    ...     return jax.lax.psum(w[...].sum(), "d")
    >>> out = scale(w, jnp.full((n,), 2.0))
    >>> out.shape == (n,), float(w[...][0, 0])
    (True, 2.0)
    >>> bias = nnx.Param(jnp.zeros(3))  # broadcast in, per device out
    >>> @nnx.pmap(in_axes=(None, 0), out_axes=0)
    ... def make(b, x):
    ...     return nnx.Param(b[...] + x)
    >>> make(bias, jnp.ones((n, 1))).shape == (n, 3)
    True
    """
    if f is None:
        return functools.partial(
            pmap,
            axis_name=axis_name,
            in_axes=in_axes,
            out_axes=out_axes,
            static_broadcasted_argnums=static_broadcasted_argnums,
            devices=devices,
            backend=backend,
            axis_size=axis_size,
            donate_argnums=donate_argnums,
            transform_metadata=transform_metadata,
            graph=graph,
            graph_updates=graph_updates,
        )
    _core.refuse_bound_method(f, "pmap")
    static = (
        (static_broadcasted_argnums,)
        if isinstance(static_broadcasted_argnums, int)
        else tuple(static_broadcasted_argnums)
    )
    if donate_argnums not in ((), None):
        raise NotImplementedError(
            "nnx.pmap: donate_argnums is not supported; donate with nnx.jit."
        )

    def make_map(pure: Callable, in_ax: Any, out_ax: Any, probe: bool) -> Callable:
        if probe:  # the abstract first pass: a vmap sees the same lanes
            size = axis_size
            if size is None and all(
                a is None for a in jax.tree.leaves(in_ax, is_leaf=_is_none)
            ):
                size = len(devices) if devices is not None else 1
            return jax.vmap(
                pure,
                in_axes=in_ax,
                out_axes=out_ax,
                axis_name=axis_name,
                axis_size=size,
            )
        return jax.pmap(
            pure,
            axis_name=axis_name,
            in_axes=in_ax,
            out_axes=out_ax,
            devices=devices,
            backend=backend,
            axis_size=axis_size,
        )

    def lift(fun: Callable, axes: Any) -> Callable:
        return iteration.map_transform(
            fun,
            "pmap",
            make_map,
            in_axes=axes,
            out_axes=out_axes,
            axis_size=axis_size,
            split_rngs=True,
            transform_metadata=transform_metadata,
            graph=graph,
            graph_updates=graph_updates,
        )

    if not static:
        return lift(f, in_axes)

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        # Static arguments are bound as constants: one lifted map per call.
        call, dyn = _core.bind_static(f, args, static)
        axes = in_axes
        if isinstance(axes, (tuple, list)) and len(axes) == len(args):
            axes = tuple(a for i, a in enumerate(axes) if i not in static)
        return lift(call, axes)(*dyn)

    return wrapper


def _is_none(x: Any) -> bool:
    return x is None


class StateSharding:
    """Shardings chosen per Variable by filters, for ``nnx.jit``'s
    ``in_shardings``/``out_shardings`` entries (flax.nnx's ``StateSharding``).

    The first filter that matches a Variable's path and kind gives its sharding.

    >>> import jax
    >>> import nnxlike as nnx
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("d",))
    >>> rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    >>> sh = nnx.StateSharding({nnx.PathContains("kernel"): rep, ...: None})
    >>> sh.map_prefix(("kernel",), nnx.Param(1.0)) is rep
    True
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> nnx.jit(lambda m: None, in_shardings=(sh,))(model)
    >>> model.kernel.sharding == rep
    True
    """

    def __init__(self, filter_sharding: Any, /) -> None:
        from nnxlike._state import State

        if isinstance(filter_sharding, State):
            filter_sharding = {
                _PathIs(p): getattr(v, "value", v)
                for p, v in filter_sharding.flat_state()
            }
        items = (
            filter_sharding.items()
            if hasattr(filter_sharding, "items")
            else filter_sharding
        )
        pairs = tuple(items)
        self.filters = tuple(f for f, _ in pairs)
        self.shardings = tuple(s for _, s in pairs)

    def map_prefix(self, path: tuple, variable: Any) -> Any:
        """The sharding of the Variable at ``path`` (the first matching filter)."""
        from nnxlike._filters import to_predicate

        for f, s in zip(self.filters, self.shardings):
            if to_predicate(f)(path, variable):
                return s
        raise ValueError(
            f"nnx.StateSharding: no filter matches the Variable at path {path!r} "
            f"({type(variable).__name__}); add a last entry `...: None` to leave "
            f"the rest unconstrained."
        )

    def __repr__(self) -> str:
        return f"StateSharding({dict(zip(self.filters, self.shardings))})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StateSharding)
            and self.filters == other.filters
            and self.shardings == other.shardings
        )

    def __hash__(self) -> int:
        return hash((self.filters, self.shardings))


class _PathIs:
    """Matches exactly one path (a State given to ``StateSharding``)."""

    def __init__(self, path: tuple) -> None:
        self.path = path

    def __call__(self, path: tuple, value: Any) -> bool:
        return path == self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PathIs) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


_NAMES = "sharding_names"


def _annotated_vars(tree: Any) -> list:
    """The Variables reachable from ``tree`` that carry ``sharding_names``."""
    return [
        v
        for _, v in iter_graph(tree, graph=True)
        if isinstance(v, Variable) and isinstance(v._metadata.get(_NAMES), tuple)
    ]


def _prefix_axes(axes: Any, n: int, what: str) -> tuple:
    # nnx.Carry (a scan's carry) has no stacked axis: like None, as in flax.
    carry = iteration._CarryType
    if axes is None or isinstance(axes, (int, carry)):
        return (None if isinstance(axes, carry) else axes,) * n
    if isinstance(axes, (tuple, list)) and len(axes) == n:
        if all(a is None or isinstance(a, (int, carry)) for a in axes):
            return tuple(None if isinstance(a, carry) else a for a in axes)
    raise ValueError(
        f"nnx.transform_metadata: {what} must be an int, None, or a tuple with "
        f"one int/None per {'argument' if what == 'in_axes' else 'output'} "
        f"({n}); got {axes!r}. Example: `in_axes=(0, None)`."
    )


def transform_metadata(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    partition: str | None,
    graph: bool | None = None,
) -> Any:
    """Run ``f`` seeing ``sharding_names`` as a transform over axis ``in_axes`` would.

    Only the metadata changes, never the arrays: while ``f`` runs, each annotated
    Variable of an argument with an int axis lacks that entry of its
    ``sharding_names`` (which must be ``partition``); afterwards it gets it back,
    and each annotated Variable ``f`` returns gets ``partition`` inserted at its
    ``out_axes``. This is the metadata half of ``nnx.vmap``/``nnx.scan`` for code
    that maps with plain JAX (``jax.vmap``, ``shard_map``). ``in_axes`` and
    ``out_axes`` are an int or None for all, or a tuple with one per argument /
    output. Value updates inside ``f`` reach the caller's Variables. Usable as
    ``@nnx.transform_metadata(in_axes=..., partition=...)``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> w = nnx.Param(jnp.ones((3, 4)), sharding_names=("layers", "model"))
    >>> @nnx.transform_metadata(in_axes=0, out_axes=0, partition="layers")
    ... def f(w):
    ...     print(w.sharding_names)
    ...     return nnx.Param(jnp.zeros(4), sharding_names=("model",))
    >>> out = f(w)
    ('model',)
    >>> w.sharding_names, out.sharding_names
    (('layers', 'model'), ('layers', 'model'))
    """
    del graph  # metadata only: objects are walked as graphs either way
    if f is None:
        return functools.partial(
            transform_metadata, in_axes=in_axes, out_axes=out_axes, partition=partition
        )
    fname = getattr(f, "__qualname__", repr(f))

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(
                f"nnx.transform_metadata({fname}): got keyword argument(s) "
                f"{sorted(kwargs)}; in_axes describes positional arguments, so "
                f"pass them positionally."
            )
        stripped: list = []  # (Variable, axis, names before), to restore
        seen: set = set()
        for arg, axis in zip(args, _prefix_axes(in_axes, len(args), "in_axes")):
            if axis is None:
                continue
            for v in _annotated_vars(arg):
                if id(v) in seen:
                    continue
                seen.add(id(v))
                names = v._metadata[_NAMES]
                ax = axis % len(names) if names else axis
                if not names or names[ax] != partition:
                    raise ValueError(
                        f"nnx.transform_metadata({fname}): a {type(v).__name__} "
                        f"argument has sharding_names={names!r}, expected "
                        f"{partition!r} at axis {axis}. Pass the partition name "
                        f"its axis {axis} has, or in_axes=None for that argument."
                    )
                stripped.append((v, names))
                v.set_metadata(_NAMES, names[:ax] + names[ax + 1 :])
        try:
            out = f(*args)
        finally:
            for v, names in stripped:
                v.set_metadata(_NAMES, names)
        outs = out if isinstance(out, tuple) else (out,)
        for o, axis in zip(outs, _prefix_axes(out_axes, len(outs), "out_axes")):
            if axis is None:
                continue
            for v in _annotated_vars(o):
                if id(v) in seen:
                    raise ValueError(
                        f"nnx.transform_metadata({fname}): the function returned a "
                        f"{type(v).__name__} that was also an argument; its axis "
                        f"would be added twice. Return a new Variable, or use "
                        f"out_axes=None for that output."
                    )
                seen.add(id(v))
                names = v._metadata[_NAMES]
                ax = axis % (len(names) + 1)
                v.set_metadata(_NAMES, names[:ax] + (partition,) + names[ax:])
        return out

    return wrapper
