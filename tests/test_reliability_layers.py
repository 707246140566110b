"""Issue 12, points 13 and 14: what users get wrong when building and calling layers.

Each test failed before the fix: bad sizes reached JAX (an empty kernel, or an XLA
error), ``rngs=0`` died with ``'int' object has no attribute 'params'``, an int
``kernel_size`` on images silently made a 1-D convolution, and a kernel larger than
the input under ``'VALID'`` returned an empty array.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: nnx.Linear(0, 8, rngs=nnx.Rngs(0)), r"Linear: in_features must be"),
        (lambda: nnx.Linear(4, -2, rngs=nnx.Rngs(0)), r"out_features .* got -2"),
        (lambda: nnx.Embed(-5, 3, rngs=nnx.Rngs(0)), r"Embed: num_embeddings .*-5"),
        (lambda: nnx.Conv(3, 8, 3, strides=0, rngs=nnx.Rngs(0)), r"Conv: strides"),
        (lambda: nnx.Conv(3, 8, (3, 0), rngs=nnx.Rngs(0)), r"kernel_size\[1\]"),
        (
            lambda: nnx.Conv(3, 8, 3, kernel_dilation=0, rngs=nnx.Rngs(0)),
            r"kernel_dilation",
        ),
        (lambda: nnx.ConvTranspose(3, 0, 3, rngs=nnx.Rngs(0)), r"ConvTranspose: out"),
        (lambda: nnx.LayerNorm(0, rngs=nnx.Rngs(0)), r"LayerNorm: num_features"),
        (lambda: nnx.BatchNorm(-1, rngs=nnx.Rngs(0)), r"BatchNorm: num_features"),
        (lambda: nnx.LoRA(3, 0, 4, rngs=nnx.Rngs(0)), r"LoRA: lora_rank"),
        (
            lambda: nnx.MultiHeadAttention(0, 8, rngs=nnx.Rngs(0)),
            r"MultiHeadAttention: num_heads",
        ),
        (
            lambda: nnx.MultiHeadAttention(2, 8, dropout_rate=1.5, rngs=nnx.Rngs(0)),
            r"dropout_rate must be in \[0, 1\)",
        ),
        (
            lambda: nnx.LinearGeneral((2, 0), 3, axis=(0, 1), rngs=nnx.Rngs(0)),
            r"in_features\[1\]",
        ),
    ],
)
def test_bad_sizes_name_the_layer_and_argument(build, match):
    with pytest.raises(ValueError, match=match) as info:
        build()
    assert "Pass " in str(info.value)  # and says what to pass instead


def test_non_int_size_is_a_type_error():
    with pytest.raises(TypeError, match=r"Linear: in_features must be an int, got"):
        nnx.Linear(2.5, 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "build",
    [
        lambda r: nnx.Linear(2, 3, rngs=r),
        lambda r: nnx.Conv(2, 3, 3, rngs=r),
        lambda r: nnx.Embed(4, 3, rngs=r),
        lambda r: nnx.LayerNorm(3, rngs=r),
        lambda r: nnx.MultiHeadAttention(2, 8, rngs=r),
        lambda r: nnx.LoRA(2, 1, 3, rngs=r),
    ],
)
def test_rngs_seed_instead_of_rngs_says_nnx_rngs(build):
    with pytest.raises(TypeError, match=r"rngs must be an nnx.Rngs, got int 0\. "):
        build(0)
    with pytest.raises(TypeError, match=r"Pass rngs=nnx\.Rngs\(0\)"):
        build(0)
    with pytest.raises(TypeError, match=r"got None"):
        build(None)


# -- Embed: what an index outside the table gives ------------------------------


def test_embed_out_of_range_follows_flax_by_default():
    emb = nnx.Embed(4, 3, rngs=nnx.Rngs(0))
    table = np.asarray(emb.embedding.value)
    y = np.asarray(emb(jnp.array([0, 3, -1, -4, 4, -5, 100])))
    np.testing.assert_array_equal(y[:4], table[[0, 3, 3, 0]])  # -k counts from end
    assert np.isnan(y[4:]).all()  # beyond the table either way: NaN rows


def test_embed_check_indices_raises_eagerly():
    emb = nnx.Embed(4, 3, check_indices=True, rngs=nnx.Rngs(0))
    table = np.asarray(emb.embedding.value)
    np.testing.assert_array_equal(emb(jnp.array([0, 3])), table[[0, 3]])
    with pytest.raises(IndexError, match=r"index -1 is outside the table \[0, 4\)"):
        emb(jnp.array([[1, -1]]))
    with pytest.raises(IndexError, match=r"index 4 .*a row of NaN"):
        emb(jnp.array([4]))
    with pytest.raises(IndexError, match=r"index 7"):  # even a one-row table
        nnx.Embed(1, 3, check_indices=True, rngs=nnx.Rngs(0))(jnp.array([0, 7]))


def test_embed_check_indices_raises_under_jit():
    emb = nnx.Embed(4, 3, check_indices=True, rngs=nnx.Rngs(0))
    lookup = nnx.jit(lambda m, i: m(i))
    assert lookup(emb, jnp.array([1, 2])).shape == (2, 3)
    with pytest.raises(Exception, match=r"index 9 is outside the table") as info:
        jax.block_until_ready(lookup(emb, jnp.array([1, 9])))
    assert isinstance(info.value, (IndexError, jax.errors.JaxRuntimeError))


# -- Conv: an int kernel_size on images, and empty outputs ---------------------


def test_int_kernel_size_on_images_warns_with_the_fix():
    conv = nnx.Conv(1, 4, 3, rngs=nnx.Rngs(0))
    with pytest.warns(nnx.ConvDimensionWarning, match=r"kernel_size=\(3, 3\)"):
        y = conv(jnp.ones((2, 8, 8, 1)))
    assert y.shape == (2, 8, 8, 4)  # still flax's result: 1-D over W


def test_explicit_one_d_kernel_or_one_batch_axis_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnx.Conv(1, 4, (3,), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1)))
        nnx.Conv(1, 4, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 1)))
        nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1)))


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        (dict(kernel_size=(5, 5), padding="VALID"), (1, 3, 3, 2)),
        (dict(kernel_size=(3,), kernel_dilation=3, padding="VALID"), (1, 6, 2)),
        (dict(kernel_size=(4,), padding=((0, 1),)), (2, 2, 2)),
    ],
)
def test_kernel_larger_than_input_raises(kwargs, shape):
    conv = nnx.Conv(2, 3, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match=r"larger than the input .*output would be"):
        conv(jnp.ones(shape))


def test_same_padding_with_a_large_kernel_still_works():
    y = nnx.Conv(2, 3, (5, 5), rngs=nnx.Rngs(0))(jnp.ones((1, 3, 3, 2)))
    assert y.shape == (1, 3, 3, 3)
