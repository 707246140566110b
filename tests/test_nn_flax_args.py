"""flax.nnx 0.12.8's layer arguments, each checked against a plain-JAX reference.

Covers ``preferred_element_type``, the injected contractions (``dot_general``,
``dot_general_cls``, ``einsum_op``, ``conv_general_dilated``), ``promote_dtype``,
``*_metadata``, ``REFLECT`` padding, ``is_causal``, ``num_kv_heads``, ``RNN``'s
``broadcast_rngs``, half-precision cells and ``LoRA``'s call keywords.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


def rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_linear_preferred_element_type_and_dot_general():
    calls = []

    def dot_general(x, k, dims, **kwargs):
        calls.append(sorted(kwargs))
        return jax.lax.dot_general(x, k, dims, **kwargs)

    layer = nnx.Linear(
        3,
        4,
        param_dtype=jnp.float16,
        preferred_element_type=jnp.float32,
        dot_general=dot_general,
        rngs=nnx.Rngs(0),
    )
    x = rand(1, 2, 3).astype(jnp.float16)
    y = layer(x)
    ref = (
        jax.lax.dot_general(
            x,
            layer.kernel.value,
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        + layer.bias.value.astype(jnp.float32)[None]
    )
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, ref)
    assert calls == [["precision", "preferred_element_type"]]


def test_linear_general_dot_general_cls_and_promote_dtype():
    seen = []

    class Dot:
        def __call__(self, x, k, dims, **kwargs):
            return 2.0 * jax.lax.dot_general(x, k, dims, **kwargs)

    def promote(arrays, dtype=None):
        seen.append(len(arrays))
        return arrays

    layer = nnx.LinearGeneral(
        3, 4, dot_general_cls=Dot, promote_dtype=promote, rngs=nnx.Rngs(0)
    )
    x = rand(2, 2, 3)
    np.testing.assert_allclose(
        layer(x), 2.0 * (x @ layer.kernel.value) + layer.bias.value[None], rtol=1e-6
    )
    assert seen == [3]


def test_einsum_op_and_ellipsis_bias():
    layer = nnx.Einsum(
        "d...ab,bc...->ad...c", (4, 5, 6, 7), (6, 7, 5), rngs=nnx.Rngs(0)
    )
    x = rand(3, 8, 6, 7, 3, 4)
    ref = jnp.einsum("d...ab,bc...->ad...c", x, layer.kernel.value)
    ref = ref + jnp.transpose(layer.bias.value, (0, 1, 2))[None, None]
    np.testing.assert_allclose(layer(x), ref, rtol=1e-5, atol=1e-6)

    def custom(*args, **kwargs):
        return jnp.einsum(*args, **kwargs)[None]

    assert nnx.Einsum("ab,bc->ac", (3, 4), einsum_op=custom, rngs=nnx.Rngs(0))(
        jnp.ones((2, 3))
    ).shape == (1, 2, 4)


def test_conv_injection_preferred_element_type_and_reflect():
    calls = []

    def conv(*args, **kwargs):
        calls.append(kwargs.get("preferred_element_type"))
        return jax.lax.conv_general_dilated(*args, **kwargs)

    layer = nnx.Conv(
        2,
        3,
        (3,),
        padding="REFLECT",
        param_dtype=jnp.float16,
        preferred_element_type=jnp.float32,
        conv_general_dilated=conv,
        use_bias=False,
        rngs=nnx.Rngs(0),
    )
    x = rand(4, 1, 6, 2).astype(jnp.float16)
    y = layer(x)
    assert calls == [jnp.float32] and y.dtype == jnp.float32
    # Reference: reflect-pad by hand, then a VALID correlation as a sum of shifts.
    xp = np.pad(np.asarray(x, np.float32), [(0, 0), (1, 1), (0, 0)], mode="reflect")
    k = np.asarray(layer.kernel.value, np.float32)
    ref = sum(xp[:, i : i + 6] @ k[i] for i in range(3))
    np.testing.assert_allclose(y, ref, rtol=2e-3, atol=2e-3)


def test_metadata_arguments_reach_the_params():
    lin = nnx.Linear(
        2, 3, kernel_metadata={"note": "k"}, bias_metadata={"note": "b"},
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    assert lin.kernel.note == "k" and lin.bias.note == "b"
    ln = nnx.LayerNorm(3, scale_metadata={"note": "s"}, rngs=nnx.Rngs(0))
    assert ln.scale.note == "s"
    lora = nnx.LoRA(3, 2, 4, a_metadata={"note": "a"}, rngs=nnx.Rngs(0))
    assert lora.lora_a.note == "a"
    mha = nnx.MultiHeadAttention(
        2, 8, out_kernel_metadata={"note": "o"}, kernel_metadata={"note": "q"},
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    assert mha.query.kernel.note == "q" and mha.out.kernel.note == "o"


def test_is_causal_equals_an_explicit_causal_mask():
    q, k, v = rand(5, 2, 4, 2, 8), rand(6, 2, 4, 2, 8), rand(7, 2, 4, 2, 8)
    causal = nnx.make_causal_mask(jnp.ones((2, 4)))
    np.testing.assert_allclose(
        nnx.dot_product_attention(q, k, v, is_causal=True),
        nnx.dot_product_attention(q, k, v, mask=causal),
        rtol=1e-6,
    )
    mha = nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))
    x = rand(8, 2, 4, 8)
    np.testing.assert_allclose(
        mha(x, is_causal=True), mha(x, mask=causal), rtol=1e-6, atol=1e-6
    )


def test_num_kv_heads_is_grouped_query_attention():
    mha = nnx.MultiHeadAttention(4, 8, num_kv_heads=2, rngs=nnx.Rngs(0))
    assert mha.key.kernel.shape == (8, 2, 2) and mha.num_kv_heads == 2
    x = rand(9, 1, 5, 8)
    q, k, v = mha.query(x), mha.key(x), mha.value(x)
    # Reference: repeat each key/value head for its group of query heads.
    kr, vr = jnp.repeat(k, 2, axis=-2), jnp.repeat(v, 2, axis=-2)
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(2.0), kr), -1)
    ref = mha.out(jnp.einsum("bhqk,bkhd->bqhd", w, vr))
    np.testing.assert_allclose(mha(x), ref, rtol=1e-5, atol=1e-6)


class _DropCell(nnx.SimpleCell):
    """A cell whose output is a dropout mask of ones, drawn from its own stream."""

    def __init__(self, rngs):
        super().__init__(1, 6, rngs=rngs)
        self.drop = nnx.Dropout(
            0.5, deterministic=False, rng_collection="rd", rngs=rngs
        )

    def __call__(self, carry, x):
        return carry, self.drop(jnp.ones_like(carry))


def test_rnn_broadcast_rngs_gives_one_mask_per_sequence():
    x = jnp.ones((2, 5, 1))
    shared = nnx.RNN(_DropCell(nnx.Rngs(0, rd=1)), broadcast_rngs="rd")
    ys = np.asarray(shared(x))
    assert all((ys[:, t] == ys[:, 0]).all() for t in range(5))
    assert 0 < (ys == 0).sum() < ys.size
    assert int(shared.cell.drop.rngs.count.value) == 1  # advanced once per call
    assert not (np.asarray(shared(x)) == ys).all()  # the next call differs
    per_step = np.asarray(nnx.RNN(_DropCell(nnx.Rngs(0, rd=1)))(x))
    assert any(not (per_step[:, t] == per_step[:, 0]).all() for t in range(1, 5))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_cells_and_rnn(dtype):
    for cls in (nnx.LSTMCell, nnx.GRUCell, nnx.SimpleCell, nnx.OptimizedLSTMCell):
        cell = cls(3, 4, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
        y = nnx.RNN(cell)(jnp.ones((2, 5, 3), dtype))
        assert y.dtype == dtype and y.shape == (2, 5, 4), cls
        f32 = cls(3, 4, rngs=nnx.Rngs(0))
        np.testing.assert_allclose(  # same orthogonal draw, rounded
            np.asarray(cell.recurrent_kernel.kernel.value, np.float32)
            if hasattr(cell, "recurrent_kernel")
            else 0.0,
            np.asarray(f32.recurrent_kernel.kernel.value, np.float32)
            if hasattr(f32, "recurrent_kernel")
            else 0.0,
            atol=1e-2,
        )


def test_lora_passes_call_keywords_to_base_module():
    class Base(nnx.Module):
        def __call__(self, x, *, scale=1.0):
            return scale * jnp.sum(x, -1, keepdims=True) * jnp.ones((1, 4))

    lora = nnx.LoRA(3, 2, 4, base_module=Base(), rngs=nnx.Rngs(0))
    x = rand(10, 2, 3)
    delta = x @ lora.lora_a.value @ lora.lora_b.value
    np.testing.assert_allclose(
        lora(x, scale=3.0), 3.0 * x.sum(-1, keepdims=True) * jnp.ones((1, 4)) + delta,
        rtol=1e-6,
    )  # fmt: skip


def test_flax_module_level_names():
    assert nnx.nn.linear.default_kernel_init is nnx.initializers.default_kernel_init
    assert nnx.Initializer is nnx.initializers.Initializer
    x = jnp.ones(2, jnp.int32)
    assert nnx.nn.dtypes.promote_dtype((x,))[0].dtype == jnp.float32
