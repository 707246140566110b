"""Modules as pytrees through JAX's export and resharding APIs (issue 9, point 1).

orbax-export's ``JaxModule(params, apply_fn)`` flattens ``params`` as a pytree and
exports ``apply_fn`` with ``jax.export``; its module imports TensorFlow, which is not
a test dependency, so these tests drive the same two steps directly: a Module (or
its State) as the exported function's parameters, and ``jax.reshard`` of a Module.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import nnxlike as nnx


def _reference(m, x):
    return np.asarray(x) @ np.asarray(m.kernel.value) + np.asarray(m.bias.value)


def test_jax_export_takes_a_module_as_parameters():
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.arange(12.0).reshape(4, 3)
    exported = jax.export.export(jax.jit(lambda mod, x: mod(x)))(m, x)
    # kernel, bias and x are the inputs: the weights are not baked in.
    assert [a.shape for a in exported.in_avals] == [(2,), (3, 2), (4, 3)]
    np.testing.assert_allclose(exported.call(m, x), _reference(m, x), rtol=1e-6)
    # Another model of the same structure (trained, restored) runs through the
    # same exported function with its own weights.
    other = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(exported.call(other, x), _reference(other, x), rtol=1e-6)


def test_jax_export_orbax_style_params_and_apply_fn():
    # JaxModule's form: a params pytree and apply_fn(params, x).
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(m)

    def apply_fn(params, x):
        return nnx.merge(graphdef, params)(x)

    x = jnp.ones((2, 3))
    exported = jax.export.export(jax.jit(apply_fn))(params, x)
    assert len(jax.tree.leaves(params)) == 2
    np.testing.assert_allclose(exported.call(params, x), _reference(m, x), rtol=1e-6)


def test_jax_reshard_returns_a_module_with_resharded_arrays():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with jax.set_mesh(mesh):
        r = jax.reshard(m, P())
    assert type(r) is nnx.Linear and r is not m
    for v in (r.kernel.value, r.bias.value):
        assert isinstance(v.sharding, NamedSharding)
        assert v.sharding.mesh.axis_names == ("data",)
    np.testing.assert_array_equal(r.kernel.value, m.kernel.value)
    np.testing.assert_array_equal(r.bias.value, m.bias.value)
