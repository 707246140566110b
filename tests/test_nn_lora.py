"""LoRA, LoRALinear and the LoRAParam kind against the x @ a @ b formula."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_lora_shapes_kind_and_formula():
    lora = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
    assert isinstance(lora.lora_a, nnx.LoRAParam)
    assert isinstance(lora.lora_a, nnx.Param)  # trained by default too
    assert (lora.lora_a.shape, lora.lora_b.shape) == ((3, 2), (2, 4))
    close(lora.lora_b.value, np.zeros((2, 4)))  # a fresh adapter is a no-op
    a, b = rand(1, 3, 2), rand(2, 2, 4)
    lora.lora_a.value, lora.lora_b.value = jnp.asarray(a), jnp.asarray(b)
    x = rand(3, 5, 3)
    close(lora(jnp.asarray(x)), x @ a @ b)


def test_lora_wraps_base_module():
    base = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    lora = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(1))
    assert lora.base_module is base
    b = rand(2, 2, 4)
    lora.lora_b.value = jnp.asarray(b)
    x = rand(3, 5, 3)
    a = np.asarray(lora.lora_a.value)
    close(lora(jnp.asarray(x)), np.asarray(base(jnp.asarray(x))) + x @ a @ b)
    with pytest.raises(ValueError, match="base_module must be callable"):
        nnx.LoRA(3, 2, 4, base_module=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"LoRA.__call__: expected input with last"):
        lora(jnp.ones((2, 5)))


def test_lora_linear_matches_linear_plus_update():
    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    ll = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    assert isinstance(ll, nnx.Linear)
    close(ll.kernel.value, lin.kernel.value)  # same draws as a plain Linear
    x = jnp.asarray(rand(3, 5, 3))
    close(ll(x), lin(x))  # lora_b starts at zero
    b = rand(2, 2, 4)
    ll.lora.lora_b.value = jnp.asarray(b)
    want = np.asarray(lin(x)) + np.asarray(x) @ np.asarray(ll.lora.lora_a.value) @ b
    close(ll(x), want)
    params = nnx.state(ll, nnx.LoRAParam).to_pure_dict()
    assert params == {
        "lora": {"lora_a": params["lora"]["lora_a"], "lora_b": params["lora"]["lora_b"]}
    }


def test_training_only_lora_params_leaves_base_frozen():
    model = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    kernel0 = np.asarray(model.kernel.value)
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.LoRAParam)
    x = jnp.asarray(rand(3, 5, 3))

    def loss(m):
        return (m(x) ** 2).mean()

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    assert set(grads.to_pure_dict()) == {"lora"}
    opt.update(model, grads)
    close(model.kernel.value, kernel0)  # untouched
    assert np.abs(np.asarray(model.lora.lora_b.value)).sum() > 0
