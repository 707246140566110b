"""Tests for ``nnx.pmap`` (vmap's axis machinery over devices) against ``jax.pmap``.

The test machine has one CPU device, so every map has one lane; the references
are plain ``jax.pmap`` calls on pure functions of the same arrays.
"""

from __future__ import annotations

from pathlib import Path

import background
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

N = jax.local_device_count()


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.count[...] += 1
        return self.linear(x)


def test_state_axes_map_some_variables_and_broadcast_the_rest():
    m = Block(nnx.Rngs(0))
    kernel = jnp.stack([m.linear.kernel[...] * (i + 1) for i in range(N)])
    m.linear.kernel = nnx.Param(kernel)  # per device; bias and count broadcast
    axes = nnx.StateAxes({nnx.PathContains("kernel"): 0, ...: None})
    x = jnp.ones((N, 2, 3))

    y = nnx.pmap(in_axes=(axes, 0), out_axes=0)(lambda m, x: m(x))(m, x)

    want = jax.pmap(lambda k, b, x: x @ k + b[None], in_axes=(0, None, 0))(
        kernel, m.linear.bias[...], x
    )
    np.testing.assert_allclose(y, want, rtol=1e-6)
    # The broadcast counter was written back (one update, same on every device).
    assert int(m.count[...]) == 1
    assert m.linear.kernel.shape == (N, 3, 4)


def test_out_axes_state_axes_stack_new_variables_per_device():
    axes = nnx.StateAxes({nnx.Param: 0, ...: None})

    @nnx.pmap(in_axes=(0,), out_axes=axes)
    def make(scale):
        return nnx.Dict(w=nnx.Param(jnp.ones(3) * scale), c=nnx.BatchStat(1.0))

    d = make(jnp.arange(1.0, N + 1))
    want = jax.pmap(lambda s: jnp.ones(3) * s)(jnp.arange(1.0, N + 1))
    np.testing.assert_array_equal(d["w"][...], want)
    assert d["w"].shape == (N, 3)
    assert d["c"].shape == ()  # out axis None: not stacked


@pytest.mark.parametrize("graph", [True, False])
def test_prefix_axes_without_graph_updates_write_values_back(graph):
    m = Block(nnx.Rngs(0))
    axes = nnx.prefix(m, {nnx.BatchStat: None, ...: None}, graph=graph)
    x = jnp.ones((N, 2, 3))

    f = nnx.pmap(in_axes=(axes, 0), graph=graph, graph_updates=False)
    y = f(lambda m, x: m(x))(m, x)

    want = jax.pmap(lambda x: x @ m.linear.kernel[...] + m.linear.bias[...][None])(x)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert int(m.count[...]) == 1


def test_static_broadcasted_argnums_pass_python_values():
    w = nnx.Param(jnp.arange(N * 2.0).reshape(N, 2))

    @nnx.pmap(static_broadcasted_argnums=1)
    def scale(w, k):
        w[...] = w[...] * k
        return w[...].sum()

    out = scale(w, 3)
    want = jax.pmap(lambda a: (a * 3).sum())(jnp.arange(N * 2.0).reshape(N, 2))
    np.testing.assert_allclose(out, want)
    np.testing.assert_allclose(w[...], np.arange(N * 2.0).reshape(N, 2) * 3)


def test_aliasing_errors_follow_flax():
    v = nnx.Param(jnp.zeros((N, 2)))
    with pytest.raises(ValueError, match=r"Duplicate Param[\s\S]*args\[0\]"):
        nnx.pmap(lambda a, b: a[...], graph=False)(v, v)
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected"):
        nnx.pmap(lambda a, b: a[...], in_axes=(0, None))(v, v)
    with pytest.raises(ValueError, match="Variables prefixes are not supported"):
        nnx.pmap(lambda a: a, in_axes=(nnx.Variable(0),))


@background.job("pmap_facts")
def _run_worker(tmp_path_factory) -> dict:
    """The 8-device worker's facts (a background job: tests/background.py)."""
    from multidevice import run_worker

    worker = Path(__file__).resolve().parent / "pmap_worker.py"
    return run_worker(worker, ["pmap"], "PMAP")["pmap"]


@pytest.fixture(scope="module")
def pmap_facts(tmp_path_factory) -> dict:
    return background.result("pmap_facts", tmp_path_factory)


def test_ensemble_on_eight_devices_matches_jax_pmap(pmap_facts):
    from multidevice import DEVICES

    facts = pmap_facts
    assert facts["kernel_shape"] == [DEVICES, 3, 4]
    assert facts["distinct_kernels"] == DEVICES  # split streams: one init each
    assert facts["max_abs_diff"] < 1e-5
    assert facts["y_devices"] == DEVICES
    # The broadcast Variable got the psum of every device's output, once.
    np.testing.assert_allclose(facts["total"], facts["want_total"], rtol=1e-5)


def test_repeated_calls_reuse_the_compiled_program():
    traces = []
    w = nnx.Param(jnp.ones((N, 2)))

    @nnx.pmap
    def step(w):
        traces.append(1)
        w[...] = w[...] + 1.0
        return w[...].sum()

    step(w)
    step(w)  # w now holds the first call's per-device output: JAX may retrace
    seen = len(traces)
    for _ in range(3):
        step(w)
    np.testing.assert_allclose(w[...], np.full((N, 2), 6.0))
    assert len(traces) == seen  # cached: no probe, no new trace
    step(nnx.Param(jnp.ones((N, 3))))  # a new shape: probed and traced again
    assert len(traces) == seen + 2


def test_compat_pmap_forces_graph_updates():
    m = Block(nnx.Rngs(0))
    axes = nnx.StateAxes({nnx.BatchStat: None, ...: None})  # refused in tree mode
    with pytest.raises(ValueError, match="cannot contain `StateAxes` objects"):
        nnx.pmap(lambda m, x: m(x), in_axes=(axes, 0), graph=False)
    with nnx.set_graph_mode(False):
        f = nnx.compat.pmap(lambda m, x: m(x), in_axes=(axes, 0))
    x = jnp.ones((N, 2, 3))
    want = jax.pmap(lambda x: x @ m.linear.kernel[...] + m.linear.bias[...][None])(x)
    np.testing.assert_allclose(f(m, x), want, rtol=1e-6)
    assert int(m.count[...]) == 1
