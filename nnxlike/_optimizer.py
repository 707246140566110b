"""``Optimizer``: optax's own state tree held in Variables, updated in place.

Design note: as in flax.nnx 0.12, optax works on the parameters selected by
``wrt`` given as a ``State`` of raw arrays (``value_fn``, masks and label
callbacks see that State), and ``opt_state`` is optax's state tree itself
(``optimizer.opt_state[0].mu['kernel']``) with every array in a Variable:
``OptVariable`` where optax keeps a copy of the parameter tree (Adam's ``mu``,
momentum traces; it carries the parameter's metadata, so sharding follows) and
``OptArray`` elsewhere (step counts, schedule state, L-BFGS memories). The tree
is a data attribute, so the graph walk descends into it: the optimizer passes
through ``nnx.jit`` with write-back and checkpoints like a model. A transformation
whose labels or masks are plain nested dicts (built for pure-dict parameters) is
given the parameters as plain dicts instead; ``state_as_dict`` records which.
``update`` runs at trace time only under ``nnx.jit``: its cost is not on the
per-call path, the number of Variables is.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
import optax

from nnxlike import _errors, _graph
from nnxlike._filters import Filter, to_predicate
from nnxlike._object import Object, data, static
from nnxlike._state import State
from nnxlike._variables import OptState, Param, Variable, _read

__all__ = ["ModelAndOptimizer", "OptArray", "OptState", "OptVariable", "Optimizer"]


class OptArray(OptState):
    """Optimizer state for an array that mirrors no parameter (counts, memories)."""


class OptVariable(OptState):
    """Optimizer state mirroring a parameter (momenta); keeps its metadata."""


_MISSING = object()


def _selected(model: Any, wrt: Filter) -> tuple[tuple, list]:
    """Paths and leaves of ``model`` matching ``wrt``, in definition order.

    The leaves are the live Variables, and the raw arrays a Pytree holds as
    plain attributes (flax.nnx 0.12 optimizes those too; they are written back
    with ``nnx.update``).
    """
    flat = _graph.flatten(model)
    pred = to_predicate(wrt)
    pairs = [
        (p, v)
        for p, v in zip(flat.graphdef.paths, flat.leaves)
        if (isinstance(v, Variable) or _is_array(v)) and pred(p, v)
    ]
    return tuple(p for p, _ in pairs), [v for _, v in pairs]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _no_match_error(model: Any, wrt: Filter) -> ValueError:
    flat = _graph.variables(model).flat_state()
    kinds = sorted({type(v).__name__ for v in flat.leaves})
    paths = [f"{_errors.path_str(p)} ({type(v).__name__})" for p, v in flat][:10]
    more = f" and {len(flat) - 10} more" if len(flat) > 10 else ""
    return ValueError(
        f"Optimizer: no Variable of the {type(model).__name__} matches "
        f"wrt={_filter_text(wrt)}, so there is nothing to optimize. The model holds "
        f"Variables of the kinds {kinds}: {paths}{more}. Pass a filter that selects "
        "the Variables to train, e.g. `nnx.Optimizer(model, tx, wrt=nnx.Param)`."
    )


def _filter_text(f: Filter) -> str:
    if isinstance(f, type):
        return f.__name__
    if isinstance(f, (tuple, list)):
        return "(" + ", ".join(_filter_text(x) for x in f) + ")"
    return repr(f)


def _raw(x: Any) -> Any:
    # The array a Variable holds (read through a ref=True/hijax=True Variable's
    # reference or box: optax works on arrays).
    return _read(x._raw_value) if isinstance(x, Variable) else getattr(x, "value", x)


def _is_var(x: Any) -> bool:
    return isinstance(x, Variable) or type(x).__name__ == "VariableState"


def _pure(tree: Any) -> Any:
    """``tree`` with every Variable (or State leaf) replaced by its raw value."""
    return jtu.tree_map(_raw, tree, is_leaf=_is_var)


def _as_tree(paths: tuple, values: list, as_dict: bool) -> Any:
    state = State.from_flat(paths, values)
    return state.to_pure_dict() if as_dict else state


def _to_opt_state(tree: Any, paths: tuple, params: list) -> Any:
    """optax's state with arrays in Variables: ``OptVariable`` for parameter copies."""
    shapes = {p: np.shape(_raw(v)) for p, v in zip(paths, params)}
    by_path = dict(zip(paths, params))

    def flat_of(node: Any) -> dict | None:
        if isinstance(node, State):
            return node.flat_dict()
        if type(node) is dict:
            return State(node).flat_dict()
        return None

    def mirrors(node: Any) -> bool:
        flat = flat_of(node)
        return (
            flat is not None
            and flat.keys() == shapes.keys()
            and all(np.shape(_raw(x)) == shapes[p] for p, x in flat.items())
        )

    def convert(node: Any) -> Any:
        if not mirrors(node):
            return OptArray(node)
        flat = flat_of(node)
        out = []
        for path in paths:
            param = by_path[path]
            leaf = _placed_like(_raw(flat[path]), _raw(param))
            out.append(OptVariable(leaf, **_opt_metadata(param)))
        return _as_tree(paths, out, not isinstance(node, State))

    return jtu.tree_map(convert, tree, is_leaf=lambda n: mirrors(n) or _is_var(n))


def _opt_metadata(param: Any) -> dict:
    if not isinstance(param, Variable):  # a raw array attribute
        return {}
    meta = param.get_metadata()
    if "optimizer_sharding" in meta:  # flax.nnx: the optimizer state's own layout
        meta["sharding_names"] = meta.pop("optimizer_sharding")
    return meta


class Optimizer(Object):
    """Holds an optax transformation's state for the ``wrt`` Variables of a model.

    ``update(model, grads)`` applies one optax step to ``model`` in place and
    returns optax's updates. ``opt_state`` is optax's state tree, with arrays in
    ``OptVariable`` (copies of the parameter tree) and ``OptArray`` Variables;
    ``step`` is an ``OptState`` counter.

    >>> import jax.numpy as jnp, optax
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: m(jnp.ones(2)).sum())(model)
    >>> before = model.bias.value
    >>> updates = optimizer.update(model, grads)
    >>> round(float((model.bias.value - before)[0]), 4), int(optimizer.step.value)
    (-0.1, 1)
    >>> adam = optimizer.opt_state[0]  # optax's ScaleByAdamState
    >>> type(adam.mu["bias"]).__name__, type(adam.count).__name__, int(adam.count.value)
    ('OptVariable', 'OptArray', 1)
    """

    def __init__(
        self,
        model: Any,
        tx: optax.GradientTransformation,
        *,
        wrt: Filter = Param,
        graph: bool | None = None,
    ):
        if not hasattr(tx, "init") or not hasattr(tx, "update"):
            raise TypeError(
                f"Optimizer: tx must be an optax GradientTransformation, got "
                f"{type(tx).__name__}. Example: "
                "`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`."
            )
        paths, params = _selected(model, wrt)
        if not paths:
            raise _no_match_error(model, wrt)
        # Static (in the GraphDef): two `optax.adam(1e-3)` calls give equal keys,
        # so a second optimizer built the same way reuses nnx.jit's compiled step.
        # nnx.static: an optax transformation is a NamedTuple (a pytree) of
        # functions; as one static value it compares by configuration.
        self.tx = static(_with_config_equality(tx))
        # Static (part of the GraphDef, the nnx.jit cache key): must be hashable.
        self.wrt = tuple(wrt) if isinstance(wrt, list) else wrt
        self.graph = graph
        self.step = OptState(jax.numpy.zeros((), jax.numpy.uint32))
        values = [_raw(v) for v in params]
        self.state_as_dict, opt_state = _init(tx, paths, values)
        self.opt_state = data(_to_opt_state(opt_state, paths, params))

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails.
        if name == "model":
            raise AttributeError(
                _errors.OPTIMIZER_HAS_NO_MODEL.format(cls=type(self).__name__)
            )
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    def opt_state_tree(self) -> Any:
        """optax's state as arrays, with the parameter trees as plain nested dicts.

        The same tree as ``tx.init(nnx.state(model, wrt).to_pure_dict())`` gives,
        for comparing with a plain optax loop (flax.nnx's
        ``nnx.as_pure(optimizer.opt_state)`` keeps the States).
        """
        return jtu.tree_map(
            lambda x: x.to_pure_dict() if isinstance(x, State) else _raw(x),
            self.opt_state,
            is_leaf=lambda x: isinstance(x, State) or _is_var(x),
        )

    def update(self, model: Any, grads: Any = _MISSING, /, **kwargs: Any) -> Any:
        """Apply one optax step to ``model`` in place with ``grads``; return updates.

        ``kwargs`` reach ``tx.update`` (``value=loss`` for
        ``optax.contrib.reduce_on_plateau``; ``value=``, ``grad=``, ``value_fn=`` for
        ``optax.lbfgs``); States and Variables in them are given as raw arrays, and
        ``value_fn`` receives the parameters in the form optax sees them.
        """
        if grads is _MISSING:
            raise TypeError(_errors.OPTIMIZER_UPDATE_NEEDS_MODEL)
        paths, params = _selected(model, self.wrt)
        g = _grads_in_order(grads, paths, params, self.wrt)
        as_dict = self.state_as_dict
        param_tree = _as_tree(paths, [_raw(v) for v in params], as_dict)
        grad_tree = _as_tree(paths, g, as_dict)
        extra = {k: _kwarg_tree(v, paths, as_dict) for k, v in kwargs.items()}
        updates, new_state = self.tx.update(
            grad_tree, _pure(self.opt_state), param_tree, **extra
        )
        new_params = optax.apply_updates(param_tree, updates)
        # By path: plain dicts flatten in sorted key order, not definition order.
        new_flat = (State(new_params) if as_dict else new_params).flat_dict()
        arrays = []
        for path, var in zip(paths, params):
            if isinstance(var, Variable):
                var.value = new_flat[path]
            else:
                arrays.append(path)
        if arrays:  # raw array attributes: replaced through the graph
            _graph.update(model, State.from_flat(arrays, [new_flat[p] for p in arrays]))
        holders = jtu.tree_leaves(self.opt_state, is_leaf=_is_var)
        values = jtu.tree_leaves(new_state)
        if len(holders) != len(values):
            raise _errors.StructureError(
                f"Optimizer.update: optax returned a state with {len(values)} arrays "
                f"where init made {len(holders)}; the transformation's state must "
                "keep its structure between steps."
            )
        for var, value in zip(holders, values):
            var.value = value
        self.step.value = self.step.value + 1
        return updates


class ModelAndOptimizer(Optimizer):
    """An ``Optimizer`` that holds its model: ``update(grads)`` (flax.nnx <= 0.10).

    >>> import jax.numpy as jnp, optax
    >>> import nnxlike as nnx
    >>> state = nnx.ModelAndOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)),
    ...                               optax.sgd(0.5))
    >>> grads = nnx.grad(lambda m: m(jnp.ones(2)).sum())(state.model)
    >>> before = state.model.bias.value
    >>> _ = state.update(grads)
    >>> (state.model.bias.value - before).tolist()
    [-0.5]
    """

    def __init__(
        self, model: Any, tx: optax.GradientTransformation, *, wrt: Filter = Param
    ):
        super().__init__(model, tx, wrt=wrt)
        self.model = model

    def update(self, grads: Any, /, **kwargs: Any) -> Any:  # type: ignore[override]
        """Apply one optax step to ``self.model`` with ``grads``; return updates."""
        return super().update(self.model, grads, **kwargs)


def _init(tx: Any, paths: tuple, values: list) -> tuple[bool, Any]:
    """``(as_dict, tx.init(params))``: a State first (flax), plain dicts if refused."""
    try:
        return False, tx.init(_as_tree(paths, values, False))
    except (ValueError, TypeError) as error:
        try:
            return True, tx.init(_as_tree(paths, values, True))
        except Exception:
            raise error from None


def _kwarg_tree(value: Any, paths: tuple, as_dict: bool) -> Any:
    if isinstance(value, State):
        flat = value.flat_dict()
        if set(flat) == set(paths):  # e.g. grad=grads: same layout as the params
            return _as_tree(paths, [_raw(flat[p]) for p in paths], as_dict)
        return _pure(value)
    if callable(value) or isinstance(value, (str, bytes)):
        return value
    return _pure(value)


def _grads_in_order(grads: Any, paths: tuple, params: list, wrt: Filter) -> list:
    if hasattr(grads, "_graphdef") and hasattr(grads, "_state"):
        grads = grads._state  # a GraphState (nnx.grad over nnx.unpack's output)
    if isinstance(grads, State):
        g = {p: _raw(v) for p, v in grads.flat_dict().items()}
    elif isinstance(grads, dict):
        g = {p: _raw(v) for p, v in State(grads).flat_dict().items()}
    elif isinstance(grads, Object):
        # Tree mode: `jax.grad(loss)(model)` returns a model-shaped object whose
        # Variables hold the gradients; the ones matching wrt are the grads.
        g = dict(zip(*_grad_leaves(grads, wrt)))
    else:
        raise TypeError(
            f"Optimizer.update: grads must be a State (as returned by nnx.grad), "
            f"a nested dict, or a model-shaped object (as returned by "
            f"`jax.grad(loss)(model)`), got {type(grads).__name__}."
        )
    if set(g) != set(paths):
        missing = sorted(_errors.path_str(x) for x in set(paths) - set(g))
        extra = sorted(_errors.path_str(x) for x in set(g) - set(paths))
        raise _errors.StructureError(
            "Optimizer.update: the gradients do not match the parameters selected by "
            f"wrt. Missing gradients for: {missing[:10]}; gradients for paths that are "
            f"not optimized: {extra[:10]}. Compute grads for the same Variables, e.g. "
            "`nnx.grad(loss_fn)(model)` with the default wrt=nnx.Param, or build the "
            "Optimizer with the same filter: `nnx.Optimizer(model, tx, wrt=...)`."
        )
    out = []
    for path, var in zip(paths, params):
        gv = g[path]
        if np.shape(gv) != np.shape(_raw(var)):
            raise _errors.StructureError(
                f"Optimizer.update: gradient at {_errors.path_str(path)!r} has shape "
                f"{np.shape(gv)} but the parameter has shape "
                f"{np.shape(_raw(var))}."
            )
        out.append(gv)
    return out


def _grad_leaves(grads: Any, wrt: Filter) -> tuple[tuple, list]:
    paths, leaves = _selected(grads, wrt)
    return paths, [_raw(v) for v in leaves]


def _placed_like(leaf: Any, param: Any) -> Any:
    """``leaf`` on the devices and sharding of ``param`` (a mirrored moment).

    Only for concrete multi-device arrays: a leaf created under a mesh is already
    placed by its ``sharding_names``; this covers parameters sharded by other
    means (``jax.device_put``, ``nnx.jit(in_shardings=...)``, an explicit mesh).
    """
    sharding = getattr(param, "sharding", None)
    if (
        not isinstance(sharding, jax.sharding.NamedSharding)
        or not isinstance(leaf, jax.Array)
        or isinstance(leaf, jax.core.Tracer)
        or isinstance(param, jax.core.Tracer)
        or getattr(leaf, "sharding", None) == sharding
    ):
        return leaf
    return jax.device_put(leaf, sharding)


# -- tx equality by configuration ----------------------------------------------
#
# optax transformations are NamedTuples of closures, equal only by identity, so
# every `optax.adam(1e-3)` call would make a new GraphDef and a new compile. Two
# closures built by the same code over equal captured constants compute the same
# thing; the key below captures exactly that (code objects, defaults and closure
# cells, recursively) and falls back to identity for anything else (arrays,
# mutable objects, cycles), so equal keys never mean different computations.

_PRIMITIVES = (int, float, complex, str, bytes, bool, type(None), type, np.dtype)


class _Identity:
    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: Any) -> bool:
        return type(other) is _Identity and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _config_key(x: Any, active: set) -> Any:
    if isinstance(x, _PRIMITIVES) or type(x).__module__ == "numpy" and np.isscalar(x):
        return (type(x), x)
    if id(x) in active:  # a cycle: compare by identity
        return _Identity(x)
    active.add(id(x))
    try:
        if isinstance(x, types.FunctionType):
            cells = tuple(
                _config_key(c.cell_contents, active) if _filled(c) else "<empty>"
                for c in x.__closure__ or ()
            )
            return (
                x.__code__,
                _config_key(x.__defaults__, active),
                _config_key(x.__kwdefaults__, active),
                cells,
            )
        if isinstance(x, functools.partial):
            return (
                functools.partial,
                _config_key(x.func, active),
                _config_key(x.args, active),
                _config_key(x.keywords, active),
            )
        if type(x) in (tuple, list) or isinstance(x, tuple) and hasattr(x, "_fields"):
            return (type(x), tuple(_config_key(v, active) for v in x))
        if type(x) is dict:
            return (dict, tuple((k, _config_key(v, active)) for k, v in x.items()))
        return _Identity(x)
    finally:
        active.discard(id(x))


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


class _KeyedTx:
    """Mixin: equality and hash by configuration (see ``_config_key``)."""

    def __eq__(self, other: Any) -> bool:
        if self is other:
            return True
        return isinstance(other, _KeyedTx) and self._nnx_key == other._nnx_key

    def __hash__(self) -> int:
        return self._nnx_hash

    def __ne__(self, other: Any) -> bool:
        return not self == other


class _KeyedGradientTransformation(_KeyedTx, optax.GradientTransformation):
    pass


class _KeyedGradientTransformationExtraArgs(
    _KeyedTx, optax.GradientTransformationExtraArgs
):
    pass


# A keyed transformation is one static pytree node with no children (itself as the
# treedef data): a walk that descends into pytrees then compares it by
# configuration instead of comparing its closures by identity.
for _cls in (_KeyedGradientTransformation, _KeyedGradientTransformationExtraArgs):
    jtu.register_pytree_node(_cls, lambda tx: ((), tx), lambda tx, _: tx)

_KEYED = {
    optax.GradientTransformation: _KeyedGradientTransformation,
    optax.GradientTransformationExtraArgs: _KeyedGradientTransformationExtraArgs,
}


def _with_config_equality(tx: Any) -> Any:
    keyed = _KEYED.get(type(tx))
    if keyed is None:  # already keyed, or a custom type: keep its own equality
        return tx
    key = _config_key((tx.init, tx.update), set())
    try:
        h = hash(key)
    except TypeError:  # pragma: no cover - every branch above yields hashables
        return tx
    out = keyed(tx.init, tx.update)
    out._nnx_key, out._nnx_hash = key, h
    return out
