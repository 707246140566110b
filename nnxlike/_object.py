"""``Object``: the base of every graph node users hold (Module, Rngs, Optimizer, ...).

Design note: an Object is a plain mutable Python object whose attributes form the
edges of the object graph that ``split`` walks. This file owns the rules for what
an attribute may hold, checked once at assignment (not at every split):

- raw arrays are refused with the fix (wrap them in a Variable kind);
- plain ``list``/``dict`` values become ``nnx.List``/``nnx.Dict`` so that later
  in-place edits (``self.layers.append(...)``) are seen as structural changes;
- a structural assignment on an object some transform has flattened bumps the
  global structure version (see ``_tracking``); writes to Variable values do not.

Attributes whose names start with ``_nnx_`` are bookkeeping and never part of the
graph. An Object is deliberately not a pytree: see ``_errors.NOT_A_PYTREE``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _tracking

# Set by _containers at import time (it depends on this module).
_LIST_TYPE: type | None = None
_DICT_TYPE: type | None = None

INTERNAL_PREFIX = "_nnx_"


def _not_a_pytree(obj):
    raise TypeError(_errors.NOT_A_PYTREE.format(cls=type(obj).__name__))


def _never_unflatten(aux, children):  # pragma: no cover - flatten always raises
    raise TypeError("nnxlike Objects are not pytrees")


class Object:
    """Base class of mutable graph nodes (``Module``, ``Rngs``, ``Optimizer``...)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The JAX pytree registry is keyed by exact type, so each subclass is
        # registered: plain jax transforms then raise our error, not a vague one.
        jtu.register_pytree_node(cls, _not_a_pytree, _never_unflatten)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith(INTERNAL_PREFIX):
            value = check_attribute(self, name, value)
            if self.__dict__.get("_nnx_tracked"):
                _tracking.bump_structure_version()
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if self.__dict__.get("_nnx_tracked"):
            _tracking.bump_structure_version()

    # -- graph protocol (used by _graph) --------------------------------------
    def _nnx_children(self):
        return [
            (k, v)
            for k, v in self.__dict__.items()
            if not k.startswith(INTERNAL_PREFIX)
        ]

    def _nnx_set_children(self, items) -> None:
        d = self.__dict__
        internal = {k: v for k, v in d.items() if k.startswith(INTERNAL_PREFIX)}
        d.clear()
        d.update(items)
        d.update(internal)

    # -- display ---------------------------------------------------------------
    def __repr__(self) -> str:
        from nnxlike import _display

        return _display.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlike import _display

        return _display.render_object(self, path, subtree_renderer)


jtu.register_pytree_node(Object, _not_a_pytree, _never_unflatten)


def check_attribute(obj: Object, name: str, value: Any) -> Any:
    """Validate (and normalise) a value assigned to ``obj.name``."""
    t = type(value)
    if t is list:
        return _LIST_TYPE(value)  # type: ignore[misc]
    if t is dict:
        return _DICT_TYPE(value)  # type: ignore[misc]
    if t is tuple and any(isinstance(v, (jax.Array, np.ndarray)) for v in value):
        raise TypeError(_raw_array_error(obj, name, "a tuple holding arrays"))
    if isinstance(value, (jax.Array, np.ndarray)):
        what = f"{type(value).__name__} of shape {tuple(np.shape(value))}"
        raise TypeError(_raw_array_error(obj, name, what))
    return value


def _raw_array_error(obj: Object, name: str, what: str) -> str:
    cls = type(obj).__name__
    if name.startswith("["):  # an nnx.List item: name is "[i]"
        where, target = f"{cls}{name}", f"{cls.lower()}{name}"
    else:
        where, target = f"{cls}.{name}", f"self.{name}"
    return _errors.RAW_ARRAY_ATTRIBUTE.format(where=where, what=what, target=target)
