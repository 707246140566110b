"""Constructor-argument checks shared by every layer in ``nnxlike.nn``.

Design note: layers validate their arguments once, in ``__init__``, and name the
layer, the argument, what was expected, what came and the fix, instead of letting
a raw JAX error (``Linear(0, 8)`` builds an empty kernel; ``Conv(strides=0)`` dies
in XLA) surface later. Nothing here runs per call or inside a compiled graph: the
shape checks of ``__call__`` live in each layer and run at trace time, in Python.
The ``rngs`` check accepts anything with the ``params`` stream flax layers draw
(``nnx.Rngs`` or a stand-in), so duck-typed generators keep working.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_size(where: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``, or a clear error.

    >>> check_size("Linear", "in_features", 3)
    3
    >>> check_size("Linear", "in_features", 0)
    Traceback (most recent call last):
    ...
    ValueError: Linear: in_features must be a positive int (>= 1), got 0. ...
    """
    if not _is_int(value):
        raise TypeError(
            f"{where}: {name} must be an int, got {type(value).__name__} "
            f"{value!r}. Pass a whole number, e.g. `{name}=8`."
        )
    value = operator.index(value)
    if value < minimum:
        kind = "a positive int" if minimum == 1 else "an int"
        raise ValueError(
            f"{where}: {name} must be {kind} (>= {minimum}), got {value}. "
            f"Pass {name}={max(minimum, 1)} or more."
        )
    return value


def check_sizes(
    where: str, name: str, value: Any, *, minimum: int = 1, allow_none: bool = False
) -> Any:
    """An int or a sequence of ints, each at least ``minimum`` (kept as given).

    >>> check_sizes("Conv", "strides", (1, 2))
    (1, 2)
    >>> check_sizes("Conv", "strides", 0)
    Traceback (most recent call last):
    ...
    ValueError: Conv: strides must be a positive int (>= 1), got 0. ...
    """
    if value is None and allow_none:
        return value
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = tuple(value)
        for i, v in enumerate(items):
            check_size(where, f"{name}[{i}]", v, minimum=minimum)
        return value
    check_size(where, name, value, minimum=minimum)
    return value


def check_rate(where: str, name: str, value: Any) -> float:
    """A probability in ``[0, 1)``.

    >>> check_rate("MultiHeadAttention", "dropout_rate", 0.1)
    0.1
    """
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: {name} must be a float in [0, 1), got "
            f"{type(value).__name__} {value!r}."
        ) from None
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"{where}: {name} must be in [0, 1), got {value!r}. It is the "
            f"probability of dropping an element; 0.0 turns dropout off. Pass "
            f"e.g. {name}=0.1."
        )
    return value


def check_rngs(where: str, rngs: Any) -> Any:
    """``rngs`` must be an ``nnx.Rngs`` (anything with a ``params`` stream).

    >>> check_rngs("Linear", 0)
    Traceback (most recent call last):
    ...
    TypeError: Linear: rngs must be an nnx.Rngs, got int 0. Pass rngs=nnx.Rngs(0) ...
    """
    if not isinstance(rngs, (int, str, bytes)) and hasattr(rngs, "params"):
        return rngs
    if rngs is None:
        got = "None"
    else:
        got = f"{type(rngs).__name__} {rngs!r}"
    seed = rngs if _is_int(rngs) else 0
    raise TypeError(
        f"{where}: rngs must be an nnx.Rngs, got {got}. Pass rngs=nnx.Rngs({seed}) "
        "(a seed is wrapped by nnx.Rngs, not passed directly; PyTorch's global "
        "seed has no equivalent here)."
    )
