"""Dense layers: ``Linear``.

Design note: kernels are stored ``(in_features, out_features)`` (the transpose of
PyTorch's ``weight``), so a forward pass is ``x @ kernel + bias``. Initializer
functions are used in ``__init__`` and not stored: storing a freshly built closure
(``normal(0.02)``) would make two identical models differ in their GraphDef and
compile twice.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import Param
from nnxlike.nn import initializers

Initializer = Any


def _promote(dtype: Any, *xs: Any) -> list:
    if dtype is None:
        dtype = jnp.result_type(*xs)
    return [jnp.asarray(x, dtype) if x is not None else None for x in xs]


class Linear(Module):
    """``y = x @ kernel + bias`` over the last axis.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape, layer(jnp.ones((2, 3))).shape
    ((3, 4), (4,), (2, 4))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
        rngs: Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel = Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
            **(kernel_metadata or {}),
        )
        self.bias = (
            Param(
                bias_init(rngs.params(), (out_features,), param_dtype),
                **(bias_metadata or {}),
            )
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if jnp.shape(x)[-1:] != (self.in_features,):
            raise ValueError(
                f"Linear.__call__: expected input with last dimension "
                f"{self.in_features}, got shape {tuple(jnp.shape(x))}. "
                f"Reshape the input or build Linear({jnp.shape(x)[-1:] or '?'}, "
                f"{self.out_features})."
            )
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = _promote(self.dtype, x, kernel, bias)
        y = jnp.matmul(x, kernel, precision=self.precision)
        if bias is not None:
            y = y + bias
        return y
