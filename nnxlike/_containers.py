"""Containers: ``List``, ``Dict`` and ``Sequential``.

Design note: ``List`` and ``Dict`` are graph nodes holding their items (Modules,
Variables, static values) so that in-place edits (``append``, ``del``, item
assignment) are seen by the structure version the jit fast path relies on. Plain
``list``/``dict`` values assigned to a Module attribute are converted into them
(see ``_object.check_attribute``). Items obey the same rules as attributes: no
raw arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any

from nnxlike import _object, _tracking
from nnxlike._module import Module
from nnxlike._object import Object, check_attribute


def _bump(obj: Object) -> None:
    if obj.__dict__.get("_nnx_tracked"):
        _tracking.bump_structure_version()


class List(Object, MutableSequence):
    """A list that is part of the object graph (PyTorch's ``ModuleList``).

    >>> import nnxlike as nnx
    >>> layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(3)])
    >>> len(layers), type(layers[0]).__name__
    (3, 'Linear')
    >>> list(nnx.state(layers).to_pure_dict())
    [0, 1, 2]
    """

    def __init__(self, items: Iterable[Any] = ()):
        self.__dict__["_nnx_items"] = [self._item(i, v) for i, v in enumerate(items)]

    def _item(self, i: int, value: Any) -> Any:
        # nnx.data(x) / nnx.static(x) items, as flax.nnx's List takes them
        value, explicit = _object._explicit_status(value)
        if explicit is not None:
            _object._set_explicit(self, str(i), explicit)
        return check_attribute(self, f"[{i}]", value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, List)):
            return len(self) == len(other) and all(
                a is b or bool(a == b) for a, b in zip(self, other)
            )
        return NotImplemented

    __hash__ = Object.__hash__

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith(_object.INTERNAL_PREFIX):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(
            f"nnx.List holds items, not attributes (tried to set {name!r}). "
            "Use a Module subclass for named attributes."
        )

    def _nnx_children(self):
        return list(enumerate(self._nnx_items))

    def _nnx_set_children(self, items) -> None:
        self.__dict__["_nnx_items"] = [v for _, v in items]

    def _nnx_remove(self, key: int) -> None:
        del self[key]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return List(self._nnx_items[index])
        return self._nnx_items[index]

    def __setitem__(self, index, value) -> None:
        if isinstance(index, slice):
            value = [check_attribute(self, "[:]", v) for v in value]
        else:
            value = check_attribute(self, f"[{index}]", value)
        self._nnx_items[index] = value
        _bump(self)

    def __delitem__(self, index) -> None:
        _object.check_trace(self)
        del self._nnx_items[index]
        _bump(self)

    def __len__(self) -> int:
        return len(self._nnx_items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._nnx_items)

    def insert(self, index: int, value: Any) -> None:
        self._nnx_items.insert(index, check_attribute(self, f"[{index}]", value))
        _bump(self)

    def __call__(self, *args, **kwargs):
        raise TypeError(
            "nnx.List is not callable; use nnx.Sequential(*layers) to chain layers, "
            "or loop: `for layer in self.layers: x = layer(x)`."
        )


class Dict(Object, MutableMapping):
    """A dict that is part of the object graph (PyTorch's ``ModuleDict``).

    Items are reachable as ``d["key"]`` and, for string keys, ``d.key``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        items = dict(*args, **kwargs)
        self.__dict__["_nnx_items"] = {
            k: check_attribute(self, str(k), v) for k, v in items.items()
        }

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith(_object.INTERNAL_PREFIX):
            raise AttributeError(name)
        try:
            return self.__dict__["_nnx_items"][name]
        except KeyError:
            raise AttributeError(
                f"nnx.Dict has no key {name!r}; keys: {list(self._nnx_items)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith(_object.INTERNAL_PREFIX):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    def _nnx_children(self):
        return list(self._nnx_items.items())

    def _nnx_set_children(self, items) -> None:
        self.__dict__["_nnx_items"] = dict(items)

    def _nnx_remove(self, key: Any) -> None:
        del self[key]

    def __getitem__(self, key):
        return self._nnx_items[key]

    def __setitem__(self, key, value) -> None:
        self._nnx_items[key] = check_attribute(self, str(key), value)
        _bump(self)

    def __delitem__(self, key) -> None:
        _object.check_trace(self)
        del self._nnx_items[key]
        _bump(self)

    def __len__(self) -> int:
        return len(self._nnx_items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._nnx_items)


class Sequential(Module):
    """Chain layers: the first gets the call's arguments, each next the output.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(4, 1, rngs=nnx.Rngs(1)))
    >>> model(jnp.ones((3, 2))).shape
    (3, 1)
    """

    def __init__(self, *layers: Any):
        self.layers = List(layers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not len(self.layers):  # flax.nnx: an empty Sequential is the identity
            if not kwargs:
                return None if not args else args[0] if len(args) == 1 else args
            return kwargs if not args else (args, kwargs)
        out = None
        for i, layer in enumerate(self.layers):
            out = layer(*args, **kwargs) if i == 0 else layer(out)
        return out

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Any:
        return self.layers[index]


_object._LIST_TYPE = List
_object._DICT_TYPE = Dict
