"""Linear, LinearGeneral, Einsum and Embed against numpy and stored PyTorch numbers."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

TORCH = np.load(Path(__file__).parent / "fixtures" / "torch_layers.npz")
Z = dict(kernel_init=nnx.initializers.zeros)  # for weights a test overwrites


def torch_case(name: str) -> dict[str, np.ndarray]:
    return {
        k.split(".", 1)[1]: TORCH[k] for k in TORCH.files if k.startswith(name + ".")
    }


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# -- Linear ----------------------------------------------------------------------


def test_linear_matches_torch():
    t = torch_case("linear")
    layer = nnx.Linear(4, 3, **Z, rngs=nnx.Rngs(0))
    layer.kernel.value = jnp.asarray(t["weight"].T)  # (out, in) -> (in, out)
    layer.bias.value = jnp.asarray(t["bias"])
    close(layer(jnp.asarray(t["x"])), t["y"])
    close(layer(jnp.asarray(t["x"])), t["x"] @ t["weight"].T + t["bias"])


def test_linear_error_names_layer_and_shape():
    layer = nnx.Linear(4, 3, **Z, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"Linear.__call__: expected input with last dimension 4, got shape "
        r"\(2, 5\)",
    ):
        layer(jnp.ones((2, 5)))


# -- LinearGeneral ---------------------------------------------------------------


def test_linear_general_shapes_follow_flax():
    assert nnx.LinearGeneral(2, 4, **Z, rngs=nnx.Rngs(0)).kernel.shape == (2, 4)
    layer = nnx.LinearGeneral(2, (4, 5), **Z, rngs=nnx.Rngs(0))
    assert (layer.kernel.shape, layer.bias.shape) == ((2, 4, 5), (4, 5))
    layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(1, -1), **Z, rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (2, 3, 4, 5)
    assert layer(jnp.ones((16, 2, 3))).shape == (16, 4, 5)


def test_linear_general_equals_linear_for_one_axis():
    # Same seed, same flattened init shape: the same kernel as Linear.
    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    gen = nnx.LinearGeneral(3, 4, rngs=nnx.Rngs(0))
    close(gen.kernel.value, lin.kernel.value)
    x = jnp.asarray(rand(0, 2, 3))
    close(gen(x), lin(x))


def test_linear_general_contracts_several_axes():
    layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(1, 2), **Z, rngs=nnx.Rngs(0))
    k, b = rand(1, 2, 3, 4, 5), rand(2, 4, 5)
    layer.kernel.value, layer.bias.value = jnp.asarray(k), jnp.asarray(b)
    x = rand(3, 6, 2, 3, 7)  # contract axes 1 and 2, keep 0 and 3
    want = np.einsum("nijt,ijab->ntab", x, k) + b
    close(layer(jnp.asarray(x)), want, tol=1e-4)


def test_linear_general_batch_axis():
    layer = nnx.LinearGeneral(4, 5, batch_axis={0: 3}, **Z, rngs=nnx.Rngs(0))
    assert (layer.kernel.shape, layer.bias.shape) == ((3, 4, 5), (3, 5))
    assert dict(layer.batch_axis) == {0: 3}
    hash(layer.batch_axis)  # static config must be hashable
    k, b = rand(1, 3, 4, 5), rand(2, 3, 5)
    layer.kernel.value, layer.bias.value = jnp.asarray(k), jnp.asarray(b)
    x = rand(3, 3, 2, 4)
    want = np.einsum("bni,bio->bno", x, k) + b[:, None]
    close(layer(jnp.asarray(x)), want, tol=1e-4)


def test_linear_general_errors():
    layer = nnx.LinearGeneral((2, 3), 4, axis=(1, 2), **Z, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"LinearGeneral.__call__: expected input axes \(1, 2\) to have sizes "
        r"\(2, 3\) \(in_features\), got shape \(5, 2, 4\)",
    ):
        layer(jnp.ones((5, 2, 4)))
    with pytest.raises(ValueError, match="must have the same length"):
        nnx.LinearGeneral((2, 3), 4, axis=-1, **Z, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="consecutive leading axes"):
        nnx.LinearGeneral(2, 4, batch_axis={1: 3}, **Z, rngs=nnx.Rngs(0))


# -- Einsum ----------------------------------------------------------------------


def test_einsum_matches_numpy_with_broadcast_bias():
    layer = nnx.Einsum("nta,hab->nthb", (8, 2, 4), (8, 4), **Z, rngs=nnx.Rngs(0))
    assert (layer.kernel.shape, layer.bias.shape) == ((8, 2, 4), (8, 4))
    k, b = rand(1, 8, 2, 4), rand(2, 8, 4)
    layer.kernel.value, layer.bias.value = jnp.asarray(k), jnp.asarray(b)
    x = rand(3, 5, 3, 2)
    want = np.einsum("nta,hab->nthb", x, k) + b[None, None]
    close(layer(jnp.asarray(x)), want, tol=1e-4)


def test_einsum_ellipsis_and_call_time_equation():
    layer = nnx.Einsum("...a,ab->...b", (3, 4), (4,), **Z, rngs=nnx.Rngs(0))
    k, b = rand(1, 3, 4), rand(2, 4)
    layer.kernel.value, layer.bias.value = jnp.asarray(k), jnp.asarray(b)
    x = rand(3, 2, 5, 3)
    close(layer(jnp.asarray(x)), x @ k + b, tol=1e-4)
    # An equation given at call time replaces the stored one.
    y = layer(jnp.asarray(x[0]), "ta, ab -> tb")
    close(y, x[0] @ k + b, tol=1e-4)


def test_einsum_errors():
    with pytest.raises(ValueError, match="must be explicit, with exactly one '->'"):
        nnx.Einsum("ab,bc", (2, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly two operands"):
        nnx.Einsum("ab,bc,cd->ad", (2, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"has 2 axes but kernel_shape \(2, 3, 4\)"):
        nnx.Einsum("ab,bc->ac", (2, 3, 4), rngs=nnx.Rngs(0))
    layer = nnx.Einsum("ab,bc->ac", (2, 3), **Z, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Einsum.__call__: the input operand 'ab'"):
        layer(jnp.ones((4, 5, 2)))


# -- Embed -----------------------------------------------------------------------


def test_embed_matches_torch_and_attend():
    t = torch_case("embed")
    emb = nnx.Embed(7, 4, embedding_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    assert emb.embedding.shape == (7, 4)
    emb.embedding.value = jnp.asarray(t["weight"])
    close(emb(jnp.asarray(t["idx"])), t["y"])
    close(emb(jnp.asarray(t["idx"])), t["weight"][t["idx"]])
    close(emb.attend(jnp.asarray(t["q"])), t["attend"])


def test_embed_dtype_nan_fill_and_errors():
    zeros = dict(embedding_init=nnx.initializers.zeros)
    emb = nnx.Embed(5, 3, dtype=jnp.bfloat16, **zeros, rngs=nnx.Rngs(0))
    assert emb.embedding.dtype == jnp.float32
    assert emb(jnp.array([0, 1])).dtype == jnp.bfloat16
    out = nnx.Embed(5, 3, **zeros, rngs=nnx.Rngs(0))(jnp.array([1, 5]))
    assert not np.isnan(out[0]).any() and np.isnan(out[1]).all()  # out of range
    with pytest.raises(
        ValueError,
        match=r"Embed.__call__: input type must be an integer or unsigned integer "
        r".*got float32 of shape \(2,\)",
    ):
        emb(jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"Embed.attend: expected a query with last"):
        emb.attend(jnp.ones((2, 4)))


def test_embed_gradient_reaches_only_looked_up_rows():
    emb = nnx.Embed(4, 2, embedding_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))

    def loss(emb):
        return emb(jnp.array([1, 1, 3])).sum()

    grads = nnx.grad(loss)(emb)
    g = np.asarray(jax.tree.leaves(grads)[0])
    close(g, np.array([[0, 0], [2, 2], [0, 0], [1, 1]], np.float32))


def test_embed_single_row_broadcasts():
    # flax 0.12.8 broadcasts a one-row table whatever the index (documented);
    # check_indices=True is the way to catch index 1 here.
    emb = nnx.Embed(1, 3, rngs=nnx.Rngs(0))
    y = emb(jnp.array([[0, 0], [0, 1]]))
    assert y.shape == (2, 2, 3)
    close(y[0, 1], emb.embedding.value[0])
    close(y[1, 1], emb.embedding.value[0])
