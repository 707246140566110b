"""Dtype promotion for layers: ``canonicalize_dtype`` and ``promote_dtype``.

Design note: every layer casts its input and parameters to one computation dtype
before the math, through a ``promote_dtype`` function it takes as an argument (the
default is this module's), so mixed-precision schemes can be injected the way
flax.nnx allows. ``promote_dtype`` takes the arrays as one tuple (not variadic), as
flax.nnx's does, and returns ``None`` entries unchanged.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def canonicalize_dtype(*args: Any, dtype: Any = None, inexact: bool = True) -> Any:
    """The dtype ``args`` should be cast to: ``dtype``, or their result type.

    With ``inexact=True`` an inferred integer type becomes a float type, and an
    explicit non-float ``dtype`` is an error.

    >>> import jax.numpy as jnp
    >>> canonicalize_dtype(jnp.ones(2, jnp.int32), None)
    dtype('float32')
    >>> canonicalize_dtype(jnp.ones(2), dtype=jnp.float16)
    <class 'jax.numpy.float16'>
    """
    if dtype is None:
        present = [jnp.asarray(x) for x in args if x is not None]
        dtype = jnp.result_type(*present)
        if inexact and not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"promote_dtype: dtype must be a floating or complex type here, got "
            f"{jnp.dtype(dtype)}. Pass e.g. `dtype=jnp.float32`."
        )
    return dtype


def promote_dtype(args: tuple, /, *, dtype: Any = None, inexact: bool = True) -> tuple:
    """Cast the non-None entries of ``args`` to one dtype (see ``canonicalize_dtype``).

    >>> import jax.numpy as jnp
    >>> x, k, b = promote_dtype((jnp.ones(2, jnp.float16), jnp.ones(2), None))
    >>> x.dtype, k.dtype, b
    (dtype('float32'), dtype('float32'), None)
    """
    dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
    return tuple(jnp.asarray(x, dtype) if x is not None else None for x in args)
