"""Tests for nnxlike.nn.stochastic: Dropout's masks equal flax.nnx 0.12.8's.

The reference masks in tests/fixtures/flax_rngs.npz were drawn by the real flax
(tests/fixtures/make_flax_rngs_fixtures.py) for the same seeds and calls.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

FLAX = np.load(Path(__file__).parent / "fixtures" / "flax_rngs.npz")


def test_masks_equal_flax_call_after_call_and_reseed_replays_them():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))
    x = jnp.ones((4, 6))
    calls = np.stack([np.asarray(drop(x)) for _ in range(3)])
    np.testing.assert_array_equal(calls, FLAX["dropout_calls"])
    assert not np.array_equal(calls[0], calls[1])
    nnx.reseed(drop, dropout=42)
    np.testing.assert_array_equal(np.asarray(drop(x)), FLAX["dropout_after_reseed"])
    np.testing.assert_array_equal(FLAX["dropout_after_reseed"], calls[0])


def test_mask_is_bernoulli_of_the_forked_stream():
    drop = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=5))
    y = drop(jnp.full((50,), 2.0))
    forked = jax.random.fold_in(jax.random.key(5), 0)  # the fork at construction
    keep = jax.random.bernoulli(jax.random.fold_in(forked, 0), 0.7, (50,))
    np.testing.assert_allclose(y, np.where(keep, 2.0 / 0.7, 0.0), rtol=1e-6)


def test_broadcast_dims_and_call_time_rngs_equal_flax():
    bdrop = nnx.Dropout(0.25, broadcast_dims=(0,), rngs=nnx.Rngs(1))
    y = np.asarray(bdrop(jnp.ones((3, 5))))
    np.testing.assert_array_equal(y, FLAX["dropout_broadcast"])
    assert (y == y[:1]).all()  # one mask shared along dim 0
    call_rngs = nnx.Rngs(dropout=7)
    plain = nnx.Dropout(0.5)
    x = jnp.ones((4, 6))
    got = np.stack([np.asarray(plain(x, rngs=call_rngs)) for _ in range(2)])
    np.testing.assert_array_equal(got, FLAX["dropout_call_rngs"])
    assert int(call_rngs.dropout.count.value) == 2
    key = jax.random.key(3)
    keep = jax.random.bernoulli(key, 0.5, (4, 6))
    np.testing.assert_array_equal(plain(x, rngs=key), np.where(keep, 2.0, 0.0))


def test_model_of_linear_and_dropout_equals_flax():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 4, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.linear(x))

    model = Model(nnx.Rngs(0))
    np.testing.assert_allclose(
        np.asarray(model(jnp.ones((2, 3)))), FLAX["model_out"], rtol=1e-6
    )


def test_a_given_stream_is_forked_not_shared():
    stream = nnx.RngStream(0, tag="dropout")
    drop = nnx.Dropout(0.5, rngs=stream)
    assert drop.rngs is not stream and int(stream.count.value) == 1
    assert drop.rngs.tag == "dropout"


def test_deterministic_none_and_errors():
    drop = nnx.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"no `deterministic` given"):
        drop(jnp.ones(3))
    np.testing.assert_array_equal(drop(jnp.ones(3), deterministic=True), np.ones(3))
    with pytest.raises(
        ValueError,
        match=r"`deterministic` is False, but no `rngs` argument was provided",
    ):
        nnx.Dropout(0.5)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"Dropout: rngs must be an nnx.Rngs"):
        nnx.Dropout(0.5, rngs=0)
    with pytest.raises(TypeError, match=r"rngs must be an nnx.Rngs, an nnx.RngStream"):
        nnx.Dropout(0.5)(jnp.ones(3), rngs="x")
    np.testing.assert_array_equal(nnx.Dropout(1.0)(jnp.ones(2)), np.zeros(2))


def test_reseed_by_collection_finds_a_stream_forked_from_default():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))  # no 'dropout' stream: falls back
    assert drop.rngs.tag == "dropout"
    x = jnp.ones((4, 6))
    drop(x)
    nnx.reseed(drop, dropout=42)
    # the same masks as a Dropout built from Rngs(dropout=42) (flax's numbers)
    np.testing.assert_array_equal(np.asarray(drop(x)), FLAX["dropout_calls"][0])
