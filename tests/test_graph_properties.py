"""Property tests for split/merge/update/clone over random object graphs.

Hypothesis draws a *recipe* (plain data); ``build`` turns it into objects. A recipe
describes a pool of Variables and a pool of graph objects (two Module classes,
``nnx.List``, ``nnx.Dict``), whose children refer to pool entries by index, so
the same Variable or object can be reached twice (weight tying, shared
submodules) and an object can reach itself (cycles). Children can also be static
values (ints, strings, bools, None, tuples of them), inline Rngs, plain lists,
dicts and tuples, and, outside any Object, raw arrays.

The checks use ``same_graph``, a structural comparison written here that walks
both graphs itself (it does not use nnxlike's split/iter_graph).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnxlike as nnx

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI cannot flake
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class MyVar(nnx.Variable):
    """A user-defined Variable kind."""


class MyParam(nnx.Param):
    """A user-defined kind that is also a Param."""


class Node(nnx.Module):
    pass


class Other(nnx.Module):
    pass


KINDS = (nnx.Param, nnx.BatchStat, nnx.Cache, MyVar, MyParam)
SHAPES = ((), (1,), (2,), (2, 1))
OBJECT_TYPES = ("Node", "Other", "List", "Dict")
KEYS = ("k0", "k1", "k2", 0)


# -- recipes -----------------------------------------------------------------------


# Static values an attribute may hold (hashable, compared by == and type).
STATICS = (None, True, False, 0, 1, -3, "a", "ab", (), (1, "a"), ((2,), None))
META = ((), (("tag", "t"),), (("axes", ("a", None)),))
LEAF_TAGS = ("var", "var", "obj", "obj", "static", "static", "array", "rngs")

# A leaf is (tag, n): n picks the static value, the seed of an array or Rngs, or
# the pool entry of a reference (modulo the pool size when built; into an empty
# pool it becomes None). Two draws per leaf and strategies built once keep
# generation cheap: most of the time of these tests is spent drawing.
_leaf = st.tuples(st.sampled_from(LEAF_TAGS), st.integers(0, len(STATICS) - 1))
_child = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.lists(inner, max_size=3)),
        st.tuples(st.just("tuple"), st.lists(inner, max_size=3)),
        st.tuples(
            st.just("dict"),
            st.lists(
                st.tuples(st.sampled_from(KEYS), inner),
                max_size=3,
                unique_by=lambda kv: kv[0],
            ),
        ),
    ),
    max_leaves=5,
)
_variable = st.tuples(
    st.integers(0, len(KINDS) - 1),
    st.integers(0, len(SHAPES) - 1),
    st.integers(0, 1000),  # seed of the values
    st.integers(0, len(META) - 1),
)
_object = st.tuples(st.integers(0, len(OBJECT_TYPES) - 1), st.lists(_child, max_size=4))
RECIPES = st.fixed_dictionaries(
    {
        "variables": st.lists(_variable, max_size=5),
        "objects": st.lists(_object, max_size=4),
        "root": _child,
    }
)


def recipes():
    return RECIPES


def make_array(shape: tuple, seed: int, *, integer: bool = False) -> Any:
    rng = np.random.default_rng(seed)
    if integer:
        value = rng.integers(-5, 5, size=shape).astype(np.int32)
    else:
        value = rng.standard_normal(shape).astype(np.float32)
    return jnp.asarray(value) if seed % 2 else value  # both jax and numpy arrays


def build(recipe: dict, value_offset: int = 0) -> Any:
    """Objects from a recipe; ``value_offset`` changes the values, not the shape."""
    variables = [
        KINDS[kind](
            make_array(SHAPES[shape], seed + value_offset, integer=kind == 3),
            **dict(META[meta]),
        )
        for kind, shape, seed, meta in recipe["variables"]
    ]
    types = {"Node": Node, "Other": Other, "List": nnx.List, "Dict": nnx.Dict}
    objects = [types[OBJECT_TYPES[t]]() for t, _ in recipe["objects"]]

    def convert(spec: tuple, top: bool) -> Any:
        tag = spec[0]
        if tag == "static":
            return STATICS[spec[1]]
        if tag == "var":
            return variables[spec[1] % len(variables)] if variables else None
        if tag == "obj":
            return objects[spec[1] % len(objects)] if objects else None
        if tag == "rngs":
            return nnx.Rngs(spec[1] + value_offset)
        if tag == "array":
            # Objects refuse raw arrays, and tuples cannot be updated in place.
            return make_array((2,), spec[1] + value_offset) if top else spec[1]
        if tag == "list":
            return [convert(c, top) for c in spec[1]]
        if tag == "tuple":
            return tuple(convert(c, False) for c in spec[1])
        if tag == "dict":
            return {k: convert(c, top) for k, c in spec[1]}
        raise AssertionError(spec)

    for obj, (_, children) in zip(objects, recipe["objects"]):
        for i, c in enumerate(children):
            value = convert(c, False)
            if isinstance(obj, nnx.List):
                obj.append(value)
            elif isinstance(obj, nnx.Dict):
                obj[f"k{i}"] = value
            else:
                setattr(obj, f"a{i}", value)
    root = recipe["root"]
    if root[0] == "array":  # an array alone is not a graph one can update
        root = ("list", [root])
    return convert(root, True)


# -- an independent structural walk ---------------------------------------------------


IDENTITY_TYPES = (nnx.Pytree, nnx.Variable, list, dict)


def children(x: Any) -> list[tuple[Any, Any]]:
    """The (key, child) pairs of a graph node, read through public behaviour."""
    if isinstance(x, nnx.List):
        return list(enumerate(x))
    if isinstance(x, nnx.Dict):
        return list(x.items())
    if isinstance(x, nnx.Pytree):
        return [(k, v) for k, v in vars(x).items() if not k.startswith("_nnx_")]
    if isinstance(x, (list, tuple)):
        return list(enumerate(x))
    if isinstance(x, dict):
        return list(x.items())
    return []


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def as_numpy(x: Any) -> np.ndarray:
    if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def arrays_equal(a: Any, b: Any) -> bool:
    a, b = as_numpy(a), as_numpy(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def same_graph(
    a: Any,
    b: Any,
    *,
    fresh: bool = True,
    var_fn: Callable[[Any], Any] = lambda v: v,
    array_fn: Callable[[Any], Any] | None = None,
) -> None:
    """Assert ``b`` is a structural copy of ``a``.

    Same types, static values, child names and order; Variables of the same kind
    with equal metadata and ``var_fn(value in a)`` equal to the value in ``b``
    (``array_fn``, default ``var_fn``, for raw arrays); the same identity pattern
    (a bijection between the objects of ``a`` and those of ``b``); with ``fresh``,
    no object of ``b`` is an object of ``a``.
    """
    array_fn = var_fn if array_fn is None else array_fn
    a_to_b: dict[int, Any] = {}
    b_to_a: dict[int, Any] = {}

    def walk(x: Any, y: Any, path: tuple) -> None:
        if is_array(x):  # numpy or jax: both are fine, values must match
            assert is_array(y) and arrays_equal(array_fn(x), y), path
            return
        assert type(x) is type(y), (path, type(x), type(y))
        if isinstance(x, IDENTITY_TYPES):
            if id(x) in a_to_b or id(y) in b_to_a:
                assert a_to_b.get(id(x)) is y, f"identity pattern differs at {path}"
                assert b_to_a.get(id(y)) is x, f"identity pattern differs at {path}"
                return
            a_to_b[id(x)] = y
            b_to_a[id(y)] = x
            if fresh:
                assert x is not y, f"aliased object at {path}"
        if isinstance(x, nnx.Variable):
            assert x.get_metadata() == y.get_metadata(), path
            assert arrays_equal(var_fn(x.value), y.value), path
            return
        if not isinstance(x, (nnx.Pytree, list, tuple, dict)):
            assert x == y, (path, x, y)  # a static value
            return
        cx, cy = children(x), children(y)
        assert [k for k, _ in cx] == [k for k, _ in cy], path
        for (k, vx), (_, vy) in zip(cx, cy):
            walk(vx, vy, (*path, k))

    # Both graphs stay alive during the walk, so ids are not reused.
    walk(a, b, ())


def collect_leaves(x: Any) -> list[Any]:
    """Every distinct Variable and raw array reachable from ``x``, each once."""
    seen: set[int] = set()
    out: list[Any] = []
    if x is not None and not isinstance(x, (*IDENTITY_TYPES, tuple)):
        if not list(children(x)):  # a root value: its own leaf, as in flax
            return [x]

    def walk(node):
        if isinstance(node, IDENTITY_TYPES):
            if id(node) in seen:
                return
            seen.add(id(node))
        if isinstance(node, nnx.Variable) or is_array(node):
            out.append(node)
            return
        for _, child in children(node):
            walk(child)

    walk(x)
    return out


def modify(x: Any) -> Any:
    """A new value of the same shape and dtype, different from ``x``."""
    if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(np.asarray(jax.random.key_data(x)) + 1)
    x = np.asarray(x)  # numpy: eager jnp ops would dominate the run time
    return (x * 2 + 1).astype(x.dtype)


# -- properties ---------------------------------------------------------------------


def as_state(s: Any) -> nnx.State:
    """split of a root Variable returns the Variable itself (as flax.nnx does)."""
    return s if isinstance(s, nnx.State) else nnx.State.from_flat([()], [s])


@SETTINGS
@given(recipes())
def test_merge_of_split_reproduces_the_graph(recipe):
    g = build(recipe)
    graphdef, state = nnx.split(g)
    state = as_state(state)
    copy = nnx.merge(graphdef, state, copy=True)
    same_graph(g, copy)
    # one State entry per distinct Variable (and raw array): ties stored once
    assert len(state.leaves()) == len(collect_leaves(g))
    assert nnx.graphdef(copy) == graphdef
    # merging twice with copy=True gives two independent graphs
    same_graph(copy, nnx.merge(graphdef, state, copy=True))
    # without copy (flax's default) the State's own Variables are reused: the
    # merged graph holds g's Variables themselves, the same structure around them
    own = {id(v) for v in collect_leaves(g) if isinstance(v, nnx.Variable)}
    live = nnx.merge(graphdef, state)
    got = [v for v in collect_leaves(live) if isinstance(v, nnx.Variable)]
    assert len(got) == len(own) and all(id(v) in own for v in got)
    same_graph(g, live, fresh=False)


@SETTINGS
@given(recipes())
def test_update_writes_exactly_the_new_values(recipe):
    g = build(recipe)
    if not isinstance(g, (*IDENTITY_TYPES, tuple)):
        return  # a root value is its own leaf: nothing to update in place
    before = nnx.clone(g)
    target = nnx.clone(g)
    target_vars = [v for v in collect_leaves(target) if isinstance(v, nnx.Variable)]
    new_state = jax.tree.map(modify, nnx.state(g))
    nnx.update(target, new_state)
    same_graph(g, target, var_fn=modify)
    same_graph(before, g)  # the source graph is untouched
    # update writes into the existing Variables, it does not replace them
    assert all(
        a is b
        for a, b in zip(
            target_vars,
            [v for v in collect_leaves(target) if isinstance(v, nnx.Variable)],
        )
    )


@SETTINGS
@given(recipes())
def test_clone_is_independent(recipe):
    g = build(recipe)
    snapshot = [  # Variables and arrays (a static root value has nothing to copy)
        (x, as_numpy(x.value if isinstance(x, nnx.Variable) else x))
        for x in collect_leaves(g)
        if isinstance(x, nnx.Variable) or is_array(x)
    ]
    c = nnx.clone(g)
    same_graph(g, c)
    for x in collect_leaves(c):
        if isinstance(x, nnx.Variable):
            x.value = modify(x.value)
    for x, expected in snapshot:
        current = x.value if isinstance(x, nnx.Variable) else x
        np.testing.assert_array_equal(as_numpy(current), expected)
    same_graph(g, c, var_fn=modify, array_fn=lambda x: x)


FILTER_CHOICES = (
    nnx.Param,
    nnx.BatchStat,
    nnx.Cache,
    MyVar,
    MyParam,
    nnx.RngState,
    "k0",
    "a1",
)


def first_match(filters: tuple, path: tuple, leaf: Any) -> int:
    """Which filter a leaf belongs to, computed without nnxlike's filters."""
    kind = leaf.type if isinstance(leaf, nnx.VariableState) else None
    for i, f in enumerate(filters):
        if f is Ellipsis:
            return i
        if isinstance(f, str) and f in path:
            return i
        if isinstance(f, type) and kind is not None and issubclass(kind, f):
            return i
    raise AssertionError("filters end with ...")


@SETTINGS
@given(
    recipes(),
    st.lists(st.sampled_from(FILTER_CHOICES), max_size=4, unique=True),
    st.randoms(use_true_random=False),
)
def test_split_with_filters_partitions(recipe, chosen, rnd: random.Random):
    g = build(recipe)
    filters = (*chosen, ...)
    graphdef, *states = nnx.split(g, *filters)
    states = [as_state(s) for s in states]
    assert len(states) == len(filters)
    full_graphdef, full = nnx.split(g)
    full = as_state(full)
    assert graphdef == full_graphdef
    full_flat = full.flat_dict()
    seen: set[tuple] = set()
    for i, s in enumerate(states):
        for path, leaf in s.flat_state():
            assert path not in seen, f"{path} in two States"
            seen.add(path)
            assert first_match(filters, path, leaf) == i, path
            expected = full_flat[path]
            assert type(leaf) is type(expected)
            if isinstance(leaf, nnx.VariableState):
                assert leaf.type is expected.type
                assert leaf.get_metadata() == expected.get_metadata()
                leaf, expected = leaf.value, expected.value
            if is_array(leaf) or is_array(expected):
                assert arrays_equal(leaf, expected)
            else:  # a root value is its own leaf
                assert leaf == expected
    assert seen == set(full_flat)
    merged_state = nnx.State.merge(*states) if states else nnx.State()
    assert set(merged_state.flat_dict()) == set(full_flat)
    order = list(range(len(states)))
    rnd.shuffle(order)
    copy = nnx.merge(graphdef, *(states[i] for i in order), copy=True)
    same_graph(g, copy)


@SETTINGS
@given(recipes())
def test_graphdef_equal_for_the_same_recipe(recipe):
    g1 = build(recipe)
    g2 = build(recipe, value_offset=1)  # other values, same structure
    gd1, gd2 = nnx.graphdef(g1), nnx.graphdef(g2)
    assert gd1 == gd2
    assert hash(gd1) == hash(gd2)
    # a static attribute changed on one graph makes the GraphDefs differ
    for obj, key in static_slots(g2):
        old = getattr(obj, key)
        setattr(obj, key, ("changed", old))
        assert nnx.graphdef(g2) != gd1
        setattr(obj, key, old)
        assert nnx.graphdef(g2) == gd1
        break


def static_slots(x: Any):
    """(module, attribute name) pairs holding a static value, reachable from ``x``."""
    seen: set[int] = set()

    def is_static(v: Any) -> bool:
        if isinstance(v, tuple):
            return all(is_static(item) for item in v)
        return not isinstance(v, IDENTITY_TYPES) and not is_array(v)

    def walk(node):
        if isinstance(node, IDENTITY_TYPES):
            if id(node) in seen:
                return
            seen.add(id(node))
        for key, child in children(node):
            if isinstance(node, (Node, Other)) and is_static(child):
                yield node, key
            yield from walk(child)

    yield from walk(x)


def has_cycle(x: Any) -> bool:
    def walk(node, stack: frozenset) -> bool:
        if isinstance(node, IDENTITY_TYPES) and id(node) in stack:
            return True
        inner = stack | {id(node)}
        return any(walk(child, inner) for _, child in children(node))

    return walk(x, frozenset())


def has_shared(x: Any, types: tuple) -> bool:
    counts: dict[int, int] = {}

    def walk(node) -> bool:
        if isinstance(node, IDENTITY_TYPES):
            counts[id(node)] = counts.get(id(node), 0) + 1
            if counts[id(node)] > 1:
                return isinstance(node, types)
        return any(walk(child) for _, child in children(node))

    return walk(x)


def reaches(x: Any, predicate: Callable[[Any], bool]) -> bool:
    seen: set[int] = set()

    def walk(node) -> bool:
        if isinstance(node, IDENTITY_TYPES):
            if id(node) in seen:
                return False
            seen.add(id(node))
        return predicate(node) or any(walk(child) for _, child in children(node))

    return walk(x)


CASES = {
    "cycle": has_cycle,
    "shared Variable": lambda g: has_shared(g, (nnx.Variable,)),
    "shared Module": lambda g: has_shared(g, (nnx.Module,)),
    "Rngs": lambda g: reaches(g, lambda n: isinstance(n, nnx.Rngs)),
    "raw array": lambda g: reaches(g, is_array),
    "user kind": lambda g: reaches(g, lambda n: isinstance(n, MyVar)),
    "nnx.List": lambda g: reaches(g, lambda n: isinstance(n, nnx.List)),
    "nnx.Dict": lambda g: reaches(g, lambda n: isinstance(n, nnx.Dict)),
    "plain dict": lambda g: reaches(g, lambda n: type(n) is dict),
    "static attribute": lambda g: next(static_slots(g), None) is not None,
}


def test_recipes_reach_the_interesting_cases():
    """Guard against a strategy that silently stops generating a case."""
    found: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(recipes())
    def collect(recipe):
        g = build(recipe)
        found.update(name for name, pred in CASES.items() if pred(g))

    collect()
    assert found == set(CASES)
