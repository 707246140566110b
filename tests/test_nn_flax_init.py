"""Same seed, same parameters as flax.nnx 0.12.8, bit for bit.

Reference: ``fixtures/flax_layer_init.npz``, made by
``fixtures/make_flax_layer_init_fixtures.py`` with real flax (the constructor calls
there are the ones below). This pins both the layers' draw order from ``rngs.params``
and ``Rngs``' key derivation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nnxlike as nnx

FLAX = np.load(Path(__file__).parent / "fixtures" / "flax_layer_init.npz")

CASES = {
    "Linear": lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    "LinearGeneral": lambda: nnx.LinearGeneral(
        (2, 3), (4, 5), axis=(1, -1), rngs=nnx.Rngs(0)
    ),
    "Einsum": lambda: nnx.Einsum("ab,bc->ac", (3, 4), (4,), rngs=nnx.Rngs(0)),
    "Conv": lambda: nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)),
    "ConvTranspose": lambda: nnx.ConvTranspose(3, 4, (3, 3), rngs=nnx.Rngs(0)),
    "Embed": lambda: nnx.Embed(5, 3, rngs=nnx.Rngs(0)),
    "LayerNorm": lambda: nnx.LayerNorm(3, rngs=nnx.Rngs(0)),
    "MultiHeadAttention": lambda: nnx.MultiHeadAttention(
        2, 8, normalize_qk=True, rngs=nnx.Rngs(0)
    ),
    "MultiHeadAttention_gqa": lambda: nnx.MultiHeadAttention(
        4, 8, num_kv_heads=2, rngs=nnx.Rngs(0)
    ),
    "LoRA": lambda: nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0)),
    "LoRALinear": lambda: nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0)),
    "LSTMCell": lambda: nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)),
    "OptimizedLSTMCell": lambda: nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0)),
    "GRUCell": lambda: nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)),
    "SimpleCell": lambda: nnx.SimpleCell(3, 4, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_initial_parameters_equal_flax(name):
    state = nnx.state(CASES[name](), nnx.Param)
    ours = {
        name + "." + "/".join(map(str, path)): np.asarray(v.value)
        for path, v in nnx.to_flat_state(state)
    }
    theirs = {k: FLAX[k] for k in FLAX.files if k.split(".", 1)[0] == name}
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
