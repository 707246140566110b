"""flax.nnx names: graphlib/statelib/traversals modules, GraphState, pmap,
checkify, make_jaxpr, StateSharding, PathContains(exact=), against plain JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify as jcheckify

import nnxlike as nnx


def test_graphlib_flatten_gives_the_models_own_variables_and_refmap():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    refs = nnx.graphlib.RefMap()
    graphdef, flat = nnx.graphlib.flatten([model, model], ref_index=refs)
    assert flat.paths == ((0, "kernel"), (0, "bias"))
    assert flat[0][1] is model.kernel and flat[1][1] is model.bias
    assert model in refs and model.kernel in refs and nnx.Param(1.0) not in refs
    _, leaves = nnx.graphlib.flatten(model, with_paths=False)
    assert leaves[0] is model.kernel
    same = nnx.graphlib.unflatten(*nnx.graphlib.flatten(model))
    assert same is not model and same.kernel is model.kernel  # flax: reused
    gd, flat = nnx.graphlib.flatten(model)
    copy = nnx.graphlib.unflatten(gd, flat, copy_variables=True)
    np.testing.assert_array_equal(copy.kernel[...], model.kernel[...])
    assert copy.kernel is not model.kernel
    assert nnx.graph.flatten is nnx.graphlib.flatten and nnx.graph.Key is not None


def test_unflatten_wrong_leaf_count_names_the_fix():
    graphdef, flat = nnx.graphlib.flatten(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="has 2 leaves, got 1"):
        nnx.graphlib.unflatten(graphdef, list(flat)[:1])


def test_graph_state_is_a_pytree_and_merges():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    gs = nnx.unpack(model)
    assert set(gs) == {"kernel", "bias"}
    doubled = jax.tree.map(lambda x: 2 * x, gs)
    new = nnx.graphlib.merge_graph_state(doubled)
    np.testing.assert_allclose(new.kernel[...], 2 * model.kernel[...])
    with pytest.raises(ValueError, match="GraphState"):
        nnx.graphlib.merge_graph_state(gs, nnx.state(model))


def test_traversals_round_trip_and_statelib():
    nested = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    flat = nnx.traversals.flatten_mapping(nested)
    assert flat == {("a", "b"): 1, ("a", "c", "d"): 2, ("e",): 3}
    assert nnx.traversals.unflatten_mapping(flat) == nested
    joined = nnx.traversals.flatten_mapping(nested, sep="/")
    assert nnx.traversals.unflatten_mapping(joined, sep="/") == nested
    s = nnx.statelib.from_flat_path(flat)
    assert s["a"]["c"]["d"] == 2
    assert nnx.statelib.diff(
        s, nnx.statelib.from_flat_path({("e",): 0})
    ).flat_state().paths == (("a", "b"), ("a", "c", "d"))
    with pytest.raises(TypeError, match="tuple of keys"):
        nnx.statelib.from_flat_path({"a": 1})


def test_path_contains_exact():
    assert nnx.PathContains("attn", exact=False)(("self_attn",), None)
    assert not nnx.PathContains("attn")(("self_attn",), None)
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert list(nnx.state(model, nnx.PathContains("ker", exact=False))) == ["kernel"]


def test_checkify_writes_back_and_reports():
    count = nnx.Variable(jnp.array(0))

    def step(c, x):
        jcheckify.check(jnp.all(x > 0), "x must be positive")
        c[...] += 1
        return x * 2

    err, y = nnx.checkify(step)(count, jnp.array([1.0, 2.0]))
    ref_err, ref_y = jcheckify.checkify(lambda x: step(nnx.Variable(0), x))(
        jnp.array([1.0, 2.0])
    )
    assert err.get() is None and ref_err.get() is None
    np.testing.assert_array_equal(y, ref_y)
    assert int(count[...]) == 1
    err, _ = nnx.checkify(step)(count, jnp.array([-1.0]))
    assert "x must be positive" in err.get()


def test_make_jaxpr_matches_plain_jax_on_the_arrays():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 2))
    jaxpr = nnx.make_jaxpr(lambda m, x: m(x))(model, x)
    ref = jax.make_jaxpr(lambda k, b, x: x @ k + b[None])(
        model.kernel[...], model.bias[...], x
    )
    assert [v.aval for v in jaxpr.jaxpr.invars] == [v.aval for v in ref.jaxpr.invars]
    out = jax.core.eval_jaxpr(
        jaxpr.jaxpr, jaxpr.consts, model.kernel[...], model.bias[...], x
    )
    want = x @ model.kernel[...] + model.bias[...][None]
    np.testing.assert_allclose(out[-1], want, rtol=1e-6)


def test_pmap_maps_variables_and_writes_back():
    n = jax.local_device_count()
    w = nnx.Param(jnp.arange(n * 3.0).reshape(n, 3))
    before = np.asarray(w[...])

    @nnx.pmap(axis_name="d")
    def step(w, x):
        w[...] = w[...] * x
        return jax.lax.psum(w[...].sum(), "d")

    x = jnp.full((n,), 2.0)
    out = step(w, x)
    np.testing.assert_allclose(w[...], before * 2)
    np.testing.assert_allclose(out, np.full((n,), (before * 2).sum()))


def test_state_sharding_in_jit():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("a",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sh = nnx.StateSharding({nnx.PathContains("kernel"): rep, ...: None})
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert sh.map_prefix(("bias",), model.bias) is None
    nnx.jit(lambda m: None, in_shardings=(sh,))(model)
    assert model.kernel[...].sharding == rep
    with pytest.raises(ValueError, match="no filter matches"):
        nnx.StateSharding({nnx.Param: rep}).map_prefix(("c",), nnx.BatchStat(1.0))


def test_as_pure_drops_variables_and_reads_refs():
    import jax.numpy as jnp
    import numpy as np

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    pure = nnx.as_pure(nnx.state(model))
    assert not any(isinstance(x, nnx.Variable) for x in jax.tree.leaves(pure))
    np.testing.assert_array_equal(pure["kernel"], np.asarray(model.kernel[...]))
    r = nnx.Param(jnp.arange(3.0), ref=True)
    out = nnx.as_pure({"r": r, "n": 1})
    assert isinstance(out["r"], jax.Array) and out["n"] == 1
    np.testing.assert_array_equal(out["r"], np.arange(3.0))
