"""Activation functions and ``PReLU``.

Design note: the functions are JAX's own (``jax.nn``, ``jnp.tanh``), re-exported
under flax.nnx's names; they are the reference implementation, so nothing is
re-written here. ``PReLU`` is the one activation with a parameter, a learnable
scalar slope. ``__all__`` lists the public names so that ``from ... import *``
in ``nnxlike.nn`` exports exactly these.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import celu as celu
from jax.nn import elu as elu
from jax.nn import gelu as gelu
from jax.nn import glu as glu
from jax.nn import hard_sigmoid as hard_sigmoid
from jax.nn import hard_silu as hard_silu
from jax.nn import hard_swish as hard_swish
from jax.nn import hard_tanh as hard_tanh
from jax.nn import identity as identity
from jax.nn import leaky_relu as leaky_relu
from jax.nn import log_sigmoid as log_sigmoid
from jax.nn import log_softmax as log_softmax
from jax.nn import logsumexp as logsumexp
from jax.nn import mish as mish
from jax.nn import one_hot as one_hot
from jax.nn import relu as relu
from jax.nn import relu6 as relu6
from jax.nn import selu as selu
from jax.nn import sigmoid as sigmoid
from jax.nn import silu as silu
from jax.nn import soft_sign as soft_sign
from jax.nn import softmax as softmax
from jax.nn import softplus as softplus
from jax.nn import sparse_plus as sparse_plus
from jax.nn import sparse_sigmoid as sparse_sigmoid
from jax.nn import squareplus as squareplus
from jax.nn import standardize as standardize
from jax.nn import swish as swish
from jax.numpy import tanh as tanh

from nnxlike._module import Module
from nnxlike._variables import Param

__all__ = [
    "PReLU",
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "identity",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "mish",
    "one_hot",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_sign",
    "softmax",
    "softplus",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
    "standardize",
    "swish",
    "tanh",
]


class PReLU(Module):
    """Leaky ReLU with a learnable slope: ``x if x >= 0 else slope * x``.

    One scalar slope shared by all elements (flax's PReLU; PyTorch's
    ``nn.PReLU()`` with its default ``num_parameters=1``).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> act = nnx.PReLU(negative_slope_init=0.1)
    >>> act.negative_slope.shape, act(jnp.array([-2.0, 3.0]))
    ((), Array([-0.2,  3. ], dtype=float32))

    Args:
        negative_slope_init: initial slope for negative inputs.
        param_dtype: dtype of the slope parameter.
    """

    def __init__(
        self, negative_slope_init: float = 0.01, param_dtype: Any = jnp.float32
    ):
        self.negative_slope = Param(jnp.asarray(negative_slope_init, param_dtype))
        self.negative_slope_init = negative_slope_init
        self.param_dtype = param_dtype

    def __call__(self, inputs: jax.Array) -> jax.Array:
        inputs = jnp.asarray(inputs)
        slope = jnp.asarray(self.negative_slope.value, inputs.dtype)
        return jnp.where(inputs >= 0, inputs, slope * inputs)
