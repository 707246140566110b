"""Tests for cond/switch, while_loop/fori_loop, remat and eval_shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

X = jnp.array([0.5, -1.0])


class Model(nnx.Module):
    def __init__(self, seed=0):
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(seed))
        self.count = nnx.Variable(jnp.array(0))
        self.flag = "a"


def params_of(layer):
    return {"kernel": layer.kernel.value, "bias": layer.bias.value}


def linear_ref(p, x):
    return x @ p["kernel"] + p["bias"]


def up(m, x):
    m.count.value = m.count.value + 1
    m.lin.bias.value = m.lin.bias.value + 1.0
    return m.lin(x)


def down(m, x):
    m.count.value = m.count.value - 1
    return -m.lin(x)


def double(m, x):
    m.lin.kernel.value = m.lin.kernel.value * 2.0
    return 2.0 * m.lin(x)


def pure_up(p, c, x):
    p = {**p, "bias": p["bias"] + 1.0}
    return p, c + 1, linear_ref(p, x)


def pure_down(p, c, x):
    return p, c - 1, -linear_ref(p, x)


# -- cond / switch ----------------------------------------------------------------


@pytest.mark.parametrize("pred", [True, False])
def test_cond_matches_lax_cond_and_writes_back(pred):
    m = Model()
    p, c = params_of(m.lin), m.count.value
    out = nnx.cond(jnp.array(pred), up, down, m, X)
    ref_p, ref_c, ref_out = jax.lax.cond(pred, pure_up, pure_down, p, c, X)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    np.testing.assert_allclose(m.lin.bias.value, ref_p["bias"])
    assert int(m.count.value) == int(ref_c) == (1 if pred else -1)


def test_cond_inside_jit_with_a_traced_predicate():
    m = Model()

    @nnx.jit
    def step(m, x, pred):
        return nnx.cond(pred, up, down, m, x)

    bias0 = m.lin.bias.value
    out_true = step(m, X, jnp.array(True))
    np.testing.assert_allclose(m.lin.bias.value, bias0 + 1.0)
    np.testing.assert_allclose(out_true, linear_ref(params_of(m.lin), X), rtol=1e-6)
    out_false = step(m, X, jnp.array(False))
    np.testing.assert_allclose(out_false, -out_true, rtol=1e-6)
    assert int(m.count.value) == 0


def test_switch_runs_the_selected_branch():
    branches = (up, down, double)
    for index in range(3):
        m = Model()
        p, c = params_of(m.lin), m.count.value

        def pure_double(p, c, x):
            p = {**p, "kernel": p["kernel"] * 2.0}
            return p, c, 2.0 * linear_ref(p, x)

        out = nnx.switch(index, branches, m, X)
        ref_p, ref_c, ref_out = jax.lax.switch(
            index, (pure_up, pure_down, pure_double), p, c, X
        )
        np.testing.assert_allclose(out, ref_out, rtol=1e-6)
        np.testing.assert_allclose(m.lin.kernel.value, ref_p["kernel"])
        np.testing.assert_allclose(m.lin.bias.value, ref_p["bias"])
        assert int(m.count.value) == int(ref_c)


def test_cond_on_rngs_and_variables_directly():
    rngs = nnx.Rngs(0)
    total = nnx.Variable(jnp.array(0.0))

    def draw(rngs, total):
        total.value = total.value + jax.random.uniform(rngs.default())

    def skip(rngs, total):
        pass

    nnx.cond(True, draw, skip, rngs, total)
    expected = jax.random.uniform(jax.random.fold_in(jax.random.key(0), 0))
    np.testing.assert_allclose(total.value, expected)
    assert int(rngs.default.count.value) == 1  # advanced by the taken branch
    nnx.cond(False, draw, skip, rngs, total)
    assert int(rngs.default.count.value) == 1


def test_cond_branches_adding_an_attribute_in_one_branch_only_error():
    m = Model()

    def grows(m, x):
        m.extra = nnx.Variable(jnp.array(0))
        return m.lin(x)

    with pytest.raises(nnx.StructureError, match="different structures"):
        nnx.cond(True, up, grows, m, X)
    assert not hasattr(m, "extra")
    assert int(m.count.value) == 0


def test_cond_branches_changing_a_static_attribute_error():
    m = Model()

    def flips(m, x):
        m.flag = "b"
        return m.lin(x)

    with pytest.raises(nnx.StructureError, match="different structures"):
        nnx.switch(0, (up, flips), m, X)
    assert m.flag == "a"


def test_cond_branches_may_both_add_the_same_attribute():
    m = Model()

    def a(m, x):
        m.extra = nnx.Variable(x * 2.0)

    def b(m, x):
        m.extra = nnx.Variable(x * 3.0)

    nnx.cond(False, a, b, m, X)
    np.testing.assert_allclose(m.extra.value, X * 3.0)


# -- loops ------------------------------------------------------------------------


def test_while_loop_with_an_object_in_the_loop_value():
    m = Model()
    m.lin.bias.value = jnp.ones(3)

    def body(m):
        m.count.value = m.count.value + 1
        m.lin.bias.value = m.lin.bias.value * 2.0
        return m

    out = nnx.while_loop(lambda m: m.count.value < 5, body, m)
    assert out is m
    count, bias = 0, np.ones(3)
    while count < 5:
        count, bias = count + 1, bias * 2.0
    assert int(m.count.value) == count
    np.testing.assert_allclose(m.lin.bias.value, bias)


def test_fori_loop_with_objects_and_arrays_in_the_loop_value():
    m = Model()
    kernel, bias = m.lin.kernel.value, m.lin.bias.value

    def body(i, val):
        m, h = val
        m.count.value = m.count.value + i
        return m, jnp.tanh(m.lin(h)[:2])

    out_m, h = nnx.fori_loop(0, 4, body, (m, X))
    assert out_m is m
    ref_h, ref_count = X, 0
    for i in range(4):
        ref_count += i
        ref_h = jnp.tanh((ref_h @ kernel + bias)[:2])
    np.testing.assert_allclose(h, ref_h, rtol=1e-6)
    assert int(m.count.value) == ref_count


def test_fori_loop_inside_jit_with_a_dropout_stream():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    key = drop.rngs.key.value

    @nnx.jit
    def run(drop):
        def body(i, val):
            d, acc = val
            return d, acc + d(jnp.ones(8))

        return nnx.fori_loop(0, 3, body, (drop, jnp.zeros(8)))[1]

    acc = run(drop)
    assert int(drop.rngs.count.value) == 3
    ref = sum(
        jnp.where(jax.random.bernoulli(jax.random.fold_in(key, t), 0.5, (8,)), 2.0, 0.0)
        for t in range(3)
    )
    np.testing.assert_allclose(acc, ref)


def test_while_loop_structure_change_error():
    m = Model()

    def body(m):
        m.extra = nnx.Variable(jnp.array(0))
        return m

    with pytest.raises(nnx.StructureError, match="while_loop: the body must return"):
        nnx.while_loop(lambda m: m.count.value < 3, body, m)
    assert not hasattr(m, "extra")


def test_fori_loop_structure_change_error():
    m = Model()

    def body(i, m):
        m.flag = "b"
        return m

    with pytest.raises(nnx.StructureError, match="fori_loop: the body must return"):
        nnx.fori_loop(0, 2, body, m)
    assert m.flag == "a"


# -- remat ------------------------------------------------------------------------


def test_remat_gives_the_same_grads_and_writes_back():
    def loss(m, x):
        m.count.value = m.count.value + 1
        return jnp.sum(jnp.sin(m.lin(x)) ** 2)

    m1, m2 = Model(), Model()
    g_plain = nnx.grad(loss)(m1, X)
    g_remat = nnx.grad(nnx.remat(loss))(m2, X)
    ref = jax.grad(lambda p: jnp.sum(jnp.sin(linear_ref(p, X)) ** 2))(params_of(m1.lin))
    for g in (g_plain, g_remat):
        assert set(g.flat_dict()) == {("lin", "kernel"), ("lin", "bias")}
        np.testing.assert_allclose(g["lin"]["kernel"].value, ref["kernel"], rtol=1e-6)
        np.testing.assert_allclose(g["lin"]["bias"].value, ref["bias"], rtol=1e-6)
    assert int(m1.count.value) == int(m2.count.value) == 1


def test_remat_inside_jit_and_static_argnums():
    @nnx.remat(static_argnums=2)
    def layer(m, x, act):
        return act(m.lin(x))

    m = Model()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(layer(m, X, jnp.tanh))))(m)
    ref = jax.grad(lambda p: jnp.sum(jnp.tanh(linear_ref(p, X))))(params_of(m.lin))
    np.testing.assert_allclose(grads["lin"]["kernel"].value, ref["kernel"], rtol=1e-6)
    np.testing.assert_allclose(grads["lin"]["bias"].value, ref["bias"], rtol=1e-6)


# -- eval_shape ----------------------------------------------------------------------


def test_eval_shape_builds_an_abstract_model():
    abstract = nnx.eval_shape(lambda: Model())
    assert type(abstract) is Model and type(abstract.lin) is nnx.Linear
    variables = nnx.variables(abstract).flat_dict()
    assert set(variables) == {("lin", "kernel"), ("lin", "bias"), ("count",)}
    for v in variables.values():
        assert isinstance(v.value, jax.ShapeDtypeStruct)
    assert abstract.lin.kernel.value.shape == (2, 3)
    assert abstract.lin.kernel.value.dtype == jnp.float32
    assert abstract.lin.bias.value.shape == (3,)
    assert abstract.flag == "a"


def test_eval_shape_with_an_argument_leaves_the_caller_untouched():
    m = Model()
    kernel = m.lin.kernel.value

    def f(m, x):
        m.count.value = m.count.value + 1
        m.extra = nnx.Param(jnp.zeros((4, 5)))
        return m, m.lin(x)

    out_m, y = nnx.eval_shape(f, m, X)
    assert isinstance(y, jax.ShapeDtypeStruct) and y.shape == (3,)
    assert out_m is not m
    assert isinstance(out_m.extra.value, jax.ShapeDtypeStruct)
    assert out_m.extra.value.shape == (4, 5)
    # The caller's model: same arrays, same count, no new attribute.
    assert m.lin.kernel.value is kernel
    assert int(m.count.value) == 0 and not hasattr(m, "extra")


# custom_vjp: tests/test_custom_vjp.py


# -- loops keep Variable identity; eval_shape/make_jaxpr without graph updates ------


def test_while_loop_body_replacing_a_variable_is_refused():
    m = Model()

    def body(val):
        m, c = val
        m.lin.kernel = nnx.Param(jnp.zeros_like(m.lin.kernel.value))
        return m, c - 1.0

    with pytest.raises(ValueError, match="Variable identity must be preserved"):
        nnx.while_loop(lambda val: val[1] > 0, body, (m, 2.0))

    # In place is the way: the loop runs and the caller sees the result.
    def body_ok(val):
        m, c = val
        m.lin.kernel[...] = m.lin.kernel[...] * 2.0
        return m, c - 1.0

    k = m.lin.kernel.value
    nnx.while_loop(lambda val: val[1] > 0, body_ok, (m, 2.0))
    np.testing.assert_allclose(m.lin.kernel.value, 4.0 * k)


@pytest.mark.parametrize("graph", [True, False])
def test_eval_shape_without_graph_updates_refuses_aliasing(graph):
    v = nnx.Param(jnp.array(1.0))
    with pytest.raises(ValueError, match="does not support Variable aliasing"):
        nnx.eval_shape(lambda v: v, v, graph=graph, graph_updates=False)
    with pytest.raises(ValueError, match="Duplicate Param"):
        nnx.eval_shape(lambda a, b: None, v, v, graph=graph, graph_updates=False)
    out = nnx.eval_shape(lambda v: v.value * 2, v, graph=graph, graph_updates=False)
    assert out.shape == () and float(v.value) == 1.0


def test_make_jaxpr_refuses_explicit_graph_updates():
    with pytest.raises(ValueError, match="does not support graph_updates=True"):
        nnx.make_jaxpr(lambda m: m, graph=True, graph_updates=True)
    m = nnx.Dict(a=nnx.Param(jnp.array(1.0)))
    jaxpr = nnx.make_jaxpr(lambda m: m["a"][...] * 3.0, graph_updates=False)(m)
    # One input (the Param's array), computing 3 * a.
    assert len(jaxpr.jaxpr.invars) == 1
    outs = jax.core.eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, jnp.array(2.0))
    np.testing.assert_allclose(outs[-1], 6.0)  # after the Variables' arrays


def test_eval_shape_of_hijax_variables_gives_abstract_values():
    with nnx.var_defaults(hijax=True):
        abstract = nnx.eval_shape(lambda: nnx.Linear(1, 2, rngs=nnx.Rngs(0)))
    value = abstract.kernel.get_value()
    assert isinstance(value, jax.ShapeDtypeStruct)
    assert value.shape == (1, 2) and value.dtype == jnp.float32
