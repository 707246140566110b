"""Tests for ``nnxlike.transforms.general``: split_inputs / merge_inputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import nnxlike as nnx
from nnxlike.transforms import general


class Counted(nnx.Module):
    def __init__(self):
        self.lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        self.count = nnx.BatchStat(jnp.array(0, jnp.uint32))

    def __call__(self, x):
        self.count[...] += 1
        return self.lin(x)


def test_split_merge_over_jax_jit_matches_the_formula_and_writes_back():
    model = Counted()

    @general.split_inputs
    @jax.jit
    @general.merge_inputs
    def forward(m, x):
        return m(x)

    x = jnp.ones((2, 3))
    y = forward(model, x)
    want = x @ model.lin.kernel.value + model.lin.bias.value[None]
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert int(model.count[...]) == 1
    forward(model, x)
    assert int(model.count[...]) == 2


def test_split_inputs_over_cond_runs_one_branch():
    c = nnx.Dict(n=nnx.Variable(jnp.array(0)))

    def inc(c):
        c["n"][...] += 1

    run = general.split_inputs(jax.lax.cond)
    run(True, general.merge_inputs(inc), general.merge_inputs(lambda c: None), c)
    run(False, general.merge_inputs(inc), general.merge_inputs(lambda c: None), c)
    assert int(c["n"][...]) == 1


def test_split_inputs_over_vmap_maps_the_object_axis():
    v = nnx.Variable(jnp.arange(4.0))

    @general.split_inputs
    @functools.partial(jax.vmap, in_axes=(0,), out_axes=((0,), 0))
    @general.merge_inputs
    def double(v):
        v[...] = v[...] * 2.0
        return v[...] + 1.0

    out = double(v)
    np.testing.assert_allclose(v[...], 2.0 * jnp.arange(4.0))
    np.testing.assert_allclose(out, 2.0 * jnp.arange(4.0) + 1.0)
