"""Low-rank adapters: ``LoRAParam``, ``LoRA`` and ``LoRALinear``.

Design note: LoRA weights are their own Variable kind, ``LoRAParam`` (a ``Param``
subclass), so ``nnx.state(model, nnx.LoRAParam)`` or an ``Optimizer`` built with
``wrt=nnx.LoRAParam`` trains only the adapters while the base weights stay
frozen. ``lora_b`` starts at zero, so a fresh adapter leaves the base output
unchanged. ``LoRALinear`` is a ``Linear`` (same ``kernel``/``bias``, drawn first
from ``rngs`` so it matches a plain ``Linear`` built with the same seed) plus a
``lora`` sub-module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import Param, Variable
from nnxlike.nn import dtypes, initializers
from nnxlike.nn._checks import check_rngs, check_size
from nnxlike.nn.linear import _NO_METADATA, Linear

Initializer = Any

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros


class LoRAParam(Param):
    """The Variable kind of LoRA adapter weights (a ``Param``)."""


class LoRA(Module):
    """A rank-``lora_rank`` update ``x @ lora_a @ lora_b``, optionally around a layer.

    With ``base_module`` the output is ``base_module(x) + x @ lora_a @ lora_b``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> lora = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
    >>> lora.lora_a.shape, lora.lora_b.shape, lora(jnp.ones((5, 3))).shape
    ((3, 2), (2, 4), (5, 4))
    >>> base = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> wrapped = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(1))
    >>> bool(jnp.allclose(wrapped(jnp.ones((5, 3))), base(jnp.ones((5, 3)))))
    True

    Args:
        in_features: input size.
        lora_rank: rank of the update.
        out_features: output size.
        base_module: a callable (usually a Module) whose output the update is
            added to.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the adapter weights.
        a_initializer: initializer of ``lora_a`` (default: He uniform).
        b_initializer: initializer of ``lora_b`` (default: zeros).
        lora_param_type: the Variable kind of the adapter weights.
        promote_dtype: ``f((x, lora_a, lora_b), dtype=...) -> tuple`` casting
            first.
        rngs: the ``params`` stream is drawn for ``lora_a`` and ``lora_b``.
        a_metadata: metadata of ``lora_a``; b_metadata: of ``lora_b``.

    Keyword arguments of a call are passed on to ``base_module`` (flax's
    signature), with the input as given (flax passes it already cast to
    ``dtype``).
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: Callable[[jax.Array], jax.Array] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = _NO_METADATA,
        b_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        check_size("LoRA", "in_features", in_features)
        check_size("LoRA", "lora_rank", lora_rank)
        check_size("LoRA", "out_features", out_features)
        check_rngs("LoRA", rngs)
        if base_module is not None and not callable(base_module):
            raise ValueError(
                f"LoRA: base_module must be callable (a Module or function), got "
                f"{type(base_module).__name__}."
            )
        self.in_features = in_features
        self.lora_rank = lora_rank
        self.out_features = out_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.lora_param_type = lora_param_type
        self.base_module = base_module
        self.promote_dtype = promote_dtype
        self.lora_a = lora_param_type(
            a_initializer(rngs.params(), (in_features, lora_rank), param_dtype),
            **(a_metadata or {}),
        )
        self.lora_b = lora_param_type(
            b_initializer(rngs.params(), (lora_rank, out_features), param_dtype),
            **(b_metadata or {}),
        )

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        if jnp.shape(x)[-1:] != (self.in_features,):
            raise ValueError(
                f"LoRA.__call__: expected input with last dimension "
                f"{self.in_features}, got shape {tuple(jnp.shape(x))}."
            )
        xc, a, b = self.promote_dtype(
            (x, self.lora_a.value, self.lora_b.value), dtype=self.dtype
        )
        out = jnp.matmul(jnp.matmul(xc, a), b)
        if self.base_module is not None:
            out = out + self.base_module(x, **kwargs)
        return out


class LoRALinear(Linear):
    """A ``Linear`` with a LoRA update: ``x @ kernel + bias + x @ a @ b``.

    Its ``kernel``/``bias`` equal those of ``nnx.Linear`` built with the same
    arguments and seed; the adapter lives in ``self.lora``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.lora.lora_a.shape, layer(jnp.ones((5, 3))).shape
    ((3, 4), (3, 2), (5, 4))

    Args:
        in_features: input size.
        out_features: output size.
        lora_rank: rank of the update.
        lora_dtype: computation dtype of the adapter (default: the layer's
            ``dtype``, so ``dtype=jnp.bfloat16`` gives a bf16 output; flax.nnx
            leaves the adapter in float32 there and the sum comes out float32).
        lora_param_dtype: dtype of the adapter weights.
        a_initializer: initializer of ``lora_a``.
        b_initializer: initializer of ``lora_b``.
        lora_param_type: the Variable kind of the adapter weights.
        lora_promote_dtype: ``promote_dtype`` of the adapter.
        rngs: drawn for the Linear weights first, then for the adapter.
        a_metadata: metadata of ``lora.lora_a``; b_metadata: of ``lora.lora_b``.
        **kwargs: passed on to ``Linear`` (``use_bias``, ``kernel_init``, ...).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lora_rank: int,
        lora_dtype: Any = None,
        lora_param_dtype: Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        lora_promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = _NO_METADATA,
        b_metadata: Mapping[str, Any] = _NO_METADATA,
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self.lora = LoRA(
            in_features,
            lora_rank,
            out_features,
            dtype=lora_dtype if lora_dtype is not None else kwargs.get("dtype"),
            param_dtype=lora_param_dtype,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            lora_param_type=lora_param_type,
            promote_dtype=lora_promote_dtype,
            rngs=rngs,
            a_metadata=a_metadata,
            b_metadata=b_metadata,
        )

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        return super().__call__(x, out_sharding=out_sharding) + self.lora(x)
