"""Hijax boxes: the mutable container behind ``hijax=True`` Variables.

Design note: flax.nnx 0.12 builds its hijax Variables on JAX's "hijax" machinery
(mutable high-level types with quasi-dynamic data). nnxlike keeps its Variable
type and stores the value of a ``hijax=True`` Variable in one JAX ``Box`` (a
mutable hijax type that JAX itself defines), as a ``ref=True`` Variable stores
it in a ``jax.Ref``. Passed through a plain ``jax.jit``/``jax.grad`` (as an
argument or captured by closure), the box is traced as a mutable value: what
the function writes, even a value of a new pytree structure (a new dict key),
is in the box afterwards. This file owns only the box; the Variable side (reads
and writes through it) is in ``_variables.py``. It does not make boxes
differentiable or give them a vmap/scan axis (JAX does not either yet).
"""

from __future__ import annotations

from typing import Any

try:  # the box types live in JAX's private hijax module (jax >= 0.8)
    from jax._src.hijax import Box as _Box
    from jax._src.hijax import box_get as _box_get
    from jax._src.hijax import box_set as _box_set
except ImportError:  # pragma: no cover - an older JAX: hijax=True is refused
    _Box = None

AVAILABLE = _Box is not None


def is_box(x: Any) -> bool:
    """Whether ``x`` is a hijax box (concrete, or a tracer of one).

    >>> import jax.numpy as jnp
    >>> from nnxlike import _hijax
    >>> _hijax.is_box(_hijax.new_box(jnp.ones(2))), _hijax.is_box(jnp.ones(2))
    (True, False)
    """
    return _Box is not None and isinstance(x, _Box)


def new_box(value: Any) -> Any:
    """A box holding ``value`` (any pytree).

    >>> import jax, jax.numpy as jnp
    >>> from nnxlike import _hijax
    >>> box = _hijax.new_box({"a": jnp.array(1)})
    >>> @jax.jit
    ... def add_key(box):
    ...     _hijax.set(box, {**_hijax.get(box), "b": jnp.array(2)})
    >>> add_key(box)
    >>> sorted(_hijax.get(box))
    ['a', 'b']
    """
    if _Box is None:  # pragma: no cover - depends on the installed JAX
        raise NotImplementedError(
            "hijax=True Variables need a JAX with hijax boxes "
            "(jax._src.hijax.Box, JAX 0.8 or newer); use ref=True instead: "
            "`nnx.Variable(value, ref=True)`."
        )
    return _Box(value)


def get(box: Any) -> Any:
    """The value in ``box`` (inside a trace: its current traced value)."""
    return _box_get(box)


def set(box: Any, value: Any) -> None:  # noqa: A001 - the box operation's name
    """Store ``value`` in ``box`` (its pytree structure may differ)."""
    _box_set(box, value)
