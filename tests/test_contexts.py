"""Tests for nnxlike._contexts and nnxlike._extract: shared splits, custom lifts.

The custom lifted transforms here are built from ``update_context`` over plain
``jax.jit``/``jax.vmap`` and must give what ``nnx.jit``/``nnx.vmap`` give (and a
hand-written jnp formula), with the caller's objects updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


class Counter(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(3.0))
        self.count = nnx.BatchStat(jnp.array(0))


def lifted_jit(fn, tag="lifted_jit"):
    """A lifted jit written with the four steps of update_context."""

    @nnx.update_context(tag)
    def wrapper(*args):
        with nnx.split_context(tag) as ctx:
            graphdef, state = ctx.split(args)

        @jax.jit
        def pure(graphdef, state):
            with nnx.merge_context(tag, inner=True) as ctx:
                inner_args = ctx.merge(graphdef, state)
            out = fn(*inner_args)
            with nnx.split_context(tag) as ctx:
                return ctx.split((inner_args, out))

        graphdef, state = pure(graphdef, state)
        with nnx.merge_context(tag, inner=False) as ctx:
            _, out = ctx.merge(graphdef, state)
        return out

    return wrapper


def lifted_vmap(fn, tag="lifted_vmap"):
    """vmap over the Params of ``model`` (axis 0) and the rest (axis 1), x unmapped."""

    @nnx.update_context(tag)
    def wrapper(model, x):
        with nnx.split_context(tag) as ctx:
            graphdef, params, rest = ctx.split(model, nnx.Param, ...)

        def pure(params, rest, x):
            with nnx.merge_context(tag, inner=True) as ctx:
                m = ctx.merge(graphdef, params, rest)
            y = fn(m, x)
            with nnx.split_context(tag) as ctx:
                return (*ctx.split(m, nnx.Param, ...), y)

        out = jax.vmap(pure, in_axes=(0, 1, None), out_axes=(None, 0, 1, 0))(
            params, rest, x
        )
        graphdef_out, params_out, rest_out, y = out
        with nnx.merge_context(tag, inner=False) as ctx:
            ctx.merge(graphdef_out, params_out, rest_out)
        return y

    return wrapper


def step(m, x):
    m.count[...] += 1
    return (m.w[...] * x).sum()


# -- split_context / merge_context -------------------------------------------------


def test_second_split_of_a_node_is_a_reference_and_merges_to_the_same_object():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        g1, s1 = ctx.split(m)
        g2, s2 = ctx.split(m)
    assert [type(n).__name__ for n in g2.nodes] == ["NodeRef"]
    assert sorted(s1) == ["bias", "kernel"] and len(nnx.to_flat_state(s2)) == 0
    assert not hasattr(ctx, "ref_index")  # dropped on exit: nothing kept alive
    with nnx.merge_context() as ctx:
        a = ctx.merge(g1, s1)
        b = ctx.merge(g2, s2)
    assert a is b and a is not m
    np.testing.assert_array_equal(a.kernel[...], m.kernel[...])
    # Without a shared context each split stands alone.
    assert nnx.merge(*nnx.split(m)) is not nnx.merge(*nnx.split(m))


def test_sharing_across_splits_of_a_parent_and_its_child():
    child = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    parent = nnx.Sequential(child, child)
    with nnx.split_context() as ctx:
        g_child, s_child = ctx.split(child)  # first: the child's Variables
        g_parent, s_parent = ctx.split(parent, nnx.Param)  # then only references
    assert len(nnx.to_flat_state(s_child)) == 2
    assert len(nnx.to_flat_state(s_parent)) == 0
    with nnx.merge_context() as ctx:
        c = ctx.merge(g_child, s_child)
        p = ctx.merge(g_parent, s_parent)
    assert p.layers[0] is c and p.layers[1] is c


def test_flatten_gives_flat_states_and_leaf_lists():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        g, flat = ctx.flatten(m)
        g2, leaves = ctx.flatten(nnx.Linear(1, 1, rngs=nnx.Rngs(1)), with_paths=False)
    assert flat.paths == (("kernel",), ("bias",))
    assert flat[0][1] is m.kernel  # the live Variable, as split gives (and flax)
    assert len(jax.tree.leaves(flat)) == 2  # a pytree over its leaves
    assert [type(x).__name__ for x in leaves] == ["ArrayImpl", "ArrayImpl"]  # raw
    with nnx.merge_context() as ctx:
        m2 = ctx.unflatten(g, flat)
        lin = ctx.unflatten(g2, leaves)
    np.testing.assert_array_equal(m2.bias[...], m.bias[...])
    assert lin.kernel.shape == (1, 1)
    with pytest.raises(ValueError, match="filters need paths"):
        with nnx.split_context() as ctx:
            ctx.flatten(m, nnx.Param, with_paths=False)


# -- update_context: custom lifted transforms ---------------------------------------


def test_lifted_jit_equals_nnx_jit_and_updates_in_place_on_cached_calls():
    x = jnp.array([1.0, 2.0, 3.0])
    ours, theirs = Counter(), Counter()
    f = lifted_jit(step)
    g = nnx.jit(step)
    for n in (1, 2, 3):  # the second and third calls hit jax.jit's cache
        y1, y2 = f(ours, x), g(theirs, x)
        np.testing.assert_allclose(y1, (jnp.arange(3.0) * x).sum())
        np.testing.assert_allclose(y1, y2)
        assert int(ours.count[...]) == int(theirs.count[...]) == n
    other = Counter()  # same structure, other object: its own counter moves
    f(other, x)
    assert int(other.count[...]) == 1 and int(ours.count[...]) == 3


def test_nested_lifted_transforms_with_one_tag_use_the_innermost_context():
    inner = lifted_jit(step)

    def outer_fn(m, x):
        y = inner(m, x)  # a second update_context("lifted_jit") inside the trace
        m.count[...] += 10
        return y

    m = Counter()
    for n in (1, 2):
        np.testing.assert_allclose(lifted_jit(outer_fn)(m, jnp.ones(3)), 3.0)
        assert int(m.count[...]) == 11 * n


def test_lifted_vmap_equals_nnx_vmap_and_a_jnp_formula():
    class Ensemble(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(24.0).reshape(4, 2, 3) / 10)
            self.b = nnx.Param(jnp.arange(12.0).reshape(4, 3))
            self.calls = nnx.BatchStat(jnp.zeros((2, 4)))  # lanes on axis 1

    def forward(m, x):
        y = x @ m.w[...] + m.b[...][None, :]
        m.calls[...] = m.calls[...] + y.mean()  # per lane: shape (2,)
        return y

    x = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)
    ours, theirs = Ensemble(), Ensemble()
    y1 = lifted_vmap(forward)(ours, x)
    axes = nnx.StateAxes({nnx.Param: 0, ...: 1})
    y2 = nnx.vmap(forward, in_axes=(axes, None))(theirs, x)
    w, b = Ensemble().w[...], Ensemble().b[...]
    want = jnp.einsum("ni,kio->kno", x, w) + b[:, None, :]
    np.testing.assert_allclose(y1, want, rtol=1e-6)
    np.testing.assert_allclose(y1, y2, rtol=1e-6)
    # The statistic came back on its own axis, as nnx.vmap's.
    np.testing.assert_allclose(ours.calls[...][0], want.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ours.calls[...], theirs.calls[...], rtol=1e-6)


def four_steps(m, inside):
    """Run ``inside(m2)`` between the inner merge and split; return the outer merge."""
    with nnx.update_context("t"):
        with nnx.split_context("t") as ctx:
            graphdef, state = ctx.split(m)
        with nnx.merge_context("t", inner=True) as ctx:
            m2 = ctx.merge(graphdef, state)
        assert m2 is not m
        inside(m2)
        with nnx.split_context("t") as ctx:
            graphdef, state = ctx.split(m2)
        with nnx.merge_context("t", inner=False) as ctx:
            return ctx.merge(graphdef, state)


def test_structural_changes_inside_reach_the_original_objects():
    class Bar(nnx.Module):
        def __init__(self, v):
            self.p = nnx.Param(jnp.array(v))

    class Foo(nnx.Module):
        def __init__(self):
            self.a = Bar(1.0)
            self.b = self.a
            self.c = nnx.Param(jnp.array(5.0))

    m = Foo()
    a, c = m.a, m.c

    def inside(m2):
        m2.new = Bar(7.0)  # a new submodule
        m2.alias = m2.a  # a new shared reference
        m2.a.static = "x"  # a new static attribute on a shared child
        m2.a.p, m2.c = m2.c, m2.a.p  # swap two Variables

    assert four_steps(m, inside) is m
    assert m.a is a and m.b is a and m.alias is a and a.static == "x"
    assert float(m.new.p[...]) == 7.0
    # The swap moved the original Variables, not copies of them.
    assert m.a.p is c and m.c is not c and float(m.c[...]) == 1.0
    assert float(m.a.p[...]) == 5.0


def test_ref_variables_from_outside_return_no_update():
    m1 = nnx.with_vars(nnx.Linear(1, 1, rngs=nnx.Rngs(0)), ref=True)
    kernel_ref = m1.kernel.get_raw_value()
    with nnx.update_context("refs"):
        with nnx.split_context("refs") as ctx:
            graphdef, state = ctx.split(m1)
        with nnx.merge_context("refs", inner=True) as ctx:
            m2 = ctx.merge(graphdef, state)
        m2.kernel[...] = jnp.full((1, 1), 3.0)  # written through the shared ref
        new = nnx.with_vars(nnx.Linear(1, 1, rngs=nnx.Rngs(1)), ref=True)
        with nnx.split_context("refs") as ctx:
            graphdef, state = ctx.split((m2, new))
        assert isinstance(state[0]["kernel"].get_raw_value(), nnx.graphlib.NoUpdate)
        assert isinstance(
            state[1]["kernel"].get_raw_value(), nnx.graphlib.ArrayRefOutput
        )
        assert len(jax.tree.leaves(state)) == 2  # NoUpdate has no leaves
        with nnx.merge_context("refs", inner=False) as ctx:
            out, new_out = ctx.merge(graphdef, state)
    assert out is m1 and m1.kernel.get_raw_value() is kernel_ref
    np.testing.assert_array_equal(m1.kernel[...], [[3.0]])
    assert new_out is not new and nnx.variablelib.is_array_ref(
        new_out.kernel.get_raw_value()
    )
    np.testing.assert_array_equal(new_out.kernel[...], new.kernel[...])


def test_tagged_contexts_need_an_update_context_and_inner():
    with pytest.raises(ValueError, match=r"No update context found for tag 'nope'"):
        with nnx.split_context("nope"):
            pass
    with pytest.raises(ValueError, match="inner_merge must be specified"):
        nnx.merge_context("nope")
    with nnx.update_context("a") as outer:
        with nnx.update_context("a") as inner:
            assert nnx.current_update_context("a") is inner
        assert nnx.current_update_context("a") is outer
    with pytest.raises(ValueError, match="update_context"):
        nnx.current_update_context("a")


def test_outer_merge_in_another_update_context_is_refused():
    m = Counter()
    with nnx.update_context("t"):
        with nnx.split_context("t") as ctx:
            graphdef, state = ctx.split(m)
        with nnx.merge_context("t", inner=True) as ctx:
            m2 = ctx.merge(graphdef, state)
        with nnx.split_context("t") as ctx:
            graphdef, state = ctx.split(m2)
    with nnx.update_context("t"):  # a new context: it never saw `m`
        with pytest.raises(nnx.StructureError, match="did no outer split"):
            with nnx.merge_context("t", inner=False) as ctx:
                ctx.merge(graphdef, state)


# -- to_tree / from_tree ------------------------------------------------------------


def test_to_tree_round_trip_keeps_sharing_and_plain_leaves():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    pure = nnx.to_tree((m, 1, {"b": m}))
    assert isinstance(pure[0], nnx.NodeStates) and pure[1] == 1
    assert len(nnx.to_flat_state(pure[2]["b"].state)) == 0  # a reference
    # A pure tree: jax maps over the arrays only (the GraphDefs are static).
    doubled = jax.tree.map(lambda x: 2 * x, pure)
    a, one, d = nnx.from_tree(doubled)
    assert a is d["b"] and one == 2
    np.testing.assert_array_equal(a.kernel[...], 2 * m.kernel[...])


def test_to_tree_through_update_context_updates_the_inputs():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.array(1))
            self.b = nnx.Param(jnp.array(2))

    m = Foo()
    a, b = m.a, m.b
    with nnx.update_context("tt"):
        pure = nnx.to_tree((m, {"again": m}), ctxtag="tt")

        @jax.jit
        def f(pure):
            m2, d = nnx.from_tree(pure, ctxtag="tt", is_inner=True)
            assert m2 is d["again"]
            m2.a, m2.b = m2.b, m2.a
            m2.b[...] = m2.b[...] * 10
            return nnx.to_tree((m2, d), ctxtag="tt")

        out, d = nnx.from_tree(f(pure), ctxtag="tt", is_inner=False)
    assert out is m and d["again"] is m
    assert m.a is b and m.b is a and int(m.b[...]) == 10 and int(m.a[...]) == 2


def test_to_tree_prefix_gives_each_node_its_entry_and_checks_aliasing():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    seen = []

    def split_fn(ctx, path, prefix, node):
        seen.append(prefix)
        return nnx.NodeStates.from_split(*ctx.split(node))

    nnx.to_tree((m, 1, {"b": m}), prefix=(0, None, 0), split_fn=split_fn)
    assert seen == [0, 0]
    with pytest.raises(ValueError, match="Inconsistent aliasing detected") as err:
        nnx.to_tree((m, 1, {"b": m}), prefix=(0, None, 1))
    assert "[0].kernel: 0" in str(err.value) and "[2].b.kernel: 1" in str(err.value)
    nnx.to_tree((m, {"b": m}), prefix=(0, 1), check_aliasing=False)  # allowed


def test_clear_non_graph_nodes_and_node_states_constructors():
    p = nnx.Param(1.0)
    assert nnx.extract.clear_non_graph_nodes([p, 2, "s"]) == [p, None, None]
    ns = nnx.NodeStates.from_prefixes((0, None), metadata="m")
    assert jax.tree.leaves(ns) == [0]  # metadata is static, None is no leaf
    with pytest.raises(ValueError, match="no graphdef available"):
        _ = ns.graphdef
    with pytest.raises(ValueError, match="exactly one State"):
        _ = ns.state


def test_prefix_in_graph_mode_is_a_tree_state_of_axes():
    class Foo(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

    model = Foo(nnx.Rngs(0))
    filters = {nnx.Param: "params", nnx.BatchStat: "batch_stats"}
    for result in (
        nnx.prefix(model, filters, graph=True),
        nnx.extract.tree_prefix(model, filters),
    ):
        assert isinstance(result, nnx.extract.TreeState)
        assert result.state["linear"]["kernel"] == "params"
        assert result.state["bn"]["mean"] == "batch_stats"
    with pytest.raises(ValueError, match="No filter matched"):
        nnx.extract.tree_prefix(model, {nnx.BatchStat: 0})
    with pytest.raises(ValueError, match="No filter matched"):
        nnx.prefix(model, {nnx.BatchStat: 0}, graph=False)
