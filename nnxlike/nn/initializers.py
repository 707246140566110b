"""Initializers: ``(key, shape, dtype) -> array`` functions (``jax.nn.initializers``).

Design note: we re-export JAX's own initializers under flax.nnx's names (they are
the reference implementation) and add ``zeros_init``/``ones_init`` factories so
``kernel_init=nnx.initializers.zeros_init()`` from flax code works unchanged.
Layers call initializers in ``__init__`` and never store them (a fresh closure
per layer would make identical models differ in their GraphDef).
"""

from __future__ import annotations

from jax.nn.initializers import Initializer as Initializer
from jax.nn.initializers import constant as constant
from jax.nn.initializers import delta_orthogonal as delta_orthogonal
from jax.nn.initializers import glorot_normal as glorot_normal
from jax.nn.initializers import glorot_uniform as glorot_uniform
from jax.nn.initializers import he_normal as he_normal
from jax.nn.initializers import he_uniform as he_uniform
from jax.nn.initializers import kaiming_normal as kaiming_normal
from jax.nn.initializers import kaiming_uniform as kaiming_uniform
from jax.nn.initializers import lecun_normal as lecun_normal
from jax.nn.initializers import lecun_uniform as lecun_uniform
from jax.nn.initializers import normal as normal
from jax.nn.initializers import ones as ones
from jax.nn.initializers import orthogonal as orthogonal
from jax.nn.initializers import truncated_normal as truncated_normal
from jax.nn.initializers import uniform as uniform
from jax.nn.initializers import variance_scaling as variance_scaling
from jax.nn.initializers import xavier_normal as xavier_normal
from jax.nn.initializers import xavier_uniform as xavier_uniform
from jax.nn.initializers import zeros as zeros


def zeros_init() -> Initializer:
    """``zeros`` as a factory (flax.nnx spelling).

    >>> import jax, jax.numpy as jnp
    >>> zeros_init()(jax.random.key(0), (2, 3), jnp.float32).shape
    (2, 3)
    """
    return zeros


def ones_init() -> Initializer:
    """``ones`` as a factory (flax.nnx spelling).

    >>> import jax, jax.numpy as jnp
    >>> float(ones_init()(jax.random.key(0), (2, 3), jnp.float32).sum())
    6.0
    """
    return ones


default_kernel_init = lecun_normal()
default_bias_init = zeros
