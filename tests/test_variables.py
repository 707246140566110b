"""Tests for nnxlike._variables: Variable boxes, kinds, metadata, VariableState."""

from __future__ import annotations

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx


class MyVar(nnx.Variable):
    """A user-defined Variable kind."""


# -- value access --------------------------------------------------------------


def test_value_and_ellipsis_access_read_the_same_array():
    x = jnp.arange(3.0)
    v = nnx.Param(x)
    assert v.value is x
    assert v[...] is x
    assert v.get_value() is x
    assert float(v[1]) == 1.0


def test_writes_through_value_item_and_set_value():
    v = nnx.Param(jnp.zeros(3))
    v.value = jnp.ones(3)
    np.testing.assert_array_equal(v.value, np.ones(3))
    v[...] = jnp.full(3, 2.0)
    np.testing.assert_array_equal(v.value, np.full(3, 2.0))
    v[1] = 5.0
    np.testing.assert_array_equal(v.value, np.array([2.0, 5.0, 2.0]))
    v.set_value(jnp.arange(3.0))
    np.testing.assert_array_equal(v.value, np.arange(3.0))


def test_augmented_assignment_through_ellipsis_works():
    v = nnx.Param(jnp.ones(2))
    v[...] += 1
    np.testing.assert_array_equal(v.value, np.full(2, 2.0))


def test_set_value_unwraps_a_variable():
    v = nnx.Param(jnp.zeros(2))
    v.set_value(nnx.Param(jnp.ones(2)))
    assert isinstance(v.value, jax.Array)
    np.testing.assert_array_equal(v.value, np.ones(2))


def test_constructing_from_a_variable_copies_value_and_metadata():
    a = nnx.Param(jnp.ones(2), note="a")
    b = nnx.BatchStat(a, extra=1)
    assert type(b) is nnx.BatchStat
    assert b.value is a.value
    assert (b.note, b.extra) == ("a", 1)


@pytest.mark.parametrize("op", ["+=", "-=", "*=", "/=", "@=", "**=", "|="])
def test_inplace_operator_raises_with_the_fix(op):
    v = nnx.Param(jnp.ones((2, 2)))
    with pytest.raises(TypeError, match=r"In-place `\S+=` on a Param") as info:
        exec(f"v {op} 1", {}, {"v": v})
    assert f"`var[...] {op} x`" in str(info.value)
    assert op[:-1] in str(info.value)


# -- metadata --------------------------------------------------------------------


def test_metadata_is_readable_as_attributes_and_settable():
    v = nnx.Param(jnp.ones(1), sharding=("a",), note="n")
    assert v.sharding == ("a",)
    assert v.note == "n"
    v.note = "m"
    v.set_metadata(other=3)
    assert v.get_metadata(exclude_required=True) == {
        "sharding": ("a",),
        "note": "m",
        "other": 3,
    }
    # get_metadata returns a copy
    v.get_metadata()["note"] = "changed"
    assert v.note == "m"


def test_unknown_attribute_error_lists_metadata_keys():
    v = nnx.Param(jnp.ones(1), note="n")
    with pytest.raises(
        AttributeError, match=r"Param has no attribute or metadata 'nope'.*'note'"
    ):
        v.nope  # noqa: B018


def test_dunder_lookups_do_not_hit_metadata():
    v = nnx.Param(jnp.ones(1))
    assert not hasattr(v, "__wrapped__")


def test_replace_makes_a_new_variable_of_the_same_kind():
    v = nnx.BatchStat(jnp.zeros(2), note="n")
    r = v.replace(jnp.ones(2))
    assert type(r) is nnx.BatchStat and r is not v
    np.testing.assert_array_equal(r.value, np.ones(2))
    assert r.note == "n"
    r2 = v.replace(note="m")
    assert r2.value is v.value and r2.note == "m" and v.note == "n"


# -- kinds ---------------------------------------------------------------------------


def test_kind_hierarchy():
    for kind in (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.OptState):
        assert issubclass(kind, nnx.Variable)
    assert issubclass(nnx.RngKey, nnx.RngState)
    assert issubclass(nnx.RngCount, nnx.RngState)
    assert issubclass(nnx.Perturbation, nnx.Intermediate)
    assert isinstance(MyVar(1.0), nnx.Variable)


# -- array-like behaviour ------------------------------------------------------------


def test_operators_delegate_to_the_value():
    x = jnp.array([1.0, 2.0, 3.0])
    v = nnx.Param(x)
    np.testing.assert_array_equal(v + 1, x + 1)
    np.testing.assert_array_equal(1 + v, x + 1)
    np.testing.assert_array_equal(v - v, x - x)
    np.testing.assert_array_equal(2 - v, 2 - x)
    np.testing.assert_array_equal(v * 2, x * 2)
    np.testing.assert_array_equal(v / 2, x / 2)
    np.testing.assert_array_equal(6 / v, 6 / x)
    np.testing.assert_array_equal(v // 2, x // 2)
    np.testing.assert_array_equal(v % 2, x % 2)
    np.testing.assert_array_equal(v**2, x**2)
    np.testing.assert_array_equal(2**v, 2**x)
    np.testing.assert_array_equal(v @ v, x @ x)
    np.testing.assert_array_equal(-v, -x)
    np.testing.assert_array_equal(+v, x)
    np.testing.assert_array_equal(abs(-v), x)
    np.testing.assert_array_equal(v > 1, x > 1)
    np.testing.assert_array_equal(v <= 2, x <= 2)
    i = nnx.Variable(jnp.array([1, 2]))
    np.testing.assert_array_equal(i & 1, jnp.array([1, 2]) & 1)
    np.testing.assert_array_equal(i | 4, jnp.array([5, 6]))
    np.testing.assert_array_equal(i ^ 1, jnp.array([0, 3]))
    np.testing.assert_array_equal(i << 1, jnp.array([2, 4]))
    np.testing.assert_array_equal(i >> 1, jnp.array([0, 1]))
    np.testing.assert_array_equal(~i, ~jnp.array([1, 2]))


def test_shape_dtype_len_iter_and_conversions():
    v = nnx.Param(jnp.zeros((2, 3), jnp.float32))
    assert v.shape == (2, 3)
    assert v.dtype == jnp.float32
    assert v.ndim == 2 and v.size == 6 and len(v) == 2
    assert v.T.shape == (3, 2)
    assert v.astype(jnp.int32).dtype == jnp.int32
    assert [row.shape for row in v] == [(3,), (3,)]
    np.testing.assert_array_equal(np.asarray(v), np.zeros((2, 3)))
    np.testing.assert_array_equal(jnp.asarray(v), np.zeros((2, 3)))
    s = nnx.Variable(jnp.float32(2.5))
    assert float(s) == 2.5 and int(s) == 2 and bool(s)
    i = nnx.Variable(2)
    assert [10, 11, 12][i] == 12


def test_value_equality_and_identity_hashing():
    x = jnp.array([1.0, 2.0])
    a, b = nnx.Param(x), nnx.Param(jnp.array([1.0, 3.0]))
    # == and != are elementwise on the values (flax.nnx 0.12)
    np.testing.assert_array_equal(a == b, np.array([True, False]))
    np.testing.assert_array_equal(a != b, np.array([False, True]))
    np.testing.assert_array_equal(a == x, np.array([True, True]))
    assert bool(nnx.Param(2.0) == 2.0)
    # hashing is by identity: equal values, distinct keys
    c = nnx.Param(x)
    assert len({a, c}) == 2 and {a: 1}[a] == 1 and hash(a) != hash(c)


# -- copying -----------------------------------------------------------------------


def test_copy_deepcopy_and_pickle_make_new_variables():
    v = nnx.Param(np.arange(3.0), note=["n"])
    c = copy.copy(v)
    d = copy.deepcopy(v)
    p = pickle.loads(pickle.dumps(v))
    for new in (c, d, p):
        assert type(new) is nnx.Param and new is not v
        np.testing.assert_array_equal(new.value, v.value)
        assert new.note == ["n"]
    assert d.note is not v.note
    p.value = np.zeros(3)  # the unpickled Variable is writable here
    np.testing.assert_array_equal(v.value, np.arange(3.0))


# -- pytrees (flax.nnx 0.12) --------------------------------------------------------


@pytest.mark.parametrize("kind", [nnx.Variable, nnx.Param, nnx.BatchStat, MyVar])
def test_variables_are_pytrees_over_their_value(kind):
    v = kind(jnp.arange(3.0), note="n")
    (path, leaf), *rest = jax.tree.flatten_with_path(v)[0]
    assert not rest and jax.tree_util.keystr(path) == ".value"
    np.testing.assert_array_equal(leaf, np.arange(3.0))
    doubled = jax.tree.map(lambda x: 2 * x, v)
    assert type(doubled) is kind and doubled is not v and doubled.note == "n"
    np.testing.assert_array_equal(doubled.value, 2 * np.arange(3.0))
    np.testing.assert_array_equal(v.value, np.arange(3.0))  # the original is kept
    out = jax.jit(lambda x: x.value.sum() * 2)(v)
    assert float(out) == 6.0
    g = jax.grad(lambda x: (x.value**2).sum())(v)
    assert type(g) is kind
    np.testing.assert_allclose(g.value, 2 * np.arange(3.0))


def test_jnp_function_reads_a_variable():
    v = nnx.Param(jnp.ones(2))
    assert float(jnp.sum(v)) == 2.0 == float(jnp.sum(v[...]))


# -- trace context ---------------------------------------------------------------------


def test_reading_a_captured_variable_inside_a_trace_is_fine():
    v = nnx.Param(jnp.ones(2))
    jaxpr = jax.make_jaxpr(lambda x: x + v.value)(jnp.ones(2))
    assert jaxpr is not None


@pytest.mark.parametrize(
    "write",
    [
        lambda v, x: setattr(v, "value", x),
        lambda v, x: v.__setitem__(..., x),
        lambda v, x: v.__setitem__(0, x[0]),
        lambda v, x: v.set_value(x),
    ],
    ids=["value", "ellipsis", "index", "set_value"],
)
def test_writing_a_captured_variable_inside_a_trace_raises(write):
    v = nnx.Param(jnp.ones(2))

    def f(x):
        write(v, x)
        return x

    with pytest.raises(
        nnx.TraceContextError,
        match=r"Cannot write Param from inside a JAX transform it was not passed to",
    ) as info:
        jax.make_jaxpr(f)(jnp.zeros(2))
    assert "step(model, x)" in str(info.value)
    assert str(info.value).startswith(  # flax.nnx's phrase, which its tests match
        "Cannot mutate Param from a different trace level."
    )
    np.testing.assert_array_equal(v.value, np.ones(2))  # nothing leaked


def test_trace_context_error_is_an_nnx_error_and_runtime_error():
    assert issubclass(nnx.TraceContextError, nnx.NnxError)
    assert issubclass(nnx.TraceContextError, RuntimeError)


def test_variable_created_inside_a_trace_can_be_written_there():
    def f(x):
        w = nnx.Param(x)
        w.value = w.value * 2
        w[0] = 7.0
        return w.value

    out = jax.jit(f)(jnp.ones(2))
    np.testing.assert_array_equal(out, np.array([7.0, 2.0]))


# -- VariableState ---------------------------------------------------------------------


def test_to_state_and_back():
    v = nnx.Param(jnp.arange(2.0), note="n")
    s = v.to_state()
    assert isinstance(s, nnx.VariableState)
    assert s.type is nnx.Param and s.note == "n"
    assert s.get_metadata(exclude_required=True) == {"note": "n"}
    assert s.shape == (2,) and s.dtype == jnp.float32
    assert s[...] is s.value and float(s[1]) == 1.0
    back = s.to_variable()
    assert type(back) is nnx.Param and back is not v
    assert back.note == "n" and back.value is v.value
    back.value = jnp.zeros(2)  # independent of the original
    np.testing.assert_array_equal(v.value, np.arange(2.0))


def test_variable_state_mutation_and_replace():
    s = nnx.Cache(jnp.zeros(3), **{"a": 1})
    s[...] = jnp.ones(3)
    s[0] = 5.0
    np.testing.assert_array_equal(s.get_value(), np.array([5.0, 1.0, 1.0]))
    s.set_value(jnp.zeros(3))
    r = s.replace(jnp.ones(3))
    assert r.type is nnx.Cache and r.a == 1
    np.testing.assert_array_equal(s.value, np.zeros(3))
    np.testing.assert_array_equal(jnp.asarray(r), np.ones(3))


def test_state_equality_is_by_kind_metadata_and_value():
    def st(v):
        return nnx.State({"a": v})

    a = st(nnx.Param(jnp.ones(2), m=1))
    assert a == st(nnx.Param(jnp.ones(2), m=1))
    assert a != st(nnx.BatchStat(jnp.ones(2), m=1))
    assert a != st(nnx.Param(jnp.ones(2), m=2))
    assert a != st(nnx.Param(jnp.zeros(2), m=1))
    assert a.__eq__(1) is NotImplemented
    # Variables themselves hash by identity (usable as dict keys and set members).
    v = nnx.Param(jnp.ones(2))
    assert {v: 1}[v] == 1 and hash(v) == object.__hash__(v)


def test_state_equality_of_typed_keys():
    def key_state(seed):
        return nnx.State({"k": nnx.RngKey(jax.random.key(seed))})

    assert key_state(0) == key_state(0)
    assert key_state(0) != key_state(1)
    assert nnx.state(nnx.Rngs(0)) == nnx.state(nnx.Rngs(0))


def test_unknown_attribute_names_the_kind():
    s = nnx.Param(1.0)
    with pytest.raises(AttributeError, match=r"Param has no attribute or metadata"):
        s.zz  # noqa: B018


def test_variable_state_is_a_pytree_over_its_value():
    s = nnx.Param(jnp.arange(2.0), **{"note": "n"})
    doubled = jax.tree.map(lambda x: 2 * x, s)
    assert isinstance(doubled, nnx.VariableState)
    assert doubled.type is nnx.Param and doubled.note == "n"
    np.testing.assert_array_equal(doubled.value, np.array([0.0, 2.0]))
    ((path, leaf),) = jax.tree_util.tree_flatten_with_path(s)[0]
    assert path == (jax.tree_util.GetAttrKey("value"),)
    assert leaf is s.value
    # kind and metadata are static: they are part of the treedef
    t1 = jax.tree.structure(s)
    assert t1 == jax.tree.structure(nnx.Param(0.0, **{"note": "n"}))
    assert t1 != jax.tree.structure(nnx.Cache(0.0, **{"note": "n"}))
    assert t1 != jax.tree.structure(nnx.Param(0.0, **{"note": "m"}))


def test_variable_state_passes_through_jit():
    s = nnx.Param(jnp.ones(2), **{"note": "n"})
    out = jax.jit(lambda s: s.replace(s.value + 1))(s)
    assert out.type is nnx.Param and out.note == "n"
    np.testing.assert_array_equal(out.value, np.full(2, 2.0))


def test_repr_shows_kind_value_and_metadata():
    text = repr(nnx.Param(jnp.ones(2), note="hello"))
    assert text.startswith("Param(")
    assert "note='hello'" in text
    text = repr(nnx.BatchStat(jnp.ones(2)))
    assert text.startswith("BatchStat(")


# -- flax.nnx 0.12 Variable API ------------------------------------------------------


def test_required_metadata_and_set_metadata_forms():
    v = nnx.Variable(jnp.array(1.0))
    assert v.get_metadata() == {"hijax": False, "ref": False, "eager_sharding": True}
    v.set_metadata(a=1)
    v.set_metadata("b", 2)
    assert v.get_metadata("b") == 2 and v.get_metadata("x", 10) == 10
    v.set_metadata({"c": 3})
    assert v.get_metadata(exclude_required=True) == {"c": 3}
    assert v.has_metadata("c") and not v.has_metadata("a")
    v.del_metadata("c")
    assert not v.has_metadata("c")
    with pytest.raises(ValueError, match="Cannot change `ref`"):
        v.set_metadata(ref=True)
    with pytest.raises(KeyError, match="get_metadata"):
        v.get_metadata("absent")
    # defaults are not stored, so ordinary GraphDefs are unchanged
    assert nnx.graphdef(nnx.Param(1.0)) == nnx.graphdef(nnx.Param(2.0))


def test_ref_variable_writes_leave_plain_jit():
    v = nnx.Variable(jnp.array([1.0, 2.0]), ref=True)
    assert v.ref and isinstance(v.get_raw_value(), jax.Ref)

    @jax.jit
    def f(v, x):
        v[...] = v[...] * x
        v[0] = 0.0
        return v[...].sum()

    out = f(v, 3.0)
    np.testing.assert_allclose(v[...], np.array([0.0, 6.0]))
    assert float(out) == 6.0
    np.testing.assert_allclose(v + 1, np.array([1.0, 7.0]))
    c = v.copy(ref=False)
    assert not c.ref and not isinstance(c.get_raw_value(), jax.Ref)
    with pytest.raises(ValueError, match="ref=True instead"):
        nnx.Param(jax.new_ref(jnp.ones(1)))


def test_var_defaults_context_decorator_and_plain():
    with nnx.var_defaults(ref=True):
        assert nnx.var_defaults().ref and nnx.Param(1.0).ref
        assert not nnx.Param(1.0, ref=False).ref
    assert not nnx.var_defaults().ref and not nnx.Param(1.0).ref

    @nnx.var_defaults(hijax=True, ref=True)
    def f():
        return nnx.var_defaults()

    d = f()
    assert d.hijax and d.ref and not nnx.var_defaults().hijax
    assert list(nnx.var_defaults()) == ["hijax", "ref"] and len(d) == 2
    with nnx.use_eager_sharding(False):
        assert not nnx.using_eager_sharding()
        assert nnx.Param(1.0).eager_sharding is False
    assert nnx.using_eager_sharding()
    with pytest.raises(TypeError, match="True or False"):
        nnx.var_defaults(ref=1)


def test_generic_subscription_forwarding_and_copy():
    import typing

    p = nnx.Param[jax.Array](jnp.arange(6.0).reshape(2, 3))
    assert type(p) is nnx.Param and typing.get_args(nnx.Variable[nnx.A]) == (nnx.A,)
    np.testing.assert_array_equal(p.reshape(3, 2), jnp.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(p.at[0, 0].set(9.0)[0], jnp.array([9.0, 1.0, 2.0]))
    assert p.sharding == p[...].sharding
    q = p.copy(jnp.zeros(2), note="n")
    assert q.note == "n" and q.shape == (2,) and p.shape == (2, 3)
    r = nnx.Param.from_metadata(1.0, {"note": "x", "hijax": False, "ref": False})
    assert r.get_metadata(exclude_required=True) == {"note": "x"}
    a = nnx.Param(1.0)
    a.copy_from(nnx.Param(2.0, note="b"))
    assert float(a[...]) == 2.0 and a.note == "b"
    with pytest.raises(ValueError, match="same Variable kind"):
        a.copy_from(nnx.BatchStat(1.0))
    assert nnx.Param(lambda x: 2 * x)(3) == 6 and 1 in nnx.Variable([1, 2])


def test_out_sharding_is_flax_012s_name_for_sharding_names():
    p = nnx.Param(jnp.ones((2, 2)), out_sharding=("data", None))
    assert p.sharding_names == ("data", None) == p.out_sharding
    assert nnx.Param(jnp.ones(2)).out_sharding is None
    spec = jax.sharding.PartitionSpec("data")
    assert nnx.Param(jnp.ones(2), out_sharding=spec).sharding_names == ("data",)


def test_a_kind_overriding_get_value_is_read_through_it():
    class Plus3(nnx.Param):
        def get_value(self, **kwargs):
            return super().get_value(**kwargs) + 3

    v = Plus3(jnp.array(1))
    assert int(v[...]) == 4 and int(v.value) == 4
    assert int(nnx.Param(jnp.array(1))[...]) == 1  # other kinds read the raw value


def test_set_metadata_only_selects_the_variables():
    class Two(nnx.Module):
        def __init__(self):
            self.v = nnx.Variable(jnp.array(0.0))
            self.p = nnx.Param(jnp.array(1.0))

    m = Two()
    nnx.set_metadata(m, foo="bar")
    nnx.set_metadata(m, differentiable=False, only=nnx.Param)
    assert m.v.get_metadata() == {**nnx.Variable(0.0).get_metadata(), "foo": "bar"}
    assert m.p.get_metadata("differentiable") is False and m.p.foo == "bar"
    nnx.set_metadata(m, "v", only=nnx.Param, note=1)  # both must match: none
    assert not m.v.has_metadata("note") and not m.p.has_metadata("note")


# -- hijax=True Variables: the value lives in a JAX hijax box ---------------------


def test_hijax_variable_writes_reach_the_caller_through_plain_jax():
    v = nnx.Param(jnp.array(1), note="hi", hijax=True)
    assert v.hijax and type(v) is nnx.Param and isinstance(v, nnx.Param)
    assert isinstance(v, nnx.variablelib.HijaxVariable)
    assert not isinstance(nnx.Param(1), nnx.variablelib.HijaxVariable)

    @jax.jit
    def step(v, a):
        assert v.note == "hi" and v.hijax
        v[...] = a
        v[...] += 5
        return v + 2

    assert int(step(v, 10)) == 17 and int(v[...]) == 15  # plain jax.jit: kept
    low = nnx.with_vars(v, hijax=False)
    assert not low.hijax and int(low[...]) == 15
    assert not isinstance(low.get_raw_value(), jax.Ref)

    # a pytree value whose structure changes inside the trace (a new key)
    metrics = nnx.Variable({"a": jnp.array(0)}, hijax=True)

    @jax.jit
    def log(x, metrics):
        metrics["a"] += 1
        metrics["x_sum"] = jnp.sum(x)

    log(jnp.ones((2, 3)), metrics)
    assert sorted(metrics[...]) == ["a", "x_sum"] and "x_sum" in metrics
    assert int(metrics["a"]) == 1 and float(metrics["x_sum"]) == 6.0


def test_hijax_variable_captured_by_closure_under_grad_and_nnx_jit():
    v = nnx.Variable(jnp.array(2.0), hijax=True)

    def loss(x):  # writes a captured hijax Variable: allowed, and kept
        v[...] = jax.lax.stop_gradient(x * 3)
        return x**2 + v[...]

    np.testing.assert_allclose(jax.grad(loss)(jnp.array(4.0)), 8.0)  # d(x^2)/dx
    np.testing.assert_allclose(v[...], 12.0)
    plain = nnx.Variable(jnp.array(2.0))
    with pytest.raises(nnx.TraceContextError):  # a plain one keeps the guard
        jax.grad(lambda x: (plain.set_value(x), x)[1])(jnp.array(1.0))

    @nnx.jit
    def inc(v):
        v[...] += 1.0
        return v[...] * 2

    np.testing.assert_allclose(inc(v), 26.0)
    np.testing.assert_allclose(inc(v), 28.0)
    np.testing.assert_allclose(v[...], 14.0)


@pytest.mark.parametrize("hijax", [True, False])
@pytest.mark.parametrize("ref", [True, False])
def test_hijax_and_ref_flags_from_every_constructor(hijax, ref):
    made = [
        nnx.Variable(jnp.array(1), hijax=hijax, ref=ref),
        nnx.Variable(jnp.array(1)).copy(hijax=hijax, ref=ref),
        nnx.with_vars(nnx.Variable(jnp.array(1)), hijax=hijax, ref=ref),
    ]
    for v in made:
        assert (v.hijax, v.ref) == (hijax, ref)
        assert isinstance(v, nnx.variablelib.HijaxVariable) == hijax
        assert isinstance(v.get_raw_value(), jax.Ref) == ref
        assert int(v[...]) == 1 and v.shape == () and v.dtype == jnp.int32
    with nnx.var_defaults(hijax=True):
        assert nnx.Param(1.0).hijax and not nnx.Param(1.0, hijax=False).hijax


def test_optimizer_over_hijax_model_inside_plain_jit_matches_optax():
    with nnx.var_defaults(hijax=True):
        w = nnx.Variable(jnp.asarray(np.linspace(0.0, 1.0, 8, dtype=np.float32)))
        model = nnx.Dict(w=w, count=nnx.Variable(jnp.array(0)))
        wrt = lambda path, x: path[-1] == "w"  # noqa: E731
        optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=wrt)
    w0 = np.asarray(model["w"][...])

    @jax.jit
    def train_step(model, optimizer):
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest)
            m["count"][...] += 1
            return jnp.sum(m["w"][...] ** 2)

        low = nnx.with_vars(params, hijax=False)
        grads = jax.grad(loss_fn)(low)
        optimizer.update(params, grads)

    train_step(model, optimizer)
    tx = optax.adam(0.1)
    updates, _ = tx.update({"w": 2 * w0}, tx.init({"w": w0}), {"w": w0})
    np.testing.assert_allclose(model["w"][...], w0 + updates["w"], rtol=1e-6)
    assert int(model["count"][...]) == 1 and int(optimizer.step[...]) == 1


def test_hijax_variable_displays_and_counts_its_boxed_value():
    v = nnx.Param(jnp.ones(2), hijax=True, tag="x")
    text = repr(nnx.Dict(a=v))
    assert "Param: 2 (8 B)" in text and "value=<jax.Array([1., 1.]" in text
    assert "Box" not in text


@pytest.mark.parametrize("kind", ["ref", "hijax"])
def test_clone_gives_ref_and_hijax_variables_their_own_storage(kind):
    model = nnx.Dict(a=nnx.Param(jnp.zeros(2), **{kind: True}))
    copy_ = nnx.clone(model)
    assert getattr(copy_["a"], kind)
    copy_["a"][...] = jnp.ones(2)
    np.testing.assert_array_equal(model["a"][...], np.zeros(2))  # untouched
    np.testing.assert_array_equal(copy_["a"][...], np.ones(2))
    shared = nnx.clone(model, variables=False)  # same Variables: same storage
    shared["a"][...] = jnp.full(2, 3.0)
    np.testing.assert_array_equal(model["a"][...], np.full(2, 3.0))
