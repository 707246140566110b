"""``Optimizer``: optax state held in Variables, updated in place.

Design note: optax works on pytrees of arrays; the model's parameters are given
to it as the nested plain dict ``nnx.state(model, wrt).to_pure_dict()``. The
optax state (any structure: chains, MultiSteps, masks, schedules' counters) is
flattened with its key paths and each array kept in an ``OptState`` Variable in
an ``nnx.Dict`` keyed by the rendered path, with the pytree structure as a static
attribute. So the optimizer is an ordinary object graph: it passes through
``nnx.jit``, its state is written back, it checkpoints like a model. An optax
state leaf mirroring a parameter inherits that parameter's metadata (sharding).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
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
    """Parameters as a nested pure dict, and ``{path: (shape, metadata)}``."""
    flat = _graph.flatten(model)
    from nnxlike._filters import to_predicate

    pred = to_predicate(wrt)
    paths, values, meta = [], [], {}
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        if isinstance(v, Variable) and pred(path, v):
            paths.append(path)
            values.append(v._raw_value)
            meta["/".join(map(str, path))] = (jnp.shape(v._raw_value), v._metadata)
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
        self.tx = tx
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
            metadata = _mirrored_metadata(key, keys, shapes, meta, mirrors)
            items[key] = OptState(leaf, **metadata)
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


def _mirrored_metadata(
    key: str, keys: list, shapes: dict, meta: dict, mirrors: dict
) -> dict:
    """The metadata of the parameter that optax state leaf ``key`` mirrors.

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
            return dict(meta[param_path][1])
    return {}


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
