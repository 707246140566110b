"""Filters: which Variables an operation (split, state, grad, Optimizer) acts on.

Design note: every filter form is turned once into a predicate
``(path, value) -> bool`` by ``to_predicate``; ``value`` is a Variable or a
``VariableState`` (both answer ``variable_type``). Forms:

- a Variable type (``nnx.Param``): ``isinstance`` on the kind;
- a string: a path component or an RNG stream tag equal to it (``"kernel"``,
  ``"dropout"``), or a ``/``-joined glob when it contains ``/`` or ``*``
  (``"layers/*/kernel"``);
- ``...``/``True`` everything, ``None``/``False`` nothing;
- a callable ``(path, value) -> bool``; a tuple or list (any of);
- the combinators ``All``, ``Any``, ``Not``, ``PathContains``, ``OfType``,
  ``Everything``, ``Nothing``.
"""

from __future__ import annotations

import builtins
import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any as _AnyType

from nnxlike._variables import variable_type

Filter = _AnyType
Predicate = Callable[[tuple, _AnyType], bool]


def to_predicate(filter: Filter) -> Predicate:
    """Turn any filter form into a ``(path, value) -> bool`` predicate.

    >>> import nnxlike as nnx
    >>> p = nnx.filterlib.to_predicate((nnx.BatchStat, "bias"))
    >>> p(("bn", "mean"), nnx.BatchStat(0.0)), p(("linear", "bias"), nnx.Param(0.0))
    (True, True)
    >>> p(("linear", "kernel"), nnx.Param(0.0))
    False
    """
    if isinstance(filter, _FilterBase):
        return filter
    if filter is Ellipsis or filter is True:
        return Everything()
    if filter is None or filter is False:
        return Nothing()
    if isinstance(filter, type):
        return OfType(filter)
    if isinstance(filter, str):
        if "/" in filter or "*" in filter:
            return PathGlob(filter)
        return PathOrTag(filter)
    if isinstance(filter, (tuple, list)):
        return Any(*filter)
    if callable(filter):
        return filter
    raise TypeError(
        f"Invalid filter {filter!r} of type {type(filter).__name__}. A filter is a "
        "Variable type (nnx.Param), a path string ('kernel' or 'layers/*/kernel'), "
        "..., True, None, False, a callable (path, value) -> bool, a tuple of "
        "filters, or nnx.All/Any/Not/PathContains/OfType/Everything/Nothing."
    )


class _FilterBase:
    def __call__(self, path: tuple, value: _AnyType) -> bool:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class OfType(_FilterBase):
    """Matches Variables whose kind is ``type`` or a subclass of it."""

    type: type

    def __call__(self, path, value):
        t = variable_type(value)
        return (t is not None and issubclass(t, self.type)) or isinstance(
            value, self.type
        )


@dataclasses.dataclass(frozen=True)
class PathContains(_FilterBase):
    """Matches when some component of the path equals ``key``.

    With ``exact=False`` a component matches when ``str(key)`` is a substring
    of ``str(component)`` (so ``"attn"`` matches ``"self_attn"``), as flax.nnx.

    >>> import nnxlike as nnx
    >>> nnx.PathContains("kernel")(("layer", "kernel"), None)
    True
    >>> f = nnx.PathContains("attn", exact=False)
    >>> f(("self_attn", "kernel"), None), f(("mlp", "kernel"), None)
    (True, False)
    """

    key: _AnyType
    exact: bool = True

    def __call__(self, path, value):
        if self.exact:
            return self.key in path
        key = str(self.key)
        return any(key in str(part) for part in path)


@dataclasses.dataclass(frozen=True)
class PathOrTag(_FilterBase):
    """A plain string filter: a path component equal to it, or a tag equal to it.

    flax.nnx reads a string as a tag (``WithTag``: the RNG streams of that name,
    wherever they live, e.g. a Dropout's own ``'dropout'`` stream); nnxlike also
    matches path components (``'kernel'``).

    >>> import nnxlike as nnx
    >>> f = nnx.filterlib.to_predicate("dropout")
    >>> f(("drop", "rngs", "key"), nnx.RngKey(nnx.Rngs(0)(), tag="dropout"))
    True
    >>> f(("dropout", "count"), None), f(("linear", "kernel"), nnx.Param(0.0))
    (True, False)
    """

    name: str

    def __call__(self, path, value):
        return self.name in path or getattr(value, "tag", None) == self.name


@dataclasses.dataclass(frozen=True)
class PathGlob(_FilterBase):
    """Matches the ``/``-joined path against a glob (``"layers/*/kernel"``)."""

    pattern: str

    def __call__(self, path, value):
        return fnmatch.fnmatchcase("/".join(map(str, path)), self.pattern)


@dataclasses.dataclass(frozen=True)
class WithTag(_FilterBase):
    """Matches values with a ``tag`` equal to ``tag`` (RNG streams and their state).

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> sorted(nnx.state(rngs, nnx.WithTag("dropout")).flat_dict())
    [('dropout', 'count'), ('dropout', 'key')]
    """

    tag: str

    def __call__(self, path, value):
        return getattr(value, "tag", None) == self.tag


class PathIn(_FilterBase):
    """Matches exactly the given paths (tuples of keys).

    >>> import nnxlike as nnx
    >>> f = nnx.filterlib.PathIn(("linear", "kernel"), ("bn", "scale"))
    >>> f(("linear", "kernel"), None), f(("linear", "bias"), None)
    (True, False)
    """

    def __init__(self, *paths: tuple):
        self.paths = frozenset(tuple(p) for p in paths)

    def __call__(self, path, value):
        return tuple(path) in self.paths

    def __repr__(self):
        return f"PathIn({', '.join(map(repr, sorted(self.paths, key=repr)))})"

    def __eq__(self, other):
        return isinstance(other, PathIn) and self.paths == other.paths

    def __hash__(self):
        return hash(self.paths)


def filters_to_predicates(filters: tuple) -> tuple:
    """Each filter as a predicate; ``...`` is allowed only last (flax's rule).

    >>> import nnxlike as nnx
    >>> preds = nnx.filterlib.filters_to_predicates((nnx.Param, ...))
    >>> [p(("w",), nnx.BatchStat(0.0)) for p in preds]
    [False, True]
    """
    for i, f in enumerate(filters):
        if (f is Ellipsis or f is True) and i != len(filters) - 1:
            raise ValueError(
                f"`...` or `True` can only be used as the last filters, got "
                f"{f!r} at index {i} of {filters!r}: `...` may only be the last "
                "filter, since it matches everything and the filters after it "
                "would never match. Move it to the end."
            )
    return tuple(map(to_predicate, filters))


class Any(_FilterBase):
    """Matches when any of the filters matches."""

    def __init__(self, *filters: Filter):
        self.filters = filters
        self.predicates = tuple(to_predicate(f) for f in filters)

    def __call__(self, path, value):
        return builtins.any(p(path, value) for p in self.predicates)

    def __repr__(self):
        return f"Any({', '.join(map(repr, self.filters))})"

    def __eq__(self, other):
        return isinstance(other, Any) and self.filters == other.filters

    def __hash__(self):
        return hash(("Any", self.filters))


class All(_FilterBase):
    """Matches when every filter matches."""

    def __init__(self, *filters: Filter):
        self.filters = filters
        self.predicates = tuple(to_predicate(f) for f in filters)

    def __call__(self, path, value):
        return builtins.all(p(path, value) for p in self.predicates)

    def __repr__(self):
        return f"All({', '.join(map(repr, self.filters))})"

    def __eq__(self, other):
        return isinstance(other, All) and self.filters == other.filters

    def __hash__(self):
        return hash(("All", self.filters))


class Not(_FilterBase):
    """Matches when the filter does not."""

    def __init__(self, filter: Filter):
        self.filter = filter
        self.predicate = to_predicate(filter)

    def __call__(self, path, value):
        return not self.predicate(path, value)

    def __repr__(self):
        return f"Not({self.filter!r})"

    def __eq__(self, other):
        return isinstance(other, Not) and self.filter == other.filter

    def __hash__(self):
        return hash(("Not", self.filter))


class Everything(_FilterBase):
    """Matches everything."""

    def __call__(self, path, value):
        return True

    def __repr__(self):
        return "Everything()"

    def __eq__(self, other):
        return isinstance(other, Everything)

    def __hash__(self):
        return hash("Everything")


class Nothing(_FilterBase):
    """Matches nothing."""

    def __call__(self, path, value):
        return False

    def __repr__(self):
        return "Nothing()"

    def __eq__(self, other):
        return isinstance(other, Nothing)

    def __hash__(self):
        return hash("Nothing")
