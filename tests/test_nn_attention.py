"""Tests for ``nnxlike/nn/attention.py``.

References: a per-head numpy loop of ``softmax(q k^T / sqrt(d) + bias, mask) v``,
``jnp.repeat`` of key/value heads for grouped-query attention, and PyTorch's
``nn.MultiheadAttention`` numbers stored in ``fixtures/torch_rnn_attention.npz``
(made by ``fixtures/make_torch_rnn_attention_fixtures.py``, whose docstring states
the weight conversion used in ``_mha_from_torch`` below). Shapes are shared between
tests (batch 2, length 4, features 8, 2 heads) so eager ops compile once.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

FIXTURES = np.load(Path(__file__).parent / "fixtures" / "torch_rnn_attention.npz")
B, L, E, H = 2, 4, 8, 2


def _rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_attention(q, k, v, bias=None, mask=None):
    """Loop over batch and heads: ``softmax(q k^T / sqrt(d) + bias) v``."""
    b, lq, h, d = q.shape
    hk = k.shape[2]
    out = np.zeros((b, lq, h, v.shape[-1]), np.float32)
    weights = np.zeros((b, h, lq, k.shape[1]), np.float32)
    for i in range(b):
        for j in range(h):
            kv_head = j // (h // hk)
            logits = q[i, :, j] @ k[i, :, kv_head].T / np.sqrt(d)
            if bias is not None:
                logits = logits + bias[i, j]
            if mask is not None:
                logits = np.where(mask[i, 0] > 0, logits, np.finfo(np.float32).min)
            w = _np_softmax(logits)
            weights[i, j] = w
            out[i, :, j] = w @ v[i, :, kv_head]
    return out, weights


# -- dot_product_attention --------------------------------------------------------


def test_dot_product_attention_matches_numpy_loop_with_bias_and_mask():
    q, k, v = _rand(0, B, L, H, 4), _rand(1, B, 5, H, 4), _rand(2, B, 5, H, 3)
    bias = _rand(3, B, H, L, 5)
    mask = (np.random.default_rng(4).uniform(size=(B, 1, L, 5)) > 0.3).astype(
        np.float32
    )
    expected, expected_w = _np_attention(q, k, v, bias, mask)
    out = nnx.dot_product_attention(q, k, v, bias=bias, mask=mask)
    weights = nnx.dot_product_attention_weights(q, k, bias=bias, mask=mask)
    assert out.shape == (B, L, H, 3) and weights.shape == (B, H, L, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, expected_w, rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_equals_repeated_key_value_heads():
    q = _rand(0, B, L, H, 4)
    k, v = _rand(1, B, 5, 1, 4), _rand(2, B, 5, 1, 4)
    grouped = nnx.dot_product_attention(q, k, v)
    repeated = nnx.dot_product_attention(q, np.repeat(k, H, -2), np.repeat(v, H, -2))
    np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grouped, _np_attention(q, k, v)[0], atol=1e-5)


def test_dot_product_attention_without_batch_dims():
    q, k = _rand(0, L, H, 4), _rand(1, 5, H, 4)
    out = nnx.dot_product_attention(q, k, k)
    expected = _np_attention(q[None], k[None], k[None])[0][0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_attention_dropout_broadcasts_over_batch_and_heads():
    q, k = _rand(0, B, L, H, 4), _rand(1, B, L, H, 4)
    key = jax.random.key(0)
    plain = nnx.dot_product_attention_weights(q, k)
    dropped = nnx.dot_product_attention_weights(
        q, k, dropout_rng=key, dropout_rate=0.5, deterministic=False
    )
    kept = np.asarray(dropped) != 0
    # One pattern for every batch element and head; kept weights scaled by 2.
    assert (kept == kept[:1, :1]).all() and 0 < kept.mean() < 1
    np.testing.assert_allclose(np.where(kept, dropped, 0), np.where(kept, 2 * plain, 0))
    per_elem = nnx.dot_product_attention_weights(
        q, k, dropout_rng=key, dropout_rate=0.5, broadcast_dropout=False
    )
    assert not (np.asarray(per_elem != 0) == np.asarray(per_elem != 0)[:1, :1]).all()
    det = nnx.dot_product_attention_weights(
        q, k, dropout_rng=key, dropout_rate=0.5, deterministic=True
    )
    np.testing.assert_array_equal(det, plain)


def test_dot_product_attention_errors():
    q = jnp.ones((B, L, 3, 4))
    with pytest.raises(ValueError, match="query has 3 heads but key has 2"):
        nnx.dot_product_attention(q, jnp.ones((B, 5, 2, 4)), jnp.ones((B, 5, 2, 4)))
    with pytest.raises(ValueError, match="depths must match"):
        nnx.dot_product_attention(q, jnp.ones((B, 5, 3, 2)), jnp.ones((B, 5, 3, 2)))
    with pytest.raises(ValueError, match="batch dimensions differ"):
        nnx.dot_product_attention(q, jnp.ones((1, 5, 3, 4)), jnp.ones((1, 5, 3, 4)))
    with pytest.raises(ValueError, match="key and value lengths must match"):
        nnx.dot_product_attention(q, jnp.ones((B, 5, 3, 4)), jnp.ones((B, 6, 3, 4)))
    with pytest.raises(ValueError, match="needs a key"):
        nnx.dot_product_attention_weights(q, q, dropout_rate=0.1)


# -- masks --------------------------------------------------------------------------


def test_make_attention_mask_causal_mask_and_combine():
    pad_q, pad_k = jnp.array([[1, 1, 0]]), jnp.array([[1, 0, 1, 1]])
    m = nnx.make_attention_mask(pad_q, pad_k)
    assert m.shape == (1, 1, 3, 4) and m.dtype == jnp.float32
    np.testing.assert_array_equal(m[0, 0], np.outer([1, 1, 0], [1, 0, 1, 1]))
    assert nnx.make_attention_mask(pad_q, pad_k, extra_batch_dims=2).shape == (
        1,
        1,
        1,
        1,
        3,
        4,
    )
    causal = nnx.make_causal_mask(jnp.ones((2, 3)), dtype=jnp.bool_)
    assert causal.shape == (2, 1, 3, 3) and causal.dtype == jnp.bool_
    np.testing.assert_array_equal(causal[1, 0], np.tril(np.ones((3, 3), bool)))
    both = nnx.combine_masks(nnx.make_causal_mask(pad_q), None, m[..., :3])
    np.testing.assert_array_equal(
        both[0, 0], np.tril(np.ones((3, 3))) * np.outer([1, 1, 0], [1, 0, 1])
    )
    assert nnx.combine_masks(None, None) is None
    with pytest.raises(ValueError, match="same rank"):
        nnx.combine_masks(m, m[0])


# -- MultiHeadAttention ----------------------------------------------------------


def _randomize_biases(module: nnx.Module) -> None:
    """Default biases are zero; make them nonzero so the references see them."""
    for i, (path, var) in enumerate(nnx.iter_graph(module)):
        if isinstance(var, nnx.Param) and path[-1] == "bias":
            var.value = jnp.asarray(_rand(100 + i, *var.shape))


def _mha_from_torch(**kwargs) -> nnx.MultiHeadAttention:
    """Build our layer with PyTorch's weights (conversion in the fixture docstring).

    ``in_proj_weight`` is ``[W_q; W_k; W_v]`` (3E, E) used as ``x @ W.T``; head h
    owns columns h*D:(h+1)*D of each projection, so kernel = W.T.reshape(E, H, D).
    ``out_proj.weight`` (E, E) becomes out.kernel = W_o.T.reshape(H, D, E).
    """
    d = E // H
    mha = nnx.MultiHeadAttention(H, E, rngs=nnx.Rngs(0), **kwargs)
    w, b = FIXTURES["mha_in_proj_weight"], FIXTURES["mha_in_proj_bias"]
    for i, proj in enumerate((mha.query, mha.key, mha.value)):
        block = slice(i * E, (i + 1) * E)
        proj.kernel.value = jnp.asarray(w[block].T.reshape(E, H, d))
        proj.bias.value = jnp.asarray(b[block].reshape(H, d))
    mha.out.kernel.value = jnp.asarray(
        FIXTURES["mha_out_proj_weight"].T.reshape(H, d, E)
    )
    mha.out.bias.value = jnp.asarray(FIXTURES["mha_out_proj_bias"])
    return mha


def test_multi_head_attention_matches_torch():
    mha = _mha_from_torch()
    x, xkv = FIXTURES["mha_x"], FIXTURES["mha_xkv"]

    out = mha(x, sow_weights=True)
    np.testing.assert_allclose(out, FIXTURES["mha_self_out"], rtol=1e-5, atol=1e-5)
    (weights,) = nnx.pop(mha, nnx.Intermediate)["attention_weights"].value
    np.testing.assert_allclose(weights, FIXTURES["mha_self_weights"], atol=1e-6)

    cross = mha(x, xkv, sow_weights=True)
    np.testing.assert_allclose(cross, FIXTURES["mha_cross_out"], rtol=1e-5, atol=1e-5)
    (weights,) = nnx.pop(mha, nnx.Intermediate)["attention_weights"].value
    np.testing.assert_allclose(weights, FIXTURES["mha_cross_weights"], atol=1e-6)

    # PyTorch's bool attn_mask is True where attention is forbidden: ours is ~it.
    allowed = ~FIXTURES["mha_torch_causal_mask"]
    np.testing.assert_array_equal(nnx.make_causal_mask(x[..., 0])[0, 0], allowed)
    causal = mha(x, mask=nnx.make_causal_mask(x[..., 0]))
    np.testing.assert_allclose(causal, FIXTURES["mha_causal_out"], rtol=1e-5, atol=1e-5)


def test_grouped_query_multi_head_attention_matches_numpy():
    mha = nnx.MultiHeadAttention(H, E, num_kv_heads=1, rngs=nnx.Rngs(1))
    assert mha.query.kernel.shape == (E, H, 4)
    assert mha.key.kernel.shape == mha.value.kernel.shape == (E, 1, 4)
    assert mha.out.kernel.shape == (H, 4, E)
    _randomize_biases(mha)
    x, xkv = _rand(0, B, L, E), _rand(1, B, 5, E)

    def proj(layer, inp):
        kernel, bias = np.asarray(layer.kernel.value), np.asarray(layer.bias.value)
        return np.einsum("bli,ihd->blhd", inp, kernel) + bias

    q, k, v = proj(mha.query, x), proj(mha.key, xkv), proj(mha.value, xkv)
    attended, _ = _np_attention(q, k, v)
    expected = np.einsum("blhd,hdo->blo", attended, np.asarray(mha.out.kernel.value))
    expected = expected + np.asarray(mha.out.bias.value)
    np.testing.assert_allclose(mha(x, xkv), expected, rtol=1e-4, atol=1e-5)


def test_normalize_qk_applies_layer_norm_per_head():
    mha = nnx.MultiHeadAttention(H, E, normalize_qk=True, rngs=nnx.Rngs(0))
    assert mha.query_ln.scale.shape == (E // H,) and mha.query_ln.bias is None
    mha.query_ln.scale.value = jnp.asarray(_rand(5, E // H))
    x = _rand(0, B, L, E)

    def ln(y, scale):
        mean = y.mean(-1, keepdims=True)
        var = y.var(-1, keepdims=True)
        return (y - mean) / np.sqrt(var + 1e-6) * scale

    q = ln(np.asarray(mha.query(x)), np.asarray(mha.query_ln.scale.value))
    k = ln(np.asarray(mha.key(x)), np.asarray(mha.key_ln.scale.value))
    attended, _ = _np_attention(q, k, np.asarray(mha.value(x)))
    np.testing.assert_allclose(
        mha(x), mha.out(jnp.asarray(attended)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("kv_heads", [H, 1])
def test_decode_with_cache_equals_causal_attention(kv_heads):
    mha = nnx.MultiHeadAttention(
        H, E, num_key_value_heads=kv_heads, decode=False, rngs=nnx.Rngs(2)
    )
    x = jnp.asarray(_rand(0, B, L, E))
    full = mha(x, mask=nnx.make_causal_mask(x[..., 0]))

    mha.init_cache(x.shape)
    assert mha.cached_key.shape == (B, L, kv_heads, E // H)
    assert isinstance(mha.cache_index, nnx.Cache) and int(mha.cache_index.value) == 0
    steps = [mha(x[:, t : t + 1], decode=True) for t in range(L)]
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
    assert int(mha.cache_index.value) == L
    np.testing.assert_allclose(mha.cached_key.value, mha.key(x), atol=1e-6)


def test_decode_under_jit_updates_the_cache():
    mha = nnx.MultiHeadAttention(H, E, decode=True, rngs=nnx.Rngs(2))
    x = jnp.asarray(_rand(0, B, L, E))
    mha.init_cache(x.shape)

    @nnx.jit
    def step(model, token):
        return model(token)

    outs = [step(mha, x[:, t : t + 1]) for t in range(L)]
    assert int(mha.cache_index.value) == L
    full = mha(x, mask=nnx.make_causal_mask(x[..., 0]), decode=False)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_decode_errors():
    mha = nnx.MultiHeadAttention(H, E, rngs=nnx.Rngs(0))
    x = jnp.ones((B, 1, E))
    with pytest.raises(ValueError, match=r"cache is not initialised.*init_cache"):
        mha(x, decode=True)
    mha.init_cache((B, L, E))
    with pytest.raises(ValueError, match=r"one token per call.*\(2, 1, 2, 4\)"):
        mha(jnp.ones((B, 2, E)), decode=True)
    for _ in range(L):
        mha(x, decode=True)
    with pytest.raises(ValueError, match=r"all are used \(cache_index=4\)"):
        mha(x, decode=True)


def test_attention_dropout_uses_its_dropout_stream_and_train_eval():
    mha = nnx.MultiHeadAttention(H, E, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
    assert mha.rngs.tag == "dropout"
    x = jnp.asarray(_rand(0, B, L, E))
    with pytest.raises(ValueError, match="`deterministic` is unset"):
        mha(x)
    mha.train()
    a, b = mha(x), mha(x)
    assert not np.allclose(a, b)
    assert int(mha.rngs.count.value) == 2
    nnx.reseed(mha, dropout=7)
    c = mha(x)
    nnx.reseed(mha, dropout=7)
    np.testing.assert_array_equal(mha(x), c)
    call_key = mha(x, rngs=nnx.Rngs(dropout=3))
    assert not np.allclose(call_key, c)
    mha.eval()
    np.testing.assert_array_equal(mha(x), mha(x, deterministic=True))
    plain = nnx.MultiHeadAttention(H, E, rngs=nnx.Rngs(0))
    no_rngs = nnx.MultiHeadAttention(
        H, E, dropout_rate=0.5, deterministic=False, keep_rngs=False, rngs=nnx.Rngs(0)
    )
    assert no_rngs.rngs is None and plain.rngs is None
    with pytest.raises(ValueError, match="no random stream"):
        no_rngs(x)


def test_multi_head_attention_errors():
    with pytest.raises(ValueError, match="qkv_features=10 must be divisible by"):
        nnx.MultiHeadAttention(4, E, qkv_features=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"must be divisible by num_kv_heads \(3\)"):
        nnx.MultiHeadAttention(4, E, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"must be divisible by num_kv_heads \(3\)"):
        nnx.MultiHeadAttention(4, E, num_key_value_heads=3, rngs=nnx.Rngs(0))
    mha = nnx.MultiHeadAttention(H, E, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected inputs_q of shape .* got shape"):
        mha(jnp.ones((B, L, 5)))
    with pytest.raises(ValueError, match="inputs_k is None but inputs_v is given"):
        mha(jnp.ones((B, L, E)), inputs_v=jnp.ones((B, L, E)))
