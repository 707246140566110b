"""End to end: a small CNN learns scikit-learn's 8x8 digits to >= 95% test accuracy.

Exercises Conv, BatchNorm (``train()``/``eval()``), max/avg pooling, Linear,
``nnx.jit``, ``nnx.value_and_grad``, ``nnx.Optimizer`` with Adam and
``nnx.metrics`` together. ``load_digits`` reads a file bundled with scikit-learn
(no download). The split, the initialisation and the batch order are all seeded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import nnxlike as nnx

SEED = 0
BATCH_SIZE = 128
EPOCHS = 40
TEST_FRACTION = 0.2
BAR = 0.95


class DigitsCNN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.out = nnx.Linear(2 * 2 * 32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))  # (n, 8, 8, 16)
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))  # (n, 4, 4, 16)
        x = nnx.relu(self.conv2(x))  # (n, 4, 4, 32)
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))  # (n, 2, 2, 32)
        return self.out(x.reshape(x.shape[0], -1))


def _split(seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    train, test = perm[:-n_test], perm[-n_test:]
    return x[train], y[train], x[test], y[test]


def _loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _eval_step(model, metrics, x, y):
    logits = model(x)
    metrics.update(logits=logits, labels=y)
    return logits


def train_and_evaluate(seed: int = SEED) -> dict:
    """Train from ``seed``; return the test accuracy (two ways) and the losses."""
    x_train, y_train, x_test, y_test = _split(seed)
    model = DigitsCNN(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    data_rng = np.random.default_rng(seed)
    steps_per_epoch = len(x_train) // BATCH_SIZE  # drop the remainder: one shape

    model.train()
    losses = []
    for _ in range(EPOCHS):
        perm = data_rng.permutation(len(x_train))
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            losses.append(_train_step(model, optimizer, x_train[idx], y_train[idx]))

    model.eval()
    metrics = nnx.metrics.Accuracy()
    logits = _eval_step(model, metrics, x_test, y_test)
    return {
        "metric_acc": float(metrics.compute()),
        "numpy_acc": float(np.mean(np.argmax(np.asarray(logits), -1) == y_test)),
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
        "steps": int(optimizer.step.value),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "bn_mean": np.asarray(model.bn1.mean.value),
    }


def test_digits_cnn_reaches_95_percent():
    r = train_and_evaluate(SEED)
    summary = (
        f"test accuracy {r['metric_acc']:.4f} (nnx.metrics) / {r['numpy_acc']:.4f} "
        f"(numpy) on {r['n_test']} images after {r['steps']} steps; loss "
        f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"
    )
    assert r["steps"] == EPOCHS * (r["n_train"] // BATCH_SIZE), summary
    assert abs(r["metric_acc"] - r["numpy_acc"]) < 1e-6, summary
    assert r["metric_acc"] >= BAR, summary
    assert r["last_loss"] < 0.2 * r["first_loss"], summary
    # BatchNorm ran in training mode: its running mean moved away from zero.
    assert np.abs(r["bn_mean"]).max() > 1e-3, summary


def test_digits_eval_mode_is_deterministic_and_batch_independent():
    # In eval() BatchNorm uses running statistics: one image's logits do not
    # depend on the rest of the batch.
    x_train, _, _, _ = _split(SEED)
    model = DigitsCNN(rngs=nnx.Rngs(SEED))
    model.train()
    model(jnp.asarray(x_train[:256]))  # update the running statistics once
    model.eval()
    alone = model(jnp.asarray(x_train[:1]))
    batched = model(jnp.asarray(x_train[:64]))[:1]
    np.testing.assert_allclose(alone, batched, rtol=1e-5, atol=1e-5)
