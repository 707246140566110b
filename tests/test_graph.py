"""Tests for nnxlike._graph: split/merge/update/state/clone/pop/iter_graph."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


class Block(nnx.Module):
    def __init__(self, din: int, dout: int, *, seed: int = 0, act: str = "relu"):
        key = jax.random.key(seed)
        self.kernel = nnx.Param(jax.random.normal(key, (din, dout)))
        self.bias = nnx.Param(jnp.zeros(dout), tag="b")
        self.mean = nnx.BatchStat(jnp.zeros(dout))
        self.din, self.dout, self.act = din, dout, act
        self.shape = (din, dout)


class Model(nnx.Module):
    def __init__(self, seed: int = 0):
        self.blocks = [Block(2, 3, seed=seed), Block(3, 1, seed=seed + 1)]
        self.heads = {"a": Block(1, 1, seed=seed + 2)}
        self.pair = (nnx.Cache(jnp.ones(1)), "static", 3)
        self.rngs = nnx.Rngs(seed)
        self.name = "model"


def assert_variables_equal(a, b):
    assert type(a) is type(b)
    assert a.get_metadata() == b.get_metadata()
    va, vb = a.value, b.value
    if jax.dtypes.issubdtype(va.dtype, jax.dtypes.prng_key):
        va, vb = jax.random.key_data(va), jax.random.key_data(vb)
    np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))


# -- round trips ----------------------------------------------------------------------


def test_merge_split_round_trip_types_values_and_statics():
    m = Model()
    copy = nnx.merge(*nnx.split(m), copy=True)
    same = nnx.merge(*nnx.split(m))  # as flax: the State's own Variables
    assert type(copy) is Model and copy is not m and same is not m
    assert type(copy.blocks) is nnx.List and type(copy.heads) is nnx.Dict
    for path, var in nnx.iter_graph(m):
        if isinstance(var, nnx.Variable):
            other, shared = copy, same
            for key in path:
                if isinstance(key, int):
                    other, shared = other[key], shared[key]
                else:
                    other, shared = getattr(other, key), getattr(shared, key)
            assert other is not var and shared is var
            assert_variables_equal(var, other)
    b = copy.blocks[1]
    assert (b.din, b.dout, b.act, b.shape) == (3, 1, "relu", (3, 1))
    assert copy.pair[1:] == ("static", 3) and type(copy.pair) is tuple
    assert copy.name == "model"
    assert copy.bias_tag if False else copy.blocks[0].bias.tag == "b"


def test_split_state_order_is_definition_order():
    _, state = nnx.split(Block(2, 3))
    assert state.flat_state().paths == (("kernel",), ("bias",), ("mean",))


def test_split_with_filters_and_merge_in_any_order():
    m = Model()
    graphdef, params, stats, rest = nnx.split(m, nnx.Param, nnx.BatchStat, ...)
    assert all(leaf.type is nnx.Param for leaf in params.leaves())
    assert all(leaf.type is nnx.BatchStat for leaf in stats.leaves())
    assert {leaf.type for leaf in rest.leaves()} == {
        nnx.Cache,
        nnx.RngKey,
        nnx.RngCount,
    }
    copy = nnx.merge(graphdef, rest, params, stats)
    assert_variables_equal(copy.heads["a"].kernel, m.heads["a"].kernel)
    # plain dicts are accepted as States
    copy2 = nnx.merge(graphdef, params, stats, dict(rest))
    assert_variables_equal(copy2.pair[0], m.pair[0])


def test_state_with_filters_leaves_out_unmatched():
    m = Model()
    params = nnx.state(m, nnx.Param)
    assert len(params.leaves()) == 6
    params, stats = nnx.state(m, nnx.Param, nnx.BatchStat)
    assert len(stats.leaves()) == 3
    assert nnx.state(m, nnx.Nothing()) == nnx.State({})


def test_graphdef_function_matches_split():
    m = Model()
    assert nnx.graphdef(m) == nnx.split(m)[0]


# -- update / clone --------------------------------------------------------------------


def test_update_copies_values_in_place():
    m, m2 = Model(0), Model(5)
    kernel = m.blocks[0].kernel
    nnx.update(m, nnx.state(m2))
    assert m.blocks[0].kernel is kernel  # same Variable, new value
    assert_variables_equal(m.blocks[0].kernel, m2.blocks[0].kernel)
    assert_variables_equal(m.rngs.default.key, m2.rngs.default.key)
    assert m.blocks[0].kernel is not m2.blocks[0].kernel


def test_update_with_several_states_and_pure_dicts():
    m = Block(1, 2)
    nnx.update(m, {"kernel": jnp.ones((1, 2))}, nnx.State({"bias": jnp.full(2, 3.0)}))
    np.testing.assert_array_equal(m.kernel.value, np.ones((1, 2)))
    np.testing.assert_array_equal(m.bias.value, np.full(2, 3.0))


def test_update_copies_metadata():
    m = Block(1, 1)
    new = nnx.Param(jnp.ones(1), **{"tag": "new"})
    nnx.update(m, nnx.State({"bias": new}))
    assert m.bias.tag == "new"


def test_update_creates_a_new_attribute():
    m = Block(1, 1)
    nnx.update(m, nnx.State({"extra": nnx.Cache(jnp.ones(1), **{"k": 1})}))
    assert isinstance(m.extra, nnx.Cache) and m.extra.k == 1
    model = Model()
    nnx.update(model, nnx.State({"heads": {"b": nnx.Param(1.0)}}))
    assert isinstance(model.heads["b"], nnx.Param)


def test_update_into_list_items():
    model = Model()
    new = nnx.Param(jnp.zeros(1))
    nnx.update(model, nnx.State({"blocks": {1: {"extra": new}}}))
    assert isinstance(model.blocks[1].extra, nnx.Param)


def test_update_unknown_path_errors():
    m = Block(1, 1)
    with pytest.raises(
        nnx.StructureError,
        match=r"update: path 'nope.x' does not exist in Block "
        r"\(no 'nope' under Block\)",
    ):
        nnx.update(m, nnx.State({"nope": {"x": nnx.Param(1.0)}}))
    model = Model()
    with pytest.raises(
        nnx.StructureError, match=r"update: cannot set 'blocks\[7\]' on a List"
    ):
        nnx.update(model, nnx.State({"blocks": {7: nnx.Param(1.0)}}))
    with pytest.raises(
        nnx.StructureError, match=r"update: cannot set 'pair\[1\]' on a tuple"
    ):
        nnx.update(model, nnx.State({"pair": {1: jnp.ones(1)}}))


def test_update_of_a_raw_array_root():
    graphdef, state = nnx.split(jnp.ones(2))
    assert state.shape == (2,)  # a root leaf splits into itself
    state = nnx.State.from_flat([()], [state])
    with pytest.raises(
        nnx.StructureError, match=r"update: the root \(ArrayImpl\) holds no Variable"
    ):
        nnx.update(jnp.ones(2), state)


def test_update_from_a_trace_raises_for_outside_variables():
    m = Block(1, 1)
    state = nnx.state(m)

    def f(s):
        nnx.update(m, s)
        return 0

    with pytest.raises(nnx.TraceContextError, match="Cannot write Param"):
        jax.make_jaxpr(f)(state)


def test_merged_objects_are_writable_in_the_trace_that_merged_them():
    graphdef, state = nnx.split(Block(1, 1))

    def f(s):
        m = nnx.merge(graphdef, s)
        m.bias.value = m.bias.value + 1
        return nnx.state(m)

    out = jax.jit(f)(state)
    np.testing.assert_array_equal(out.bias.value, np.ones(1))


def test_clone_makes_new_variables_with_equal_values():
    m = Model()
    c = nnx.clone(m)
    assert c is not m and c.blocks is not m.blocks
    assert c.blocks[0].kernel is not m.blocks[0].kernel
    assert_variables_equal(c.blocks[0].kernel, m.blocks[0].kernel)
    c.blocks[0].kernel.value = jnp.zeros((2, 3))
    assert not np.array_equal(m.blocks[0].kernel.value, np.zeros((2, 3)))
    assert nnx.graphdef(c) == nnx.graphdef(m)


# -- sharing and cycles ---------------------------------------------------------------


def test_weight_tying_is_stored_once_and_restored_as_one_variable():
    m = nnx.Module()
    m.encoder = Block(2, 2)
    m.decoder = Block(2, 2)
    m.decoder.kernel = m.encoder.kernel  # tie
    graphdef, state = nnx.split(m)
    paths = state.flat_state().paths
    assert ("encoder", "kernel") in paths and ("decoder", "kernel") not in paths
    copy = nnx.merge(graphdef, state)
    assert copy.decoder.kernel is copy.encoder.kernel
    assert copy.decoder.bias is not copy.encoder.bias
    copy.encoder.kernel.value = jnp.zeros((2, 2))
    np.testing.assert_array_equal(copy.decoder.kernel.value, np.zeros((2, 2)))


def test_update_from_an_untied_state_keeps_the_tie():
    def build(tied: bool):
        m = nnx.Module()
        m.enc = nnx.Param(jnp.ones(1))
        m.dec = m.enc if tied else nnx.Param(jnp.full(1, 2.0))
        return m

    tied = build(True)
    nnx.update(tied, nnx.state(build(False)))
    assert tied.dec is tied.enc  # written through the alias, not replaced
    np.testing.assert_array_equal(tied.enc.value, np.full(1, 2.0))


def test_shared_submodule_is_stored_once():
    shared = Block(1, 1)
    m = nnx.Module()
    m.a, m.b, m.items = shared, shared, [shared]
    graphdef, state = nnx.split(m)
    assert len(state.leaves()) == 3
    copy = nnx.merge(graphdef, state)
    assert copy.a is copy.b is copy.items[0]
    clone = nnx.clone(m)
    assert clone.a is clone.b and clone.a is not shared


def test_cycles_round_trip():
    a, b = nnx.Module(), nnx.Module()
    a.w = nnx.Param(jnp.ones(1))
    a.child = b
    b.parent = a
    b.me = b
    graphdef, state = nnx.split(a)
    assert state.flat_state().paths == (("w",),)
    copy = nnx.merge(graphdef, state)
    assert copy.child.parent is copy
    assert copy.child.me is copy.child
    assert copy is not a and copy.child is not b
    assert [p for p, _ in nnx.iter_graph(a)] == [("w",), ("child",), ()]


def test_sharing_pattern_is_part_of_the_graphdef():
    def build(tied: bool):
        m = nnx.Module()
        m.a = nnx.Param(jnp.ones(1))
        m.b = m.a if tied else nnx.Param(jnp.ones(1))
        return m

    assert nnx.graphdef(build(True)) != nnx.graphdef(build(False))
    assert nnx.graphdef(build(True)) == nnx.graphdef(build(True))


def test_shared_plain_list_at_top_level():
    inner = [nnx.Param(jnp.ones(1))]
    node = {"x": inner, "y": inner, "t": (inner,)}
    copy = nnx.merge(*nnx.split(node))
    assert copy["x"] is copy["y"] is copy["t"][0]
    assert type(copy["x"]) is list


# -- GraphDef --------------------------------------------------------------------------


def test_graphdef_equal_and_hash_across_instances():
    a, b = nnx.graphdef(Model(0)), nnx.graphdef(Model(1))
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != "not a graphdef"


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m, "name", "other"),
        lambda m: setattr(m.blocks[0], "act", "gelu"),
        lambda m: setattr(m.blocks[0], "din", 2.0),  # same value, other type
        lambda m: setattr(m, "pair", (m.pair[0], "static", 4)),
        lambda m: setattr(m.blocks[0], "bias", nnx.BatchStat(m.blocks[0].bias.value)),
        lambda m: m.blocks[1].bias.set_metadata(tag="c"),
        lambda m: m.blocks.append(1),
        lambda m: setattr(m, "extra", None),
    ],
    ids=[
        "str",
        "nested-str",
        "int-vs-float",
        "tuple",
        "kind",
        "metadata",
        "len",
        "new",
    ],
)
def test_graphdef_changes_with_static_structure(change):
    m = Model()
    before = nnx.graphdef(m)
    change(m)
    after = nnx.graphdef(m)
    assert before != after


def test_graphdef_ignores_values():
    m = Model()
    before = nnx.graphdef(m)
    m.blocks[0].kernel.value = jnp.zeros((2, 3))
    assert nnx.graphdef(m) == before


def test_graphdef_metadata():
    gd = nnx.graphdef(Block(1, 1))
    assert gd.root_type is Block
    assert gd.num_leaves == 3
    assert gd.paths == (("kernel",), ("bias",), ("mean",))
    assert nnx.graphdef(3).root_type is type(None)


# -- node kinds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Param(jnp.ones(2), note="n"),
        lambda: nnx.Rngs(0, dropout=1),
        lambda: [nnx.Param(jnp.ones(1)), (nnx.BatchStat(jnp.zeros(1)), 3)],
        lambda: {"a": Block(1, 1), "b": [jnp.ones(2), "s"], "c": (1, 2)},
        lambda: (Block(1, 1), {"k": nnx.Cache(jnp.ones(1))}),
        lambda: [nnx.Rngs(0), {"m": Model()}, ()],
        lambda: 5,
    ],
    ids=["variable", "rngs", "list", "dict", "tuple", "mix", "static"],
)
def test_any_mix_of_nodes_round_trips(make):
    node = make()
    graphdef, state = nnx.split(node)
    copy = nnx.merge(graphdef, state)
    assert type(copy) is type(node)
    assert nnx.graphdef(copy) == graphdef
    _, state2 = nnx.split(copy)
    assert jax.tree.structure(state2) == jax.tree.structure(state)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(state2)):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


def test_raw_arrays_in_plain_containers_are_leaves():
    node = {"a": jnp.ones(2), "b": [jnp.zeros(1)]}
    graphdef, state = nnx.split(node)
    assert state.flat_state().paths == (("a",), ("b", 0))
    assert isinstance(state["a"], jax.Array)
    nnx.update(node, nnx.State({"a": jnp.full(2, 3.0)}))
    np.testing.assert_array_equal(node["a"], np.full(2, 3.0))


# -- errors ----------------------------------------------------------------------------


def test_unhashable_static_attribute_error():
    m = Block(1, 1)
    m.config = {1, 2}
    with pytest.raises(
        TypeError,
        match=r"config: static attribute of type set is not hashable, so it cannot be "
        r"part of a GraphDef.*`nnx.Variable\(value\)`",
    ):
        nnx.split(m)


def test_unhashable_static_error_names_nested_path():
    node = {"layers": [(1, {2})]}
    with pytest.raises(
        TypeError, match=r"layers\[0\]\[1\]: static attribute of type set"
    ):
        nnx.graphdef(node)


def test_unhashable_metadata_error():
    m = nnx.Module()
    m.w = nnx.Param(jnp.ones(1), axes=["a"])
    with pytest.raises(
        TypeError,
        match=r"w.<metadata axes>: static attribute of type list is not hashable",
    ):
        nnx.split(m)


def test_unmatched_filter_error_names_path_and_fix():
    with pytest.raises(
        nnx.StructureError,
        match=r"split: the Variable at path 'blocks\[0\].mean' \(BatchStat\) "
        r"matches none of the filters \(Param, 'kernel'\)"
        r".*`nnx.split\(node, Param, 'kernel', \.\.\.\)`",
    ):
        nnx.split(Model(), nnx.Param, "kernel")


def test_merge_errors():
    graphdef, params, rest = nnx.split(Block(1, 1), nnx.Param, ...)
    with pytest.raises(
        nnx.StructureError,
        match=r"merge: the State\(s\) lack 1 path\(s\) the GraphDef needs: \['mean'\]"
        r".*`nnx.merge\(graphdef, state1, state2, \.\.\.\)`",
    ):
        nnx.merge(graphdef, params)
    with pytest.raises(
        TypeError, match=r"merge: expected a GraphDef as first argument, got State"
    ):
        nnx.merge(params, rest)


def test_merge_refuses_paths_the_graphdef_lacks():
    graphdef, params, rest = nnx.split(Block(1, 1), nnx.Param, ...)
    other_graphdef, _ = nnx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    with pytest.raises(
        nnx.StructureError,
        match=r"merge: the State\(s\) hold 1 path\(s\) the GraphDef does not have: "
        r"\['mean'\].*filter it first",
    ):
        nnx.merge(other_graphdef, params, rest)


def test_merge_error_truncates_long_path_lists():
    node = [nnx.Param(jnp.ones(1)) for _ in range(12)]
    graphdef, _ = nnx.split(node)
    with pytest.raises(
        nnx.StructureError,
        match=r"lack 12 path\(s\).*\['\[0\]', .*'\[9\]'\] and 2 more\. ",
    ):
        nnx.merge(graphdef, nnx.State({}))


# -- pop / iter_graph / variables ------------------------------------------------------


def test_pop_removes_and_returns():
    m = Model()
    m.blocks[0].sow(nnx.Intermediate, "h", 1)
    m.heads["a"].sow(nnx.Intermediate, "h", 2)
    popped = nnx.pop(m, nnx.Intermediate)
    assert popped.flat_state().paths == (("blocks", 0, "h"), ("heads", "a", "h"))
    assert not hasattr(m.blocks[0], "h") and "h" not in vars(m.heads["a"])
    assert nnx.state(m, nnx.Intermediate) == nnx.State({})


def test_pop_several_items_of_one_list():
    m = nnx.Module()
    m.items = [
        nnx.Cache(jnp.ones(1)),
        7,
        nnx.Cache(jnp.zeros(1)),
        nnx.Param(jnp.ones(1)),
    ]
    caches, params = nnx.pop(m, nnx.Cache, nnx.Param)
    assert caches.flat_state().paths == (("items", 0), ("items", 2))
    assert params.flat_state().paths == (("items", 3),)
    assert list(m.items) == [7]


def test_pop_from_plain_containers():
    node = {"a": [nnx.Cache(1.0), nnx.Cache(2.0)], "b": nnx.Param(1.0)}
    popped = nnx.pop(node, nnx.Cache)
    assert popped.flat_state().paths == (("a", 0), ("a", 1))
    assert node["a"] == [] and "b" in node


def test_pop_needs_a_filter():
    with pytest.raises(TypeError, match=r"pop: give at least one filter"):
        nnx.pop(Block(1, 1))


def test_iter_graph_post_order_each_object_once():
    m = nnx.Module()
    m.a = Block(1, 1)
    m.b = m.a
    m.t = (m.a.kernel, 3)
    out = [(p, type(v).__name__) for p, v in nnx.iter_graph(m)]
    assert out == [
        (("a", "kernel"), "Param"),
        (("a", "bias"), "Param"),
        (("a", "mean"), "BatchStat"),
        (("a", "shape"), "tuple"),  # tuples are containers, even of statics
        (("a",), "Block"),
        (("t",), "tuple"),
        ((), "Module"),
    ]


def test_variables_are_the_live_objects():
    m = Block(1, 2)
    live = nnx.variables(m)
    assert live.kernel is m.kernel
    assert nnx.variables(m, nnx.BatchStat).flat_state().paths == (("mean",),)
    assert nnx.variables(m, nnx.BatchStat, "bias").flat_state().paths == (
        ("bias",),
        ("mean",),
    )


# -- flax's graph API surface (GraphDef.nodes/apply, nnx.call, graphlib) --------


def test_graphdef_nodes_view_names_each_node_in_walk_order():
    shared = Block(1, 1)
    m = nnx.Module()
    m.a = shared
    m.b = shared
    nodes = nnx.graphdef(m).nodes
    kinds = [type(n).__name__ for n in nodes]
    # root, Block a, its 3 Variables and its `shape` tuple (a value: no index),
    # then Block b, a reference to index 1
    assert kinds == ["NodeDef", "NodeDef"] + ["VariableDef"] * 3 + [
        "NodeDef",
        "NodeRef",
    ]
    assert nodes[0].type is nnx.Module and nodes[1].type is Block
    assert [n.type for n in nodes[2:5]] == [nnx.Param, nnx.Param, nnx.BatchStat]
    assert nodes[3].metadata == {"tag": "b"}
    assert nodes[5].type is tuple and nodes[5].index is None
    assert nodes[6].index == nodes[1].index == 1


def test_tree_mode_graphdef_is_one_tree_node_with_sorted_path_index():
    model = Block(2, 3)
    graphdef, flat = nnx.graphlib.flatten(model, graph=False)
    (node,) = graphdef.nodes
    assert isinstance(node, nnx.graphlib.TreeNodeDef) and node.type is Block
    paths = [p for p, _ in node.path_index]
    assert paths == [("bias",), ("kernel",), ("mean",)]
    # each index points at that path's leaf in walk order
    for path, i in node.path_index:
        assert graphdef.paths[i] == path
    # the flat state is in the same (sorted) order, and round-trips
    assert flat.paths == tuple(paths)
    copy = nnx.graphlib.unflatten(graphdef, flat)
    np.testing.assert_array_equal(copy.kernel[...], model.kernel[...])


def test_tree_mode_flatten_orders_namedtuple_fields_by_name():
    import collections

    Point = collections.namedtuple("Point", ["y", "x"])
    g = Point(y=nnx.Param(jnp.array(1.0)), x=nnx.Param(jnp.array(2.0)))
    graphdef, flat = nnx.graphlib.flatten(g, graph=False)
    assert [(p, float(v[...])) for p, v in flat] == [(("x",), 2.0), (("y",), 1.0)]
    g2 = nnx.graphlib.unflatten(graphdef, flat)
    assert type(g2) is Point and float(g2.y[...]) == 1.0


def test_call_runs_a_method_purely_under_plain_jit():
    class Counter(nnx.Module):
        def __init__(self):
            self.count = nnx.Variable(jnp.array(0))

        def inc(self, by):
            self.count[...] += by
            return self.count[...] * 10

    pure = nnx.split(Counter())

    @jax.jit
    def step(pure):
        return nnx.call(pure).inc(2)

    out, pure = step(pure)
    out, pure = step(pure)
    assert int(out) == 40
    assert int(nnx.merge(*pure).count[...]) == 4


def test_graphdef_apply_reaches_items_and_returns_the_new_state():
    nodes = {"a": Block(1, 1), "b": Block(1, 2)}
    graphdef, state = nnx.split(nodes)
    x = jnp.ones((1, 1))

    def forward(block, x):
        block.mean[...] = block.mean[...] + 1.0
        return x @ block.kernel[...]

    class Wrap(nnx.Module):
        def __init__(self, blocks):
            self.blocks = blocks

        def run(self, name, x):
            return forward(self.blocks[name], x)

    graphdef, state = nnx.split(Wrap(nodes))
    y, (gd2, state2) = graphdef.apply(state).run("b", x)
    np.testing.assert_allclose(y, x @ nodes["b"].kernel[...])
    assert gd2 == graphdef
    np.testing.assert_array_equal(state2["blocks"]["b"]["mean"][...], jnp.ones(2))
    np.testing.assert_array_equal(state2["blocks"]["a"]["mean"][...], jnp.zeros(1))
    # as flax: apply merges the State's own (live) Variables, so the write reaches
    # the original object; a copied State keeps it untouched
    np.testing.assert_array_equal(nodes["b"].mean[...], jnp.ones(2))
    graphdef.apply(nnx.clone(state)).run("b", x)
    np.testing.assert_array_equal(nodes["b"].mean[...], jnp.ones(2))


def test_graphlib_unflatten_updates_outer_objects_in_place():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = Block(1, 1, seed=0)
            self.b = Block(1, 1, seed=1)

    m = Foo()
    a, b = m.a, m.b
    ref_out = nnx.graphlib.RefMap()
    graphdef, flat = nnx.graphlib.flatten(m, ref_index=ref_out)
    state = flat.to_nested_state()

    @jax.jit
    def f(state):
        idx = nnx.graphlib.IndexMap()
        inner = nnx.graphlib.unflatten(graphdef, state, index_ref=idx)
        assert idx[0] is inner
        inner.a, inner.b = inner.b, inner.a  # a structural change inside
        inner.a.mean[...] = inner.a.mean[...] + 5.0
        outer_of = nnx.graphlib.RefMap.from_indexmap(idx)
        gd, flat = nnx.graphlib.flatten(inner, ref_outer_index=outer_of)
        return flat.to_nested_state(), gd

    state, gd_out = f(state)
    m2 = nnx.graphlib.unflatten(
        gd_out, state, outer_index_outer_ref=nnx.graphlib.IndexMap.from_refmap(ref_out)
    )
    assert m2 is m and m.a is b and m.b is a
    np.testing.assert_array_equal(b.mean[...], jnp.full(1, 5.0))
    np.testing.assert_array_equal(a.mean[...], jnp.zeros(1))


def test_graphlib_unflatten_refuses_a_wrong_number_of_leaves():
    graphdef, _ = nnx.split(Block(1, 1))
    with pytest.raises(ValueError, match="Incorrect number of leaves.*3 leaves, got 0"):
        nnx.graphlib.unflatten(graphdef, nnx.State({}))


def test_root_value_is_its_own_leaf():
    graphdef, state = nnx.split(42)
    assert state == 42 and nnx.merge(graphdef, state) == 42
    x = jnp.arange(3.0)
    graphdef, flat = nnx.graphlib.flatten(x)
    assert flat[0][1] is x and nnx.merge(graphdef, flat) is x


def test_update_takes_the_state_of_a_root_variable():
    v = nnx.Param(jnp.array(1))
    graphdef, params, rest = nnx.split(v, nnx.Param, ...)
    assert isinstance(params, nnx.Param) and len(rest) == 0
    assert params is v  # live, as flax: the write is already in v
    params[...] = 7
    assert int(v[...]) == 7
    with pytest.warns(nnx.StaleStateWarning, match="writes nothing"):
        nnx.update(v, params, rest)
    nnx.update(v, nnx.clone(params), rest)  # a copy writes, without a warning
    assert int(v[...]) == 7


def test_data_marked_scalars_are_state_leaves():
    class Foo(nnx.Pytree):
        def __init__(self):
            self.count = nnx.data(3)
            self.name = nnx.static(4)
            self.none = nnx.data(None)

    foo = Foo()
    graphdef, state = nnx.split(foo)
    assert state.to_pure_dict() == {"count": 3}
    state["count"] = 5
    assert nnx.merge(graphdef, state).count == 5


def test_map_without_recreating_variables_keeps_what_f_returns():
    rngs = nnx.Rngs(0)
    out = nnx.map(lambda path, v: 0, rngs, recreate_variables=False)
    assert out.default.count == 0 and not isinstance(out.default.count, nnx.Variable)


def test_tree_mode_refuses_a_shared_array_ref():
    ref = jax.new_ref(jnp.array(1.0))
    with pytest.raises(ValueError, match=r"(?s)Duplicate Ref.*\[0\].*\[1\]"):
        nnx.split([ref, ref], graph=False)


def test_graph_state_has_the_state_key_paths_and_checked_merge():
    model = Block(2, 3)
    state = nnx.state(model)
    gs = nnx.unpack(model)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    gs_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(gs)[0]]
    assert gs_paths == paths
    with pytest.raises(ValueError, match="Expected GraphState object"):
        nnx.merge(gs, state)
    with pytest.raises(ValueError, match="GraphDef must be the same"):
        nnx.merge(gs, nnx.unpack(Block(2, 4)))


def test_optimizer_update_takes_graph_state_grads():
    import optax

    model = Block(2, 3)
    before = model.kernel[...]
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    params, rest = nnx.unpack(model, nnx.Param, ...)
    grads = jax.tree.map(jnp.ones_like, params)
    assert isinstance(grads, nnx.GraphState)
    opt.update(model, grads)
    np.testing.assert_allclose(model.kernel[...], before - 0.5)


def test_state_with_a_trailing_catch_all_filter():
    model = Block(2, 3)
    assert sorted(nnx.state(model, ...).to_pure_dict()) == ["bias", "kernel", "mean"]
    params, rest = nnx.state(model, nnx.Param, ...)
    assert sorted(params.to_pure_dict()) == ["bias", "kernel"]
    assert sorted(rest.to_pure_dict()) == ["mean"]
    (only,) = nnx.state(model, nnx.BatchStat, nnx.Cache)[:1]
    assert sorted(only.to_pure_dict()) == ["mean"]


def test_bare_array_refs_are_leaves_shared_by_identity():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = jax.new_ref(jnp.array(1.0))
            self.b = self.a

    m = Foo()
    refs = nnx.graphlib.RefMap()
    graphdef, flat = nnx.graphlib.flatten(m, ref_index=refs)
    assert flat.paths == (("a",),) and flat[0][1] is m.a
    assert len(refs) == 2 and m.a in refs  # the Module and the reference
    graphdef, state = nnx.split(m)
    m2 = nnx.merge(graphdef, state)
    assert m2 is not m and m2.a is m2.b and m2.a is m.a
    m2.a[...] = 5.0  # one reference: seen through both attributes
    assert float(m.b[...]) == 5.0


def test_graphdef_nodes_name_pytree_attributes_by_type():
    import collections

    Pair = collections.namedtuple("Pair", ["w", "n"])
    m = nnx.Module()
    m.pair = Pair(nnx.Param(jnp.ones(1)), 3)
    kinds = [(type(n).__name__, n.type) for n in nnx.graphdef(m).nodes]
    assert kinds == [
        ("NodeDef", nnx.Module),
        ("NodeDef", Pair),
        ("VariableDef", nnx.Param),
    ]


def test_graphlib_exports_every_name_it_lists():
    for name in nnx.graphlib.__all__:
        assert getattr(nnx.graph, name) is getattr(nnx.graphlib, name), name
    assert nnx.graphlib.map is nnx.map and nnx.graphlib.IndexMap is not None


def test_update_goes_through_a_kinds_set_value_and_refuses_another_trace():
    class Clipped(nnx.Param):  # flax's hook: a kind overriding set_value
        def set_value(self, value, **kwargs):
            super().set_value(jnp.clip(value, -1.0, 1.0), **kwargs)

    class Holder(nnx.Module):
        def __init__(self):
            self.w = Clipped(jnp.zeros(3))
            self.b = nnx.Param(jnp.zeros(3))

    h = Holder()
    nnx.update(h, {"w": jnp.array([5.0, -5.0, 0.5]), "b": jnp.full(3, 7.0)})
    np.testing.assert_array_equal(h.w.value, [1.0, -1.0, 0.5])
    np.testing.assert_array_equal(h.b.value, [7.0, 7.0, 7.0])

    @jax.jit
    def write_inside(x):
        nnx.update(h, {"b": x})  # h was created outside this trace
        return x

    with pytest.raises(nnx.TraceContextError):
        write_inside(jnp.ones(3))
    np.testing.assert_array_equal(h.b.value, [7.0, 7.0, 7.0])


def test_update_matches_paths_in_any_order_and_checks_every_value():
    # update pairs a State's paths with the model's by walk position while they
    # agree and by path lookup after: the result must not depend on the order.
    def fresh():
        return nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(3)])

    model, source = fresh(), fresh()
    pairs = list(nnx.clone(nnx.state(source)).flat_state())
    expected = {p: np.asarray(v.value) for p, v in pairs}
    reordered = nnx.State.from_flat_path(pairs[::-1])
    params, rest = pairs[1::2], pairs[0::2]  # interleaved: two States
    nnx.update(model, reordered)
    for path, value in nnx.state(model).flat_state():
        np.testing.assert_array_equal(np.asarray(value.value), expected[path])
    model = fresh()
    nnx.update(model, nnx.State.from_flat_path(params), nnx.State.from_flat_path(rest))
    for path, value in nnx.state(model).flat_state():
        np.testing.assert_array_equal(np.asarray(value.value), expected[path])
    # After writes that took the quick check, other shapes and dtype kinds of
    # the same array type are still refused, and nothing is written.
    before = np.asarray(model[2].kernel.value).copy()
    with pytest.raises(nnx.StructureError, match=r"'\[2\]\.kernel' has shape \(3, 2\)"):
        nnx.update(model, {2: {"bias": jnp.ones(2), "kernel": jnp.ones((3, 2))}})
    with pytest.raises(nnx.StructureError, match=r"int32 \(integer\)"):
        nnx.update(model, {2: {"kernel": jnp.ones((2, 2), jnp.int32)}})
    np.testing.assert_array_equal(np.asarray(model[2].kernel.value), before)
    assert not bool((np.asarray(model[2].bias.value) == 1).all())


def test_update_writes_through_references_and_boxes():
    m = nnx.Module()
    m.r = nnx.Param(jnp.zeros(2), ref=True)
    m.h = nnx.Param(jnp.zeros(2), hijax=True)
    ref = m.r.raw_value
    nnx.update(m, {"r": jnp.ones(2), "h": jnp.full(2, 2.0)})
    assert m.r.raw_value is ref  # the same jax.Ref, written through
    np.testing.assert_array_equal(np.asarray(m.r[...]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(m.h[...]), [2.0, 2.0])


def test_tree_mode_flattens_plain_containers_by_jax_rule():
    """graph=False: a plain container's items are leaves as JAX has them (ints
    too), at the root, nested, or as an Object attribute holding data; a
    data-free tuple attribute stays static, and graph mode keeps ints static.
    (Expected paths as flax.nnx 0.12.8 gives them.)"""

    class B(nnx.Module):
        def __init__(self):
            self.shape = (2, 3)
            self.mix = (nnx.Param(jnp.ones(1)), 4)
            self.n = 5

    def flat(g, graph):
        _, fs = nnx.graphlib.flatten(g, graph=graph)
        return [(p, v) for p, v in fs]

    assert flat({"a": 1}, False) == [(("a",), 1)]
    assert flat((1, (2, 3)), False) == [((0,), 1), ((1, 0), 2), ((1, 1), 3)]
    assert [p for p, _ in flat(B(), False)] == [("mix", 0), ("mix", 1)]
    assert [p for p, _ in flat(B(), True)] == [("mix", 0)]
    g = {
        "b": [nnx.Param(jnp.array(1)), jnp.array(2)],
        "a": (nnx.Param(jnp.array(3)), 4),
    }
    graphdef, fs = nnx.graphlib.flatten(g, graph=False)
    assert [p for p, _ in fs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    g2 = nnx.graphlib.unflatten(graphdef, fs)
    assert g2["a"][1] == 4 and int(g2["a"][0][...]) == 3 and int(g2["b"][1]) == 2
    # the int is a leaf: two dicts differing only in it share one GraphDef
    assert nnx.graphdef({"k": 1}, graph=False) == nnx.graphdef({"k": 2}, graph=False)
    assert nnx.graphdef({"k": 1}, graph=True) != nnx.graphdef({"k": 2}, graph=True)
