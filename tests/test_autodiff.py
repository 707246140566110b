"""Tests for ``nnx.grad`` / ``nnx.value_and_grad`` against ``jax.grad``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

X = jnp.array([0.5, -1.0])
Y = jnp.array([1.0, 0.0, -1.0])


def linear_ref(p, x):
    return x @ p["kernel"] + p["bias"]


def params_of(layer):
    return {"kernel": layer.kernel.value, "bias": layer.bias.value}


def assert_state_close(state, ref: dict):
    """``state`` (a State of Params) holds exactly the arrays of the dict ``ref``."""
    assert isinstance(state, nnx.State)
    got = state.to_pure_dict()
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class Block(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.lin = nnx.Linear(2, 3, rngs=rngs)
        self.stat = nnx.BatchStat(jnp.zeros(3))
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        y = self.lin(x)
        self.stat.value = 0.9 * self.stat.value + 0.1 * y
        return self.drop(y)


def loss(model, x, y):
    return jnp.sum((model(x) - y) ** 2)


def ref_loss(p, x, y):
    return jnp.sum((linear_ref(p, x) - y) ** 2)


def test_grad_default_wrt_param_is_a_state_keyed_by_path():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    grads = nnx.grad(loss)(model, X, Y)
    assert list(grads.flat_dict()) == [("kernel",), ("bias",)]
    assert all(v.type is nnx.Param for v in grads.flat_dict().values())
    assert_state_close(grads, jax.grad(ref_loss)(params_of(model), X, Y))


def test_value_and_grad_matches_jax():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    value, grads = nnx.value_and_grad(loss)(model, X, Y)
    ref_value, ref_grads = jax.value_and_grad(ref_loss)(params_of(model), X, Y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    assert_state_close(grads, ref_grads)


def test_nested_model_paths():
    model = nnx.Sequential(
        nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1))
    )
    grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2))(model)
    assert set(grads.flat_dict()) == {
        ("layers", 0, "kernel"),
        ("layers", 0, "bias"),
        ("layers", 1, "kernel"),
        ("layers", 1, "bias"),
    }
    p = [params_of(layer) for layer in model.layers]
    ref = jax.grad(lambda p: jnp.sum(linear_ref(p[1], linear_ref(p[0], X)) ** 2))(p)
    assert_state_close(grads, {"layers": {0: ref[0], 1: ref[1]}})


def test_argnums_tuple_two_models():
    a = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    b = nnx.Linear(3, 1, rngs=nnx.Rngs(1))

    def f(a, b, x):
        return jnp.sum(jnp.sin(b(a(x))))

    ga, gb = nnx.grad(f, argnums=(0, 1))(a, b, X)
    ref_a, ref_b = jax.grad(
        lambda pa, pb, x: jnp.sum(jnp.sin(linear_ref(pb, linear_ref(pa, x)))),
        argnums=(0, 1),
    )(params_of(a), params_of(b), X)
    assert_state_close(ga, ref_a)
    assert_state_close(gb, ref_b)

    # A single int argnums gives one State, as jax gives one gradient.
    gb_only = nnx.grad(f, argnums=1)(a, b, X)
    assert_state_close(gb_only, ref_b)
    gb_neg = nnx.grad(f, argnums=-2)(a, b, X)
    assert_state_close(gb_neg, ref_b)


def test_diffstate_filter_selects_kernel_only():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.PathContains("kernel")))(
        model, X, Y
    )
    assert list(grads.flat_dict()) == [("kernel",)]
    ref = jax.grad(ref_loss)(params_of(model), X, Y)
    assert_state_close(grads, {"kernel": ref["kernel"]})


def test_diffstate_together_with_a_plain_argument():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    g_model, g_x = nnx.grad(
        loss, argnums=(nnx.DiffState(0, nnx.PathContains("bias")), 1)
    )(model, X, Y)
    ref_p, ref_x = jax.grad(ref_loss, argnums=(0, 1))(params_of(model), X, Y)
    assert_state_close(g_model, {"bias": ref_p["bias"]})
    np.testing.assert_allclose(g_x, ref_x, rtol=1e-6)


def test_wrt_keyword_changes_the_default_filter():
    model = Block()
    model.stat.value = jnp.array([1.0, 2.0, 3.0])
    grads = nnx.grad(
        lambda m: jnp.sum(m.lin(X) ** 2) + jnp.sum(m.stat.value**2), wrt=nnx.BatchStat
    )(model)
    assert list(grads.flat_dict()) == [("stat",)]
    assert grads["stat"].type is nnx.BatchStat
    np.testing.assert_allclose(grads["stat"].value, [2.0, 4.0, 6.0])


def test_has_aux_returns_aux_with_arrays():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

    def f(model, x, y):
        pred = model(x)
        return jnp.sum((pred - y) ** 2), {"pred": pred, "n": 3}

    (value, aux), grads = nnx.value_and_grad(f, has_aux=True)(model, X, Y)
    p = params_of(model)
    np.testing.assert_allclose(value, ref_loss(p, X, Y), rtol=1e-6)
    np.testing.assert_allclose(aux["pred"], linear_ref(p, X), rtol=1e-6)
    assert isinstance(aux["pred"], jax.Array)
    assert aux["n"] == 3
    assert_state_close(grads, jax.grad(ref_loss)(p, X, Y))

    grads2, aux2 = nnx.grad(f, has_aux=True)(model, X, Y)
    assert_state_close(grads2, jax.grad(ref_loss)(p, X, Y))
    np.testing.assert_allclose(aux2["pred"], aux["pred"])


def test_aux_may_return_the_model_itself():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    (_, aux), _ = nnx.value_and_grad(lambda m: (jnp.sum(m(X)), m), has_aux=True)(model)
    assert aux is model
    assert not isinstance(model.kernel.value, jax.core.Tracer)


def test_non_differentiated_state_is_written_back():
    model = Block()
    p = params_of(model.lin)
    key = model.drop.rngs.key.value
    stat_var = model.stat

    grads = nnx.grad(lambda m: loss(m, X, Y))(model)

    # Only the Params are differentiated; paths are inside the argument.
    assert set(grads.flat_dict()) == {("lin", "kernel"), ("lin", "bias")}
    # The BatchStat update made inside the loss landed in the caller's Variable.
    assert model.stat is stat_var
    np.testing.assert_allclose(model.stat.value, 0.1 * linear_ref(p, X), rtol=1e-6)
    # The Dropout stream advanced once; the gradient used that draw's mask.
    assert int(model.drop.rngs.count.value) == 1
    mask = jax.random.bernoulli(jax.random.fold_in(key, 0), 0.5, (3,))

    def ref(p):
        out = jnp.where(mask, linear_ref(p, X) / 0.5, 0.0)
        return jnp.sum((out - Y) ** 2)

    assert_state_close(grads, {"lin": jax.grad(ref)(p)})


def test_parameters_changed_inside_the_loss_are_written_back():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    k0 = model.kernel.value

    def f(m):
        out = jnp.sum(m(X))
        m.kernel.value = m.kernel.value * 0.5  # e.g. an in-place decay
        return out

    grads = nnx.grad(f)(model)
    np.testing.assert_allclose(model.kernel.value, k0 * 0.5)
    np.testing.assert_allclose(grads["kernel"].value, jnp.outer(X, jnp.ones(3)))


def test_structure_created_inside_the_loss_is_written_back():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

    def f(m):
        h = m(X)
        m.sow(nnx.Intermediate, "h", h)
        return jnp.sum(h**2)

    grads = nnx.grad(f)(model)
    assert set(grads.flat_dict()) == {("kernel",), ("bias",)}
    (h,) = model.h.value
    np.testing.assert_allclose(h, linear_ref(params_of(model), X), rtol=1e-6)
    assert not isinstance(h, jax.core.Tracer)


def test_plain_array_arguments_like_jax_grad():
    def f(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w = jnp.arange(6.0).reshape(2, 3) / 10
    got = nnx.grad(f, argnums=(0, 1))(w, X)
    ref = jax.grad(f, argnums=(0, 1))(w, X)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(nnx.grad(f)(w, X), jax.grad(f)(w, X), rtol=1e-6)

    # Pytrees of arrays work as in jax.grad.
    tree = {"a": w, "b": (X, jnp.array(2.0))}

    def g(t):
        return jnp.sum(t["a"]) * t["b"][1] + jnp.sum(t["b"][0] ** 2)

    got_tree = nnx.grad(g)(tree)
    ref_tree = jax.grad(g)(tree)
    for a, b in zip(jax.tree.leaves(got_tree), jax.tree.leaves(ref_tree)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_model_and_array_argnums_mixed():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    w = jnp.array([1.0, -2.0, 0.5])

    g_model, g_w = nnx.grad(lambda m, w: jnp.sum(m(X) * w), argnums=(0, 1))(model, w)
    p = params_of(model)
    ref_p, ref_w = jax.grad(lambda p, w: jnp.sum(linear_ref(p, X) * w), argnums=(0, 1))(
        p, w
    )
    assert_state_close(g_model, ref_p)
    np.testing.assert_allclose(g_w, ref_w, rtol=1e-6)


def test_objects_in_containers_and_keywords():
    a = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    b = nnx.Linear(3, 1, rngs=nnx.Rngs(1))
    grads = nnx.grad(lambda ms, *, scale: scale * jnp.sum(ms[1](ms[0](X))))(
        [a, b], scale=2.0
    )
    ref = jax.grad(
        lambda pa, pb: 2.0 * jnp.sum(linear_ref(pb, linear_ref(pa, X))),
        argnums=(0, 1),
    )(params_of(a), params_of(b))
    # As flax.nnx: gradients keep the argument's pytree shape, a State per object.
    assert isinstance(grads, list) and len(grads) == 2
    assert_state_close(grads[0], ref[0])
    assert_state_close(grads[1], ref[1])


def test_grad_inside_jit_matches_eager():
    model = Block()
    twin = Block()

    @nnx.jit
    def jitted(m):
        return nnx.grad(lambda m: loss(m, X, Y))(m)

    eager = nnx.grad(lambda m: loss(m, X, Y))(twin)
    inside = jitted(model)
    assert_state_close(inside, eager.to_pure_dict())
    np.testing.assert_allclose(model.stat.value, twin.stat.value, rtol=1e-6)
    assert int(model.drop.rngs.count.value) == int(twin.drop.rngs.count.value) == 1


# -- errors ---------------------------------------------------------------------


def test_argnums_out_of_range_error():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(IndexError, match=r"argnums=3 .* 1 positional argument"):
        nnx.grad(lambda m: jnp.sum(m(X)), argnums=3)(model)


def test_argnums_of_wrong_type_error():
    with pytest.raises(
        TypeError, match="argnums entries must be ints or nnx.DiffState"
    ):
        nnx.grad(lambda m: jnp.sum(m(X)), argnums=("model",))


def test_has_aux_with_a_non_pair_return_error():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"must return a pair \(loss, aux\)"):
        nnx.grad(lambda m: jnp.sum(m(X)), has_aux=True)(model)
    with pytest.raises(TypeError, match="tuple of length 3"):
        nnx.value_and_grad(lambda m: (jnp.sum(m(X)), 1, 2), has_aux=True)(model)
    # Nothing was written back by the failed calls.
    assert not isinstance(model.kernel.value, jax.core.Tracer)


def test_non_scalar_loss_error_comes_from_jax():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="scalar"):
        nnx.grad(lambda m: m(X))(model)


# -- nnx.jvp / nnx.vjp ---------------------------------------------------------------

XB = jnp.array([[0.5, -1.0], [2.0, 0.25], [-0.3, 0.7]])


def lin_out(model, x):
    return jnp.tanh(model(x))


def ref_out(p, x):
    return jnp.tanh(x @ p["kernel"] + p["bias"][None])


def tangent_dict(seed: int, like: dict) -> dict:
    keys = jax.random.split(jax.random.key(seed), len(like))
    return {
        k: jax.random.normal(key, v.shape) for key, (k, v) in zip(keys, like.items())
    }


def test_jvp_model_and_array_match_jax_jvp():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)
    tp = tangent_dict(1, p)
    tx = jax.random.normal(jax.random.key(2), XB.shape)
    out, out_dot = nnx.jvp(lin_out, (model, XB), (nnx.State(tp), tx))
    want, want_dot = jax.jvp(ref_out, (p, XB), (tp, tx))
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(out_dot, want_dot, rtol=1e-5, atol=1e-6)


def test_jvp_tangent_forms_state_object_and_partial():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)
    tp = tangent_dict(3, p)
    zx = jnp.zeros_like(XB)
    _, want = jax.jvp(ref_out, (p, XB), (tp, zx))
    # A State copied from nnx.state(model, Param) (live: a copy, or the writes
    # below would reach the model), with VariableState leaves.
    state = nnx.clone(nnx.state(model, nnx.Param))
    state["kernel"].value, state["bias"].value = tp["kernel"], tp["bias"]
    _, got = nnx.jvp(lin_out, (model, XB), (state, zx))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # An object of the same structure holding the tangents.
    t_model = nnx.clone(model)
    t_model.kernel.value, t_model.bias.value = tp["kernel"], tp["bias"]
    _, got = nnx.jvp(lin_out, (model, XB), (t_model, zx))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Paths left out get a zero tangent.
    _, got = nnx.jvp(lin_out, (model, XB), ({"kernel": tp["kernel"]}, zx))
    _, want_k = jax.jvp(
        ref_out, (p, XB), ({"kernel": tp["kernel"], "bias": jnp.zeros(3)}, zx)
    )
    np.testing.assert_allclose(got, want_k, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not differentiated"):
        nnx.jvp(lin_out, (model, XB), ({"nope": tp["bias"]}, zx))


def test_vjp_model_and_array_match_jax_vjp():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)
    out, vjp_fn = nnx.vjp(lin_out, model, XB)
    want, ref_fn = jax.vjp(ref_out, p, XB)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    ct = jax.random.normal(jax.random.key(4), out.shape)
    g_model, g_x = vjp_fn(ct)
    r_model, r_x = ref_fn(ct)
    assert list(g_model.flat_dict()) == [("kernel",), ("bias",)]
    assert all(v.type is nnx.Param for v in g_model.flat_dict().values())
    assert_state_close(g_model, r_model)
    np.testing.assert_allclose(g_x, r_x, rtol=1e-5, atol=1e-6)


def test_vjp_has_aux_and_batchnorm_stats_written_back():
    class Net(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
            self.bn = nnx.BatchNorm(3, momentum=0.5, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.bn(self.lin(x))

    net = Net()
    ref_net = nnx.clone(net)
    before = net.bn.mean.value
    y, vjp_fn, aux = nnx.vjp(lambda m, x: (m(x), {"n": 1}), net, XB, has_aux=True)
    assert aux == {"n": 1}
    # The gradient reference runs on a copy taken before any update.
    g_ref = nnx.grad(lambda m, x: jnp.sum(m(x) * (1.0 + x[:, :1])))(
        nnx.clone(ref_net), XB
    )
    ref_y = ref_net(XB)  # eager: updates ref_net's running stats
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(net.bn.mean.value, before)
    np.testing.assert_allclose(net.bn.mean.value, ref_net.bn.mean.value, rtol=1e-6)
    np.testing.assert_allclose(net.bn.var.value, ref_net.bn.var.value, rtol=1e-6)
    g_net, g_x = vjp_fn(jnp.ones_like(y) * (1.0 + XB[:, :1]))
    assert "mean" not in g_net["bn"]  # BatchStats are not differentiated
    assert_state_close(g_net, g_ref.to_pure_dict())
    assert g_x.shape == XB.shape


def test_jvp_writes_back_and_matches_vjp_by_duality():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    model.count = nnx.BatchStat(jnp.zeros(()))

    def f(m, x):
        m.count.value = m.count.value + 1
        return lin_out(m, x)

    p = params_of(model)
    tp = tangent_dict(5, p)
    tx = jax.random.normal(jax.random.key(6), XB.shape)
    out, out_dot = nnx.jvp(f, (model, XB), (nnx.State(tp), tx))
    assert float(model.count.value) == 1.0
    _, vjp_fn = nnx.vjp(f, model, XB)
    assert float(model.count.value) == 2.0
    ct = jax.random.normal(jax.random.key(7), out.shape)
    g_model, g_x = vjp_fn(ct)
    # <ct, J t> == <J^T ct, t>
    lhs = jnp.sum(ct * out_dot)
    g = g_model.to_pure_dict()
    rhs = sum(jnp.sum(g[k] * tp[k]) for k in tp) + jnp.sum(g_x * tx)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_jvp_vjp_plain_functions_like_jax():
    def f(a, b):
        return jnp.sin(a) * b["w"]

    a, b = jnp.arange(3.0), {"w": jnp.ones(3) * 2.0}
    ta, tb = jnp.ones(3), {"w": jnp.arange(3.0)}
    got = nnx.jvp(f, (a, b), (ta, tb))
    want = jax.jvp(f, (a, b), (ta, tb))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    out, fn = nnx.vjp(f, a, b)
    _, ref_fn = jax.vjp(f, a, b)
    for g, w in zip(jax.tree.leaves(fn(out)), jax.tree.leaves(ref_fn(out))):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_jvp_vjp_inside_jit():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)
    tp = tangent_dict(8, p)

    @nnx.jit
    def both(m, x, t):
        _, out_dot = nnx.jvp(lin_out, (m, x), (t, jnp.zeros_like(x)))
        out, fn = nnx.vjp(lin_out, m, x)
        g_m, _ = fn(jnp.ones_like(out))
        return out_dot, g_m

    out_dot, g_m = both(model, XB, nnx.State(tp))
    _, want_dot = jax.jvp(ref_out, (p, XB), (tp, jnp.zeros_like(XB)))
    _, ref_fn = jax.vjp(ref_out, p, XB)
    np.testing.assert_allclose(out_dot, want_dot, rtol=1e-5, atol=1e-6)
    assert_state_close(g_m, ref_fn(jnp.ones((3, 3)))[0])


def test_jvp_vjp_errors():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="one tangent per primal"):
        nnx.jvp(lin_out, (model, XB), (nnx.State({}),))
    with pytest.raises(TypeError, match="pair"):
        nnx.vjp(lin_out, model, XB, has_aux=True)
    with pytest.raises(TypeError, match="aux output"):
        nnx.vjp(lambda m: m, model)


# -- tree mode (graph=False / graph_updates=False) and pytree-shaped gradients ------


class WithStat(nnx.Module):
    def __init__(self):
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        self.stat = nnx.BatchStat(jnp.ones(3))

    def __call__(self, x):
        return self.lin(x) * self.stat.value


def with_stat_ref(p, s, x, y):
    return jnp.sum((linear_ref(p, x) * s - y) ** 2)


@pytest.mark.parametrize("graph", [False, True])
def test_tree_mode_grad_is_shaped_like_the_argument_and_covers_every_leaf(graph):
    model = WithStat()
    p, s = params_of(model.lin), model.stat.value
    grads = nnx.grad(
        lambda m, x, y: jnp.sum((m(x) - y) ** 2), graph=graph, graph_updates=False
    )(model, X, Y)
    # As jax.grad of the pytree: a WithStat of gradients, the BatchStat included.
    assert type(grads) is WithStat and grads is not model
    assert type(grads.stat) is nnx.BatchStat and type(grads.lin.kernel) is nnx.Param
    want_p, want_s = jax.grad(with_stat_ref, argnums=(0, 1))(p, s, X, Y)
    np.testing.assert_allclose(grads.lin.kernel.value, want_p["kernel"], rtol=1e-6)
    np.testing.assert_allclose(grads.lin.bias.value, want_p["bias"], rtol=1e-6)
    np.testing.assert_allclose(grads.stat.value, want_s, rtol=1e-6)
    # The model itself is untouched.
    np.testing.assert_allclose(model.lin.kernel.value, p["kernel"])


def test_tree_mode_value_and_grad_writes_back_and_keeps_aux():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)

    def loss_fn(m, x):
        loss = jnp.sum(m(x) ** 2)
        m.bias.value = jnp.full(3, 7.0)
        return loss, {"n": 1}

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True, graph=False)(
        model, X
    )
    want_loss, want = jax.value_and_grad(lambda p, x: jnp.sum(linear_ref(p, x) ** 2))(
        p, X
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grads.kernel.value, want["kernel"], rtol=1e-6)
    assert aux == {"n": 1}
    np.testing.assert_allclose(model.bias.value, jnp.full(3, 7.0))


def test_graph_mode_pytree_argument_gives_a_state_per_object_and_shared_once():
    p1, p2 = nnx.Param(jnp.array(10.0)), nnx.Param(jnp.array(20.0))
    tree = {"a": [p1, p2], "b": p1}
    grads = nnx.grad(lambda t: t["a"][0].value * t["a"][1].value + t["b"].value)(tree)
    # d/dp1 (p1 * p2 + p1) = p2 + 1, given once (where p1 is first reached).
    assert isinstance(grads, dict) and isinstance(grads["a"][0], nnx.Param)
    np.testing.assert_allclose(grads["a"][0].value, 21.0)
    np.testing.assert_allclose(grads["a"][1].value, 10.0)
    assert isinstance(grads["b"], nnx.State) and len(grads["b"]) == 0


def test_graph_updates_false_shared_variable_is_one_gradient_at_both_places():
    p1, p2 = nnx.Param(jnp.array(10.0)), nnx.Param(jnp.array(20.0))
    tree = {"a": [p1, p2], "b": p1}
    grads = nnx.grad(
        lambda t: t["a"][0].value * t["a"][1].value + t["b"].value,
        graph=True,
        graph_updates=False,
    )(tree)
    assert grads["b"] is grads["a"][0]
    np.testing.assert_allclose(grads["b"].value, 21.0)


def test_tree_mode_refuses_diffstate_and_graph_mode_refuses_objects_as_argnums():
    with pytest.raises(ValueError, match="cannot contain `DiffState` objects"):
        nnx.grad(lambda m: 0.0, argnums=nnx.DiffState(0, nnx.Param), graph=False)
    with pytest.raises(ValueError, match="Graph nodes are not allowed as prefixes"):
        nnx.grad(lambda m: 0.0, argnums=nnx.Dict(a=nnx.Param(1.0)))


def test_tree_mode_grad_refuses_returning_an_input_variable():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    f = nnx.grad(lambda m: (jnp.sum(m.bias.value), m.bias), has_aux=True, graph=False)
    with pytest.raises(ValueError, match="does not support Variable aliasing"):
        f(model)


def test_vjp_tree_mode_cotangent_is_shaped_like_the_primal_and_decorator_form():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)

    @nnx.vjp(graph=False)
    def f(m, x):
        return m(x)

    y, vjp_fn = f(model, X)
    g_m, g_x = vjp_fn(jnp.ones(3))
    want_y, pull = jax.vjp(linear_ref, p, X)
    want_p, want_x = pull(jnp.ones(3))
    np.testing.assert_allclose(y, want_y, rtol=1e-6)
    assert type(g_m) is nnx.Linear
    np.testing.assert_allclose(g_m.kernel.value, want_p["kernel"], rtol=1e-6)
    np.testing.assert_allclose(g_x, want_x, rtol=1e-6)


def test_jvp_decorator_forms_match_jax_jvp():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    p = params_of(model)
    t_model = jax.tree.map(jnp.ones_like, model)
    want, want_dot = jax.jvp(
        linear_ref, (p, X), (jax.tree.map(jnp.ones_like, p), jnp.zeros(2))
    )
    for f in (
        nnx.jvp(lambda m, x: m(x), graph=False),
        nnx.jvp(graph=False)(lambda m, x: m(x)),
    ):
        out, out_dot = f((model, X), (t_model, jnp.zeros(2)))
        np.testing.assert_allclose(out, want, rtol=1e-6)
        np.testing.assert_allclose(out_dot, want_dot, rtol=1e-6)


def test_tree_mode_refuses_wrt_instead_of_ignoring_it():
    with pytest.raises(ValueError, match="wrt=BatchStat.*cannot apply"):
        nnx.grad(lambda m: 0.0, wrt=nnx.BatchStat, graph=False)
    with pytest.raises(ValueError, match="cannot apply"):
        nnx.vjp(lambda m: 0.0, nnx.Param(1.0), wrt=nnx.Param, graph_updates=False)
