"""``TrainState``: a functional, Linen-style training state for pure-function code.

Design note: for users who prefer plain ``jax.jit``/``jax.grad`` over ``nnx.jit``
and in-place objects, a model is split once (``nnx.split(model, wrt, ...)``) into
a GraphDef, the trained ``params`` State and the ``other`` State (BatchNorm
statistics, RNG counters, ...). ``TrainState`` bundles these with the optax
transformation and its state in a frozen dataclass registered as a JAX pytree:
``step``, ``params``, ``other`` and ``opt_state`` are children, ``graphdef``,
``tx`` and ``apply_fn`` are static (hashable) data. Every method returns a new
TrainState and mutates nothing. optax sees the parameters as nested plain dicts
(``params.to_pure_dict()``), as ``nnx.Optimizer`` does, so both give the same
numbers and optax masks/labels are written against the same tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnxlike import _errors, _graph
from nnxlike._filters import Filter
from nnxlike._graph import GraphDef
from nnxlike._state import State
from nnxlike._variables import Param, Variable


def call_model(model: Any, *args: Any, **kwargs: Any) -> Any:
    """The default ``apply_fn``: call the model, ``model(*args, **kwargs)``."""
    return model(*args, **kwargs)


def _pure(grads: Any, where: str) -> dict:
    if isinstance(grads, State):
        return grads.to_pure_dict()
    if isinstance(grads, dict):
        return State(grads).to_pure_dict()
    raise TypeError(
        f"TrainState.{where}: grads must be a State (as returned by "
        f"`jax.grad(loss_fn)(state.params)`) or a nested dict, got "
        f"{type(grads).__name__}."
    )


def _with_values(state: State, pure: dict) -> State:
    """``state`` with its leaf values replaced by those of ``pure`` (same paths)."""
    new = State(pure).flat_dict()
    flat = state.flat_state()
    leaves = [
        leaf.replace(new[p]) if isinstance(leaf, Variable) else new[p]
        for p, leaf in flat
    ]
    return State.from_flat(flat.paths, leaves)


def _check_paths(params: dict, grads: dict) -> None:
    p = State(params).flat_dict()
    g = State(grads).flat_dict()
    if p.keys() != g.keys():
        missing = sorted(_errors.path_str(x) for x in p.keys() - g.keys())
        extra = sorted(_errors.path_str(x) for x in g.keys() - p.keys())
        raise _errors.StructureError(
            "TrainState.apply_gradients: the gradients do not match state.params. "
            f"Missing gradients for: {missing[:10]}; gradients for paths that are "
            f"not parameters: {extra[:10]}. Differentiate with respect to the "
            "params: `grads = jax.grad(loss_fn)(state.params)`."
        )
    for path, gv in g.items():
        if jnp.shape(gv) != jnp.shape(p[path]):
            raise _errors.StructureError(
                f"TrainState.apply_gradients: gradient at {_errors.path_str(path)!r} "
                f"has shape {jnp.shape(gv)} but the parameter has shape "
                f"{jnp.shape(p[path])}."
            )


_DATA_FIELDS = ("step", "params", "other", "opt_state")
_META_FIELDS = ("graphdef", "tx", "apply_fn")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainState:
    """An immutable pytree of a split model, its optax transformation and state.

    Fields: ``step`` (int32 array), ``params`` (the ``wrt`` State), ``other`` (a
    State of every other Variable; also ``non_params``), ``opt_state`` (optax's
    state over ``params.to_pure_dict()``), and the static ``graphdef``, ``tx``
    and ``apply_fn``. Build it with ``TrainState.create``; ``apply_gradients``,
    ``replace`` and ``apply`` return new values. Works with plain ``jax.jit`` and
    ``jax.grad``:

    >>> import jax, jax.numpy as jnp, optax
    >>> import nnxlike as nnx
    >>> from nnxlike._train_state import TrainState
    >>> state = TrainState.create(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    >>> @jax.jit
    ... def train_step(state, x, y):
    ...     def loss_fn(params):
    ...         model = nnx.merge(state.graphdef, params, state.other)
    ...         return jnp.mean((model(x) - y) ** 2)
    ...     loss, grads = jax.value_and_grad(loss_fn)(state.params)
    ...     return state.apply_gradients(grads), loss
    >>> state, loss = train_step(state, jnp.ones(2), jnp.zeros(1))
    >>> int(state.step), jax.tree.map(jnp.shape, state.params.to_pure_dict())
    (1, {'bias': (1,), 'kernel': (2, 1)})
    >>> type(state.model).__name__
    'Linear'
    """

    step: jax.Array
    params: State
    other: State
    opt_state: Any
    graphdef: GraphDef = dataclasses.field(repr=False)
    tx: optax.GradientTransformation = dataclasses.field(repr=False)
    apply_fn: Callable[..., Any] = dataclasses.field(default=call_model, repr=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # flax.nnx's TrainState is a ``struct.PyTreeNode``: a subclass that only
        # annotates new fields (``batch_stats: nnx.State``) is a dataclass and a
        # pytree too. New fields are keyword-only (the base ends with a default);
        # ``dataclasses.field(metadata={"pytree_node": False})`` makes one static.
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclasses.dataclass(frozen=True, eq=False, kw_only=True)(cls)
        data, meta = [], []
        for f in dataclasses.fields(cls):
            static = (
                f.name in _META_FIELDS
                or f.metadata.get("pytree_node", True) is False
                or f.metadata.get("static", False)
            )
            (meta if static else data).append(f.name)
        jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)

    @classmethod
    def create(
        cls,
        model: Any,
        tx: optax.GradientTransformation | None = None,
        *,
        wrt: Filter = Param,
        apply_fn: Callable[..., Any] | None = None,
        params: State | None = None,
        step: int = 0,
        **fields: Any,
    ) -> TrainState:
        """Split ``model`` into ``params`` (matching ``wrt``) and ``other``.

        ``apply_fn(model, *args, **kwargs)`` is what ``apply`` calls on the
        merged model (default: ``model(*args, **kwargs)``); pass e.g.
        ``lambda m, x: m.encode(x)`` to use another method.

        flax.nnx's form is accepted too: ``TrainState.create(graphdef,
        params=params, tx=tx, **fields)`` takes an already split model (the
        GraphDef and the trained State); ``fields`` fill the fields a subclass
        adds (``batch_stats=...``), and ``other`` is empty unless given.

        >>> import optax
        >>> import nnxlike as nnx
        >>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
        >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
        >>> int(state.step), sorted(state.params.to_pure_dict())
        (0, ['bias', 'kernel'])
        """
        if not hasattr(tx, "init") or not hasattr(tx, "update"):
            raise TypeError(
                f"TrainState.create: tx must be an optax GradientTransformation, "
                f"got {type(tx).__name__}. Example: "
                "`TrainState.create(model, optax.adam(1e-3))`."
            )
        if isinstance(model, GraphDef):
            if params is None:
                raise TypeError(
                    "TrainState.create: given a GraphDef, it needs the State of "
                    "the trained Variables too: `graphdef, params = "
                    "nnx.split(model)` then `TrainState.create(graphdef, "
                    "params=params, tx=tx)`."
                )
            graphdef, other = model, fields.pop("other", State({}))
        elif params is not None:
            raise TypeError(
                f"TrainState.create: params= goes with a GraphDef (flax.nnx's "
                f"form), got a {type(model).__name__} as the first argument. Pass "
                "the model alone, `TrainState.create(model, tx, wrt=nnx.Param)`, "
                "or split it first: `TrainState.create(graphdef, params=params, "
                "tx=tx)`."
            )
        else:
            graphdef, params, other = _graph.split(model, wrt, ...)
        if not params.flat_state():
            raise ValueError(
                f"TrainState.create: no Variable of the {type(model).__name__} "
                f"matches wrt={wrt!r}, so there is nothing to train. Pass the filter "
                "of the trained Variables, e.g. `wrt=nnx.Param`."
            )
        return cls(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            other=other,
            opt_state=tx.init(params.to_pure_dict()),
            graphdef=graphdef,
            tx=tx,
            apply_fn=call_model if apply_fn is None else apply_fn,
            **fields,
        )

    @property
    def non_params(self) -> State:
        """Alias of ``other``: the State of every Variable not in ``params``."""
        return self.other

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields replaced (``state.replace(other=new_other)``)."""
        return dataclasses.replace(self, **changes)

    def apply_gradients(self, grads: Any, **kwargs: Any) -> TrainState:
        """One optax step: a new state with updated ``params``, ``opt_state``, ``step``.

        ``grads`` is a State shaped like ``params`` (``jax.grad(loss)(state.params)``)
        or a nested dict like ``params.to_pure_dict()``. Keyword arguments naming
        a field replace it (``other=new_other``, as in Flax Linen); the others go
        to ``tx.update`` (``value=loss`` for ``optax.contrib.reduce_on_plateau``).
        """
        changes = {k: kwargs.pop(k) for k in list(kwargs) if k in _DATA_FIELDS}
        for k in _META_FIELDS:
            if k in kwargs:
                changes[k] = kwargs.pop(k)
        params = self.params.to_pure_dict()
        g = _pure(grads, "apply_gradients")
        _check_paths(params, g)
        updates, opt_state = self.tx.update(g, self.opt_state, params, **kwargs)
        new_params = _with_values(self.params, optax.apply_updates(params, updates))
        return self.replace(
            **{
                "step": self.step + 1,
                "params": new_params,
                "opt_state": opt_state,
                **changes,
            }
        )

    def merge(self, params: State | None = None) -> Any:
        """A new Module from ``graphdef``, ``params`` (or its own) and ``other``.

        The Module has new Variables (``nnx.merge(..., copy=True)``): a call that
        writes to it leaves this (immutable) TrainState's States unchanged.
        """
        return _graph.merge(
            self.graphdef,
            self.params if params is None else params,
            self.other,
            copy=True,
        )

    @property
    def model(self) -> Any:
        """``self.merge()``: a new Module holding the current values."""
        return self.merge()

    def apply(self, params: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the model purely: ``(apply_fn(model, *args, **kwargs), new_other)``.

        ``params`` (``None`` for ``self.params``) is merged with ``other``; what
        the call writes to ``other`` Variables (BatchNorm statistics, RNG counters)
        comes back as ``new_other``, to be kept with
        ``state.apply_gradients(grads, other=new_other)``. Differentiate with
        ``jax.value_and_grad(..., has_aux=True)``.

        flax.nnx's form: ``state.apply('params', 'batch_stats')`` (field names
        or States, nothing else) returns a caller; ``caller(x)`` (or
        ``caller.method(x)``) merges those States with ``graphdef``, calls the
        model and returns ``(out, (graphdef, state))``.

        >>> import jax.numpy as jnp, optax
        >>> import nnxlike as nnx
        >>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
        >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
        >>> y, (_, new_state) = state.apply("params")(jnp.ones((3, 2)))
        >>> y.shape
        (3, 1)
        """
        states = (params, *args)
        if not kwargs and all(isinstance(s, (str, State)) for s in states):
            return _Caller(self.graphdef, self._states(states), ())
        model = self.merge(params)
        out = self.apply_fn(model, *args, **kwargs)
        now = _graph.state(model).flat_dict()
        flat = self.other.flat_state()
        try:
            leaves = [now[p] for p in flat.paths]
        except KeyError:
            gone = [_errors.path_str(p) for p in flat.paths if p not in now]
            raise _errors.StructureError(
                f"TrainState.apply: the call removed Variables {gone[:10]} from the "
                "model; apply_fn must keep the model's structure."
            ) from None
        return out, State.from_flat(flat.paths, leaves)

    def _states(self, states: tuple) -> list[State]:
        out = []
        for s in states:
            if isinstance(s, str):
                value = getattr(self, s, None)
                if not isinstance(value, State):
                    raise TypeError(
                        f"{type(self).__name__}.apply({s!r}): expected "
                        f"{type(self).__name__}.{s} to be a State, got "
                        f"{type(value).__name__}. Name State fields, e.g. "
                        "`state.apply('params', 'batch_stats')`."
                    )
                s = value
            out.append(s)
        return out


class _Caller:
    """What ``TrainState.apply('params', ...)`` returns (flax.nnx's ApplyCaller):
    attribute access picks a method, a call merges and runs it."""

    def __init__(self, graphdef: GraphDef, states: list[State], names: tuple):
        self._graphdef, self._states, self._names = graphdef, states, names

    def __getattr__(self, name: str) -> _Caller:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Caller(self._graphdef, self._states, (*self._names, name))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        module = _graph.merge(self._graphdef, *self._states, copy=True)
        fn = module
        for name in self._names:
            fn = getattr(fn, name)
        out = fn(*args, **kwargs)
        return out, _graph.split(module)


jax.tree_util.register_dataclass(
    TrainState, data_fields=list(_DATA_FIELDS), meta_fields=list(_META_FIELDS)
)
