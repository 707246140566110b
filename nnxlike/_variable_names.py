"""Linen collection names <-> Variable kinds (flax's ``register_variable_name``).

Design note: flax.linen keeps state in named collections (``"params"``,
``"batch_stats"``); flax.nnx keys it by Variable type. This registry maps one to
the other, for code that converts between the two: a name maps to exactly one
Variable class and back. Known pairs are registered at import; unknown names can
create a new Variable subclass on request (``allow_register=True``). Nothing else
in nnxlike reads it.
"""

from __future__ import annotations

import functools
from typing import Any

from nnxlike._variables import (
    BatchStat,
    Cache,
    Intermediate,
    Param,
    Perturbation,
    Variable,
)

_NAME_TO_TYPE: dict[str, type] = {}


def register_variable_name(
    name: str, typ: type | None = None, *, overwrite: bool = False
) -> Any:
    """Map the Linen collection ``name`` to the Variable class ``typ``.

    Without ``typ`` it returns a class decorator.

    >>> import nnxlike as nnx
    >>> @nnx.register_variable_name("my_stats")
    ... class MyStat(nnx.Variable):
    ...     pass
    >>> nnx.variable_type_from_name("my_stats") is MyStat
    True
    >>> nnx.variable_name_from_type(MyStat)
    'my_stats'
    """
    if typ is None:
        return functools.partial(register_variable_name, name, overwrite=overwrite)
    if not (isinstance(typ, type) and issubclass(typ, Variable)):
        raise TypeError(
            f"register_variable_name({name!r}, ...): expected a Variable subclass, "
            f"got {typ!r}."
        )
    if not overwrite and name in _NAME_TO_TYPE and _NAME_TO_TYPE[name] is not typ:
        raise ValueError(
            f"Name {name} already mapped to type {_NAME_TO_TYPE[name].__name__}. "
            "To overwrite, call register_variable_name() with `overwrite=True`."
        )
    _NAME_TO_TYPE[name] = typ
    return typ


def variable_type_from_name(
    name: str, /, *, base: type = Variable, allow_register: bool = False
) -> type:
    """The Variable class registered for the Linen collection ``name``.

    With ``allow_register=True`` an unknown name gets a new subclass of ``base``
    named ``name``.

    >>> import nnxlike as nnx
    >>> nnx.variable_type_from_name("params") is nnx.Param
    True
    >>> nnx.variable_type_from_name("counts", allow_register=True).__name__
    'counts'
    """
    typ = _NAME_TO_TYPE.get(name)
    if typ is None:
        if not allow_register:
            raise ValueError(
                f"Name {name} is not registered in the registry. To register a new "
                "name, use register_variable_name() or set allow_register=True."
            )
        typ = _NAME_TO_TYPE[name] = type(name, (base,), {})
    return typ


def variable_name_from_type(typ: type, /, *, allow_register: bool = False) -> str:
    """The Linen collection name of the Variable class ``typ``.

    The inverse of ``variable_type_from_name``; with ``allow_register=True`` an
    unregistered class is registered under its class name.

    >>> import nnxlike as nnx
    >>> nnx.variable_name_from_type(nnx.BatchStat)
    'batch_stats'
    """
    for name, t in _NAME_TO_TYPE.items():
        if t is typ:
            return name
    if not allow_register:
        raise ValueError(
            f"Type {typ.__name__} is not registered in the registry. To register a "
            "new type, use register_variable_name() or set allow_register=True."
        )
    name = typ.__name__
    if name in _NAME_TO_TYPE:
        raise ValueError(
            f"Name {name} is already registered in the registry as "
            f"{_NAME_TO_TYPE[name].__name__}; it cannot be linked with {typ!r}. "
            "Register the type under another name with register_variable_name()."
        )
    register_variable_name(name, typ)
    return name


for _name, _typ in (
    ("params", Param),
    ("batch_stats", BatchStat),
    ("cache", Cache),
    ("intermediates", Intermediate),
    ("perturbations", Perturbation),
):
    register_variable_name(_name, _typ)
