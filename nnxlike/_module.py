"""``Module``: the eager, mutable base class users subclass, and ``view``.

Design note: a Module is an ``Object`` built eagerly in ``__init__`` (parameters
exist as soon as the constructor returns, as in PyTorch). Everything about graphs
lives in ``_graph``; this file adds the conveniences users call on models:
``sow``/``perturb`` into Variables, ``iter_modules``/``iter_children``,
``set_attributes`` and ``train``/``eval``, and ``view`` (a second set of Module
objects sharing every Variable with the first, with some flags changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp

from nnxlike import _graph
from nnxlike._filters import to_predicate
from nnxlike._object import Object
from nnxlike._variables import Intermediate, Perturbation, Variable


def _append(acc: tuple, x: Any) -> tuple:
    return (*acc, x)


def _empty() -> tuple:
    return ()


class Module(Object):
    """Base class of layers and models.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class MLP(nnx.Module):
    ...     def __init__(self, din, dout, *, rngs):
    ...         self.hidden = nnx.Linear(din, 8, rngs=rngs)
    ...         self.out = nnx.Linear(8, dout, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.out(nnx.relu(self.hidden(x)))
    >>> model = MLP(2, 1, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((4, 2))).shape
    (4, 1)
    >>> [path for path, _ in model.iter_modules()]
    [('hidden',), ('out',), ()]
    """

    def sow(
        self,
        variable_type: type[Variable] = Intermediate,
        name: str = "",
        value: Any = None,
        reduce_fn: Callable[[Any, Any], Any] = _append,
        init_fn: Callable[[], Any] = _empty,
    ) -> None:
        """Record ``value`` in ``self.<name>`` (a ``variable_type`` Variable).

        By default values accumulate in a tuple, one entry per call; use
        ``nnx.pop(model, nnx.Intermediate)`` to collect and remove them.
        """
        if not isinstance(variable_type, type) or not issubclass(
            variable_type, Variable
        ):
            raise TypeError(
                f"{type(self).__name__}.sow: variable_type must be a Variable kind "
                f"such as nnx.Intermediate, got {variable_type!r}."
            )
        existing = self.__dict__.get(name)
        if existing is None:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
        elif isinstance(existing, variable_type):
            existing.value = reduce_fn(existing.value, value)
        else:
            raise TypeError(
                f"{type(self).__name__}.sow: attribute {name!r} already holds a "
                f"{type(existing).__name__}, expected {variable_type.__name__}. "
                "Pick another name or pop the old values first."
            )

    def perturb(
        self, name: str, value: Any, variable_type: type[Variable] = Perturbation
    ) -> Any:
        """Add a zero-valued Variable to ``value`` so its gradient can be read."""
        if name not in self.__dict__:
            setattr(self, name, variable_type(jnp.zeros_like(value)))
        return value + getattr(self, name).value

    def iter_modules(self) -> Iterator[tuple[tuple, Module]]:
        """Yield ``(path, module)`` for every Module in the graph, root last."""
        return iter_modules(self)

    def iter_children(self) -> Iterator[tuple[Any, Module]]:
        """Yield ``(name, module)`` for the Modules held directly by ``self``."""
        for key, value in self._nnx_children():
            if isinstance(value, Module):
                yield key, value

    def set_attributes(
        self, *filters: Any, raise_if_not_found: bool = True, **attributes: Any
    ) -> None:
        """Set ``attributes`` on every sub-Module that has them (and matches filters).

        >>> import nnxlike as nnx
        >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
        ...                        nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
        >>> model.set_attributes(deterministic=True)
        >>> model.layers[1].deterministic
        True
        """
        preds = [to_predicate(f) for f in filters]
        found: set[str] = set()
        for path, module in iter_modules(self):
            if preds and not any(p(path, module) for p in preds):
                continue
            for name, value in attributes.items():
                if name in module.__dict__:
                    setattr(module, name, value)
                    found.add(name)
        missing = set(attributes) - found
        if raise_if_not_found and missing:
            raise AttributeError(
                f"set_attributes: no Module in {type(self).__name__} has the "
                f"attribute(s) {sorted(missing)}. Check the spelling, or pass "
                "raise_if_not_found=False."
            )

    def train(self, **attributes: Any) -> Module:
        """Training mode: ``deterministic=False``, ``use_running_average=False``.

        Returns ``self`` so PyTorch-style chaining works.
        """
        self.set_attributes(
            deterministic=False,
            use_running_average=False,
            **attributes,
            raise_if_not_found=False,
        )
        return self

    def eval(self, **attributes: Any) -> Module:
        """Evaluation mode: ``deterministic=True``, ``use_running_average=True``."""
        self.set_attributes(
            deterministic=True,
            use_running_average=True,
            **attributes,
            raise_if_not_found=False,
        )
        return self


def iter_modules(node: Any) -> Iterator[tuple[tuple, Module]]:
    """Yield ``(path, module)`` for every Module reachable from ``node``."""
    for path, value in _graph.iter_graph(node):
        if isinstance(value, Module):
            yield path, value


def iter_children(node: Module) -> Iterator[tuple[Any, Module]]:
    """Yield ``(name, module)`` for the Modules held directly by ``node``."""
    return node.iter_children()


def view(node: Any, /, *, raise_if_not_found: bool = True, **attributes: Any) -> Any:
    """A new object graph sharing every Variable of ``node``, with attributes set.

    The usual use: an evaluation view of a model that keeps training.

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    >>> ev = nnx.view(model, deterministic=True)
    >>> ev.layers[1].deterministic, model.layers[1].deterministic
    (True, False)
    >>> ev.layers[0].kernel is model.layers[0].kernel
    True
    """
    flat = _graph.flatten(node)
    objects = flat.objects

    def reuse(i: int):
        obj = objects[i]
        return obj if isinstance(obj, Variable) else None

    values = [_graph._leaf_value(v) for v in flat.leaves]
    new = _graph.unflatten(flat.graphdef, values, reuse=reuse)
    if attributes:
        if isinstance(new, Module):
            new.set_attributes(raise_if_not_found=raise_if_not_found, **attributes)
        else:
            found = False
            for _, m in iter_modules(new):
                m.set_attributes(raise_if_not_found=False, **attributes)
                found = True
            if raise_if_not_found and not found:
                raise AttributeError("view: the graph holds no Module to set.")
    return new
