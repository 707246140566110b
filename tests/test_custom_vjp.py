"""Tests for nnx.custom_vjp, against plain jax.custom_vjp on pure functions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

X = jnp.array([0.5, -1.0])


@dataclasses.dataclass
class Foo(nnx.Module):
    x: nnx.Param
    y: nnx.Param
    z: int = 0


def foo(x=1.0, y=2.0):
    return Foo(nnx.Param(jnp.array(x)), nnx.Param(jnp.array(y)))


# The reference: jax.custom_vjp on (x, y) with a rule that is *not* the true
# gradient (twice the true one for x, minus the true one for y), so a test
# passes only if the custom rule is the one used.
@jax.custom_vjp
def ref_f(x, y):
    return jnp.sin(x) * y


def _ref_fwd(x, y):
    return ref_f(x, y), (x, y)


def _ref_bwd(res, g):
    x, y = res
    return 2.0 * jnp.cos(x) * y * g, -jnp.sin(x) * g


ref_f.defvjp(_ref_fwd, _ref_bwd)


def ref_grads(x=1.0, y=2.0, outer=lambda v: v):
    return jax.grad(lambda x, y: outer(ref_f(x, y)), argnums=(0, 1))(
        jnp.array(x), jnp.array(y)
    )


# -- graph mode with graph updates (the default) -----------------------------------


def make_graph_f(**kw):
    @nnx.custom_vjp(**kw)
    def f(m):
        return jnp.sin(m.x) * m.y

    def f_fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):
        (m_g,), out_g = g
        assert isinstance(m_g, nnx.State) and sorted(m_g) == ["x", "y"]
        assert isinstance(m_g["x"], nnx.Param)  # shaped like the model's state
        cos_x, sin_x, m = res
        m_g = jax.tree.map(lambda v: v, m_g)
        m_g["x"][...] = 2.0 * cos_x * out_g * m.y
        m_g["y"][...] = -sin_x * out_g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    return f


def test_graph_updates_gradient_is_the_custom_rule():
    f = make_graph_f()
    m = foo()
    np.testing.assert_allclose(f(m), jnp.sin(1.0) * 2.0, rtol=1e-6)
    grads = nnx.grad(lambda m: jnp.tanh(f(m)))(m)
    gx, gy = ref_grads(outer=jnp.tanh)
    assert isinstance(grads, nnx.State)
    np.testing.assert_allclose(grads["x"][...], gx, rtol=1e-6)
    np.testing.assert_allclose(grads["y"][...], gy, rtol=1e-6)
    # Under nnx.jit the same numbers.
    grads_jit = nnx.jit(nnx.grad(lambda m: jnp.tanh(f(m))))(m)
    np.testing.assert_allclose(grads_jit["x"][...], gx, rtol=1e-6)


def test_graph_updates_writes_are_written_back():
    @nnx.custom_vjp
    def f(m, x):
        m.count[...] += 1  # a Variable write
        m.z += 1  # a static attribute: a structural change
        return x @ m.lin.kernel + m.lin.bias

    def f_fwd(m, x):
        return f(m, x), (m.lin.kernel[...], x)

    def f_bwd(res, g):
        (m_g, x_none), out_g = g
        assert x_none is None  # plain arguments have no state
        kernel, x = res
        m_g = jax.tree.map(lambda v: v, m_g)
        m_g["lin"]["kernel"][...] = 3.0 * jnp.outer(x, out_g)
        m_g["lin"]["bias"][...] = 3.0 * out_g
        return m_g, kernel @ out_g

    f.defvjp(f_fwd, f_bwd)

    class M(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
            self.count = nnx.BatchStat(jnp.array(0))
            self.z = 0

    m = M()
    kernel, bias = m.lin.kernel[...], m.lin.bias[...]
    g_m, g_x = nnx.grad(lambda m, x: jnp.sum(f(m, x)), argnums=(0, 1))(m, X)
    np.testing.assert_allclose(
        g_m["lin"]["kernel"][...], 3.0 * jnp.outer(X, jnp.ones(3))
    )
    np.testing.assert_allclose(g_m["lin"]["bias"][...], 3.0 * jnp.ones(3))
    np.testing.assert_allclose(g_x, kernel @ jnp.ones(3), rtol=1e-6)
    assert int(m.count[...]) == 1 and m.z == 1
    # Called outside a gradient: the same writes.
    np.testing.assert_allclose(f(m, X), X @ kernel + bias, rtol=1e-6)
    assert int(m.count[...]) == 2 and m.z == 2


def test_graph_updates_diffstate_selects_part_of_an_object():
    x_only = nnx.DiffState(0, nnx.PathContains("x"))

    @nnx.custom_vjp(nondiff_argnums=(x_only,))
    def f(m):
        return jnp.sin(m.x) * m.y

    def f_fwd(m):
        return f(m), (jnp.cos(m.x), m)

    def f_bwd(res, g):
        (m_g,), out_g = g
        cos_x, m = res
        m_g = jax.tree.map(lambda v: v, m_g)
        m_g["x"][...] = 2.0 * cos_x * out_g * m.y
        del m_g["y"]  # y is not differentiated
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    grads = nnx.grad(f, argnums=x_only)(foo())
    assert sorted(grads) == ["x"]
    np.testing.assert_allclose(grads["x"][...], ref_grads()[0], rtol=1e-6)

    # An enclosing grad differentiating y, which this rule leaves out: refused
    # (its gradient would be lost), naming it.
    with pytest.raises(ValueError, match="differentiates argument 0 at y, which"):
        nnx.grad(f)(foo())

    # A cotangent for a Variable the DiffState leaves out is refused, by path.
    f.defvjp(f_fwd, lambda res, g: (g[0][0],))
    with pytest.raises(ValueError, match=r"cotangent at .*y.* not one of its"):
        nnx.grad(f, argnums=x_only)(foo())


def test_graph_updates_nondiff_plain_arguments_and_missing_paths():
    @nnx.custom_vjp(nondiff_argnums=(0, 2))
    def f(a, m, b):
        return a * jnp.sin(m.x) * m.y + b

    def f_fwd(a, m, b):
        return f(a, m, b), (jnp.cos(m.x), m)

    def f_bwd(a, b, res, g):
        assert (a, b) == (3.0, 5.0)
        (m_g,), out_g = g
        cos_x, m = res
        # Only x given: the missing y counts as zero.
        return (nnx.State({"x": a * 2.0 * cos_x * out_g * m.y}),)

    f.defvjp(f_fwd, f_bwd)
    grads = nnx.grad(lambda m: f(3.0, m, 5.0))(foo())
    np.testing.assert_allclose(grads["x"][...], 3.0 * ref_grads()[0], rtol=1e-6)
    np.testing.assert_allclose(grads["y"][...], 0.0)


def test_graph_updates_errors():
    @nnx.custom_vjp(nondiff_argnums=(0,))
    def f(m):
        return m.x[...]

    f.defvjp(lambda m: (f(m), None), lambda m, res, g: ())
    with pytest.raises(TypeError, match="Passing integers to nondiff_argnums"):
        f(foo())

    @nnx.custom_vjp
    def h(m, x):
        return jnp.sum(m.x * x)

    with pytest.raises(TypeError, match=r"call .defvjp\(fwd, bwd\)"):
        h(foo(), X)
    h.defvjp(lambda m, x: (h(m, x), None), lambda res, g: (g[0][0],))
    with pytest.raises(TypeError, match=r"bwd returned 1 cotangent\(s\).* 2 diff"):
        nnx.grad(h)(foo(), X)
    with pytest.raises(ValueError, match="repeated in nondiff_argnums"):
        nnx.custom_vjp(lambda m: m, nondiff_argnums=(0, nnx.DiffState(0, ...)))


# -- simple mode: graph=False or graph_updates=False -------------------------------

SIMPLE = [dict(graph=False), dict(graph=True, graph_updates=False)]


def make_simple_f(**kw):
    @nnx.custom_vjp(**kw)
    def f(m):
        return jnp.sin(m.x) * m.y

    def f_fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):  # g is the output cotangent, as in jax.custom_vjp
        cos_x, sin_x, m = res
        m_g = nnx.clone(m)
        m_g.x[...] = 2.0 * cos_x * g * m.y
        m_g.y[...] = -sin_x * g
        return (m_g,)  # a Foo for a Foo

    f.defvjp(f_fwd, f_bwd)
    return f


@pytest.mark.parametrize("kw", SIMPLE)
def test_simple_mode_cotangents_have_the_argument_type(kw):
    f = make_simple_f(**kw)
    m = foo()
    grads = jax.grad(lambda m: jnp.tanh(f(m)))(m)  # Modules are pytrees
    gx, gy = ref_grads(outer=jnp.tanh)
    assert isinstance(grads, Foo)
    np.testing.assert_allclose(grads.x[...], gx, rtol=1e-6)
    np.testing.assert_allclose(grads.y[...], gy, rtol=1e-6)
    grads_jit = jax.jit(jax.grad(lambda m: f(m)))(m)
    np.testing.assert_allclose(grads_jit.x[...], ref_grads()[0], rtol=1e-6)


@pytest.mark.parametrize("kw", SIMPLE)
def test_simple_mode_writes_are_applied_and_their_cotangents_reach_bwd(kw):
    @nnx.custom_vjp(nondiff_argnums=(1,), **kw)
    def f(m, count):
        m.w[...] = 3.0 * m.x  # a differentiable write
        count[...] = jnp.array(-1.0)
        return jnp.sin(m.x) * m.y

    def f_fwd(m, count):
        return f(m, count), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(count, res, g, updates_g):
        np.testing.assert_allclose(count[...], 0.0)  # as the call saw it
        m_up, count_up = updates_g  # laid out like the arguments
        assert m_up.x is None and m_up.y is None
        assert isinstance(m_up.w, nnx.Param) and isinstance(count_up, nnx.BatchStat)
        cos_x, sin_x, m = res
        m_g = nnx.clone(m)
        m_g.x[...] = 2.0 * cos_x * g * m.y + 3.0 * m_up.w[...]
        m_g.y[...] = -sin_x * g
        m_g.w[...] = jnp.zeros_like(m.w[...])
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)

    @dataclasses.dataclass
    class Bar(nnx.Module):
        x: nnx.Param
        y: nnx.Param
        w: nnx.Param

    m = Bar(*(nnx.Param(jnp.array(v)) for v in (1.0, 2.0, 0.0)))
    count = nnx.BatchStat(jnp.array(0.0))
    f(m, count)
    np.testing.assert_allclose(m.w[...], 3.0)  # written back
    np.testing.assert_allclose(count[...], -1.0)

    def loss(m):
        c = nnx.BatchStat(jnp.array(0.0))
        return f(m, c) + m.w[...]  # the written value is used after the call

    grads = jax.grad(loss)(m)
    # d/dx of [custom(sin(x) * y) + 3x] with the custom rule for the first term.
    np.testing.assert_allclose(grads.x[...], ref_grads()[0] + 3.0, rtol=1e-6)
    np.testing.assert_allclose(grads.y[...], ref_grads()[1], rtol=1e-6)


@pytest.mark.parametrize("kw", SIMPLE)
def test_simple_mode_errors(kw):
    with pytest.raises(ValueError, match="cannot contain `DiffState` objects"):
        nnx.custom_vjp(lambda m: m, nondiff_argnums=(nnx.DiffState(0, ...),), **kw)

    @nnx.custom_vjp(nondiff_argnums=(1,), **kw)
    def f(a, b):
        return a[...] + b[...]

    f.defvjp(lambda a, b: (f(a, b), ()), lambda b, res, g: (g,))
    v = nnx.Param(jnp.array(1.0))
    with pytest.raises(ValueError, match="Duplicate Param"):
        f(v, v)

    @nnx.custom_vjp(**kw)
    def g(m):
        m.z += 1  # a static attribute: would be lost without graph updates
        return m.x[...]

    g.defvjp(lambda m: (g(m), None), lambda res, ct: (None,))
    with pytest.raises(
        nnx.StructureError, match=r"argument 0 \(Foo\): a static attribute changed"
    ):
        g(foo())


def test_graph_mode_without_updates_takes_non_pytree_objects():
    class Opaque(nnx.Object):  # pytree=False: JAX cannot see it, the graph walk can
        def __init__(self):
            self.x = nnx.Param(jnp.array(1.0))
            self.n = nnx.BatchStat(jnp.array(0.0))

    @nnx.custom_vjp(graph=True, graph_updates=False)
    def f(o):
        o.n[...] = o.n[...] + 1.0
        return jnp.sin(o.x[...])

    def f_bwd(res, g, updates_g):
        ((n_g,),) = [list(s.flat_dict()) for s in updates_g]  # the written path
        assert n_g == ("n",)
        (o,) = res
        o_g = nnx.clone(o)  # an Opaque for an Opaque
        o_g.x[...] = 5.0 * jnp.cos(o.x[...]) * g
        o_g.n[...] = jnp.zeros(())
        return (o_g,)

    f.defvjp(lambda o: (f(o), (o,)), f_bwd)
    o = Opaque()
    np.testing.assert_allclose(f(o), jnp.sin(1.0), rtol=1e-6)
    assert float(o.n[...]) == 1.0
    grads = nnx.grad(f)(o)
    np.testing.assert_allclose(grads["x"][...], 5.0 * jnp.cos(1.0), rtol=1e-6)
    assert float(o.n[...]) == 2.0


@pytest.mark.parametrize("kw", [{}, *SIMPLE])
def test_symbolic_zeros(kw):
    from jax.custom_derivatives import SymbolicZero

    graph_updates = not kw
    seen = {}

    @nnx.custom_vjp(**kw)
    def f(m, x):
        return jnp.sum(m(x))

    def f_fwd(m, x):  # objects rebuilt from the primal values
        return f(m, x), m.kernel[...]

    def f_bwd(kernel, g):
        if graph_updates:
            (m_g, _), g = g
            seen["state_ct"] = m_g["kernel"][...]  # the state is not used after
        return None, 2.0 * kernel @ jnp.full((kernel.shape[1],), g)

    f.defvjp(f_fwd, f_bwd, symbolic_zeros=True)
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    g_x = jax.grad(lambda x: f(m, x))(X)
    np.testing.assert_allclose(g_x, 2.0 * m.kernel[...] @ jnp.ones(3), rtol=1e-6)
    if graph_updates:
        assert isinstance(seen["state_ct"], SymbolicZero)


def test_closed_over_object_under_plain_jax_grad_keeps_its_arrays():
    @nnx.custom_vjp
    def f(m, x):
        return jnp.sum(m(x))

    f.defvjp(
        lambda m, x: (f(m, x), m.kernel[...]),
        lambda kernel, g: (None, 2.0 * kernel @ jnp.full((3,), g[1])),
    )
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    kernel = m.kernel[...]
    g_x = jax.grad(lambda x: f(m, x))(X)
    np.testing.assert_allclose(g_x, 2.0 * kernel @ jnp.ones(3), rtol=1e-6)
    assert m.kernel[...] is kernel  # not a tracer of jax.grad's trace
