"""Graph-mode switches: ``set_graph_mode`` and ``set_graph_updates``.

Design note: flax.nnx 0.12 lets every transform and graph function run in two
modes, chosen per call (``graph=``, ``graph_updates=``) or by these switches:

- **graph mode** (``graph=True``, the default): objects are walked as graphs, so
  shared references and cycles are kept;
- **tree mode** (``graph=False``): objects are treated as pytrees, a shared
  reference is an error (a tree cannot hold one object twice);
- ``graph_updates=True`` (the default) writes back structural changes made
  inside a transform (a new attribute, a replaced submodule); ``False`` writes
  back Variable values only.

A switch is a value on a thread-local stack. Called plainly it sets the value
(``nnx.set_graph_mode(False)`` at the top of a file); as a context manager or a
decorator it applies inside and restores the previous value on exit. This file
is bookkeeping: it imports nothing from nnxlike.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.graph: list[bool] = []
        self.graph_updates: list[bool] = []


_STACKS = _Stacks()


class _Switch:
    _name = ""
    _default = True

    @classmethod
    def _stack(cls) -> list[bool]:
        return getattr(_STACKS, cls._name)

    def __init__(self, value: bool, /):
        if not isinstance(value, bool):
            raise TypeError(
                f"nnx.{type(self).__name__} takes True or False, got "
                f"{type(value).__name__} {value!r}."
            )
        stack = self._stack()
        # Plain call: set the value now (replacing the top, so repeated plain
        # calls do not grow the stack). `with` and decorator use undo this.
        self._prev = stack[-1] if stack else None
        if stack:
            stack[-1] = value
        else:
            stack.append(value)
        self._value = value

    @classmethod
    def current_value(cls) -> bool:
        stack = cls._stack()
        return stack[-1] if stack else cls._default

    def __enter__(self) -> _Switch:
        if self._prev is not None:
            self._stack().insert(-1, self._prev)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack().pop()

    def __call__(self, f: F) -> F:
        stack = self._stack()
        stack.pop()
        if self._prev is not None:
            stack.append(self._prev)
        value = self._value

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = self._stack()
            stack.append(value)
            try:
                return f(*args, **kwargs)
            finally:
                stack.pop()

        return wrapper  # type: ignore[return-value]


class set_graph_mode(_Switch):
    """Choose graph mode (True, the default) or tree mode (False).

    >>> import nnxlike as nnx
    >>> with nnx.set_graph_mode(False):
    ...     nnx.set_graph_mode.current_value()
    False
    >>> nnx.set_graph_mode.current_value()
    True
    """

    _name = "graph"


class set_graph_updates(_Switch):
    """Choose whether transforms write back structural changes (True, default).

    >>> import nnxlike as nnx
    >>> @nnx.set_graph_updates(False)
    ... def f():
    ...     return nnx.set_graph_updates.current_value()
    >>> f(), nnx.set_graph_updates.current_value()
    (False, True)
    """

    _name = "graph_updates"


def resolve(graph: bool | None, graph_updates: bool | None) -> tuple[bool, bool]:
    """The effective ``(graph, graph_updates)`` of a call."""
    if graph is None:
        graph = set_graph_mode.current_value()
    if graph_updates is None:
        graph_updates = set_graph_updates.current_value()
    return graph, graph_updates
