"""Tests for nnxlike._optimizer: Optimizer against a plain optax loop.

The reference holds the same initial parameters as a plain dict of arrays and runs
the same optax transformation on ``jax.grad`` of a hand-written jnp loss. To keep
the suite fast (compilation dominates), the nnxlike step and the reference step
run side by side in one ``nnx.jit``-compiled function, each on its own inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


class Affine(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, **kernel_metadata):
        self.kernel = nnx.Param(
            0.5 * jax.random.normal(rngs.params(), (din, dout)), **kernel_metadata
        )
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (dout,)))

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value[None, :]


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = Affine(3, 4, rngs=rngs)
        self.l2 = Affine(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def model_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def ref_loss(p, x, y):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
    out = h @ p["l2"]["kernel"] + p["l2"]["bias"][None, :]
    return jnp.mean((out - y) ** 2)


KEY_X, KEY_Y = jax.random.split(jax.random.key(42))
XS = jax.random.normal(KEY_X, (5, 8, 3))
YS = jax.random.normal(KEY_Y, (5, 8, 2))


def run_both(
    tx,
    *,
    model=None,
    wrt=nnx.Param,
    loss_ref=ref_loss,
    ref_params=None,
    steps=5,
    pass_value=False,
):
    """``steps`` steps of Optimizer and of the plain optax reference.

    Returns (model, optimizer, reference params, reference optax state, traces).
    """
    model = MLP(rngs=nnx.Rngs(0)) if model is None else model
    if ref_params is None:
        ref_params = nnx.state(model, wrt).to_pure_dict()
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    traces = []

    @nnx.jit
    def step(model, optimizer, ref_params, ref_state, x, y):
        traces.append(None)
        # nnxlike: gradients of the wrt Variables, optimizer updates in place.
        loss, grads = nnx.value_and_grad(model_loss, wrt=wrt)(model, x, y)
        optimizer.update(model, grads, **({"value": loss} if pass_value else {}))
        # Reference: plain optax over a dict of arrays.
        loss, g = jax.value_and_grad(loss_ref)(ref_params, x, y)
        extra = {"value": loss} if pass_value else {}
        updates, ref_state = tx.update(g, ref_state, ref_params, **extra)
        return optax.apply_updates(ref_params, updates), ref_state

    ref_state = tx.init(ref_params)
    for i in range(steps):
        ref_params, ref_state = step(
            model, optimizer, ref_params, ref_state, XS[i], YS[i]
        )
    return model, optimizer, ref_params, ref_state, traces


def _dictify(tree):
    """optax state over States (as Optimizer keeps it) -> over plain dicts."""
    return jax.tree.map(
        lambda x: x.to_pure_dict() if isinstance(x, nnx.State) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nnx.State),
    )


def assert_tree_allclose(actual, desired, rtol=1e-6):
    actual, desired = _dictify(actual), _dictify(desired)
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=rtol)


def _no_bias(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key != "bias", params
    )


TRANSFORMS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw_masked": lambda: optax.adamw(1e-2, weight_decay=0.5, mask=_no_bias),
    "linear_schedule": lambda: optax.sgd(optax.linear_schedule(0.2, 0.01, 5)),
    "cosine_schedule": lambda: optax.adam(optax.cosine_decay_schedule(3e-2, 5)),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    "clip_then_adam": lambda: optax.chain(
        optax.clip_by_global_norm(0.05), optax.adam(1e-2)
    ),
    "multi_transform": lambda: optax.multi_transform(
        {"fast": optax.adam(3e-2), "slow": optax.sgd(1e-3, momentum=0.5)},
        {
            "l1": {"kernel": "fast", "bias": "slow"},
            "l2": {"kernel": "slow", "bias": "fast"},
        },
    ),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_matches_plain_optax_loop_inside_jit(name):
    model = MLP(rngs=nnx.Rngs(0))
    initial = nnx.state(model, nnx.Param).to_pure_dict()
    model, optimizer, expected, expected_state, traces = run_both(
        TRANSFORMS[name](), model=model
    )
    got = nnx.state(model, nnx.Param).to_pure_dict()
    assert_tree_allclose(got, expected)
    assert_tree_allclose(optimizer.opt_state_tree(), expected_state)
    assert not np.allclose(got["l1"]["kernel"], initial["l1"]["kernel"])
    # One trace for five calls: the write-back keeps shapes and dtypes.
    assert len(traces) == 1
    assert optimizer.step.value.dtype == jnp.uint32
    assert int(optimizer.step.value) == 5
    # dict labels (multi_transform) get dict parameters; the rest get States
    assert optimizer.state_as_dict == (name == "multi_transform")


def test_reduce_on_plateau_receives_value():
    # rtol=0.5 asks the loss to halve each step, so the scale has to drop.
    tx = optax.chain(
        optax.sgd(0.1),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=1, rtol=0.5),
    )
    model, optimizer, expected, expected_state, _ = run_both(tx, pass_value=True)
    assert_tree_allclose(nnx.state(model, nnx.Param).to_pure_dict(), expected)
    scale = optimizer.opt_state_tree()[1].scale
    assert float(scale) < 1.0
    np.testing.assert_allclose(scale, expected_state[1].scale)


def test_reduce_on_plateau_without_value_fails():
    tx = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())
    model = MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    with pytest.raises(TypeError, match="value"):
        optimizer.update(model, grads)


class Adapter(nnx.Variable):
    """A custom Variable kind, trained on its own."""


class Adapted(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.inner = Affine(3, 2, rngs=rngs)
        self.scale = Adapter(jnp.ones((2,)))

    def __call__(self, x):
        return self.inner(x) * self.scale.value[None, :]


def test_wrt_custom_variable_kind():
    model = Adapted(rngs=nnx.Rngs(0))
    frozen = nnx.state(model, nnx.Param).to_pure_dict()

    def loss_ref(p, x, y):
        k, b = frozen["inner"]["kernel"], frozen["inner"]["bias"]
        out = (x @ k + b[None, :]) * p["scale"][None, :]
        return jnp.mean((out - y) ** 2)

    tx = optax.sgd(0.1, momentum=0.9)
    model, optimizer, expected, _, _ = run_both(
        tx, model=model, wrt=Adapter, loss_ref=loss_ref, steps=3
    )
    assert list(optimizer.opt_state_tree()[0].trace) == ["scale"]
    np.testing.assert_allclose(model.scale.value, expected["scale"], rtol=1e-6)
    assert not np.allclose(model.scale.value, 1.0)
    assert_tree_allclose(nnx.state(model, nnx.Param).to_pure_dict(), frozen, rtol=0)


def test_wrt_path_filter():
    model = MLP(rngs=nnx.Rngs(0))
    initial = nnx.state(model, nnx.Param).to_pure_dict()

    def loss_ref(kernels, x, y):
        p = {
            k: {"kernel": kernels[k]["kernel"], "bias": v["bias"]}
            for k, v in initial.items()
        }
        return ref_loss(p, x, y)

    wrt = nnx.PathContains("kernel")
    model, _, expected, _, _ = run_both(
        optax.adam(1e-2), model=model, wrt=wrt, loss_ref=loss_ref, steps=3
    )
    got = nnx.state(model, nnx.Param).to_pure_dict()
    for k in ("l1", "l2"):
        np.testing.assert_allclose(got[k]["kernel"], expected[k]["kernel"], rtol=1e-6)
        np.testing.assert_array_equal(got[k]["bias"], initial[k]["bias"])


def test_grads_not_matching_wrt_name_the_path():
    model = MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    kernel_grads = zeros.filter(nnx.PathContains("kernel"))
    with pytest.raises(nnx.StructureError, match=r"Missing gradients for: .*l1\.bias"):
        optimizer.update(model, kernel_grads)
    zeros["l1"]["bias"] = nnx.Param(jnp.zeros((7,)))
    with pytest.raises(nnx.StructureError, match=r"'l1\.bias' has shape \(7,\)"):
        optimizer.update(model, zeros)
    with pytest.raises(TypeError, match="grads must be a State"):
        optimizer.update(model, [1.0])
    assert int(optimizer.step.value) == 0


def test_opt_state_inherits_parameter_metadata():
    model = Affine(3, 2, rngs=nnx.Rngs(0), sharding_names=("a", "b"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    # Through nnx.jit: the metadata must survive the write-back.
    nnx.jit(lambda m, o: o.update(m, nnx.grad(model_loss)(m, XS[0], YS[0])))(
        model, optimizer
    )
    adam = optimizer.opt_state[0]
    for moment in (adam.mu, adam.nu):
        assert isinstance(moment, nnx.State)
        assert type(moment["kernel"]) is nnx.OptVariable
        assert moment["kernel"].sharding_names == ("a", "b")
        assert "sharding_names" not in moment["bias"].get_metadata()
    assert (
        type(adam.count) is nnx.OptArray
        and adam.count.get_metadata(exclude_required=True) == {}
    )
    assert int(adam.count.value) == 1
    assert not np.allclose(adam.mu["kernel"].value, 0.0)
    # the same tree is what nnx.state sees
    state = nnx.state(optimizer)
    np.testing.assert_array_equal(
        state["opt_state"][0]["mu"]["kernel"].value, adam.mu["kernel"].value
    )


class Sub(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2,)))


class SameNames(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2,)), sharding_names=("x",))
        self.sub = Sub()
        self.count = nnx.Param(jnp.ones(()), sharding_names=())


def test_metadata_goes_to_the_mirrored_parameter_only():
    adam = nnx.Optimizer(SameNames(), optax.adam(1e-2)).opt_state[0]
    assert adam.mu["w"].get_metadata(exclude_required=True) == {
        "sharding_names": ("x",)
    }
    assert adam.nu["w"].get_metadata(exclude_required=True) == {
        "sharding_names": ("x",)
    }
    assert (
        adam.mu["sub"]["w"].get_metadata(exclude_required=True) == {}
    )  # not the top-level w's
    assert adam.mu["count"].get_metadata(exclude_required=True) == {
        "sharding_names": ()
    }
    assert (
        adam.count.get_metadata(exclude_required=True) == {}
    )  # Adam's step count is not Param count


def test_flax_layout_of_opt_state_for_a_list_of_layers():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    )
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    kernel = optimizer.opt_state[0].mu.layers[0]["kernel"]
    assert type(kernel) is nnx.OptVariable and kernel.shape == (3, 4)
    assert optimizer.opt_state[0].nu.layers[1]["bias"].shape == (2,)
    assert type(optimizer.step) is nnx.OptState


def test_partition_with_labels_from_map_state_matches_plain_optax():
    model = MLP(rngs=nnx.Rngs(0))
    labels = nnx.map_state(
        lambda path, _: "fast" if path[-1] == "kernel" else "slow",
        nnx.state(model, nnx.Param),
    )
    make = lambda lab: optax.partition(  # noqa: E731
        {"fast": optax.adam(3e-2), "slow": optax.sgd(1e-2)}, lab
    )
    ref_labels = {k: {"kernel": "fast", "bias": "slow"} for k in ("l1", "l2")}
    ref_tx = make(ref_labels)
    ref = nnx.state(model, nnx.Param).to_pure_dict()
    ref_state = ref_tx.init(ref)
    optimizer = nnx.Optimizer(model, make(labels), wrt=nnx.Param)
    assert not optimizer.state_as_dict
    for i in range(3):
        grads = nnx.grad(model_loss)(model, XS[i], YS[i])
        updates = optimizer.update(model, grads)
        g = jax.grad(ref_loss)(ref, XS[i], YS[i])
        ref_updates, ref_state = ref_tx.update(g, ref_state, ref)
        ref = optax.apply_updates(ref, ref_updates)
        assert_tree_allclose(updates, ref_updates)
    assert_tree_allclose(nnx.state(model, nnx.Param).to_pure_dict(), ref)


def test_lbfgs_with_value_fn_matches_plain_optax():
    model = MLP(rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(model)
    x, y = XS[0], YS[0]
    optimizer = nnx.ModelAndOptimizer(model, optax.lbfgs())
    ref_tx = optax.lbfgs()
    ref = nnx.state(model, nnx.Param).to_pure_dict()
    ref_state = ref_tx.init(ref)
    ref_value_fn = lambda p: ref_loss(p, x, y)  # noqa: E731
    seen = []

    def value_fn(params):  # what optax sees: a State of the parameters
        seen.append(type(params))
        return model_loss(nnx.merge(graphdef, params), x, y)

    for _ in range(3):
        loss, grads = nnx.value_and_grad(model_loss)(optimizer.model, x, y)
        optimizer.update(grads, grad=grads, value=loss, value_fn=value_fn)
        value, g = jax.value_and_grad(ref_value_fn)(ref)
        ref_updates, ref_state = ref_tx.update(
            g, ref_state, ref, value=value, grad=g, value_fn=ref_value_fn
        )
        ref = optax.apply_updates(ref, ref_updates)
    assert seen and all(t is nnx.State for t in seen)
    assert_tree_allclose(nnx.state(model, nnx.Param).to_pure_dict(), ref, rtol=1e-5)
    assert model_loss(model, x, y) < 0.5 * ref_value_fn(
        nnx.state(MLP(rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
    )


def test_model_and_optimizer_and_the_flax_0_10_call():
    model = MLP(rngs=nnx.Rngs(0))
    both = nnx.ModelAndOptimizer(model, optax.sgd(0.1))
    assert both.model is model
    ref = nnx.state(model, nnx.Param).to_pure_dict()
    grads = nnx.grad(model_loss)(both.model, XS[0], YS[0])
    updates = both.update(grads)
    g = jax.grad(ref_loss)(ref, XS[0], YS[0])
    expected = jax.tree.map(lambda p, d: p - 0.1 * d, ref, g)
    assert_tree_allclose(nnx.state(model, nnx.Param).to_pure_dict(), expected)
    assert_tree_allclose(updates, jax.tree.map(lambda d: -0.1 * d, g))

    plain = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(TypeError, match=r"write `optimizer.update\(model, grads\)`"):
        plain.update(grads)
    with pytest.raises(AttributeError, match="nnx.ModelAndOptimizer"):
        plain.model  # noqa: B018
    assert int(plain.step.value) == 0


def test_wrt_matching_nothing_names_the_filter_and_what_exists():
    with pytest.raises(
        ValueError,
        match=r"wrt=BatchStat.*kinds \['Param'\].*'l1\.kernel \(Param\)'",
    ):
        nnx.Optimizer(MLP(rngs=nnx.Rngs(0)), optax.sgd(0.1), wrt=nnx.BatchStat)


def test_tx_must_be_a_gradient_transformation():
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        nnx.Optimizer(MLP(rngs=nnx.Rngs(0)), optax.adam, wrt=nnx.Param)


def test_equal_tx_configurations_share_one_compiled_step():
    traces = []

    @nnx.jit
    def step(model, optimizer, x, y):
        traces.append(None)
        loss, grads = nnx.value_and_grad(model_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    x, y = jnp.ones((5, 3)), jnp.zeros((5, 2))

    def run(make_tx):
        model = MLP(rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
        step(model, optimizer, x, y)
        return optimizer

    def schedule_chain(steps):
        return lambda: optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(optax.cosine_decay_schedule(1e-3, steps), mask=_no_bias),
        )

    first = run(lambda: optax.adam(1e-3))
    run(lambda: optax.adam(1e-3))  # a new, equal transformation: no new trace
    assert len(traces) == 1
    run(lambda: optax.adam(2e-3))  # another learning rate: another program
    run(lambda: optax.sgd(1e-3))
    assert len(traces) == 3
    run(schedule_chain(10))
    run(schedule_chain(10))
    run(schedule_chain(20))
    assert len(traces) == 5
    # optimizer.tx is still an optax transformation for optax's own utilities
    assert isinstance(first.tx, optax.GradientTransformationExtraArgs)
    params = {"w": jnp.ones(2)}
    updates, _ = first.tx.update(params, first.tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3 * np.ones(2), rtol=1e-5)


def test_tx_with_unhashable_captures_falls_back_to_identity():
    lr = jnp.asarray(1e-3)  # an array captured in the closure
    a, b = optax.sgd(lr), optax.sgd(lr)
    model = MLP(rngs=nnx.Rngs(0))
    oa = nnx.Optimizer(model, a, wrt=nnx.Param)
    ob = nnx.Optimizer(model, b, wrt=nnx.Param)
    assert oa.tx == oa.tx
    assert nnx.graphdef(oa) != nnx.graphdef(ob)  # no structural claim on arrays


class RawArrays(nnx.Pytree):
    """A Pytree holding plain arrays as attributes, no Variables (flax.nnx 0.12)."""

    def __init__(self):
        self.w = jnp.asarray(np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2))
        self.count = jnp.array(0.0)


def test_optimizes_raw_array_attributes_and_tree_mode_grads():
    tx = optax.adam(1e-2)
    model = RawArrays()
    wrt = lambda path, x: path[-1] == "w"  # noqa: E731
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    w0 = model.w
    x, y = XS[0], YS[0]

    def loss(model, x, y):
        return jnp.mean((x @ model.w - y) ** 2)

    # Tree-mode gradients: jax.grad of a Pytree returns a RawArrays of grads.
    grads = jax.grad(loss)(model, x, y)
    assert isinstance(grads, RawArrays)
    optimizer.update(model, grads)

    g = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w0)
    updates, _ = tx.update({"w": g}, tx.init({"w": w0}), {"w": w0})
    np.testing.assert_allclose(model.w, w0 + updates["w"], rtol=1e-6)
    assert int(model.count) == 0  # not selected by wrt
    assert int(optimizer.step[...]) == 1
    np.testing.assert_allclose(optimizer.opt_state[0].mu["w"][...], 0.1 * g, rtol=1e-6)


def test_tree_mode_grads_of_a_module_match_nnx_grad():
    model = MLP(rngs=nnx.Rngs(0))
    twin = nnx.clone(model)
    opt, twin_opt = (
        nnx.Optimizer(model, optax.sgd(0.1)),
        nnx.Optimizer(twin, optax.sgd(0.1)),
    )
    opt.update(model, jax.grad(model_loss)(model, XS[0], YS[0]))  # an MLP of grads
    twin_opt.update(twin, nnx.grad(model_loss)(twin, XS[0], YS[0]))  # a State
    assert_tree_allclose(
        nnx.state(model).to_pure_dict(), nnx.state(twin).to_pure_dict()
    )
    with pytest.raises(TypeError, match="model-shaped object"):
        opt.update(model, [1.0])
