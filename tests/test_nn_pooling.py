"""Pooling functions against window loops and stored PyTorch numbers."""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

TORCH = np.load(Path(__file__).parent / "fixtures" / "torch_layers.npz")


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def np_pool(x, window, strides, pads, reduce, pad_value):
    """Reduce every window of the spatial axes of (N, *spatial, C) by loops."""
    x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=pad_value)
    out_sp = [(s - w) // st + 1 for s, w, st in zip(x.shape[1:-1], window, strides)]
    y = np.zeros((x.shape[0], *out_sp, x.shape[-1]), np.float64)
    for pos in itertools.product(*(range(o) for o in out_sp)):
        idx = tuple(slice(p * st, p * st + w) for p, st, w in zip(pos, strides, window))
        patch = x[(slice(None), *idx)]
        y[(slice(None), *pos)] = reduce(patch.reshape(len(x), -1, x.shape[-1]), axis=1)
    return y


X = rand(0, 2, 5, 4, 3)


@pytest.mark.parametrize(
    "window, strides, padding, pads",
    [
        ((2, 2), None, "VALID", ((0, 0), (0, 0))),
        ((3, 2), (2, 1), ((1, 1), (0, 1)), ((1, 1), (0, 1))),
        ((3, 3), (1, 1), "SAME", ((1, 1), (1, 1))),
    ],
)
def test_max_min_avg_pool_match_loops(window, strides, padding, pads):
    st = strides or (1, 1)
    x = jnp.asarray(X)
    close(
        nnx.max_pool(x, window, strides, padding),
        np_pool(X, window, st, pads, np.max, -np.inf),
    )
    close(
        nnx.min_pool(x, window, strides, padding),
        np_pool(X, window, st, pads, np.min, np.inf),
    )
    close(
        nnx.avg_pool(x, window, strides, padding),
        np_pool(X, window, st, pads, np.mean, 0.0),
    )
    # count_include_pad=False: divide by the number of real elements.
    sums = np_pool(X, window, st, pads, np.sum, 0.0)
    counts = np_pool(np.ones_like(X[:1, ..., :1]), window, st, pads, np.sum, 0.0)
    close(
        nnx.avg_pool(x, window, strides, padding, count_include_pad=False),
        sums / counts,
    )


def test_pool_generic_reduce_fn():
    y = nnx.pool(jnp.asarray(X), 0.0, jax.lax.add, (2, 2), (2, 2), "VALID")
    close(y, np_pool(X, (2, 2), (2, 2), ((0, 0), (0, 0)), np.sum, 0.0), tol=1e-4)


def test_pool_unbatched_and_extra_batch_axes():
    x = jnp.asarray(X)
    y = nnx.max_pool(x, (2, 2), (1, 2))
    close(nnx.max_pool(x[1], (2, 2), (1, 2)), y[1])
    stacked = jnp.stack([x, x + 1.0])  # two leading batch axes
    close(nnx.avg_pool(stacked, (2, 2))[1, 0], nnx.avg_pool(x + 1.0, (2, 2))[0])
    # 1-D unbatched with count_include_pad=False
    z = jnp.arange(5.0).reshape(5, 1)
    close(
        nnx.avg_pool(z, (3,), padding="SAME", count_include_pad=False)[:, 0],
        [0.5, 1.0, 2.0, 3.0, 3.5],
    )


def test_max_pool_integer_inputs():
    x = jnp.array([[[-5], [-3], [-7]]], jnp.int32)
    y = nnx.max_pool(x, (2,), padding=((1, 1),))
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0], [-5, -3, -3, -7])
    assert nnx.min_pool(x, (2,))[0, 0, 0] == -5


def test_pools_match_torch():
    x = jnp.asarray(np.moveaxis(TORCH["pool.x"], 1, -1))
    pads = ((1, 1), (1, 1))  # torch padding=1

    def want(key):
        return np.moveaxis(TORCH[key], 1, -1)

    close(nnx.max_pool(x, (3, 3), (2, 2), pads), want("pool.max"))
    close(nnx.avg_pool(x, (3, 3), (2, 2), pads), want("pool.avg_incl"))
    close(
        nnx.avg_pool(x, (3, 3), (2, 2), pads, count_include_pad=False),
        want("pool.avg_excl"),
    )


def test_pool_errors():
    with pytest.raises(ValueError, match=r"strides \(1,\) and window_shape \(2, 2\)"):
        nnx.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), strides=(1,))
    with pytest.raises(ValueError, match=r"needs inputs shaped .* got shape \(4, 4\)"):
        nnx.max_pool(jnp.ones((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="one \\(low, high\\) pair per spatial axis"):
        nnx.avg_pool(jnp.ones((1, 4, 4, 1)), (2, 2), padding=((1, 1),))


def test_pools_are_differentiable():
    # Regression: `init` reached lax.reduce_window as a jit argument (a tracer), so
    # it could not see the identity and fell back to a form with no reverse-mode
    # rule: jax.grad of max_pool/avg_pool raised "Linearization failed".
    x = jnp.asarray(X)  # distinct values: each 2x2 window has one maximum
    # X is (2, 5, 4, 3): rows 0..3 form 2x2 windows, row 4 is dropped (VALID).
    blocks = np.asarray(X)[:, :4].reshape(2, 2, 2, 2, 2, 3)  # n, i, di, j, dj, c
    is_max = blocks == blocks.max(axis=(2, 4), keepdims=True)
    want_max = np.zeros_like(X)
    want_max[:, :4] = is_max.reshape(2, 4, 4, 3)
    grad = jax.grad(lambda x: nnx.max_pool(x, (2, 2), (2, 2)).sum())
    close(grad(x), want_max)
    close(jax.jit(grad)(x), want_max)  # the identity is built under the outer trace
    close(jax.grad(lambda x: -nnx.min_pool(-x, (2, 2), (2, 2)).sum())(x), want_max)
    want_avg = np.zeros_like(X)
    want_avg[:, :4] = 0.25
    close(jax.grad(lambda x: nnx.avg_pool(x, (2, 2), (2, 2)).sum())(x), want_avg)
    # count_include_pad=False and the generic pool, under jit as in a train step.
    grad_excl = jax.jit(
        jax.grad(
            lambda x: nnx.avg_pool(
                x, (3, 3), padding="SAME", count_include_pad=False
            ).sum()
        )
    )
    assert np.isfinite(np.asarray(grad_excl(x))).all()
    summed = jax.grad(
        lambda x: nnx.pool(x, 0.0, jax.lax.add, (2, 2), (2, 2), "VALID").sum()
    )
    close(summed(x), want_avg * 4)
