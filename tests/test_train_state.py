"""Tests for nnxlike._train_state: TrainState with plain jax.jit/jax.grad.

The reference is the object API: the same model trained with ``nnx.Optimizer``,
``nnx.value_and_grad`` and ``nnx.jit``; both must give the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx
from nnxlike._train_state import TrainState


class Affine(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(0.5 * jax.random.normal(rngs.params(), (din, dout)))
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (dout,)))

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value[None, :]


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = Affine(3, 4, rngs=rngs)
        self.l2 = Affine(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


class NoisyNet(MLP):
    """An MLP with non-parameter state: a running input mean and an RNG stream."""

    def __init__(self, *, rngs: nnx.Rngs):
        super().__init__(rngs=rngs)
        self.mean = nnx.BatchStat(jnp.zeros((3,)))
        self.noise = nnx.Rngs(noise=1)

    def __call__(self, x):
        self.mean.value = 0.9 * self.mean.value + 0.1 * jnp.mean(x, axis=0)
        x = x + 0.01 * jax.random.normal(self.noise.noise(), x.shape)
        return super().__call__(x - self.mean.value[None, :])


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


KEY_X, KEY_Y = jax.random.split(jax.random.key(7))
XS = jax.random.normal(KEY_X, (5, 8, 3))
YS = jax.random.normal(KEY_Y, (5, 8, 2))


def train_with_optimizer(model, tx, steps=5):
    optimizer = nnx.Optimizer(model, tx)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(mse)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = [step(model, optimizer, XS[i], YS[i]) for i in range(steps)]
    return optimizer, losses


def assert_tree_allclose(actual, desired, rtol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=rtol)


def test_jax_jit_and_grad_match_optimizer_with_nnx_jit():
    tx = optax.adam(1e-2)
    model = MLP(rngs=nnx.Rngs(0))
    state = TrainState.create(nnx.clone(model), tx)
    traces = []

    @jax.jit
    def train_step(state, x, y):
        traces.append(None)

        def loss_fn(params):
            return mse(nnx.merge(state.graphdef, params, state.other), x, y)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads), loss

    losses = []
    for i in range(5):
        state, loss = train_step(state, XS[i], YS[i])
        losses.append(loss)
    assert len(traces) == 1  # the pytree's static part is stable across steps

    optimizer, expected_losses = train_with_optimizer(model, tx)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    assert_tree_allclose(
        state.params.to_pure_dict(), nnx.state(model, nnx.Param).to_pure_dict()
    )
    assert_tree_allclose(state.opt_state, optimizer.opt_state_tree())
    assert int(state.step) == int(optimizer.step.value) == 5
    assert isinstance(state.params.l1.kernel, nnx.VariableState)
    assert state.params.l1.kernel.type is nnx.Param


def test_non_param_state_is_threaded_through_apply():
    tx = optax.sgd(0.1, momentum=0.9)
    model = NoisyNet(rngs=nnx.Rngs(0))
    state = TrainState.create(nnx.clone(model), tx)
    assert state.non_params is state.other
    assert set(state.other.to_pure_dict()) == {"mean", "noise"}

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            out, other = state.apply(params, x)
            return jnp.mean((out - y) ** 2), other

        (loss, other), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, other=other), loss

    losses = []
    for i in range(5):
        state, loss = train_step(state, XS[i], YS[i])
        losses.append(loss)

    _, expected_losses = train_with_optimizer(model, tx)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    assert_tree_allclose(
        state.params.to_pure_dict(), nnx.state(model, nnx.Param).to_pure_dict()
    )
    np.testing.assert_allclose(state.other.mean.value, model.mean.value, rtol=1e-6)
    assert int(state.other.noise.noise.count.value) == 5
    assert int(model.noise.noise.count.value) == 5

    trained = state.model
    assert isinstance(trained, NoisyNet) and trained is not model
    np.testing.assert_array_equal(trained.l2.bias.value, state.params.l2.bias.value)


def test_pytree_replace_and_extra_optax_arguments():
    tx = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())
    state = TrainState.create(MLP(rngs=nnx.Rngs(0)), tx)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == 1 + 4 + len(jax.tree.leaves(state.opt_state))
    same = jax.tree.map(lambda x: x, state)
    assert isinstance(same, TrainState) and same.graphdef is state.graphdef
    assert same.tx is tx and same.apply_fn is state.apply_fn

    grads = jax.tree.map(jnp.zeros_like, state.params.to_pure_dict())  # a dict
    new = state.apply_gradients(grads, value=jnp.asarray(1.0))
    assert int(new.step) == 1 and int(state.step) == 0
    with pytest.raises(TypeError, match="value"):
        state.apply_gradients(grads)
    assert int(state.replace(step=jnp.asarray(9)).step) == 9


def test_errors():
    state = TrainState.create(MLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    grads = jax.tree.map(jnp.zeros_like, state.params)
    del grads["l2"]["bias"]
    with pytest.raises(
        nnx.StructureError, match=r"Missing gradients for: \['l2\.bias'\]"
    ):
        state.apply_gradients(grads)
    with pytest.raises(TypeError, match="grads must be a State"):
        state.apply_gradients([0.0])
    with pytest.raises(ValueError, match="nothing to train"):
        TrainState.create(MLP(rngs=nnx.Rngs(0)), optax.sgd(0.1), wrt=nnx.BatchStat)
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        TrainState.create(MLP(rngs=nnx.Rngs(0)), optax.sgd)


class StatsState(TrainState):
    """flax.nnx's pattern: a subclass that only annotates an extra State field."""

    batch_stats: nnx.State


def test_flax_form_create_subclass_field_and_apply_caller():
    model = NoisyNet(rngs=nnx.Rngs(0))
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    tx = optax.sgd(0.1)
    state = StatsState.create(graphdef, params=params, tx=tx, batch_stats=stats, step=3)
    assert int(state.step) == 3 and state.batch_stats is stats
    assert len(state.other.flat_state()) == 0  # not given: empty
    # The subclass is a pytree with its extra field as a child.
    n_opt = len(jax.tree.leaves(state.opt_state))
    assert len(jax.tree.leaves(state)) == 1 + 4 + n_opt + 1
    mapped = jax.tree.map(lambda x: x, state)
    assert isinstance(mapped, StatsState) and mapped.batch_stats.mean.shape == (3,)

    # apply('params', 'batch_stats', state) -> caller; the reference is the model.
    x = XS[0]
    out, (gd, new_state) = state.apply("params", "batch_stats", rest)(x)
    reference = nnx.clone(model)
    np.testing.assert_allclose(out, reference(x), rtol=1e-6)
    np.testing.assert_allclose(new_state["mean"].value, reference.mean.value, rtol=1e-6)
    assert gd == graphdef
    method_out, _ = state.apply(params, stats, rest).l1(x)
    np.testing.assert_allclose(method_out, model.l1(x), rtol=1e-6)

    # apply_gradients over flax-style State gradients: plain sgd by hand.
    grads = jax.tree.map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads)
    assert int(new.step) == 4 and isinstance(new, StatsState)
    np.testing.assert_allclose(
        new.params.l1.kernel.value, params.l1.kernel.value - 0.1, rtol=1e-6
    )
    with pytest.raises(TypeError, match="expected StatsState.step to be a State"):
        state.apply("step")
    with pytest.raises(TypeError, match="needs the State of"):
        TrainState.create(graphdef, tx=tx)
    with pytest.raises(TypeError, match="params= goes with a GraphDef"):
        TrainState.create(model, tx, params=params)
