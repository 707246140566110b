"""Attention: ``dot_product_attention``, the mask helpers and ``MultiHeadAttention``.

Design note: arrays are laid out as flax lays them out, ``[batch..., length, heads,
head_dim]``, and attention weights as ``[batch..., heads, q_length, kv_length]``.
Grouped-query attention is native: key/value may have fewer heads than the query, as
long as they divide it; query head ``h`` then reads key/value head
``h // (heads // kv_heads)`` (the same as ``jnp.repeat(k, heads // kv_heads, -2)``),
computed by grouping the query heads, never by materialising the repeats.
``MultiHeadAttention`` holds its projections as ``LinearGeneral`` layers with flax's
kernel shapes (``(in, heads, head_dim)`` and ``(heads, head_dim, out)``), a dropout
``RngStream`` tagged ``dropout`` when ``dropout_rate > 0``, and, after ``init_cache``,
``Cache`` Variables for autoregressive decoding (one token per call). Masks are
``True``/nonzero where attention is allowed, as in flax (PyTorch's bool masks are the
opposite). The math runs in two module-level ``jax.jit`` functions, so an eager call
is two dispatches rather than a dozen (inlined under an outer jit). Not done: a fused
kernel (``jax.nn.dot_product_attention``); the einsum path is the reference semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nnxlike._module import Module
from nnxlike._rngs import Rngs, RngStream
from nnxlike._variables import Cache, Intermediate
from nnxlike.nn import dtypes, initializers
from nnxlike.nn._checks import check_rate, check_rngs, check_size
from nnxlike.nn.linear import _NO_METADATA, LinearGeneral
from nnxlike.nn.normalization import LayerNorm

Array = jax.Array
Initializer = Any

default_kernel_init = initializers.lecun_normal()


def _compute_dtype(dtype: Any, *xs: Array) -> Any:
    """``dtype`` or the inputs' result type, promoted to inexact (as flax does)."""
    dtype = jnp.result_type(*xs) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.promote_types(jnp.float32, dtype)
    return dtype


def _check_qk(where: str, query: Array, key: Array) -> tuple[int, int]:
    """Validate query/key layouts; return (query heads, group size)."""
    if query.ndim < 3 or query.ndim != key.ndim:
        raise ValueError(
            f"{where}: query and key must both be [batch..., length, heads, "
            f"head_dim] with the same rank, got query {query.shape} and key "
            f"{key.shape}. Add the heads axis: `x[..., None, :]` for one head."
        )
    if query.shape[:-3] != key.shape[:-3]:
        raise ValueError(
            f"{where}: query and key batch dimensions differ: query {query.shape} "
            f"vs key {key.shape} (batch dims {query.shape[:-3]} vs "
            f"{key.shape[:-3]}). Broadcast them to the same batch shape first."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"{where}: query and key depths must match (head_dim), got query "
            f"{query.shape} vs key {key.shape}. Project them to the same size."
        )
    heads, kv_heads = query.shape[-2], key.shape[-2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"{where}: query has {heads} heads but key has {kv_heads}; the query "
            "head count must be a multiple of the key/value head count "
            f"(grouped-query attention). Got query {query.shape}, key {key.shape}."
        )
    return heads, heads // kv_heads


def _expand_rank(x: Array, ndim: int, where: str, what: str, target: tuple) -> Array:
    """Add leading axes so ``x`` has rank ``ndim`` (no implicit rank promotion)."""
    x = jnp.asarray(x)
    if x.ndim > ndim:
        raise ValueError(
            f"{where}: {what} of shape {x.shape} has more axes than the attention "
            f"weights {target} ([batch..., heads, q_length, kv_length])."
        )
    return jnp.reshape(x, (1,) * (ndim - x.ndim) + x.shape)


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: Any = dtypes.promote_dtype,
    is_causal: bool = False,
) -> Array:
    """``softmax(q k^T / sqrt(head_dim) + bias, masked)`` per head, with dropout.

    Args:
        query: ``[batch..., q_length, heads, head_dim]``.
        key: ``[batch..., kv_length, kv_heads, head_dim]``; ``kv_heads`` divides
            ``heads`` (grouped-query attention).
        bias: added to the logits; broadcastable to
            ``[batch..., heads, q_length, kv_length]`` (missing leading axes are
            added).
        mask: same shape rules; positions where it is ``False``/0 get the most
            negative finite logit (a fully masked row becomes uniform).
        broadcast_dropout: one dropout pattern shared over batch and heads.
        dropout_rng: key for dropout (needed when it is active).
        dropout_rate: probability of dropping a weight.
        deterministic: no dropout when ``True``.
        dtype: computation dtype (default: promote query and key).
        precision: ``jax.lax.Precision`` of the einsum.
        module: if given, the weights are sown into it as
            ``nnx.Intermediate`` ``attention_weights``.
        promote_dtype: ``f((query, key), dtype=...) -> tuple`` casting first.
        is_causal: also mask every key position after the query position
            (``q_index >= k_index`` is allowed), combined with ``mask``.

    Returns:
        Weights of shape ``[batch..., heads, q_length, kv_length]``.

    >>> import jax.numpy as jnp
    >>> q, k = jnp.ones((2, 4, 2, 4)), jnp.ones((2, 5, 1, 4))
    >>> w = dot_product_attention_weights(q, k)
    >>> w.shape, float(w.sum(-1).mean())
    ((2, 2, 4, 5), 1.0)
    """
    query, key = promote_dtype((query, key), dtype=dtype)
    # Resolve the dtype here so equivalent calls share one compilation.
    dtype = _compute_dtype(dtype, query, key)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError(
                f"dot_product_attention_weights: dropout_rate={dropout_rate} with "
                "deterministic=False needs a key: pass `dropout_rng=rngs.dropout()`, "
                "or `deterministic=True`."
            )
    else:
        dropout_rate, dropout_rng = 0.0, None
    weights, dropped = _attention_weights(
        query,
        key,
        bias,
        mask,
        dropout_rng,
        dtype=dtype,
        precision=precision,
        dropout_rate=dropout_rate,
        broadcast_dropout=broadcast_dropout,
        is_causal=bool(is_causal),
    )
    if module is not None:  # the weights before dropout, as flax records them
        module.sow(Intermediate, "attention_weights", weights)
    return dropped


# Compiled once per shapes and options: eagerly, this is one dispatch instead of a
# dozen small ones (each compiled on first use). Under an outer jit it is inlined.
@partial(
    jax.jit,
    static_argnames=(
        "dtype",
        "precision",
        "dropout_rate",
        "broadcast_dropout",
        "is_causal",
    ),
)
def _attention_weights(
    query,
    key,
    bias,
    mask,
    dropout_rng,
    *,
    dtype,
    precision,
    dropout_rate,
    broadcast_dropout,
    is_causal=False,
):
    where = "dot_product_attention_weights"
    query, key = dtypes.promote_dtype((query, key), dtype=dtype)
    heads, groups = _check_qk(where, query, key)
    dtype = query.dtype
    depth = query.shape[-1]
    query = query / jnp.sqrt(jnp.asarray(depth, dtype))
    # Group the query heads by the key head they read: [..., q, kv_heads, groups, d].
    grouped = jnp.reshape(query, query.shape[:-2] + (key.shape[-2], groups, depth))
    logits = jnp.einsum("...qhgd,...khd->...hgqk", grouped, key, precision=precision)
    logits = jnp.reshape(logits, logits.shape[:-4] + (heads,) + logits.shape[-2:])

    if bias is not None:
        bias = _expand_rank(bias, logits.ndim, where, "bias", logits.shape)
        logits = logits + bias.astype(dtype)
    if mask is not None:
        mask = _expand_rank(mask, logits.ndim, where, "mask", logits.shape)
        big_neg = jnp.asarray(jnp.finfo(dtype).min, dtype)
        logits = jnp.where(mask.astype(bool), logits, big_neg)
    if is_causal:
        q_len, kv_len = logits.shape[-2:]
        causal = jnp.tril(jnp.ones((q_len, kv_len), bool))
        logits = jnp.where(causal, logits, jnp.asarray(jnp.finfo(dtype).min, dtype))

    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    if dropout_rate == 0.0:
        return weights, weights
    keep_prob = 1.0 - dropout_rate
    if broadcast_dropout:
        # One pattern for every batch element and head.
        shape = (1,) * (weights.ndim - 2) + weights.shape[-2:]
    else:
        shape = weights.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    return weights, weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: Any = dtypes.promote_dtype,
    is_causal: bool = False,
) -> Array:
    """Attention ``softmax(q k^T / sqrt(d)) v`` per head (flax semantics).

    Args:
        query: ``[batch..., q_length, heads, head_dim]``.
        key: ``[batch..., kv_length, kv_heads, head_dim]``.
        value: ``[batch..., kv_length, kv_heads, v_head_dim]``; ``kv_heads`` must
            divide ``heads`` (grouped-query attention: query head ``h`` reads
            key/value head ``h // (heads // kv_heads)``).
        bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
        dtype, precision, module, promote_dtype, is_causal: as in
        ``dot_product_attention_weights``.

    Returns:
        ``[batch..., q_length, heads, v_head_dim]``.

    >>> import jax.numpy as jnp
    >>> q, kv = jnp.ones((2, 4, 2, 4)), jnp.ones((2, 5, 1, 4))
    >>> dot_product_attention(q, kv, kv).shape
    (2, 4, 2, 4)
    """
    where = "dot_product_attention"
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    _check_qk(where, query, key)
    if value.ndim != key.ndim or value.shape[:-1] != key.shape[:-1]:
        raise ValueError(
            f"{where}: key and value lengths must match, and their batch and "
            "heads ([batch..., kv_length, kv_heads, v_head_dim]), got key "
            f"{key.shape} and value {value.shape}."
        )
    weights = dot_product_attention_weights(
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        query.dtype,
        precision,
        module,
        is_causal=is_causal,
    )
    return _combine_values(weights, value, precision=precision)


@partial(jax.jit, static_argnames=("precision",))
def _combine_values(weights: Array, value: Array, *, precision: Any) -> Array:
    heads, kv_heads = weights.shape[-3], value.shape[-2]
    lead, qk = weights.shape[:-3], weights.shape[-2:]
    grouped = jnp.reshape(weights, lead + (kv_heads, heads // kv_heads) + qk)
    out = jnp.einsum("...hgqk,...khd->...qhgd", grouped, value, precision=precision)
    return jnp.reshape(out, out.shape[:-3] + (heads, value.shape[-1]))


# -- masks ---------------------------------------------------------------------


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[..., Any] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: Any = jnp.float32,
) -> Array:
    """A ``[batch..., 1, q_len, kv_len]`` mask from two ``[batch..., len]`` inputs.

    Entry ``[..., 0, i, j]`` is ``pairwise_fn(query_input[..., i],
    key_input[..., j])``; the default (``multiply``) turns two padding masks into
    a pairwise one.

    >>> import jax.numpy as jnp
    >>> m = make_attention_mask(jnp.array([[1, 1, 0]]), jnp.array([[1, 0]]))
    >>> m.shape, m[0, 0].tolist()
    ((1, 1, 3, 2), [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    """
    mask = pairwise_fn(
        jnp.expand_dims(jnp.asarray(query_input), -1),
        jnp.expand_dims(jnp.asarray(key_input), -2),
    )
    mask = jnp.expand_dims(mask, -3)
    mask = jnp.expand_dims(mask, tuple(range(extra_batch_dims)))
    return mask.astype(dtype)


def make_causal_mask(
    x: Array, extra_batch_dims: int = 0, dtype: Any = jnp.float32
) -> Array:
    """Causal mask ``[batch..., 1, len, len]`` for an input ``[batch..., len]``.

    >>> import jax.numpy as jnp
    >>> make_causal_mask(jnp.ones((1, 3)))[0, 0].astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    shape = jnp.shape(x)
    idx = jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.int32), shape)
    return make_attention_mask(
        idx, idx, jnp.greater_equal, extra_batch_dims=extra_batch_dims, dtype=dtype
    )


def combine_masks(*masks: Array | None, dtype: Any = jnp.float32) -> Array | None:
    """Logical AND of the masks that are not ``None`` (``None`` if all are).

    >>> import jax.numpy as jnp
    >>> combine_masks(None, jnp.array([[1, 1]]), jnp.array([[0, 1]])).tolist()
    [[0.0, 1.0]]
    """
    present = [jnp.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    ranks = [m.ndim for m in present]
    if len(set(ranks)) != 1:
        raise ValueError(
            f"combine_masks: masks must have the same rank, got shapes "
            f"{[m.shape for m in present]}. Add the missing axes, e.g. "
            "`mask[:, None]` for the heads axis."
        )
    mask = present[0].astype(bool)
    for other in present[1:]:
        mask = jnp.logical_and(mask, other.astype(bool))
    return mask.astype(dtype)


# -- MultiHeadAttention ----------------------------------------------------------


class MultiHeadAttention(Module):
    """Multi-head (optionally grouped-query) dot-product attention, flax.nnx API.

    Projects ``inputs_q`` to queries and ``inputs_k``/``inputs_v`` to keys/values
    (``[batch..., length, heads, head_dim]``), applies ``attention_fn`` and
    projects back to ``out_features``. With ``num_kv_heads`` smaller than
    ``num_heads`` the key/value projections have that many heads and each serves
    a group of query heads. For decoding, call ``init_cache`` once, then feed one
    token per call with ``decode=True``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> mha = nnx.MultiHeadAttention(2, 8, num_kv_heads=1, rngs=nnx.Rngs(0))
    >>> mha.query.kernel.shape, mha.key.kernel.shape, mha.out.kernel.shape
    ((8, 2, 4), (8, 1, 4), (2, 4, 8))
    >>> mha(jnp.ones((2, 4, 8))).shape
    (2, 4, 8)
    >>> mha.init_cache((2, 4, 8))
    >>> mha(jnp.ones((2, 1, 8)), decode=True).shape, int(mha.cache_index.value)
    ((2, 1, 8), 1)

    Args:
        num_heads: number of query heads; divides ``qkv_features``.
        in_features: feature size of ``inputs_q``.
        qkv_features: total query/key/value size over all query heads (default
            ``in_features``); ``head_dim = qkv_features // num_heads``.
        out_features: output size (default ``in_features``).
        in_kv_features: feature size of ``inputs_k``/``inputs_v`` (default
            ``in_features``).
        num_kv_heads: key/value heads (default ``num_heads``); must divide
            ``num_heads``.
        dtype: computation dtype; param_dtype: parameter dtype.
        broadcast_dropout: share the attention-dropout pattern over batch and heads.
        dropout_rate: dropout on the attention weights.
        deterministic: no dropout if ``True``; set by ``train()``/``eval()``.
        precision: ``jax.lax.Precision`` of the projections and einsums.
        kernel_init, out_kernel_init, bias_init, out_bias_init: initializers
            (the ``out_*`` ones default to the others).
        use_bias: biases on the four projections.
        attention_fn: ``dot_product_attention`` or a function with its signature.
        decode: default for ``__call__``'s ``decode``.
        normalize_qk: LayerNorm (scale only) on queries and keys per head.
        rngs: ``params`` for the weights; ``dropout`` seeds the stored dropout
            stream when ``dropout_rate > 0``.
        qkv_promote_dtype, out_promote_dtype, ln_promote_dtype: ``promote_dtype``
            of the query/key/value projections, the output projection and the
            q/k LayerNorms.
        qkv_dot_general, out_dot_general, qkv_dot_general_cls,
        out_dot_general_cls: contractions of those projections (see
            ``LinearGeneral``).
        rngs: ``params`` for the weights; ``dropout`` seeds the stored dropout
            stream when ``dropout_rate > 0``.
        keep_rngs: store that dropout stream (else pass ``rngs`` to each call).
        kernel_metadata, bias_metadata: metadata of the query/key/value Params;
            out_kernel_metadata, out_bias_metadata: of the output projection's
            (default: the former); query_ln_scale_metadata,
            key_ln_scale_metadata: of the q/k LayerNorm scales.
        num_key_value_heads: this library's earlier name of ``num_kv_heads``.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        in_kv_features: int | None = None,
        *,
        num_kv_heads: int | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: Any = None,
        kernel_init: Initializer = default_kernel_init,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = initializers.zeros,
        out_bias_init: Initializer | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., Array] = dot_product_attention,
        decode: bool | None = None,
        normalize_qk: bool = False,
        qkv_promote_dtype: Any = dtypes.promote_dtype,
        out_promote_dtype: Any = dtypes.promote_dtype,
        ln_promote_dtype: Any = dtypes.promote_dtype,
        qkv_dot_general: Any = None,
        out_dot_general: Any = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        rngs: Rngs,
        keep_rngs: bool = True,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        out_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        out_bias_metadata: Mapping[str, Any] = _NO_METADATA,
        query_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
        key_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
        num_key_value_heads: int | None = None,
    ):
        where = "MultiHeadAttention"
        if num_key_value_heads is not None:  # this library's earlier spelling
            if num_kv_heads is not None and num_kv_heads != num_key_value_heads:
                raise ValueError(
                    f"{where}: num_kv_heads={num_kv_heads} and num_key_value_heads="
                    f"{num_key_value_heads} disagree; pass only num_kv_heads."
                )
            num_kv_heads = num_key_value_heads
        check_size(where, "num_heads", num_heads)
        check_size(where, "in_features", in_features)
        for name, value in (
            ("qkv_features", qkv_features),
            ("out_features", out_features),
            ("in_kv_features", in_kv_features),
            ("num_kv_heads", num_kv_heads),
        ):
            if value is not None:
                check_size(where, name, value)
        check_rate(where, "dropout_rate", dropout_rate)
        check_rngs(where, rngs)
        qkv_features = in_features if qkv_features is None else qkv_features
        out_features = in_features if out_features is None else out_features
        in_kv_features = in_features if in_kv_features is None else in_kv_features
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if qkv_features % num_heads:
            nearest = num_heads * max(1, qkv_features // num_heads)
            raise ValueError(
                f"MultiHeadAttention: qkv_features={qkv_features} must be divisible "
                f"by num_heads={num_heads} (head_dim = qkv_features // num_heads). "
                f"Use a multiple, e.g. qkv_features={nearest}."
            )
        if kv_heads <= 0 or num_heads % kv_heads:
            raise ValueError(
                f"MultiHeadAttention: num_heads ({num_heads}) must be divisible by "
                f"num_kv_heads ({kv_heads}): each key/value head serves an equal "
                "group of query heads."
            )
        self.num_heads = num_heads
        self.num_kv_heads = kv_heads
        self.in_features = in_features
        self.in_kv_features = in_kv_features
        self.qkv_features = qkv_features
        self.out_features = out_features
        self.head_dim = qkv_features // num_heads
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = decode
        self.normalize_qk = normalize_qk
        self.qkv_promote_dtype = qkv_promote_dtype
        self.out_promote_dtype = out_promote_dtype
        self.ln_promote_dtype = ln_promote_dtype
        self.qkv_dot_general = qkv_dot_general
        self.out_dot_general = out_dot_general
        self.qkv_dot_general_cls = qkv_dot_general_cls
        self.out_dot_general_cls = out_dot_general_cls

        common = dict(
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            precision=precision,
            rngs=rngs,
        )
        qkv = dict(
            kernel_init=kernel_init,
            bias_init=bias_init,
            promote_dtype=qkv_promote_dtype,
            dot_general=qkv_dot_general,
            dot_general_cls=qkv_dot_general_cls,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
            **common,
        )
        self.query = LinearGeneral(in_features, (num_heads, self.head_dim), **qkv)
        self.key = LinearGeneral(in_kv_features, (kv_heads, self.head_dim), **qkv)
        self.value = LinearGeneral(in_kv_features, (kv_heads, self.head_dim), **qkv)
        if normalize_qk:
            # Normalised q/k stabilise training at high learning rates (ViT-22B).
            norm = dict(
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                promote_dtype=ln_promote_dtype,
            )
            self.query_ln = LayerNorm(
                self.head_dim, **norm, scale_metadata=query_ln_scale_metadata,
                rngs=rngs,
            )  # fmt: skip
            self.key_ln = LayerNorm(
                self.head_dim, **norm, scale_metadata=key_ln_scale_metadata,
                rngs=rngs,
            )  # fmt: skip
        else:
            self.query_ln = None
            self.key_ln = None
        self.out = LinearGeneral(
            (num_heads, self.head_dim),
            out_features,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            promote_dtype=out_promote_dtype,
            dot_general=out_dot_general,
            dot_general_cls=out_dot_general_cls,
            kernel_metadata=out_kernel_metadata or kernel_metadata,
            bias_metadata=out_bias_metadata or bias_metadata,
            **common,
        )
        # Tagged "dropout" even when drawn from the default stream, so that
        # `nnx.reseed(model, dropout=...)` finds it.
        if keep_rngs and dropout_rate > 0.0:
            self.rngs = RngStream(rngs["dropout"](), tag="dropout")
        else:
            self.rngs = None
        self.cached_key = None
        self.cached_value = None
        self.cache_index = None

    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | Array | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        out_sharding: Any = None,
        qkv_sharding: Any = None,
    ) -> Array:
        """Attend from ``inputs_q`` to ``inputs_k``/``inputs_v``.

        Args:
            inputs_q: ``[batch..., q_length, in_features]``.
            inputs_k: ``[batch..., kv_length, in_kv_features]`` (default:
                ``inputs_q``, self-attention).
            inputs_v: like ``inputs_k`` (default: ``inputs_k``).
            mask: ``[batch..., heads or 1, q_length, kv_length]``, ``True``/1 where
                attention is allowed.
            deterministic: overrides the attribute for this call.
            rngs: dropout randomness for this call (an ``Rngs``, whose ``dropout``
                stream is drawn, an ``RngStream`` or a key).
            sow_weights: record the attention weights as ``nnx.Intermediate``
                ``attention_weights``.
            decode: one-token autoregressive step using the cache (needs
                ``init_cache``); overrides the attribute.
            is_causal: also mask future key positions (passed to
                ``attention_fn``).
            out_sharding: sharding of the output projection's result.
            qkv_sharding: sharding of the query/key/value projections' results.

        Returns:
            ``[batch..., q_length, out_features]``.
        """
        where = "MultiHeadAttention.__call__"
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    f"{where}: inputs_k is None but inputs_v is given. To use the "
                    "same array for keys and values pass it as inputs_k and leave "
                    "inputs_v as None: `mha(q, kv)`."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        for name, x, size, arg in (
            ("inputs_q", inputs_q, self.in_features, "in_features"),
            ("inputs_k", inputs_k, self.in_kv_features, "in_kv_features"),
            ("inputs_v", inputs_v, self.in_kv_features, "in_kv_features"),
        ):
            shape = tuple(jnp.shape(x))
            if len(shape) < 2 or shape[-1] != size:
                raise ValueError(
                    f"{where}: expected {name} of shape [batch..., length, {size}] "
                    f"({arg}={size}), got shape {shape}. Reshape the input or build "
                    f"the layer with {arg}={shape[-1] if shape else '?'}."
                )

        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            query = self.query_ln(query)
            key = self.key_ln(key)

        decode = self.decode if decode is None else decode
        if decode:
            key, value, mask = self._decode_step(query, key, value, mask)

        if self.dropout_rate > 0.0:
            if deterministic is None:
                deterministic = self.deterministic
            if deterministic is None:
                raise ValueError(
                    f"{where}: dropout_rate={self.dropout_rate} but `deterministic` "
                    "is unset. Pass `deterministic=True/False` to the call or the "
                    "constructor, or call `model.train()` / `model.eval()`."
                )
        else:
            deterministic = True
        dropout_rng = None
        if not deterministic:
            dropout_rng = self._dropout_key(rngs)

        x = self.attention_fn(
            query,
            key,
            value,
            mask=mask,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic,
            dtype=self.dtype,
            precision=self.precision,
            module=self if sow_weights else None,
            # Only when set, so an attention_fn without the keyword still works.
            **({"is_causal": True} if is_causal else {}),
        )
        return self.out(x, out_sharding=out_sharding)

    @property
    def num_key_value_heads(self) -> int:
        """This library's earlier name of ``num_kv_heads`` (also accepted as an
        argument)."""
        return self.num_kv_heads

    def _dropout_key(self, rngs: Rngs | RngStream | Array | None) -> Array:
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, Rngs):
            return rngs["dropout"]()
        if isinstance(rngs, RngStream):
            return rngs()
        if rngs is None:
            raise ValueError(
                "MultiHeadAttention.__call__: attention dropout is active but there "
                "is no random stream. Build the layer with `rngs=nnx.Rngs(0)` and "
                "keep_rngs=True, pass `rngs=` to the call, or call it with "
                "`deterministic=True` (or `model.eval()`)."
            )
        return rngs

    def _decode_step(
        self, query: Array, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array]:
        """Write this token's key/value at ``cache_index``; attend to the prefix."""
        where = "MultiHeadAttention.__call__ (decode=True)"
        if self.cached_key is None or self.cached_value is None:
            raise ValueError(
                f"{where}: the autoregressive cache is not initialised. Call "
                "`mha.init_cache((batch, max_length, in_features))` first."
            )
        *batch, max_length, kv_heads, head_dim = self.cached_key.value.shape
        expected = (*batch, 1, self.num_heads, head_dim)
        if tuple(query.shape) != expected:
            raise ValueError(
                f"{where}: expected one token per call, i.e. query of shape "
                f"{expected} for the cache of shape {self.cached_key.value.shape} "
                f"made by init_cache, got {tuple(query.shape)}. Feed "
                "`x[:, t:t + 1]`; to attend over a whole sequence use decode=False "
                "with a causal mask."
            )
        index = self.cache_index.value
        try:
            at = int(index)
        except (
            jax.errors.ConcretizationTypeError,
            jax.errors.TracerIntegerConversionError,
        ):
            at = None  # traced: the check below cannot run under jit
        if at is not None and at >= max_length:
            raise ValueError(
                f"{where}: the cache holds {max_length} positions and all are used "
                f"(cache_index={at}). Call `init_cache` with a longer length, or "
                "again to start a new sequence."
            )
        zero = jnp.zeros((), index.dtype)
        start = (zero,) * len(batch) + (index, zero, zero)
        cached_key, cached_value = self.cached_key.value, self.cached_value.value
        key = lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), start)
        value = lax.dynamic_update_slice(
            cached_value, value.astype(cached_value.dtype), start
        )
        self.cached_key.value = key
        self.cached_value.value = value
        self.cache_index.value = index + 1
        # The single query sees the cached prefix 0..index, not the empty slots.
        prefix = jnp.broadcast_to(
            jnp.arange(max_length) <= index, (*batch, 1, 1, max_length)
        )
        return key, value, combine_masks(mask, prefix)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32):
        """Create the decoding cache for inputs of shape ``(*batch, max_length, in)``.

        Adds ``Cache`` Variables ``cached_key``/``cached_value`` of shape
        ``(*batch, max_length, num_kv_heads, head_dim)`` (zeros) and
        ``cache_index`` (0). Calling it again resets the cache.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"MultiHeadAttention.init_cache: input_shape must be (*batch, "
                f"max_length, features), got {input_shape}."
            )
        shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(shape, dtype))
        self.cached_value = Cache(jnp.zeros(shape, dtype))
        self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | tuple[int, ...] | None = None,
        max_length: int | None = None,
    ) -> None:
        """What ``nnx.view(model, deterministic=..., decode=...)`` sets here.

        ``decode=True`` on a layer without a cache also creates one (zeros) of
        shape ``(*batch_size, max_length, num_kv_heads, head_dim)``.

        Args:
            deterministic: if True, the module is set to deterministic mode.
            decode: if True, the module is set to decode mode.
            batch_size: the batch size to use for the cache.
            max_length: the max length to use for the cache.

        >>> import nnxlike as nnx
        >>> mha = nnx.MultiHeadAttention(2, 4, decode=False, rngs=nnx.Rngs(0))
        >>> dec = nnx.view(mha, decode=True, batch_size=3, max_length=5)
        >>> dec.decode, dec.cached_key.shape, mha.cached_key is None
        (True, (3, 5, 2, 2), True)
        """
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is None:
            return
        self.decode = decode
        if decode and any(
            getattr(self, n, None) is None
            for n in ("cached_key", "cached_value", "cache_index")
        ):
            for name, v in (("batch_size", batch_size), ("max_length", max_length)):
                if v is None:
                    raise TypeError(
                        f"MultiHeadAttention.set_view: '{name}' must be provided "
                        "when initializing cache (the layer has none yet): "
                        "`nnx.view(model, decode=True, batch_size=..., "
                        "max_length=...)`."
                    )
            batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
            self.init_cache((*batch, max_length, self.in_features), self.dtype)
