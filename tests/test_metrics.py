"""Tests for nnxlike.metrics: metrics against numpy, EMA against a hand-written EMA."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx
from nnxlike import metrics

RNG = np.random.default_rng(0)


def test_average_matches_numpy_and_resets():
    avg = metrics.Average()
    batches = [RNG.normal(size=s).astype(np.float32) for s in [(4,), (2, 3), (5,)]]
    for b in batches:
        avg.update(values=jnp.asarray(b))
    expected = np.concatenate([b.ravel() for b in batches]).mean()
    np.testing.assert_allclose(avg.compute(), expected, rtol=1e-6)
    assert int(avg.count.value) == 15
    assert (avg.total.value.dtype, avg.count.value.dtype) == (jnp.float32, jnp.int32)

    avg.reset()
    assert int(avg.count.value) == 0 and float(avg.total.value) == 0.0
    assert np.isnan(avg.compute())
    avg.update(values=3.0)  # a Python number counts once
    avg.update(values=jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(avg.compute(), 2.0)


def test_average_argname_and_missing_argument():
    avg = metrics.Average(argname="loss")
    avg.update(loss=jnp.array([2.0, 4.0]), logits=None, labels=None)
    assert float(avg.compute()) == 3.0
    with pytest.raises(
        TypeError, match=r"expected keyword argument 'loss'.*\['values'\]"
    ):
        avg.update(values=1.0)


def test_accuracy_integer_labels_matches_numpy():
    acc = metrics.Accuracy()
    correct, total = 0, 0
    for _ in range(3):
        logits = RNG.normal(size=(6, 4)).astype(np.float32)
        labels = RNG.integers(0, 4, size=(6,)).astype(np.int32)
        acc.update(logits=jnp.asarray(logits), labels=jnp.asarray(labels))
        correct += (logits.argmax(-1) == labels).sum()
        total += labels.size
    np.testing.assert_allclose(acc.compute(), correct / total, rtol=1e-6)
    acc.reset()
    assert int(acc.count.value) == 0


@pytest.mark.parametrize("logit_shape", [(8,), (8, 1)])
def test_accuracy_binary_logits(logit_shape):
    logits = RNG.normal(size=logit_shape).astype(np.float32)
    labels = RNG.integers(0, 2, size=(8,)).astype(np.int32)
    acc = metrics.Accuracy()
    acc.update(logits=jnp.asarray(logits), labels=jnp.asarray(labels))
    expected = ((logits.reshape(8) >= 0.0) == labels.astype(bool)).mean()
    np.testing.assert_allclose(acc.compute(), expected, rtol=1e-6)


def test_accuracy_binary_threshold_is_inclusive_and_labels_positive_above_zero():
    acc = metrics.Accuracy(threshold=0.5)
    probs = jnp.array([[0.9], [0.5], [0.6], [0.2]])
    acc.update(logits=probs, labels=jnp.array([[1], [1], [0], [0]]))
    assert float(acc.compute()) == 0.75  # 0.5 >= 0.5 counts as positive
    acc.update(logits=jnp.array([0.7, 0.1]), labels=jnp.array([True, False]))
    np.testing.assert_allclose(acc.compute(), 5 / 6, rtol=1e-6)
    acc.reset()
    acc.update(logits=jnp.array([0.7, 0.7]), labels=jnp.array([2, -1]))
    assert float(acc.compute()) == 0.5  # label 2 is positive, -1 is not


def test_accuracy_errors_name_the_shapes():
    acc = metrics.Accuracy()
    with pytest.raises(
        ValueError,
        match=r"For multi-class classification, expected logits.ndim==labels.ndim\+1,"
        r" got 2 and 1 \(logits of shape \(4, 3\), labels of shape \(5,\)\)",
    ):
        acc.update(logits=jnp.zeros((4, 3)), labels=jnp.zeros((5,), jnp.int32))
    with pytest.raises(
        ValueError, match="Expected labels.dtype==jnp.int32, got float32"
    ):
        acc.update(logits=jnp.zeros((4, 3)), labels=jnp.zeros((4,)))
    with pytest.raises(ValueError, match="For binary classification.*got 1 and 2"):
        metrics.Accuracy(threshold=0.5).update(
            logits=jnp.zeros(4), labels=jnp.zeros((2, 2), jnp.int32)
        )
    with pytest.raises(TypeError, match="threshold to be a float, got <class 'int'>"):
        metrics.Accuracy(threshold=1)


def test_masks_match_numpy_for_average_and_accuracy():
    values = RNG.normal(size=(5, 3)).astype(np.float32)
    mask = RNG.uniform(size=(5, 3)) > 0.4
    avg = metrics.Average()
    avg.update(values=jnp.asarray(values), mask=jnp.asarray(mask))
    np.testing.assert_allclose(avg.compute(), values[mask].mean(), rtol=1e-6)
    assert int(avg.count.value) == mask.sum()
    # a mask that broadcasts counts every element it keeps, not its own size
    row_mask = np.array([True, False, True])
    avg.reset()
    avg.update(values=jnp.asarray(values), mask=jnp.asarray(row_mask))
    np.testing.assert_allclose(avg.compute(), values[:, row_mask].mean(), rtol=1e-6)
    assert int(avg.count.value) == 10
    with pytest.raises(ValueError, match="values should be a jax array"):
        avg.update(values=2.0, mask=jnp.ones(1))
    with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not broadcast"):
        avg.update(values=jnp.asarray(values), mask=jnp.ones(4))

    logits = RNG.normal(size=(6, 4)).astype(np.float32)
    labels = RNG.integers(0, 4, size=(6,)).astype(np.int32)
    keep = np.array([1, 0, 1, 1, 0, 1], np.float32)
    acc = metrics.Accuracy()
    acc.update(logits=jnp.asarray(logits), labels=jnp.asarray(labels), mask=keep)
    hits = logits.argmax(-1) == labels
    np.testing.assert_allclose(acc.compute(), hits[keep > 0].mean(), rtol=1e-6)


def test_welford_matches_numpy():
    w = metrics.Welford()
    batches = [
        (100.0 + RNG.normal(size=s)).astype(np.float32) for s in [(7,), (3, 2), (1,)]
    ]
    for b in batches:
        w.update(values=jnp.asarray(b))
    x = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    stats = w.compute()
    assert isinstance(stats, metrics.Statistics)
    np.testing.assert_allclose(stats.mean, x.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats.standard_deviation, x.std(), rtol=1e-4)
    np.testing.assert_allclose(
        stats.standard_error_of_mean, x.std() / np.sqrt(x.size), rtol=1e-4
    )
    np.testing.assert_allclose(stats.standard_deviation**2, np.var(x), rtol=1e-4)
    w.reset()
    w.update(values=2.0)
    assert float(w.compute().mean) == 2.0 and float(w.compute().standard_deviation) == 0


def test_multimetric_inside_jit_updates_the_argument():
    mm = metrics.MultiMetric(
        accuracy=metrics.Accuracy(),
        loss=metrics.Average(argname="loss"),
        spread=metrics.Welford(argname="loss"),
    )
    traces = []

    @nnx.jit
    def eval_step(mm, logits, labels, loss):
        traces.append(None)
        mm.update(logits=logits, labels=labels, loss=loss, unused=labels)

    all_logits, all_labels, all_losses = [], [], []
    for _ in range(3):
        logits = RNG.normal(size=(5, 3)).astype(np.float32)
        labels = RNG.integers(0, 3, size=(5,)).astype(np.int32)
        loss = RNG.uniform(size=(5,)).astype(np.float32)
        eval_step(mm, logits, labels, loss)
        all_logits.append(logits)
        all_labels.append(labels)
        all_losses.append(loss)
    assert len(traces) == 1
    logits, labels = np.concatenate(all_logits), np.concatenate(all_labels)
    losses = np.concatenate(all_losses)
    result = mm.compute()
    assert list(result) == ["accuracy", "loss", "spread"]
    np.testing.assert_allclose(
        result["accuracy"], (logits.argmax(-1) == labels).mean(), rtol=1e-6
    )
    np.testing.assert_allclose(result["loss"], losses.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        result["spread"].standard_deviation, losses.std(), rtol=1e-4
    )
    assert int(mm.accuracy.count.value) == 15
    mm.reset()
    assert int(mm.loss.count.value) == 0 and int(mm.spread.count.value) == 0


def test_multimetric_masks_per_metric_and_custom_metric_without_mask():
    class CustomAccuracy(metrics.Accuracy):
        def update(self, y_preds, y_true, values):  # no mask, no **kwargs
            super().update(logits=y_preds, labels=y_true)

    logits = RNG.normal(size=(5, 2)).astype(np.float32)
    labels = np.array([1, 1, 0, 1, 0], np.int32)
    loss = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    mm = metrics.MultiMetric(accuracy=CustomAccuracy(), loss=metrics.Average())
    mm.update(y_preds=logits, y_true=labels, values=loss, mask={"loss": loss > 1})
    out = mm.compute()
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == labels).mean())
    np.testing.assert_allclose(out["loss"], loss[loss > 1].mean())
    with pytest.raises(ValueError, match=r"mask has entries for \['lost'\]"):
        mm.update(y_preds=logits, y_true=labels, values=loss, mask={"lost": loss > 1})

    shared = metrics.MultiMetric(a=metrics.Average(), b=metrics.Average())
    shared.update(values=loss, mask=loss < 4)  # one array: every metric gets it
    assert {k: float(v) for k, v in shared.compute().items()} == {"a": 2.0, "b": 2.0}


def test_metric_split_merge_keeps_totals():
    acc = metrics.Accuracy()
    acc.update(logits=jnp.array([[0.0, 1.0], [1.0, 0.0]]), labels=jnp.array([1, 1]))
    graphdef, state = acc.split()
    assert graphdef == nnx.split(acc)[0]
    copy = nnx.merge(graphdef, state, copy=True)
    assert float(copy.compute()) == 0.5
    copy.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]))
    np.testing.assert_allclose(copy.compute(), 2 / 3, rtol=1e-6)
    assert float(acc.compute()) == 0.5  # copy=True: new Variables
    live = nnx.merge(graphdef, state)  # flax's default: the same Variables
    live.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]))
    np.testing.assert_allclose(acc.compute(), 2 / 3, rtol=1e-6)
    _, totals, rest = metrics.Welford().split(metrics.MetricState, ...)
    assert sorted(totals.flat_dict()) == [("count",), ("m2",), ("mean",)]
    assert not rest.flat_dict()


def test_multimetric_rejects_bad_names_and_values():
    with pytest.raises(ValueError, match="'update' is taken"):
        metrics.MultiMetric(update=metrics.Average())
    with pytest.raises(TypeError, match="loss= must be a Metric"):
        metrics.MultiMetric(loss=3.0)


class Affine(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.ones((2, 3)), sharding_names=("in", "out"))
        self.bias = nnx.Param(jnp.zeros((3,)))
        self.stat = nnx.BatchStat(jnp.zeros((3,)))
        self.steps = nnx.Variable(jnp.zeros((), jnp.int32))


def test_ema_matches_hand_computed_average():
    model = Affine()
    ema = nnx.EMA(model, decay=0.9, only=nnx.Param)
    assert type(ema.params.kernel) is nnx.Param
    assert ema.params.kernel is not model.kernel
    assert ema.params.kernel.sharding_names == ("in", "out")
    assert "stat" not in ema.params
    shadow = {
        k: np.asarray(v) for k, v in nnx.state(model, nnx.Param).to_pure_dict().items()
    }
    for _ in range(4):
        new = {
            k: RNG.normal(size=v.shape).astype(np.float32) for k, v in shadow.items()
        }
        model.kernel.value = jnp.asarray(new["kernel"])
        model.bias.value = jnp.asarray(new["bias"])
        ema.update(model)
        shadow = {
            k: np.float32(0.9) * shadow[k] + np.float32(0.1) * new[k] for k in shadow
        }
    for k in shadow:
        np.testing.assert_allclose(ema.params[k].value, shadow[k], rtol=1e-6, atol=1e-7)

    ema.copy_to(model)
    np.testing.assert_array_equal(model.bias.value, ema.params["bias"].value)
    assert isinstance(model.bias, nnx.Param)


def test_ema_default_tracks_floating_variables_and_apply_to_follows_updates():
    model = Affine()
    ema = nnx.EMA(model, decay=0.5)
    # every floating Variable (BatchStat too), never the integer counter
    assert sorted(nnx.state(ema.params).to_pure_dict()) == ["bias", "kernel", "stat"]
    ema_model = ema.apply_to(model)
    assert type(ema_model) is Affine and ema_model is not model
    assert ema_model.kernel is ema.params.kernel and ema_model.stat is ema.params.stat
    assert ema_model.steps is not model.steps  # untracked: a copy of the model's
    model.bias.value = jnp.full((3,), 4.0)
    model.stat.value = jnp.full((3,), 2.0)
    ema.update(model)
    np.testing.assert_allclose(ema_model.bias.value, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(ema_model.stat.value, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(model.bias.value, [4.0, 4.0, 4.0])
    # updates may be given as a State of the same paths
    ema.update(nnx.state(model))
    np.testing.assert_allclose(ema_model.bias.value, [3.0, 3.0, 3.0])
    with pytest.raises(TypeError, match=r"'steps' is a Variable of dtype int32"):
        nnx.EMA(model, decay=0.5, only=nnx.Variable)


def test_ema_update_inside_jit_and_errors():
    model = Affine()
    ema = nnx.EMA(model, decay=0.5, only=nnx.Param)

    @nnx.jit
    def step(model, ema):
        model.bias.value = model.bias.value + 1.0
        ema.update(model)

    step(model, ema)
    step(model, ema)
    np.testing.assert_allclose(ema.params["bias"].value, [1.25, 1.25, 1.25])

    class Other(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jnp.ones((2, 3)))

    with pytest.raises(nnx.StructureError, match=r"Missing in the model: \['bias'\]"):
        ema.update(Other())
    with pytest.raises(ValueError, match="decay must be in"):
        nnx.EMA(model, decay=1.5)
    with pytest.raises(ValueError, match="no Variable"):
        nnx.EMA(model, 0.9, only=nnx.Cache)
