"""nnx.split/nnx.state return the object's own (live) Variables, as flax.nnx 0.12.

merge reuses a State's Variables (copy=True makes new ones), clone is a deep copy,
and nnx.update from a State of the model's own Variables warns (it restores
nothing). References: plain optax on nested dicts of arrays, hand-written jnp.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


def _mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def _data():
    x = jax.random.normal(jax.random.key(1), (8, 3))
    y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3
    return x, y


def test_state_split_pop_and_map_hand_out_the_live_variables():
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(m)
    assert state["kernel"] is m.kernel and state["bias"] is m.bias
    _, params, rest = nnx.split(m, nnx.Param, ...)
    assert params["kernel"] is m.kernel and len(rest) == 0
    _, tree_params = nnx.split(m, graph=False)
    assert tree_params["bias"] is m.bias
    seen = []
    nnx.map(lambda p, v: seen.append(v) or v, m)
    assert any(v is m.kernel for v in seen)

    class M(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "h", x)
            return x

    mod = M()
    mod(jnp.ones(2))
    own = mod.h
    assert nnx.pop(mod, nnx.Intermediate)["h"] is own


def test_live_state_follows_an_optimizer_step_and_a_clone_does_not():
    x, y = _data()
    m = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    live = nnx.state(m, nnx.Param)
    kept = nnx.clone(live)
    before = np.asarray(m.kernel[...])
    bias = m.bias[...]
    opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: _mse(m(x), y))(m)
    opt.update(m, grads)
    # reference: one plain sgd step on the kernel, by hand
    g = jax.grad(lambda k: _mse(x @ k + bias[None, :], y))(jnp.asarray(before))
    np.testing.assert_allclose(live["kernel"][...], before - 0.1 * g, rtol=1e-6)
    assert live["kernel"] is m.kernel
    np.testing.assert_array_equal(kept["kernel"][...], before)
    assert kept["kernel"] is not m.kernel


def test_merge_reuses_variables_and_copy_true_makes_new_ones():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    same = nnx.merge(graphdef, state)
    assert same is not m and same.kernel is m.kernel
    same.kernel[...] = jnp.zeros((2, 3))  # a write through one is seen by both
    np.testing.assert_array_equal(m.kernel[...], jnp.zeros((2, 3)))
    copied = nnx.merge(graphdef, state, copy=True)
    assert copied.kernel is not m.kernel and type(copied.kernel) is nnx.Param
    copied.kernel[...] = jnp.ones((2, 3))
    np.testing.assert_array_equal(m.kernel[...], jnp.zeros((2, 3)))
    # raw array leaves: new Variables, or raw with recreate_variables=False
    pure = nnx.State({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)})
    rebuilt = nnx.merge(graphdef, pure)
    assert type(rebuilt.kernel) is nnx.Param
    raw = nnx.merge(graphdef, pure, recreate_variables=False)
    assert isinstance(raw.kernel, jax.Array)


def test_clone_is_independent():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    c = nnx.clone(m)
    assert c.kernel is not m.kernel
    c.kernel[...] = c.kernel[...] + 1.0
    np.testing.assert_allclose(c.kernel[...], m.kernel[...] + 1.0)


def test_flax_functional_pattern_matches_plain_optax():
    x, y = _data()
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    tx = optax.adam(0.05)
    ref = {"kernel": model.kernel[...], "bias": model.bias[...]}
    ref_opt = tx.init(ref)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # once

    def loss_fn(params, rest):
        return _mse(nnx.merge(graphdef, params, rest)(x), y)

    def ref_loss(p):
        return _mse(x @ p["kernel"] + p["bias"][None, :], y)

    losses = []
    for _ in range(5):
        losses.append(float(loss_fn(params, rest)))
        grads = jax.grad(loss_fn)(params, rest)
        optimizer.update(model, grads)
        g = jax.grad(ref_loss)(ref)
        updates, ref_opt = tx.update(g, ref_opt, ref)
        ref = optax.apply_updates(ref, updates)
    # params followed the model: the loss went down and the values are optax's
    assert losses[-1] < losses[0] and losses == sorted(losses, reverse=True)
    np.testing.assert_allclose(params["kernel"][...], ref["kernel"], rtol=1e-6)
    np.testing.assert_allclose(params["bias"][...], ref["bias"], rtol=1e-6)


def test_merge_inside_jit_from_state_arguments_keeps_rng_writes():
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    graphdef, state = nnx.split(model)
    x = jnp.ones(64)

    @nnx.jit
    def f(state, x):
        return nnx.merge(graphdef, state)(x)

    a, b = f(state, x), f(state, x)
    assert not np.array_equal(a, b)  # the RNG count advanced: new masks
    assert int(model.rngs.count[...]) == 2
    # reference: Dropout forks its stream at construction (one draw of
    # Rngs(dropout=0): fold_in(key(0), 0)); call n draws fold_in(that, n)
    key = jax.random.fold_in(jax.random.key(0), 0)
    for count, out in enumerate((a, b)):
        keep = jax.random.bernoulli(jax.random.fold_in(key, count), 0.5, (64,))
        np.testing.assert_array_equal(out, jnp.where(keep, 2.0, 0.0))


def test_merge_inside_vmap_from_state_arguments_keeps_rng_writes():
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    graphdef, state = nnx.split(model)
    xs = jnp.ones((2, 32))

    @nnx.vmap(in_axes=(None, 0))
    def f(state, x):
        return nnx.merge(graphdef, state)(x)

    a, b = f(state, xs), f(state, xs)
    assert not np.array_equal(a, b)
    assert int(model.rngs.count[...]) == 2


def test_update_from_a_live_state_warns_and_from_a_clone_restores():
    x, y = _data()
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    best_live = nnx.state(model, nnx.Param)
    best_copy = nnx.clone(nnx.state(model, nnx.Param))
    start = np.asarray(model.kernel[...])
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: _mse(m(x), y))(model))
    with pytest.warns(nnx.StaleStateWarning, match=r"nnx\.clone\(nnx\.state"):
        nnx.update(model, best_live)
    assert not np.allclose(model.kernel[...], start)  # nothing restored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnx.update(model, best_copy)
    np.testing.assert_array_equal(model.kernel[...], start)
