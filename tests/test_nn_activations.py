"""Activation functions, PReLU and the initializer names flax.nnx code uses."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

TORCH = np.load(Path(__file__).parent / "fixtures" / "torch_layers.npz")

FLAX_ACTIVATIONS = [
    "celu", "elu", "gelu", "glu", "hard_sigmoid", "hard_silu", "hard_swish",
    "hard_tanh", "leaky_relu", "log_sigmoid", "log_softmax", "logsumexp", "one_hot",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_sign", "softmax", "softplus",
    "standardize", "swish", "tanh", "identity", "PReLU",
]  # fmt: skip

FLAX_INITIALIZERS = [
    "constant", "delta_orthogonal", "glorot_normal", "glorot_uniform", "he_normal",
    "he_uniform", "kaiming_normal", "kaiming_uniform", "lecun_normal",
    "lecun_uniform", "normal", "ones", "ones_init", "orthogonal", "truncated_normal",
    "uniform", "variance_scaling", "xavier_normal", "xavier_uniform", "zeros",
    "zeros_init", "Initializer",
]  # fmt: skip


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", FLAX_ACTIVATIONS)
def test_flax_activation_names_exist(name):
    assert callable(getattr(nnx, name))
    assert getattr(nnx.nn, name) is getattr(nnx, name)


def test_star_import_exports_only_activations():
    from nnxlike.nn import activations

    assert set(FLAX_ACTIVATIONS) <= set(activations.__all__)
    assert not {"Module", "Param", "jnp", "annotations"} & set(activations.__all__)


def test_activation_values_against_formulas():
    x = np.linspace(-3, 3, 7).astype(np.float32)
    close(nnx.relu(x), np.maximum(x, 0))
    close(nnx.relu6(x * 3), np.clip(x * 3, 0, 6))
    close(nnx.leaky_relu(x, 0.1), np.where(x >= 0, x, 0.1 * x))
    close(nnx.sigmoid(x), 1 / (1 + np.exp(-x)))
    close(nnx.silu(x), x / (1 + np.exp(-x)), tol=1e-5)
    close(nnx.softplus(x), np.log1p(np.exp(x)), tol=1e-5)
    close(nnx.tanh(x), np.tanh(x))
    close(nnx.softmax(x), np.exp(x) / np.exp(x).sum(), tol=1e-6)
    close(nnx.one_hot(jnp.array([0, 2]), 3), np.eye(3)[[0, 2]])


def test_prelu_formula_gradient_and_torch():
    act = nnx.PReLU()
    assert isinstance(act.negative_slope, nnx.Param)
    close(act.negative_slope.value, 0.01)
    x = jnp.array([-2.0, 0.0, 3.0])
    close(act(x), [-0.02, 0.0, 3.0])
    # d/d(slope) sum(prelu(x)) = sum of the negative inputs
    grads = nnx.grad(lambda m: m(x).sum())(act)
    close(jax.tree.leaves(grads)[0], -2.0)
    # torch.nn.PReLU(init=0.2) stores the slope as a (1,) weight.
    torch_act = nnx.PReLU(negative_slope_init=float(TORCH["prelu.weight"][0]))
    close(torch_act(jnp.asarray(TORCH["prelu.x"])), TORCH["prelu.y"])
    assert nnx.PReLU(param_dtype=jnp.bfloat16).negative_slope.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", FLAX_INITIALIZERS)
def test_flax_initializer_names_exist(name):
    assert hasattr(nnx.initializers, name)


def test_initializer_factories_and_defaults():
    key = jax.random.key(0)
    close(nnx.initializers.zeros_init()(key, (2, 3), jnp.float32), np.zeros((2, 3)))
    close(nnx.initializers.ones_init()(key, (2,), jnp.float32), np.ones(2))
    # Layers default to lecun_normal on the first draw of the params stream.
    first_key = jax.random.fold_in(jax.random.key(0), 0)
    want = nnx.initializers.lecun_normal()(first_key, (3, 4), jnp.float32)
    close(nnx.Linear(3, 4, rngs=nnx.Rngs(0)).kernel.value, want)
