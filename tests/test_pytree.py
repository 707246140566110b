"""Objects are JAX pytrees (flax.nnx 0.12): leaves, paths, plain JAX transforms,
``nnx.Pytree``/``nnx.data``/``nnx.static``, raw array attributes, the lost-write
warning, GraphDef as a jit argument, tree mode and the graph switches.

References are plain ``jnp`` formulas over the same arrays read eagerly.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


def keystrs(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(tree)[0]]


class MLP(nnx.Module):
    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(2, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 1, rngs=rngs)
        self.name = "mlp"  # static

    def __call__(self, x):
        return self.out(nnx.relu(self.bn(self.hidden(x))))


def reference(m, x, out_kernel=None):
    """The MLP forward in train mode, by hand, from eagerly read arrays."""
    out_kernel = m.out.kernel[...] if out_kernel is None else out_kernel
    h = x @ m.hidden.kernel[...] + m.hidden.bias[...][None]
    mean, var = h.mean(0)[None], h.var(0)[None]
    h = (h - mean) / jnp.sqrt(var + m.bn.epsilon)
    h = h * m.bn.scale[...][None] + m.bn.bias[...][None]
    return jnp.maximum(h, 0) @ out_kernel + m.out.bias[...][None]


# -- leaves and paths ----------------------------------------------------------------


def test_linear_leaves_and_paths_match_flax():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(m)
    assert len(leaves) == 2
    assert {leaf.shape for leaf in leaves} == {(2, 3), (3,)}
    # flax sorts attributes by name; each Variable adds `.value`
    assert keystrs(m) == [".bias.value", ".kernel.value"]


def test_nested_paths_and_static_attributes():
    m = MLP(rngs=nnx.Rngs(0))
    paths = keystrs(m)
    assert paths[0] == ".bn.bias.value" and ".hidden.kernel.value" in paths
    assert not any("name" in p for p in paths)
    lst = nnx.List([nnx.Linear(1, 1, rngs=nnx.Rngs(0)), 3])
    assert keystrs(lst) == ["[0].bias.value", "[0].kernel.value"]


def test_tree_map_returns_a_new_object_of_the_same_structure():
    m = MLP(rngs=nnx.Rngs(0))
    m2 = jax.tree.map(lambda x: x * 2, m)
    assert type(m2) is MLP and m2 is not m and m2.name == "mlp"
    assert type(m2.hidden.kernel) is nnx.Param and type(m2.bn.mean) is nnx.BatchStat
    np.testing.assert_allclose(m2.hidden.kernel[...], 2 * m.hidden.kernel[...])
    assert jax.tree.structure(m2) == jax.tree.structure(m)
    # attribute order is kept (a state_dict-like State)
    assert list(nnx.state(m2).to_pure_dict()) == ["hidden", "bn", "out"]


# -- plain JAX transforms ----------------------------------------------------------


def test_plain_jit_and_value_and_grad_match_a_hand_written_step():
    m = MLP(rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 2))
    y = jnp.ones((8, 1))

    @jax.jit
    def loss_fn(m, x, y):
        return ((m(x) - y) ** 2).mean(), m  # returns the model: BatchNorm stats kept

    (loss, m_new), grads = jax.value_and_grad(loss_fn, has_aux=True)(m, x, y)
    ref = ((reference(m, x) - y) ** 2).mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    ref_g = jax.grad(lambda k: ((reference(m, x, k) - y) ** 2).mean())(
        m.out.kernel[...]
    )
    np.testing.assert_allclose(grads.out.kernel[...], ref_g, rtol=1e-5, atol=1e-6)
    # the running mean moved in the returned model, not in the input one
    assert not np.allclose(m_new.bn.mean[...], m.bn.mean[...])


def test_plain_vmap_eval_shape_and_device_put():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    xs = jnp.ones((5, 2))
    out = jax.vmap(lambda m, x: m(x), in_axes=(None, 0))(m, xs)
    np.testing.assert_allclose(out, xs @ m.kernel[...] + m.bias[...][None], rtol=1e-6)
    abstract = jax.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    assert type(abstract) is nnx.Linear
    assert abstract.kernel.value.shape == (2, 3)
    placed = jax.device_put(m, jax.devices()[0])
    np.testing.assert_array_equal(placed.kernel[...], m.kernel[...])


def test_scan_over_stacked_layers():
    # A stack of 3 layers built with plain vmap, applied with plain lax.scan.
    keys = jax.random.split(jax.random.key(0), 3)
    stack = jax.vmap(lambda k: nnx.Linear(2, 2, rngs=nnx.Rngs(k)))(keys)
    assert stack.kernel.value.shape == (3, 2, 2)

    def body(x, layer):
        return layer(x), None

    x = jnp.ones((1, 2))
    out, _ = jax.lax.scan(body, x, stack)
    ref = x
    for i in range(3):
        ref = ref @ stack.kernel[...][i] + stack.bias[...][i][None]
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_graphdef_is_a_leafless_hashable_pytree():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    assert jax.tree.leaves(graphdef) == []
    hash(graphdef)

    @jax.jit
    def forward(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    x = jnp.ones((1, 2))
    np.testing.assert_allclose(
        forward(graphdef, state, x), x @ m.kernel[...] + m.bias[...][None], rtol=1e-6
    )


# -- the Pytree API ------------------------------------------------------------------


def test_pytree_data_and_static():
    class Foo(nnx.Pytree):
        def __init__(self):
            self.a = nnx.static("one")
            self.b = nnx.data("two")
            self.n = 3  # static by value
            self.arr = jnp.ones(2)  # data by value

    foo = Foo()
    assert foo.a == "one" and foo.b == "two"
    assert keystrs(foo) == [".arr", ".b"]
    foo2 = jax.tree.map(lambda x: x, foo)
    assert (foo2.a, foo2.n) == ("one", 3)


def test_static_attribute_refuses_arrays_with_flax_message():
    class Foo(nnx.Pytree):
        def __init__(self):
            self.cfg = nnx.static((1, jnp.ones(2)))

    with pytest.raises(ValueError, match=r"Found data in value of type 'tuple'.*cfg"):
        Foo()


def test_data_into_static_attribute_phrases_follow_flax():
    # an attribute made static by an earlier nnx.static(...) assignment
    class Foo(nnx.Pytree):
        def __init__(self):
            self.a = nnx.static(3)

    foo = Foo()
    with pytest.raises(ValueError, match=r"Found data on value of type 'list'.*'a'"):
        foo.a = ["hi", jnp.array(6)]
    assert foo.a == 3  # refused: nothing changed

    # an attribute the class declares static
    @nnx.dataclass
    class Bar(nnx.Pytree):
        a: jax.Array = nnx.static()

    with pytest.raises(
        ValueError, match=r"Found unexpected data on value of type 'ArrayImpl'.*'a'"
    ):
        Bar(a=jnp.array(3))


def test_dataclass_fields_and_annotations():
    @nnx.dataclass
    class Point(nnx.Pytree):
        x: jax.Array
        label: str = nnx.static(default="p")

    p = Point(jnp.ones(2))
    assert keystrs(p) == [".x"] and p.label == "p"


def test_register_data_type_and_is_data():
    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class Box:
        value: int

    class Foo(nnx.Pytree):
        def __init__(self):
            self.box = Box(1)
            self.name = "x"

    assert nnx.is_data(Box(1)) and not nnx.is_data("x") and not nnx.is_data(3)
    assert nnx.is_data(jnp.ones(1)) and nnx.is_data(nnx.Param(1))
    assert jax.tree.leaves(Foo()) == [Box(1)]


def test_slots_are_refused():
    with pytest.raises(TypeError, match=r"does not support __slots__"):

        class Bad(nnx.Pytree):
            __slots__ = ("x",)


def test_object_is_the_non_pytree_flavour():
    class Holder(nnx.Object):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

    h = Holder()
    assert jax.tree.leaves(h) == [h]  # an opaque leaf for plain JAX
    assert list(nnx.state(h).to_pure_dict()) == ["w"]  # a graph node for nnx
    with pytest.raises(ValueError, match="explicitly set to True"):

        class Bad(nnx.Object, pytree=True):
            pass


def test_check_pytree_and_find_duplicates():
    m = nnx.Module()
    m.a = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    m.b = m.a
    nnx.check_pytree(m)
    assert nnx.find_duplicates(m) == [[("a",), ("b",)]]


# -- raw arrays are data --------------------------------------------------------------


class WithArray(nnx.Module):
    def __init__(self):
        self.w = jnp.array([1.0, 2.0])  # a raw array: data, like in flax
        self.p = nnx.Param(jnp.array([3.0]))

    def __call__(self, x):
        return (self.w * x).sum() + self.p[...].sum()


def test_raw_array_attribute_is_state_and_a_leaf():
    m = WithArray()
    state = nnx.state(m)
    np.testing.assert_array_equal(state["w"], [1.0, 2.0])
    assert keystrs(m) == [".p.value", ".w"]
    graphdef, st = nnx.split(m)
    m2 = nnx.merge(graphdef, jax.tree.map(lambda x: x + 1, st))
    np.testing.assert_array_equal(m2.w, [2.0, 3.0])


def test_raw_array_is_written_back_by_nnx_jit_and_trained_by_grad():
    m = WithArray()

    @nnx.jit
    def bump(m):
        m.w = m.w * 2

    bump(m)
    bump(m)
    np.testing.assert_array_equal(m.w, [4.0, 8.0])
    grads = nnx.grad(lambda m: m(jnp.ones(2)), argnums=nnx.DiffState(0, ...))(m)
    np.testing.assert_array_equal(grads["w"], [1.0, 1.0])


# -- no silently lost write ----------------------------------------------------------


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.array(0.0))
        self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))


def test_write_inside_plain_jit_without_return_warns_with_path_and_fix():
    m = Counter()

    @jax.jit
    def f(m, x):
        m.count.value = m.count.value + 1
        return x

    with pytest.warns(nnx.LostWriteWarning) as record:
        f(m, 1.0)
    msg = str(record[0].message)
    assert "Counter.count" in msg and "jax.jit" in msg
    assert "return" in msg and "nnx.jit" in msg
    assert record[0].filename == __file__  # points at the user's call
    assert float(m.count[...]) == 0.0  # the write was indeed lost


def test_optimizer_update_under_plain_jit_names_its_paths():
    m = Counter()
    opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)

    @jax.jit
    def step(m, opt):
        grads = nnx.grad(lambda m: (m.lin(jnp.ones(2)) ** 2).sum())(m)
        opt.update(m, grads)
        return m  # the optimizer is not returned

    with pytest.warns(nnx.LostWriteWarning, match=r"Optimizer\.step"):
        step(m, opt)


def test_vmap_and_grad_writes_are_reported_too():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))
    with pytest.warns(nnx.LostWriteWarning, match=r"Dropout\.rngs.*jax\.vmap"):
        jax.vmap(lambda d, x: d(x), in_axes=(None, 0))(drop, jnp.ones((3, 4)))
    m = Counter()

    def loss(m):
        m.count.value = m.count.value + 1
        return (m.lin(jnp.ones(2)) ** 2).sum()

    with pytest.warns(nnx.LostWriteWarning, match=r"Counter\.count.*jax\.grad"):
        jax.grad(loss)(m)


def test_returning_what_was_written_or_only_reading_is_silent():
    m = Counter()

    @jax.jit
    def f(m):
        m.count.value = m.count.value + 1
        return m

    @jax.jit
    def g(m, x):
        return m.lin(x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2 = f(m)
        g(m, jnp.ones(2))
        nnx.jit(lambda m: m.count.__setitem__(..., m.count[...] + 1))(m)
        gc.collect()
    assert float(m2.count[...]) == 1.0 and float(m.count[...]) == 1.0


# -- tree mode and the switches ----------------------------------------------------


def test_set_graph_mode_plain_context_and_decorator():
    assert nnx.set_graph_mode.current_value() is True
    with nnx.set_graph_mode(False):
        assert nnx.set_graph_mode.current_value() is False
    assert nnx.set_graph_mode.current_value() is True

    @nnx.set_graph_updates(False)
    def inner():
        return nnx.set_graph_updates.current_value()

    assert inner() is False and nnx.set_graph_updates.current_value() is True
    with pytest.raises(TypeError, match="True or False"):
        nnx.set_graph_mode(1)


def test_tree_mode_refuses_shared_references():
    m = nnx.Module()
    m.a = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    m.b = m.a
    nnx.split(m)  # graph mode: fine
    with pytest.raises(
        ValueError, match=r"Duplicate Linear\nfound at paths:\n\n  - a\n  - b"
    ):
        nnx.split(m, graph=False)
    with nnx.set_graph_mode(False):
        with pytest.raises(ValueError, match="nnx.compat.state"):
            nnx.state(m)
    single = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    g1, s1 = nnx.split(single, graph=False)
    np.testing.assert_array_equal(s1["kernel"][...], single.kernel[...])


def test_graph_updates_false_writes_values_and_refuses_structure():
    m = Counter()

    @nnx.jit(graph_updates=False)
    def step(m):
        m.count.value = m.count.value + 1

    step(m)
    step(m)
    assert float(m.count[...]) == 2.0  # values are written back

    @nnx.jit(graph_updates=False)
    def grow(m):
        m.extra = nnx.Param(jnp.ones(1))  # a structural change

    with pytest.raises(nnx.StructureError, match=r"graph_updates=False.*structure"):
        grow(m)
    assert not hasattr(m, "extra")

    @nnx.jit  # graph mode with updates (the default) keeps it
    def grow_ok(m):
        m.extra = nnx.Param(jnp.ones(1))

    grow_ok(m)
    np.testing.assert_array_equal(m.extra[...], [1.0])


def test_tree_mode_transform_refuses_shared_and_compat_forces_graph_mode():
    m = nnx.Module()
    m.a = nnx.Param(jnp.ones(2))
    m.b = m.a
    with nnx.set_graph_mode(False):
        with pytest.raises(ValueError, match=r"Duplicate Param\nfound at paths"):
            nnx.jit(lambda m: m.a[...] + m.b[...])(m)
        out = nnx.compat.jit(lambda m: m.a[...] + m.b[...])(m)
        graphdef, state = nnx.compat.split(m)
    np.testing.assert_array_equal(out, [2.0, 2.0])
    assert list(state.to_pure_dict()) == ["a"]  # the shared Variable, once


def test_bound_methods_are_refused_except_by_jit():
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    for transform in (nnx.vmap, nnx.grad, nnx.remat, nnx.scan):
        with pytest.raises(ValueError, match=r"bound methods of nnx objects"):
            transform(m.__call__)
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(
        nnx.jit(m.__call__)(x), x @ m.kernel[...] + m.bias[...][None], rtol=1e-6
    )


def test_vmap_out_axes_state_axes_for_new_variables():
    axes = nnx.StateAxes({nnx.BatchStat: 0, ...: None})

    @nnx.vmap(in_axes=None, out_axes=axes, axis_size=3, split_rngs=False)
    def make(rngs):
        return nnx.BatchNorm(2, rngs=rngs)

    bn = make(nnx.Rngs(0))
    assert bn.mean.shape == (3, 2)  # mapped: one row per lane
    assert bn.scale.shape == (2,)  # broadcast: Params are the same in every lane


def test_prefix_gives_per_variable_axes_to_vmap():
    d = {"a": nnx.Param(jnp.array(2.0)), "b": nnx.BatchStat(jnp.arange(3.0))}
    axes = nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0})
    assert axes == {"a": None, "b": 0}
    out = nnx.vmap(lambda d: d["a"][...] * d["b"][...], in_axes=(axes,))(d)
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    m_axes = nnx.prefix(m, lambda path, v: 0 if path[-1] == "bias" else None)
    xs = nnx.vmap(lambda m: m.bias[...] * 0 + 1.0, in_axes=(m_axes,))(
        jax.tree.map(lambda x: jnp.stack([x, x]) if x.ndim == 1 else x, m)
    )
    assert xs.shape == (2, 3)


def test_map_and_recursive_map():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v[...])), m)
    assert float(jnp.abs(zeros.kernel[...]).sum()) == 0.0
    assert float(jnp.abs(m.kernel[...]).sum()) > 0  # the input is untouched
    seen = []

    def f(path, x):
        seen.append((path, type(x).__name__))
        return x.replace(x[...] * 2) if isinstance(x, nnx.Param) else x

    m2 = nnx.recursive_map(f, m)
    np.testing.assert_allclose(m2.kernel[...], 2 * m.kernel[...])
    assert seen[-1] == ((), "Linear") and (("kernel",), "Param") in seen


def test_list_items_marked_data_or_static():
    ls = nnx.List([nnx.data(1), nnx.static("hello"), nnx.data(jnp.array(2.0))])
    leaves, treedef = jax.tree.flatten(ls)
    assert leaves[0] == 1 and float(leaves[1]) == 2.0 and len(leaves) == 2
    back = jax.tree.unflatten(treedef, [10, jnp.array(20.0)])
    assert back[0] == 10 and back[1] == "hello" and float(back[2]) == 20.0
    assert nnx.List([6, 7]) == [6, 7] and nnx.List([6, 7]) != [6, 8]


def test_prefix_in_tree_mode_is_a_pytree_prefix_for_plain_and_nnx_vmap():
    class Stack(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(12.0).reshape(4, 3))
            self.scale = nnx.BatchStat(jnp.array(2.0))

    m = Stack()
    axes = nnx.prefix(m, {nnx.Param: 0, nnx.BatchStat: None}, graph=False)
    assert (axes.w, axes.scale) == (0, None)
    x = jnp.ones(3)
    ref = (m.w[...] * x[None]).sum(1) * 2.0
    for vmap in (jax.vmap, nnx.vmap):
        out = vmap(
            lambda m, x: (m.w[...] * x).sum() * m.scale[...], in_axes=(axes, None)
        )(m, x)
        np.testing.assert_allclose(out, ref)


def test_a_pytree_marked_static_stays_a_value_in_the_graph():
    import collections

    Config = collections.namedtuple("Config", ["width", "act"])

    class Net(nnx.Module):
        def __init__(self, static: bool):
            self.cfg = nnx.static(Config(4, "relu")) if static else Config(4, "relu")
            self.w = nnx.Param(jnp.ones(2))

    marked, plain = nnx.graphdef(Net(True)), nnx.graphdef(Net(False))
    assert "<pytree" not in repr(marked) and "<pytree" in repr(plain)
    assert nnx.merge(marked, nnx.state(Net(True))).cfg == Config(4, "relu")
    leaves = jax.tree.leaves(Net(True))  # the config is not a leaf
    assert len(leaves) == 1 and leaves[0].shape == (2,)


def test_has_data_lists_the_data_leaves_in_order():
    p = nnx.Param(jnp.ones(1))
    x = jnp.zeros(2)
    found = nnx.has_data({"a": [p, "s", 3], "b": (x, p), "c": 0.5})
    assert len(found) == 3 and found[0] is p and found[1] is x and found[2] is p
    assert nnx.has_data(("static", 1, None)) == []


def test_pure_is_a_deprecated_as_pure():
    with pytest.warns(DeprecationWarning, match="use nnx.as_pure"):
        out = nnx.pure({"w": nnx.Param(jnp.ones(2))})
    assert type(out["w"]) is type(jnp.ones(2))


def test_objects_refuse_structural_changes_from_another_trace():
    m = nnx.Dict(a=nnx.Param(jnp.array(1.0)))
    holder = nnx.List([1, 2])
    mod = nnx.Module()
    mod.x = 1
    seen = []

    @jax.jit
    def closure(y):
        for change in (
            lambda: setattr(m, "a", 2),
            lambda: m.__setitem__("b", 3),
            lambda: holder.append(y),
            lambda: holder.__delitem__(0),
            lambda: delattr(mod, "x"),
        ):
            with pytest.raises(nnx.TraceContextError, match="Cannot mutate '"):
                change()
            seen.append(True)
        inner = nnx.Module()  # created in this trace: free to change here
        inner.y = y
        return inner.y

    assert float(closure(jnp.array(2.0))) == 2.0
    assert len(seen) == 5
    assert sorted(m) == ["a"] and list(holder) == [1, 2] and mod.x == 1

    @nnx.jit
    def passed(obj):  # an argument of an nnx transform is a copy: allowed
        obj.x = 5

    passed(mod)
    assert mod.x == 5
    mod.x = 6  # and outside any transform as usual
    assert mod.x == 6
