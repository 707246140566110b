"""``Optimizer``: optax state held in Variables, updated in place.

Design note: optax works on pytrees of arrays; the model's parameters are given
to it as the nested plain dict ``nnx.state(model, wrt).to_pure_dict()``. The
optax state (any structure: chains, MultiSteps, masks, schedules' counters) is
flattened with its key paths and each array kept in an ``OptState`` Variable in
an ``nnx.Dict`` keyed by the rendered path, with the pytree structure as a static
attribute. So the optimizer is an ordinary object graph: it passes through
``nnx.jit``, its state is written back, it checkpoints like a model. An optax
state leaf mirroring a parameter inherits that parameter's metadata (sharding)
and, when the parameter is a sharded array, its placement (see ``nnx.spmd``).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from nnxlike import _errors, _graph
from nnxlike._containers import Dict
from nnxlike._filters import Filter
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import OptState, Param, Variable


def _key_str(path: tuple) -> str:
    parts = []
    for k in path:
        if isinstance(k, jtu.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jtu.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jtu.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jtu.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def _pure_params(model: Any, wrt: Filter) -> tuple[dict, dict]:
    """Parameters as a nested pure dict, and ``{path: (shape, metadata, value)}``."""
    flat = _graph.flatten(model)
    from nnxlike._filters import to_predicate

    pred = to_predicate(wrt)
    paths, values, meta = [], [], {}
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        if isinstance(v, Variable) and pred(path, v):
            paths.append(path)
            values.append(v._raw_value)
            meta["/".join(map(str, path))] = (
                jnp.shape(v._raw_value),
                v._metadata,
                v._raw_value,
            )
    return State.from_flat(paths, values).to_pure_dict(), meta


class Optimizer(Object):
    """Holds an optax transformation's state for the ``wrt`` Variables of a model.

    >>> import jax.numpy as jnp, optax
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: m(jnp.ones(2)).sum())(model)
    >>> before = model.bias.value
    >>> optimizer.update(model, grads)
    >>> (model.bias.value - before).tolist(), int(optimizer.step.value)
    ([-0.10000000149011612], 1)
    """

    def __init__(
        self, model: Any, tx: optax.GradientTransformation, *, wrt: Filter = Param
    ):
        if not hasattr(tx, "init") or not hasattr(tx, "update"):
            raise TypeError(
                f"Optimizer: tx must be an optax GradientTransformation, got "
                f"{type(tx).__name__}. Example: "
                "`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`."
            )
        # Static (in the GraphDef): two `optax.adam(1e-3)` calls give equal keys,
        # so a second optimizer built the same way reuses nnx.jit's compiled step.
        self.tx = _with_config_equality(tx)
        # Static (part of the GraphDef, the nnx.jit cache key): must be hashable.
        self.wrt = tuple(wrt) if isinstance(wrt, list) else wrt
        self.step = OptState(jnp.zeros((), jnp.uint32))
        params, meta = _pure_params(model, wrt)
        self._set_opt_state(tx.init(params), meta)

    def _set_opt_state(self, opt_state: Any, meta: dict) -> None:
        pairs, treedef = jtu.tree_flatten_with_path(opt_state)
        keys = [_key_str(path) for path, _ in pairs]
        shapes = dict(zip(keys, (jnp.shape(leaf) for _, leaf in pairs)))
        items, mirrors = {}, {}
        for key, (_, leaf) in zip(keys, pairs):
            param = _mirrored_param(key, keys, shapes, meta, mirrors)
            if param is None:
                items[key] = OptState(leaf)
                continue
            items[key] = OptState(_placed_like(leaf, param[2]), **param[1])
        self.opt_state = Dict(items)
        self.opt_treedef = treedef

    def opt_state_tree(self) -> Any:
        """The optax state as optax built it (arrays read from the Variables)."""
        return self.opt_treedef.unflatten([v.value for v in self.opt_state.values()])

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> None:
        """Apply one optax step to ``model`` in place with ``grads``.

        ``kwargs`` reach ``tx.update`` (e.g. ``value=loss`` for
        ``optax.contrib.reduce_on_plateau``).
        """
        params, _ = _pure_params(model, self.wrt)
        if isinstance(grads, State):
            g = grads.to_pure_dict()
        elif isinstance(grads, dict):
            g = State(grads).to_pure_dict()
        else:
            raise TypeError(
                f"Optimizer.update: grads must be a State (as returned by nnx.grad) "
                f"or a nested dict, got {type(grads).__name__}."
            )
        _check_same_paths(params, g)
        updates, new_state = self.tx.update(g, self.opt_state_tree(), params, **kwargs)
        new_params = optax.apply_updates(params, updates)
        _graph.update(model, State(new_params))
        for var, leaf in zip(self.opt_state.values(), jtu.tree_leaves(new_state)):
            var.value = leaf
        self.step.value = self.step.value + 1


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


def _mirrored_param(
    key: str, keys: list, shapes: dict, meta: dict, mirrors: dict
) -> tuple | None:
    """The ``(shape, metadata, value)`` of the parameter optax leaf ``key`` mirrors.

    ``key`` mirrors parameter ``q`` when it is ``prefix/q`` (or ``q``) with the
    same shape and every leaf under ``prefix`` is a parameter path too (a copy of
    the parameter tree such as Adam's ``mu``), so neither Adam's scalar
    ``0/count`` nor ``0/mu/sub/w`` is mistaken for a parameter ``count`` or ``w``.
    The longest matching parameter path wins. ``mirrors`` caches, per prefix,
    whether it holds a copy of the parameter tree.
    """
    parts = key.split("/")
    for i in range(len(parts)):  # longest suffix first
        param_path = "/".join(parts[i:])
        if param_path not in meta or meta[param_path][0] != shapes[key]:
            continue
        prefix = "/".join(parts[:i]) + "/" if i else ""
        if prefix not in mirrors:
            under = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
            mirrors[prefix] = all(
                u in meta and shapes[prefix + u] == meta[u][0] for u in under
            )
        if mirrors[prefix]:
            return meta[param_path]
    return None


def _check_same_paths(params: dict, grads: dict) -> None:
    p = State(params).flat_dict()
    g = State(grads).flat_dict()
    if p.keys() != g.keys():
        missing = sorted(_errors.path_str(x) for x in p.keys() - g.keys())
        extra = sorted(_errors.path_str(x) for x in g.keys() - p.keys())
        raise _errors.StructureError(
            "Optimizer.update: the gradients do not match the parameters selected by "
            f"wrt. Missing gradients for: {missing[:10]}; gradients for paths that are "
            f"not optimized: {extra[:10]}. Compute grads for the same Variables, e.g. "
            "`nnx.grad(loss_fn)(model)` with the default wrt=nnx.Param, or build the "
            "Optimizer with the same filter: `nnx.Optimizer(model, tx, wrt=...)`."
        )
    for path, gv in g.items():
        if jnp.shape(gv) != jnp.shape(p[path]):
            raise _errors.StructureError(
                f"Optimizer.update: gradient at {_errors.path_str(path)!r} has shape "
                f"{jnp.shape(gv)} but the parameter has shape {jnp.shape(p[path])}."
            )


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
