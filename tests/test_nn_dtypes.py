"""dtype behaviour of every layer: ``dtype`` is the computation dtype, the params
keep ``param_dtype``.

The reference for each output is the same layer computed in float32 from the same
parameters: the bf16 result must be close to it at bf16 precision (so the layer
really computed something sensible in bf16, not garbage) and be bf16 itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

BF16 = jnp.bfloat16


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


CASES = {
    "Linear": (lambda dt, r: nnx.Linear(6, 5, dtype=dt, rngs=r), (3, 6)),
    "LinearGeneral": (
        lambda dt, r: nnx.LinearGeneral(6, (2, 3), dtype=dt, rngs=r),
        (3, 6),
    ),
    "Einsum": (
        lambda dt, r: nnx.Einsum("bi,io->bo", (6, 4), (4,), dtype=dt, rngs=r),
        (3, 6),
    ),
    "Conv": (lambda dt, r: nnx.Conv(3, 4, (3, 3), dtype=dt, rngs=r), (2, 6, 6, 3)),
    "ConvTranspose": (
        lambda dt, r: nnx.ConvTranspose(3, 4, (3, 3), strides=2, dtype=dt, rngs=r),
        (2, 4, 4, 3),
    ),
    "BatchNorm": (
        lambda dt, r: nnx.BatchNorm(6, dtype=dt, use_running_average=False, rngs=r),
        (8, 6),
    ),
    "LayerNorm": (lambda dt, r: nnx.LayerNorm(6, dtype=dt, rngs=r), (3, 6)),
    "RMSNorm": (lambda dt, r: nnx.RMSNorm(6, dtype=dt, rngs=r), (3, 6)),
    "GroupNorm": (
        lambda dt, r: nnx.GroupNorm(6, num_groups=3, dtype=dt, rngs=r),
        (2, 4, 6),
    ),
    "MultiHeadAttention": (
        lambda dt, r: nnx.MultiHeadAttention(
            num_heads=2, in_features=8, dtype=dt, decode=False, rngs=r
        ),
        (2, 5, 8),
    ),
    "LoRALinear": (
        lambda dt, r: nnx.LoRALinear(6, 5, lora_rank=2, dtype=dt, rngs=r),
        (3, 6),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_computation_keeps_float32_params(name):
    make, shape = CASES[name]
    x = _x(shape)
    low = make(BF16, nnx.Rngs(0))
    ref = make(jnp.float32, nnx.Rngs(0))  # same seed: same parameters
    for path, p in nnx.state(low, nnx.Param).flat_state():
        assert p.value.dtype == jnp.float32, (name, path)
    y = low(x)
    y_ref = ref(x)
    assert y.dtype == BF16, (name, y.dtype)
    assert y.shape == y_ref.shape
    scale = float(jnp.max(jnp.abs(y_ref))) + 1e-6
    err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - y_ref))) / scale
    assert err < 0.05, (name, err)  # bf16 has 8 bits of mantissa


def test_embed_bf16_lookup_and_attend():
    low = nnx.Embed(10, 4, dtype=BF16, rngs=nnx.Rngs(0))
    assert low.embedding.value.dtype == jnp.float32
    y = low(jnp.array([1, 2, 3]))
    assert y.dtype == BF16
    np.testing.assert_array_equal(
        np.asarray(y, np.float32),
        np.asarray(low.embedding.value[jnp.array([1, 2, 3])].astype(BF16), np.float32),
    )
    assert low.attend(jnp.ones((2, 4))).dtype == BF16


@pytest.mark.parametrize("cell", [nnx.LSTMCell, nnx.GRUCell, nnx.SimpleCell])
def test_recurrent_cells_bf16(cell):
    low = cell(3, 4, dtype=BF16, rngs=nnx.Rngs(0))
    ref = cell(3, 4, rngs=nnx.Rngs(0))
    for _, p in nnx.state(low, nnx.Param).flat_state():
        assert p.value.dtype == jnp.float32
    x = _x((2, 3))
    # As in flax, initialize_carry makes the carry in param_dtype (float32 keeps
    # the cell state accurate); a bf16 carry gives a bf16 step end to end.
    carry_ref = ref.initialize_carry((2, 3), nnx.Rngs(1))
    assert jax.tree.leaves(carry_ref)[0].dtype == jnp.float32
    carry_low = jax.tree.map(lambda c: c.astype(BF16), carry_ref)
    _, y = low(carry_low, x)
    _, y_ref = ref(carry_ref, x)
    assert y.dtype == BF16
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, atol=0.03)


def test_param_dtype_bf16_stores_bf16():
    layer = nnx.Linear(4, 3, param_dtype=BF16, rngs=nnx.Rngs(0))
    assert layer.kernel.value.dtype == BF16 and layer.bias.value.dtype == BF16
    assert layer(jnp.ones((2, 4), BF16)).dtype == BF16
