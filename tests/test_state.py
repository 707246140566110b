"""Tests for nnxlike._state: State as a nested mapping and as a JAX pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import nnxlike as nnx


class Model(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(2.0))
        self.stats = nnx.BatchStat(jnp.zeros(3))
        self.sub = {"c": nnx.Cache(jnp.ones(1))}
        self.layers = [nnx.Param(jnp.ones(1)), nnx.Param(jnp.full(1, 2.0))]


@pytest.fixture
def state() -> nnx.State:
    return nnx.state(Model())


PATHS = (("w",), ("stats",), ("sub", "c"), ("layers", 0), ("layers", 1))


def test_nested_mapping_in_definition_order(state):
    assert list(state) == ["w", "stats", "sub", "layers"]
    assert len(state) == 4
    assert isinstance(state["sub"], nnx.State)
    assert list(state.layers) == [0, 1]
    assert dict(state.items()).keys() == {"w", "stats", "sub", "layers"}


def test_attribute_and_item_access(state):
    assert state.w is state["w"]
    assert state.sub.c is state["sub"]["c"]
    assert isinstance(state.w, nnx.VariableState) and state.w.type is nnx.Param
    np.testing.assert_array_equal(state.layers[1].value, np.full(1, 2.0))


def test_unknown_key_error_lists_keys(state):
    with pytest.raises(
        AttributeError,
        match=r"State has no key 'nope'; "
        r"its keys are \['w', 'stats', 'sub', 'layers'\]",
    ):
        state.nope  # noqa: B018
    with pytest.raises(KeyError):
        state["nope"]


def test_setting_and_deleting_items():
    s = nnx.State({"a": {"b": 1}})
    assert isinstance(s.a, nnx.State)  # nested plain dicts become States
    s.c = {"d": 2}
    s["e"] = 3
    assert isinstance(s.c, nnx.State) and s.e == 3
    del s["e"]
    assert list(s) == ["a", "c"]
    assert s == nnx.State({"a": {"b": 1}, "c": {"d": 2}})
    assert s != nnx.State({"a": {"b": 1}})
    assert s != {"a": 1} and nnx.State({}) == {}  # dicts compare as States
    assert s.__eq__(1) is NotImplemented
    with pytest.raises(TypeError, match="unhashable"):
        hash(s)


def test_state_from_pairs_and_empty():
    assert list(nnx.State([("x", 1), ("y", 2)])) == ["x", "y"]
    assert len(nnx.State()) == 0 and nnx.State() == nnx.State({})


# -- flat views ------------------------------------------------------------------------


def test_flat_state_paths_and_leaves(state):
    flat = state.flat_state()
    assert isinstance(flat, nnx.FlatState)
    assert flat.paths == PATHS
    assert [leaf.type for leaf in flat.leaves] == [
        nnx.Param,
        nnx.BatchStat,
        nnx.Cache,
        nnx.Param,
        nnx.Param,
    ]
    assert state.leaves() == flat.leaves
    assert list(state.flat_dict()) == list(PATHS)
    assert flat.to_nested_state() == state
    assert nnx.State.from_flat(flat.paths, flat.leaves) == state


def test_root_leaf_state_uses_the_empty_path():
    v = nnx.Param(jnp.ones(2))
    graphdef, s = nnx.split(v)
    assert s is v  # the root Variable itself, as flax: no State
    assert nnx.merge(graphdef, s) is v
    c = nnx.merge(graphdef, s, copy=True)
    assert type(c) is nnx.Param and c is not v and c.get_metadata() == v.get_metadata()
    np.testing.assert_array_equal(c[...], v[...])
    assert nnx.State.from_flat([()], [1]).flat_state() == [((), 1)]


# -- pytree ----------------------------------------------------------------------------


def test_tree_map_keeps_kinds_metadata_and_order(state):
    doubled = jax.tree.map(lambda x: 2 * x, state)
    assert type(doubled) is nnx.State
    assert doubled.flat_state().paths == PATHS
    assert doubled.stats.type is nnx.BatchStat
    np.testing.assert_array_equal(doubled.w.value, np.array([0.0, 2.0]))
    np.testing.assert_array_equal(state.w.value, np.array([0.0, 1.0]))  # not in place


def test_tree_leaves_are_the_arrays(state):
    leaves = jax.tree.leaves(state)
    assert [leaf.shape for leaf in leaves] == [(2,), (3,), (1,), (1,), (1,)]


def test_tree_flatten_with_path_keys(state):
    pairs, treedef = jtu.tree_flatten_with_path(state)
    keys = [path for path, _ in pairs]
    value = jtu.GetAttrKey("value")
    assert keys == [
        (jtu.DictKey("w"), value),
        (jtu.DictKey("stats"), value),
        (jtu.DictKey("sub"), jtu.DictKey("c"), value),
        (jtu.DictKey("layers"), jtu.SequenceKey(0), value),
        (jtu.DictKey("layers"), jtu.SequenceKey(1), value),
    ]
    assert jtu.keystr(keys[3]) == "['layers'][0].value"
    rebuilt = jtu.tree_unflatten(treedef, [leaf for _, leaf in pairs])
    assert rebuilt == state


def test_structure_depends_on_keys_and_kinds_not_values(state):
    other = nnx.state(Model())
    other.w.value = jnp.ones(2)
    assert jax.tree.structure(state) == jax.tree.structure(other)
    other.stats = nnx.Cache(jnp.zeros(3))
    assert jax.tree.structure(state) != jax.tree.structure(other)


def test_state_crosses_jit_and_grad(state):
    out = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s))(state)
    assert out.flat_state().paths == PATHS and out.w.type is nnx.Param

    def loss(params):
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(params))

    params = state.filter(nnx.Param)
    grads = jax.grad(loss)(params)
    assert type(grads) is nnx.State
    np.testing.assert_array_equal(grads.w.value, 2 * params.w.value)


def test_raw_array_leaves_are_supported():
    s = nnx.State({"a": jnp.ones(2), "b": {"c": jnp.zeros(1)}})
    assert jax.tree.leaves(jax.tree.map(lambda x: x + 1, s))[0].tolist() == [2.0, 2.0]
    assert s.to_pure_dict()["b"]["c"].shape == (1,)


# -- filter / split / merge ------------------------------------------------------------


def test_filter_keeps_matching_leaves(state):
    params = state.filter(nnx.Param)
    assert params.flat_state().paths == (("w",), ("layers", 0), ("layers", 1))
    stats, caches = state.filter(nnx.BatchStat, nnx.Cache)
    assert stats.flat_state().paths == (("stats",),)
    assert caches.flat_state().paths == (("sub", "c"),)
    both = state.filter(nnx.Param, nnx.Param)  # filter does not partition
    assert both[0] == both[1]


def test_filter_needs_a_filter(state):
    with pytest.raises(TypeError, match="State.filter needs at least one filter"):
        state.filter()


def test_split_partitions_first_match_wins(state):
    params, layer0, rest = state.split(nnx.Param, nnx.PathContains(0), ...)
    assert params.flat_state().paths == (("w",), ("layers", 0), ("layers", 1))
    assert layer0 == nnx.State({})
    assert rest.flat_state().paths == (("stats",), ("sub", "c"))
    assert state.split() is state
    (only,) = (state.split(...),)
    assert only == state


def test_split_error_names_path_kind_and_fix(state):
    with pytest.raises(
        nnx.StructureError,
        match=r"the Variable at path 'stats' \(BatchStat\) matches none of the filters "
        r"\(Param\).*`nnx.split\(node, Param, \.\.\.\)`",
    ):
        state.split(nnx.Param)


def test_merge_deep_merges_later_wins(state):
    params, rest = state.split(nnx.Param, ...)
    assert nnx.State.merge(params, rest).flat_dict() == state.flat_dict()
    assert set(nnx.State.merge(rest, params).flat_state().paths) == set(PATHS)
    override = nnx.State({"w": nnx.Param(jnp.zeros(2))})
    merged = nnx.State.merge(state, override)
    np.testing.assert_array_equal(merged.w.value, np.zeros(2))
    assert merged.flat_state().paths == PATHS


# -- pure dicts ------------------------------------------------------------------------


def test_to_pure_dict_strips_kinds(state):
    pure = state.to_pure_dict()
    assert type(pure) is dict and type(pure["sub"]) is dict
    assert list(pure) == ["w", "stats", "sub", "layers"]
    assert list(pure["layers"]) == [0, 1]
    np.testing.assert_array_equal(pure["w"], np.array([0.0, 1.0]))
    assert isinstance(pure["sub"]["c"], jax.Array)


def test_to_pure_dict_of_live_variables():
    m = Model()
    pure = nnx.variables(m).to_pure_dict()
    assert pure["w"] is m.w.value


def test_replace_by_pure_dict_round_trip(state):
    pure = jax.tree.map(lambda x: x + 10, state.to_pure_dict())
    state.replace_by_pure_dict(pure)
    assert state.w.type is nnx.Param  # kinds kept
    np.testing.assert_array_equal(state.w.value, np.array([10.0, 11.0]))
    np.testing.assert_array_equal(state.layers[1].value, np.full(1, 12.0))


def test_replace_by_pure_dict_partial_and_string_indices(state):
    state.replace_by_pure_dict({"layers": {"1": jnp.zeros(1)}})
    np.testing.assert_array_equal(state.layers[1].value, np.zeros(1))
    np.testing.assert_array_equal(state.layers[0].value, np.ones(1))


def test_replace_by_pure_dict_with_replace_fn(state):
    state.replace_by_pure_dict(
        {"w": jnp.ones(2)}, replace_fn=lambda leaf, new: leaf.replace(new * 3)
    )
    np.testing.assert_array_equal(state.w.value, np.full(2, 3.0))


def test_replace_by_pure_dict_raw_leaf():
    s = nnx.State({"a": jnp.zeros(1)})
    s.replace_by_pure_dict({"a": jnp.ones(1)})
    np.testing.assert_array_equal(s.a, np.ones(1))


def test_replace_by_pure_dict_unknown_path(state):
    with pytest.raises(
        nnx.StructureError,
        match=r"replace_by_pure_dict: path 'sub.zz' is not in the State; "
        r"its keys there are \['c'\]",
    ):
        state.replace_by_pure_dict({"sub": {"zz": jnp.ones(1)}})
    with pytest.raises(
        nnx.StructureError, match=r"path 'layers\[5\]' is not in the State"
    ):
        state.replace_by_pure_dict({"layers": {5: jnp.ones(1)}})


def test_update_model_from_pure_dict():
    m = Model()
    s = nnx.state(m)
    s.replace_by_pure_dict({"w": jnp.full(2, 4.0)})
    nnx.update(m, s)
    np.testing.assert_array_equal(m.w.value, np.full(2, 4.0))


def test_repr_has_counts_on_the_first_line(state):
    first = repr(state).splitlines()[0]
    assert first.startswith("State(")
    assert "Param: 4 (16 B)" in first and "BatchStat: 3 (12 B)" in first


def test_from_flat_nests_paths_in_any_order():
    paths = [("a", "x"), ("b", 0, "y"), ("a", "z"), ("b", 1), ("c",), ("d",)]
    leaves = [1, 2, 3, 4, 5, {"e": 6}]
    state = nnx.State.from_flat(paths, leaves)
    assert state.to_pure_dict() == {  # written by hand
        "a": {"x": 1, "z": 3},
        "b": {0: {"y": 2}, 1: 4},
        "c": 5,
        "d": {"e": 6},
    }
    assert isinstance(state["a"], nnx.State) and isinstance(state["d"], nnx.State)
    assert list(state["a"]) == ["x", "z"] and list(state) == ["a", "b", "c", "d"]
    assert nnx.State.from_flat([()], [7])[()] == 7
