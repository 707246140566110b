"""flax.nnx's module-level helpers: each equals the method or transform it names."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = [nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)]
        self.bn = nnx.BatchNorm(1, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.layers[1](self.layers[0](x)))


def _equal(a, b):
    fa, fb = dict(a.flat_state()), dict(b.flat_state())
    assert set(fa) == set(fb)
    for path, x in fa.items():
        assert type(x) is type(fb[path]), path
        np.testing.assert_array_equal(x.value, fb[path].value)


def test_state_functions_match_state_methods():
    s = nnx.state(Net(nnx.Rngs(0)))
    assert nnx.to_flat_state(s) == s.flat_state()
    _equal(nnx.from_flat_state(s.flat_state()), s)
    _equal(nnx.from_flat_state(dict(s.flat_state())), s)
    _equal(nnx.filter_state(s, nnx.BatchStat), s.filter(nnx.BatchStat))
    params, rest = nnx.split_state(s, nnx.Param, ...)
    _equal(params, s.filter(nnx.Param))
    _equal(nnx.merge_state(params, rest), s)
    pure = nnx.to_pure_dict(s)
    assert pure["layers"][0]["kernel"].shape == (2, 3)
    shapes = nnx.map_state(lambda path, v: v.shape, s).to_pure_dict()
    assert shapes["layers"][1]["kernel"] == (3, 1) and shapes["bn"]["mean"] == (1,)


def test_pure_dict_round_trip_through_string_keys():
    model = Net(nnx.Rngs(0))
    s = nnx.state(model)
    pure = nnx.to_pure_dict(s)
    # what a checkpointer that stringifies keys gives back
    stringified = {
        "layers": {str(k): v for k, v in pure["layers"].items()},
        **{k: v for k, v in pure.items() if k != "layers"},
    }
    restored = nnx.restore_int_paths(stringified)
    assert set(restored["layers"]) == {0, 1}
    doubled = {
        "layers": {
            i: {k: 2 * v for k, v in d.items()} for i, d in restored["layers"].items()
        },
        "bn": restored["bn"],
    }
    nnx.replace_by_pure_dict(s, doubled)
    nnx.update(model, s)
    np.testing.assert_array_equal(
        model.layers[0].kernel.value, 2 * pure["layers"][0]["kernel"]
    )


def test_state_functions_refuse_a_model():
    with pytest.raises(
        TypeError, match=r"nnx.to_pure_dict: expected a State.*nnx.state"
    ):
        nnx.to_pure_dict(Net(nnx.Rngs(0)))


def test_cached_partial_follows_the_model():
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def step(model, optimizer, x):
        traces.append(None)
        loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    cached = nnx.cached_partial(step, model, optimizer)
    x = jnp.arange(8.0).reshape(4, 2) / 8
    before = model.layers[0].kernel.value
    cached(x)
    cached(x)
    assert len(traces) == 1 and int(optimizer.step.value) == 2
    assert not np.array_equal(model.layers[0].kernel.value, before)
    model.eval()  # a structural (static) change between calls is honoured
    cached(x)
    assert len(traces) == 2


def test_jit_partial_binds_first_arguments_and_keeps_argnums():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    scaled = nnx.jit_partial(lambda m, k, x: k * m(x), model, static_argnums=1)
    out = scaled(3, jnp.ones((1, 2)))
    np.testing.assert_allclose(out, 3 * model(jnp.ones((1, 2))), rtol=1e-6)


def test_metrics_at_top_level():
    assert nnx.MultiMetric is nnx.metrics.MultiMetric
    assert nnx.Metric is nnx.metrics.Metric and nnx.EMA is nnx.metrics.EMA


def test_with_metadata_and_set_metadata():
    init = nnx.with_metadata(nnx.initializers.ones, note="tied")
    layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    assert layer.kernel.note == "tied"
    np.testing.assert_array_equal(layer.kernel.value, np.ones((2, 3)))
    assert not hasattr(layer.bias, "note")

    model = Net(nnx.Rngs(0))
    seen = []

    @nnx.jit
    def tags(model):
        seen.append(getattr(model.bn.mean, "tag", None))
        return model.layers[0].kernel.value.sum()

    tags(model)
    nnx.set_metadata(model, nnx.BatchStat, tag="stats")
    tags(model)  # metadata is structure: the next call sees it
    assert seen == [None, "stats"]
    assert model.bn.var.tag == "stats" and not hasattr(model.bn.scale, "tag")
    nnx.set_metadata(model, "kernel", nnx.BatchStat, group=1)
    assert model.layers[1].kernel.group == 1 and model.bn.mean.group == 1
    assert not hasattr(model.layers[1].bias, "group")
