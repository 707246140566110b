"""``Module``: the eager, mutable base class users subclass.

Design note: a Module is an ``Object`` built eagerly in ``__init__`` (parameters
exist as soon as the constructor returns, as in PyTorch). Everything about graphs
lives in ``_graph``; this file adds the conveniences users call on models:
``sow``/``perturb`` into Variables, ``iter_modules``/``iter_children``,
``set_attributes`` and ``train``/``eval``. The views (``nnx.view``,
``with_attributes``, ``with_vars``) live in ``_views``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from nnxlike import _config, _errors, _graph, _object
from nnxlike._filters import to_predicate
from nnxlike._object import Object
from nnxlike._variables import Intermediate, Perturbation, Variable


def _forward_only_call(self, *args: Any, **kwargs: Any) -> Any:
    raise TypeError(_errors.MODULE_FORWARD_ONLY.format(cls=type(self).__name__))


def _defines_call(cls: type) -> bool:
    for klass in cls.__mro__:
        call = klass.__dict__.get("__call__")
        if call is not None and call is not _forward_only_call:
            return klass is not object
    return False


def _append(acc: tuple, x: Any) -> tuple:
    return (*acc, x)


def _empty() -> tuple:
    return ()


_MISSING: Any = object()

# The attribute ``nnx.capture`` puts on every Module for the duration of a call: a
# tuple of Variables, one per captured kind, each holding ``{name: value}``.
CAPTURES = "__captures__"


def _check_kind(module: Any, method: str, variable_type: Any) -> type[Variable]:
    if not isinstance(variable_type, type) or not issubclass(variable_type, Variable):
        raise TypeError(
            f"{type(module).__name__}.{method}: variable_type must be a Variable "
            f"kind such as nnx.Intermediate, got {variable_type!r}."
        )
    return variable_type


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # PyTorch habit: forward() without __call__ gets a pointer, not
        # "object is not callable".
        if "forward" in cls.__dict__ and not _defines_call(cls):
            cls.__call__ = _forward_only_call  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        # Only reached for missing attributes: PyTorch methods get a pointer.
        hint = None if name.startswith("_") else _errors.TORCH_MODULE_ATTRS.get(name)
        if hint is None:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            )
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r} (a PyTorch "
            f"Module method); here that is {hint}."
        )

    def sow(
        self,
        variable_type: type[Variable] = Intermediate,
        name: str = "",
        value: Any = None,
        reduce_fn: Callable[[Any, Any], Any] = _append,
        init_fn: Callable[[], Any] = _empty,
    ) -> bool:
        """Record ``value`` under ``name`` as a ``variable_type``; True if recorded.

        Inside ``nnx.capture`` the value goes to the capture (returned with the
        result, nothing is left on the model), and a kind the capture does not
        collect is dropped (False). Outside it, ``self.<name>`` becomes a
        ``variable_type`` Variable (read it with ``nnx.pop(model,
        nnx.Intermediate)``). By default values accumulate in a tuple, one entry
        per call; ``reduce_fn(previous, value)`` and ``init_fn()`` change that.

        >>> import nnxlike as nnx
        >>> m = nnx.Module()
        >>> m.sow(nnx.Intermediate, "h", 1), m.sow(nnx.Intermediate, "h", 2)
        (True, True)
        >>> m.h.value
        (1, 2)
        """
        kind = _check_kind(self, "sow", variable_type)
        captures = self.__dict__.get(CAPTURES)
        if captures is not None:
            for var in captures:
                if type(var) is kind:
                    recorded = dict(var.value)
                    previous = recorded[name] if name in recorded else init_fn()
                    recorded[name] = reduce_fn(previous, value)
                    var.value = recorded
                    return True
            return False
        existing = getattr(self, name, _MISSING)
        if existing is _MISSING:
            setattr(self, name, kind(reduce_fn(init_fn(), value)))
            return True
        cls = type(self).__name__
        if not isinstance(existing, Variable):
            raise ValueError(
                f"{cls}.sow: expected attribute {name!r} to be a Variable, got "
                f"{type(existing).__name__}. Sow under another name."
            )
        if type(existing) is not kind:
            raise ValueError(
                f"{cls}.sow: attribute {name!r} already holds a "
                f"{type(existing).__name__}, expected {kind.__name__} (expected "
                f"{name!r} to be of type {kind.__name__!r}, got "
                f"{type(existing).__name__!r}). Pick another name or pop the old "
                "values first."
            )
        existing.value = reduce_fn(existing.value, value)
        return True

    def perturb(
        self, name: str, value: Any, variable_type: type[Variable] = Perturbation
    ) -> Any:
        """Return ``value`` plus a perturbation, so ``nnx.grad`` can read its gradient.

        Inside ``nnx.capture`` the perturbation is the capture's (zeros, or the
        ``init=`` values whose gradient ``nnx.grad`` then gives); outside it,
        ``self.<name>`` becomes a zero ``variable_type`` Variable. Use the returned
        value, not ``value``, for the gradient to flow.

        >>> import jax.numpy as jnp
        >>> import nnxlike as nnx
        >>> m = nnx.Module()
        >>> m.perturb("tap", jnp.ones(3)).tolist(), m.tap.value.tolist()
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
        """
        kind = _check_kind(self, "perturb", variable_type)
        captures = self.__dict__.get(CAPTURES)
        if captures is not None:
            for var in captures:
                if type(var) is kind:
                    recorded = var.value
                    if name not in recorded:
                        zeros = jax.tree.map(jnp.zeros_like, value)
                        recorded = {**recorded, name: zeros}
                        var.value = recorded
                    return recorded[name] + value
            return value
        existing = getattr(self, name, _MISSING)
        if existing is _MISSING:
            old = jax.tree.map(jnp.zeros_like, value)
            setattr(self, name, kind(old))
        elif not isinstance(existing, kind):
            raise ValueError(
                f"{type(self).__name__}.perturb: expected {name!r} to be of type "
                f"{kind.__name__!r}, got {type(existing).__name__!r}. Perturb under "
                "another name."
            )
        else:
            old = existing.value
        return old + value

    def iter_modules(self) -> Iterator[tuple[tuple, Module]]:
        """Yield ``(path, module)`` for every Module in the graph, root last."""
        return iter_modules(self)

    def iter_children(self) -> Iterator[tuple[Any, Any]]:
        """Yield ``(name, node)`` for the graph nodes (Objects, Variables) held
        directly by ``self``: flax's alias of ``nnx.iter_children``."""
        return iter_children(self)

    def set_attributes(
        self,
        *filters: Any,
        raise_if_not_found: bool = True,
        graph: bool | None = None,
        **attributes: Any,
    ) -> None:
        """Set ``attributes`` on every sub-Module (``self`` included) that has them
        and matches one of ``filters`` (all Modules if none are given).

        Args:
            *filters: filters selecting the Modules, e.g. ``nnx.Dropout``.
            raise_if_not_found: raise ``ValueError`` if some attribute is on no
                selected Module.
            graph: graph mode for the walk (default from ``nnx.set_graph_mode``).
            **attributes: the attributes to set.

        >>> import nnxlike as nnx
        >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
        ...                        nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
        >>> model.set_attributes(deterministic=True)
        >>> model.layers[1].deterministic
        True
        """
        preds = [to_predicate(f) for f in filters] or [to_predicate(...)]
        missing = set(attributes)
        for path, module in iter_modules(self, graph=graph):
            if not any(p(path, module) for p in preds):
                continue
            for name, value in attributes.items():
                if has_attribute(module, name):
                    setattr(module, name, value)
                    missing.discard(name)
        if raise_if_not_found and missing:
            raise ValueError(
                _errors.ATTRIBUTES_NOT_FOUND.format(
                    where=f"{type(self).__name__}.set_attributes",
                    names=sorted(missing),
                )
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


def has_attribute(module: Any, name: str) -> bool:
    """Whether ``name`` is a settable attribute of ``module``: set on the instance,
    or a class-level value or property (methods do not count, unlike ``hasattr``,
    so ``set_attributes(train=...)`` cannot replace the method).

    >>> import nnxlike as nnx
    >>> d = nnx.Dropout(0.5)
    >>> has_attribute(d, "rate"), has_attribute(d, "eval"), has_attribute(d, "x")
    (True, False, False)
    """
    if name in vars(module):
        return True
    for klass in type(module).__mro__:
        if name in klass.__dict__:
            attr = klass.__dict__[name]
            return not (inspect.isroutine(attr) or isinstance(attr, classmethod))
    return False


def iter_modules(
    node: Any, /, *, graph: bool | None = None
) -> Iterator[tuple[tuple, Module]]:
    """Yield ``(path, module)`` for every Module reachable from ``node``.

    As in flax.nnx: keys in sorted order at every level, children before their
    parent, the root last, each Module once (States keep definition order).

    >>> import nnxlike as nnx
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.head = nnx.Linear(2, 1, rngs=rngs)
    ...         self.body = nnx.Linear(2, 2, rngs=rngs)
    >>> [path for path, _ in nnx.iter_modules(Net(nnx.Rngs(0)))]
    [('body',), ('head',), ()]
    """
    for path, value in _graph.iter_graph(node, graph=graph, _sorted=True):
        if isinstance(value, Module):
            yield path, value


def iter_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple]:
    """Yield ``(name, node)`` for the graph nodes held directly by ``node``.

    Graph nodes are Objects (Modules, containers, Rngs, ...) and Variables, as in
    flax.nnx; static values are skipped, and so are containers: a plain
    ``list``/``dict`` attribute is stored as an ``nnx.List``/``nnx.Dict`` here,
    where flax sees a pytree, not a child node (``iter_modules`` walks into
    them). Children come in sorted key order, as in flax.

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> [(k, type(v).__name__) for k, v in nnx.iter_children(model)]
    [('bias', 'Param'), ('kernel', 'Param')]
    """
    return _children(node, graph, "iter_children", (Object, Variable))


def iter_module_children(
    node: Any, /, *, graph: bool | None = None
) -> Iterator[tuple[Any, Module]]:
    """Yield ``(name, module)`` for the Modules held directly by ``node``.

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> [(k, type(v).__name__) for k, v in nnx.iter_module_children(model.layers)]
    [(0, 'Linear')]
    """
    return _children(node, graph, "iter_module_children", (Module,))


def _children(node: Any, graph: bool | None, fn: str, kinds: tuple) -> Iterator:
    if not isinstance(node, Object):
        raise ValueError(
            f"nnx.{fn}: expected a graph node (a Module or another nnx.Pytree), "
            f"got {type(node).__name__}. Walk a plain pytree with jax.tree_util."
        )
    if not _config.resolve(graph, None)[0]:
        _graph.check_tree(node, fn)
    return (
        (k, v)
        for k, v in sorted(node._nnx_children(), key=_object.sort_key)
        # nnx.List/nnx.Dict (what a plain list/dict attribute becomes) are not
        # yielded: flax sees a plain list there, a pytree, not a child node.
        if isinstance(v, kinds)
        and not isinstance(v, (_object._LIST_TYPE, _object._DICT_TYPE))
    )
