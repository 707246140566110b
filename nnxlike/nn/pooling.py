"""Pooling functions: ``pool``, ``max_pool``, ``min_pool``, ``avg_pool``.

Design note: plain functions over channels-last inputs ``(*batch, *spatial,
features)``, as in flax; a window covers only the spatial axes. Any number of
leading batch axes works, including none (a singleton batch is added for
``lax.reduce_window`` and removed). ``max_pool``/``min_pool`` start from the
dtype's lowest/highest value (``-inf``/``inf`` for floats), so integer inputs work.
Arguments are checked in Python; the reduction is one ``jax.jit``-compiled call
(window, strides and padding static), compiled once per input shape. ``init`` is
static too and rebuilt inside as a numpy constant: ``lax.reduce_window`` only
uses its differentiable sum/max/min forms when it can see that ``init`` is the
identity, so a traced ``init`` would make pooling fail under ``jax.grad``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Padding = str | Sequence[tuple[int, int]]


def pool(
    inputs: jax.Array,
    init: Any,
    reduce_fn: Callable[[Any, Any], Any],
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: Padding,
) -> jax.Array:
    """Reduce each window of the spatial axes with ``reduce_fn`` from ``init``.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> x = jnp.ones((2, 6, 6, 3))
    >>> nnx.pool(x, 0.0, jax.lax.add, (2, 2), (2, 2), 'VALID').shape
    (2, 3, 3, 3)

    Args:
        inputs: array shaped ``(*batch, *spatial, features)``.
        init: the reduction's identity (``0`` for sums, ``-inf`` for max).
        reduce_fn: a ``lax`` binary op such as ``lax.add`` or ``lax.max``.
        window_shape: window size per spatial axis.
        strides: step per spatial axis (default: 1).
        padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per axis.

    Returns:
        The pooled array, shaped ``(*batch, *pooled_spatial, features)``.
    """
    window_shape, strides, padding = _canonicalize(
        inputs, window_shape, strides, padding
    )
    static = dict(
        reduce_fn=reduce_fn, window_shape=window_shape, strides=strides, padding=padding
    )
    try:
        init = _static_init(init)
    except jax.errors.TracerArrayConversionError:
        return _reduce(inputs, init, **static)  # a traced init: no cached jit
    return _pool(inputs, init=init, **static)


class _Init(NamedTuple):
    """A concrete ``init`` as hashable static data (value and dtype name)."""

    value: Any
    dtype: str


def _static_init(init: Any) -> Any:
    # Python scalars stay as they are (weakly typed, like lax.reduce_window's).
    if isinstance(init, (bool, int, float, complex)):
        return init
    value = np.asarray(init)  # raises TracerArrayConversionError for a tracer
    return _Init(value.item(), value.dtype.name)


def _canonicalize(inputs: Any, window_shape: Any, strides: Any, padding: Any):
    """Check the arguments against the input rank; return them as hashable tuples."""
    window_shape = tuple(int(w) for w in window_shape)
    n = len(window_shape)
    strides = (1,) * n if strides is None else tuple(int(s) for s in strides)
    if len(strides) != n:
        raise ValueError(
            f"pool: strides {strides} and window_shape {window_shape} must have "
            "the same length (one entry per spatial axis)."
        )
    shape = tuple(jnp.shape(inputs))
    if len(shape) < n + 1:
        raise ValueError(
            f"pool: a window of {n} spatial axes {window_shape} needs inputs "
            f"shaped (*batch, {n} spatial axes, features), got shape {shape}."
        )
    if not isinstance(padding, str):
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        if len(padding) != n:
            raise ValueError(
                f"pool: padding {padding} must have one (low, high) pair per "
                f"spatial axis ({n})."
            )
    return window_shape, strides, padding


@functools.partial(
    jax.jit,
    static_argnames=("init", "reduce_fn", "window_shape", "strides", "padding"),
)
def _pool(inputs, *, init, reduce_fn, window_shape, strides, padding) -> jax.Array:
    if isinstance(init, _Init):  # a numpy constant: concrete under the trace
        init = np.asarray(init.value, init.dtype)
    return _reduce(
        inputs,
        init,
        reduce_fn=reduce_fn,
        window_shape=window_shape,
        strides=strides,
        padding=padding,
    )


def _reduce(inputs, init, *, reduce_fn, window_shape, strides, padding) -> jax.Array:
    inputs = jnp.asarray(inputs)
    n = len(window_shape)
    n_batch = inputs.ndim - n - 1
    single = n_batch == 0
    if single:  # lax.reduce_window wants a batch axis
        inputs = inputs[None]
        n_batch = 1
    dims = (1,) * n_batch + window_shape + (1,)
    strides = (1,) * n_batch + strides + (1,)
    if not isinstance(padding, str):
        padding = ((0, 0),) * n_batch + padding + ((0, 0),)
    y = jax.lax.reduce_window(inputs, init, reduce_fn, dims, strides, padding)
    return y[0] if single else y


# numpy, not jnp: under an outer jit a jnp constant is a tracer (see the note).
def _lowest(dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(-np.inf, dtype)
    if dtype == jnp.bool_:
        return np.array(False)
    return np.array(jnp.iinfo(dtype).min, dtype)


def _highest(dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(np.inf, dtype)
    if dtype == jnp.bool_:
        return np.array(True)
    return np.array(jnp.iinfo(dtype).max, dtype)


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Maximum over each window (padding never wins: it is ``-inf``).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> nnx.max_pool(jnp.ones((2, 6, 6, 3)), (2, 2), strides=(2, 2)).shape
    (2, 3, 3, 3)
    >>> nnx.max_pool(jnp.arange(4.0).reshape(4, 1), (2,))[:, 0]  # unbatched 1-D
    Array([1., 2., 3.], dtype=float32)
    """
    init = _lowest(jnp.result_type(inputs))
    return pool(inputs, init, jax.lax.max, window_shape, strides, padding)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Minimum over each window (padding never wins: it is ``+inf``).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> nnx.min_pool(jnp.ones((2, 6, 6, 3)), (3, 3), padding='SAME').shape
    (2, 6, 6, 3)
    """
    init = _highest(jnp.result_type(inputs))
    return pool(inputs, init, jax.lax.min, window_shape, strides, padding)


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """Mean over each window.

    With ``count_include_pad=True`` padded zeros count in the mean (the sum is
    divided by the window size); with ``False`` only real elements do.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> x = jnp.ones((1, 3, 1))
    >>> nnx.avg_pool(x, (2,), padding=((1, 0),))[0, :, 0]
    Array([0.5, 1. , 1. ], dtype=float32)
    >>> nnx.avg_pool(x, (2,), padding=((1, 0),), count_include_pad=False)[0, :, 0]
    Array([1., 1., 1.], dtype=float32)

    Args:
        inputs: array shaped ``(*batch, *spatial, features)``.
        window_shape: window size per spatial axis.
        strides: step per spatial axis (default: 1).
        padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per axis.
        count_include_pad: count padded positions in the divisor.
    """
    window_shape, strides, padding = _canonicalize(
        inputs, window_shape, strides, padding
    )
    return _avg_pool(
        inputs,
        window_shape=window_shape,
        strides=strides,
        padding=padding,
        count_include_pad=count_include_pad,
    )


@functools.partial(
    jax.jit,
    static_argnames=("window_shape", "strides", "padding", "count_include_pad"),
)
def _avg_pool(inputs, *, window_shape, strides, padding, count_include_pad):
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.inexact):
        inputs = inputs.astype(jnp.float32)
    zero = np.zeros((), inputs.dtype)  # numpy, so reduce_window sees the identity
    static = dict(window_shape=window_shape, strides=strides, padding=padding)
    y = _reduce(inputs, zero, reduce_fn=jax.lax.add, **static)
    if count_include_pad:
        return y / np.prod(window_shape)
    # Count the real elements under each window: pool a field of ones with the
    # same spatial shape (one batch row and one channel suffice: they broadcast).
    n = len(window_shape)
    spatial = inputs.shape[inputs.ndim - n - 1 : -1]
    ones = jnp.ones((1, *spatial, 1), inputs.dtype)
    counts = _reduce(ones, zero, reduce_fn=jax.lax.add, **static)
    counts = jnp.reshape(counts, (1,) * (y.ndim - n - 1) + counts.shape[1:])
    return y / counts
