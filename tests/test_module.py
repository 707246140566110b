"""Tests for nnxlike._module, _object and _containers: Modules and containers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx
from nnxlike import _tracking


class Scale(nnx.Module):
    """y = x * w, with a mode flag like Dropout's."""

    def __init__(self, w: float = 2.0):
        self.w = nnx.Param(jnp.asarray(w))
        self.deterministic = False

    def __call__(self, x):
        self.sow(nnx.Intermediate, "seen", x)
        return x * self.w.value


class Norm(nnx.Module):
    def __init__(self):
        self.mean = nnx.BatchStat(jnp.zeros(()))
        self.use_running_average = False


class Net(nnx.Module):
    def __init__(self):
        self.a = Scale(2.0)
        self.blocks = [Scale(3.0), Norm()]
        self.heads = {"x": Scale(5.0)}
        self.rate = 0.5

    def __call__(self, x):
        for block in (self.a, self.blocks[0], self.heads["x"]):
            x = block(x)
        return x


# -- attributes ------------------------------------------------------------------


def test_module_builds_eagerly_and_calls():
    net = Net()
    assert float(net.a.w.value) == 2.0
    np.testing.assert_allclose(net(jnp.ones(2)), np.full(2, 30.0))


def test_plain_list_and_dict_attributes_become_nnx_containers():
    net = Net()
    assert type(net.blocks) is nnx.List
    assert type(net.heads) is nnx.Dict
    m = nnx.Module()
    m.nested = [[nnx.Param(jnp.ones(1))], {"k": [1, 2]}]
    assert type(m.nested[0]) is nnx.List
    assert type(m.nested[1]) is nnx.Dict
    assert type(m.nested[1]["k"]) is nnx.List
    m.t = (1, [2])  # tuples are values: kept as they are
    assert type(m.t) is tuple and type(m.t[1]) is list


def test_static_attributes_are_kept_as_is():
    m = nnx.Module()
    m.n, m.name, m.shape, m.f = 3, "x", (2, 3), jnp.float32
    assert (m.n, m.name, m.shape, m.f) == (3, "x", (2, 3), jnp.float32)


def test_structure_version_bumps_only_for_tracked_objects_and_not_on_writes():
    m = Scale()
    v0 = _tracking.STRUCTURE_VERSION[0]
    m.extra = 1  # not yet seen by a transform
    assert _tracking.STRUCTURE_VERSION[0] == v0
    nnx._graph.flatten(m, track=True)
    m.w.value = jnp.asarray(4.0)  # a value write is never structural
    assert _tracking.STRUCTURE_VERSION[0] == v0
    m.extra = 2
    assert _tracking.STRUCTURE_VERSION[0] == v0 + 1
    del m.extra
    assert _tracking.STRUCTURE_VERSION[0] == v0 + 2
    lst = nnx.List([1])
    nnx._graph.flatten(lst, track=True)
    lst.append(2)
    assert _tracking.STRUCTURE_VERSION[0] == v0 + 3


# -- nnx.jit ------------------------------------------------------------------


def test_nnx_jit_is_the_fix():
    m = Scale(2.0)
    out = nnx.jit(lambda m, x: m(x))(m, jnp.ones(2))
    np.testing.assert_allclose(out, np.full(2, 2.0))
    assert len(m.seen.value) == 1  # the sow inside jit was written back


# -- iteration ---------------------------------------------------------------------


def test_iter_modules_is_post_order_with_paths():
    net = Net()
    paths = [(p, type(m).__name__) for p, m in net.iter_modules()]
    assert paths == [
        (("a",), "Scale"),
        (("blocks", 0), "Scale"),
        (("blocks", 1), "Norm"),
        (("heads", "x"), "Scale"),
        ((), "Net"),
    ]
    assert [p for p, _ in nnx.iter_modules(net)] == [p for p, _ in paths]


def test_iter_modules_visits_a_shared_module_once():
    net = Net()
    net.alias = net.a
    assert [p for p, _ in net.iter_modules()].count(("a",)) == 1
    assert ("alias",) not in [p for p, _ in net.iter_modules()]


def test_iter_children_yields_direct_graph_nodes_and_module_children_modules():
    net = Net()
    net.t = 3
    net.z = Scale(7.0)  # defined last, yielded in sorted order (flax)
    net.b = nnx.Param(1.0)
    names = [(k, type(v).__name__) for k, v in nnx.iter_children(net)]
    # Containers (the plain list and dict attributes) are not children: flax
    # sees pytrees there; iter_modules walks into them.
    assert names == [("a", "Scale"), ("b", "Param"), ("z", "Scale")]
    paths = [p for p, _ in nnx.iter_modules(net)]
    assert paths == [("a",), ("blocks", 0), ("blocks", 1), ("heads", "x"), ("z",), ()]
    assert list(net.iter_children()) == list(nnx.iter_children(net))  # flax alias
    assert [k for k, _ in nnx.iter_children(net.a)] == ["w"]  # a Variable
    mods = [(k, type(v).__name__) for k, v in nnx.iter_module_children(net)]
    assert mods == [("a", "Scale"), ("z", "Scale")]
    assert [k for k, _ in nnx.iter_module_children(net.blocks)] == [0, 1]
    with pytest.raises(ValueError, match="iter_children: expected a graph node"):
        list(nnx.iter_children([net]))


# -- modes: set_attributes, train, eval, view ----------------------------------------


def test_set_attributes_everywhere_and_by_filter():
    net = Net()
    net.set_attributes(deterministic=True)
    assert all(m.deterministic for _, m in net.iter_modules() if isinstance(m, Scale))
    net.set_attributes(Norm, use_running_average=True)
    assert net.blocks[1].use_running_average
    net.set_attributes("heads", deterministic=False)
    assert not net.heads["x"].deterministic and net.a.deterministic


def test_set_attributes_missing_raises_unless_told_not_to():
    net = Net()
    with pytest.raises(
        ValueError,
        match=r"Net.set_attributes: Could not find at least one instance of the "
        r"following attributes: \['bogus'\]",
    ):
        net.set_attributes(bogus=1)
    net.set_attributes(bogus=1, raise_if_not_found=False)
    assert not hasattr(net, "bogus")


def test_train_and_eval_flip_flags_and_chain():
    net = Net()
    assert net.eval() is net
    assert net.a.deterministic and net.blocks[1].use_running_average
    assert net.train() is net
    assert not net.a.deterministic and not net.blocks[1].use_running_average
    assert not hasattr(net, "deterministic")  # only set where it exists


# nnx.view, with_attributes, with_vars, view_info: tests/test_views.py


# -- sow / perturb / pop ------------------------------------------------------------


def test_sow_accumulates_and_pop_removes_intermediates():
    net = Net()
    net(jnp.ones(2))
    net(jnp.ones(2))
    assert isinstance(net.a.seen, nnx.Intermediate)
    assert len(net.a.seen.value) == 2
    inter = nnx.pop(net, nnx.Intermediate)
    assert set(inter.to_pure_dict()) == {"a", "blocks", "heads"}
    np.testing.assert_allclose(inter.blocks[0].seen.value[1], np.full(2, 2.0))
    assert not hasattr(net.a, "seen") and not hasattr(net.blocks[0], "seen")
    assert nnx.state(net, nnx.Intermediate) == nnx.State({})


def test_sow_with_reduce_and_init():
    m = nnx.Module()
    for x in (1, 2, 3):
        m.sow(nnx.Intermediate, "total", x, reduce_fn=lambda a, b: a + b, init_fn=int)
    assert m.total.value == 6


def test_sow_errors():
    m = nnx.Module()
    m.sow(nnx.Intermediate, "h", 1)
    with pytest.raises(
        ValueError,
        match=r"Module.sow: attribute 'h' already holds a Intermediate, expected Cache",
    ):
        m.sow(nnx.Cache, "h", 1)
    with pytest.raises(
        TypeError, match=r"Module.sow: variable_type must be a Variable kind"
    ):
        m.sow(int, "k", 1)


def test_perturb_adds_a_zero_variable():
    m = nnx.Module()
    x = jnp.ones(3)
    y = m.perturb("tap", x)
    np.testing.assert_array_equal(y, x)
    assert isinstance(m.tap, nnx.Perturbation)
    np.testing.assert_array_equal(m.tap.value, np.zeros(3))


# -- containers -----------------------------------------------------------------------


def test_list_behaves_like_a_list():
    lst = nnx.List([1, 2, 3])
    assert len(lst) == 3 and list(lst) == [1, 2, 3] and lst[-1] == 3
    lst.append(4)
    lst.insert(0, 0)
    lst[1] = 10
    del lst[2]
    assert list(lst) == [0, 10, 3, 4]
    sub = lst[1:3]
    assert type(sub) is nnx.List and list(sub) == [10, 3]
    lst[0:2] = [7, 8]
    assert list(lst) == [7, 8, 3, 4]
    assert lst.index(3) == 2 and 4 in lst
    lst.extend([5])
    assert lst.pop() == 5


def test_list_refuses_attributes_and_calls():
    lst = nnx.List()
    with pytest.raises(
        AttributeError,
        match=r"nnx.List holds items, not attributes \(tried to set 'x'\)",
    ):
        lst.x = 1
    with pytest.raises(
        TypeError, match=r"nnx.List is not callable; use nnx.Sequential"
    ):
        lst(1)


def test_list_state_paths_are_indices():
    lst = nnx.List([nnx.Param(jnp.ones(1)), 3, nnx.BatchStat(jnp.zeros(1))])
    assert nnx.state(lst).flat_state().paths == ((0,), (2,))


def test_dict_behaves_like_a_dict_with_attribute_access():
    d = nnx.Dict({"a": 1}, b=nnx.Param(jnp.ones(1)))
    assert list(d) == ["a", "b"] and len(d) == 2
    assert d.a == 1 and d["b"] is d.b
    d.c = 3
    d["e"] = [1]
    assert d["c"] == 3 and type(d.e) is nnx.List
    del d.c
    del d["a"]
    assert list(d.keys()) == ["b", "e"]
    assert nnx.state(d).flat_state().paths == (("b",),)


def test_dict_unknown_key():
    d = nnx.Dict(a=1)
    with pytest.raises(
        AttributeError, match=r"nnx.Dict has no key 'zz'; keys: \['a'\]"
    ):
        d.zz  # noqa: B018
    with pytest.raises(KeyError):
        d["zz"]


def test_sequential_chains_and_indexes():
    seq = nnx.Sequential(Scale(2.0), lambda x: x + 1, Scale(3.0))
    np.testing.assert_allclose(seq(jnp.ones(2)), np.full(2, 9.0))
    assert len(seq) == 3 and isinstance(seq[0], Scale)
    assert [p for p, _ in seq.iter_modules()] == [("layers", 0), ("layers", 2), ()]
    assert nnx.state(seq, nnx.Param).flat_state().paths == (
        ("layers", 0, "w"),
        ("layers", 2, "w"),
    )


def test_sequential_passes_all_arguments_to_the_first_layer():
    seq = nnx.Sequential(lambda x, y, scale=1: (x + y) * scale, lambda z: z - 1)
    assert seq(1, 2, scale=3) == 8


def test_empty_sequential_is_the_identity():
    x = jnp.arange(3.0)
    assert nnx.Sequential()(x) is x  # as in flax.nnx
    assert nnx.Sequential()(1, 2) == (1, 2)
    assert nnx.Sequential()() is None and nnx.Sequential()(k=2) == {"k": 2}


def test_module_repr_names_the_class():
    text = repr(Net())
    assert text.startswith("Net(")
    assert "Param: 3 (12 B), BatchStat: 1 (4 B)" in text.splitlines()[0]
    # flax adds the sum over every kind when there are several
    assert "Total: 4 (16 B)" in text.splitlines()[0]


def test_flax_module_paths_are_doors_onto_the_same_names():
    import importlib

    doors = {
        "module": ["Module", "iter_modules", "iter_module_children", "view"],
        "pytreelib": ["Pytree", "data", "static", "has_data", "check_pytree"],
        "object": ["Pytree", "data"],
        "rnglib": ["Rngs", "RngStream", "split_rngs", "fork_rngs"],
        "helpers": ["Sequential", "List", "Dict", "TrainState"],
        "visualization": ["display"],
        "training.optimizer": ["Optimizer", "OptState"],
        "transforms.compilation": ["jit", "shard_map"],
        "transforms.autodiff": ["grad", "value_and_grad", "remat"],
        "transforms.iteration": ["vmap", "scan", "fori_loop"],
        "transforms.transforms": ["cond", "eval_shape"],
    }
    for path, names in doors.items():
        module = importlib.import_module(f"nnxlike.{path}")
        for name in names:
            assert getattr(module, name) is getattr(nnx, name), (path, name)
    metrics = importlib.import_module("nnxlike.training.metrics")
    assert metrics.Average is nnx.metrics.Average
    assert nnx.rnglib.Rngs is nnx.Rngs  # loaded on first attribute access
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        nnx.not_a_module  # noqa: B018


def test_tracers_trace_state_is_valid_only_in_its_trace():
    import pickle

    outside = nnx.tracers.TraceState()
    inside = []

    @jax.jit
    def f(x):
        here = nnx.tracers.TraceState()
        inside.append((outside.is_valid(), here.is_valid(), here == outside))
        return x

    f(1.0)
    assert inside == [(False, True, False)]
    assert outside.is_valid() and outside == nnx.tracers.TraceState()
    assert pickle.loads(pickle.dumps(outside)).is_valid()
    assert jax.tree.leaves(outside) == []
