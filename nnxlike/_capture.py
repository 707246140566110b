"""``nnx.capture``: collect what ``Module.sow``/``Module.perturb`` record in a call.

Design note: before the call, every Module of the graph gets a ``__captures__``
attribute: a tuple with one Variable per captured kind (``Intermediate``,
``Perturbation``, ...), each holding a dict ``{name: value}``. ``sow`` and
``perturb`` (in ``_module``) write into the Variable of their kind, and do
nothing with kinds nobody captures. Because ``__captures__`` is an ordinary
attribute holding Variables, it is part of the graph, so an ``nnx.jit`` or
``nnx.grad`` *inside* the captured call carries the recorded values out like
any other state. After the call the dicts are gathered into a ``State`` keyed by
module path and the attributes removed, so the model is left as it was. The
layout follows flax.nnx 0.12.8: ``(result, state)`` for one kind, ``(result,
state_1, ..., state_n)`` for several, ``result`` alone for none.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from nnxlike._module import CAPTURES, Module, iter_modules
from nnxlike._state import State
from nnxlike._variables import Variable, variable_type


def _is_kind(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, Variable)


def capture(
    fn: Callable[..., Any] | type[Variable],
    *var_types: type[Variable],
    init: State | Mapping[Any, Any] | None = None,
    method_outputs: type[Variable] | None = None,
) -> Callable[..., Any]:
    """Wrap ``fn`` so that it also returns what the model sowed (or perturbed).

    ``fn`` is a Module (its ``__call__``), a bound method of a Module, or a
    function whose first argument is the Module. ``var_types`` are the kinds to
    collect; ``init`` is a State of starting values (the perturbations whose
    gradients ``nnx.grad`` then reads); ``method_outputs`` also sows the output of
    every public method and ``__call__`` of every Module in the graph, under the
    method's name. ``nnx.capture(nnx.Intermediate)`` (a kind first) returns a
    decorator.

    Returns:
        A function returning ``(result, state)`` for one kind, ``(result,
        state_1, ..., state_n)`` for several, or ``result`` for none; each state
        is keyed by module path then by the sown name.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class Model(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.linear1 = nnx.Linear(2, 3, rngs=rngs)
    ...         self.linear2 = nnx.Linear(3, 4, rngs=rngs)
    ...     def __call__(self, x):
    ...         x = self.linear1(x)
    ...         self.sow(nnx.Intermediate, "features", x)
    ...         return self.linear2(x)
    >>> model = Model(rngs=nnx.Rngs(0))
    >>> y, inter = nnx.capture(model, nnx.Intermediate)(jnp.ones(2))
    >>> inter["features"].value[0].shape, hasattr(model, "features")
    ((3,), False)
    >>> @nnx.capture(nnx.Intermediate, method_outputs=nnx.Intermediate)
    ... def forward(model, x):
    ...     return model(x)
    >>> _, inter = forward(model, jnp.ones(2))
    >>> sorted(inter["linear2"])
    ['__call__']
    """
    if _is_kind(fn):
        kinds = (fn, *var_types)
        return lambda actual: capture(
            actual, *kinds, init=init, method_outputs=method_outputs
        )
    for kind in var_types:
        if not _is_kind(kind):
            raise TypeError(
                f"capture: the kinds to collect must be Variable types such as "
                f"nnx.Intermediate, got {kind!r}."
            )
    if method_outputs is not None and not _is_kind(method_outputs):
        raise TypeError(
            f"capture: method_outputs must be a Variable type such as "
            f"nnx.Intermediate, got {method_outputs!r}."
        )
    bound = None
    if inspect.ismethod(fn) and isinstance(fn.__self__, Module):
        bound = fn.__self__
    elif isinstance(fn, Module):
        bound = fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        module = bound if bound is not None else (args[0] if args else None)
        if not isinstance(module, Module):
            raise TypeError(
                "capture: call a Module, a bound method of one, or a function "
                "whose first argument is the Module, got first argument "
                f"{type(module).__name__}."
            )
        modules = list(iter_modules(module))
        starts = _starting_values(init)
        for path, m in modules:
            dicts: dict[type, dict] = {kind: {} for kind in var_types}
            for name, (kind, value) in starts.get(path, {}).items():
                dicts.setdefault(kind, {})[name] = value
            setattr(m, CAPTURES, tuple(kind(d) for kind, d in dicts.items()))
        patched = _patch_methods(modules, method_outputs) if method_outputs else []
        try:
            result = fn(*args, **kwargs)
        finally:
            for cls, name, original in patched:
                setattr(cls, name, original)
            paths, leaves = _collect(modules, set(var_types))
        if not var_types:
            return result
        states = State.from_flat(paths, leaves).split(*var_types)
        return (result, states) if len(var_types) == 1 else (result, *states)

    return wrapper


def _starting_values(init: Any) -> dict[tuple, dict[str, tuple[type, Any]]]:
    """``{module path: {name: (kind, value)}}`` from a State of Variables."""
    out: dict[tuple, dict] = {}
    if init is None:
        return out
    if not isinstance(init, Mapping):
        raise TypeError(
            f"capture: init must be a State (as returned by a capture), got "
            f"{type(init).__name__}."
        )

    def walk(node: Mapping, path: tuple) -> None:
        for key, value in node.items():
            kind = variable_type(value)
            if kind is not None:
                out.setdefault(path, {})[key] = (kind, value.get_value())
            elif isinstance(value, Mapping):
                walk(value, (*path, key))

    walk(init, ())
    return out


def _collect(modules: list, kinds: set) -> tuple[list, list]:
    paths, leaves = [], []
    for path, m in modules:
        captured = m.__dict__.get(CAPTURES)
        if captured is None:
            continue
        for var in captured:
            if type(var) in kinds:
                for name, value in var.value.items():
                    paths.append((*path, name))
                    leaves.append(type(var)(value))
        delattr(m, CAPTURES)
    return paths, leaves


def _sowing(method: Callable, name: str, kind: type[Variable]) -> Callable:
    @functools.wraps(method)
    def sowing(self: Module, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self.sow(kind, name, result)
        return result

    return sowing


def _patch_methods(modules: list, kind: type[Variable]) -> list:
    """Make every public method (and ``__call__``) of the graph's classes sow."""
    patched = []
    for cls in {type(m) for _, m in modules}:
        for name, method in list(vars(cls).items()):
            if not inspect.isfunction(method):
                continue
            if name.startswith("_") and name != "__call__":
                continue

            patched.append((cls, name, method))
            setattr(cls, name, _sowing(method, name, kind))
    return patched
