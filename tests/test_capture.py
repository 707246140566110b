"""Tests for nnxlike._capture and Module.sow/perturb under it (flax.nnx 0.12.8 layout).

References are hand-written jnp formulas: the sown value of a Linear is x @ W + b,
the gradient of a perturbation is the derivative of the loss at that point.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


class Model(nnx.Module):
    def __init__(self, rngs):
        self.linear1 = nnx.Linear(2, 3, rngs=rngs)
        self.linear2 = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        h = self.linear1(x)
        self.sow(nnx.Intermediate, "features", h)
        h = self.perturb("tap", h)
        return self.linear2(jnp.tanh(h))


def _features(model, x):
    return x @ model.linear1.kernel.value + model.linear1.bias.value[None, :]


def test_sown_values_come_back_by_path_and_leave_the_model_clean():
    model = Model(nnx.Rngs(0))
    x = jnp.arange(8.0).reshape(4, 2)
    y, inter = nnx.capture(model, nnx.Intermediate)(x)
    assert isinstance(inter, nnx.State)
    assert isinstance(inter["features"], nnx.Intermediate)
    (features,) = inter["features"].value
    np.testing.assert_allclose(features, _features(model, x), rtol=1e-6)
    l2 = model.linear2
    expected = jnp.tanh(features) @ l2.kernel.value + l2.bias.value[None, :]
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert not hasattr(model, "features") and not hasattr(model, "tap")
    assert not hasattr(model, nnx._module.CAPTURES)
    assert not hasattr(model.linear1, nnx._module.CAPTURES)


def test_each_call_appends_and_kinds_not_captured_are_dropped():
    class Twice(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "x", x)
            self.sow(nnx.Intermediate, "x", 2 * x)
            kept = self.sow(nnx.Cache, "c", x)
            self.sow(
                nnx.Intermediate, "total", x, init_fn=lambda: 10, reduce_fn=jnp.add
            )
            return kept

    m = Twice()
    kept, inter = nnx.capture(m, nnx.Intermediate)(jnp.ones(2))
    assert kept is False
    assert [v.tolist() for v in inter["x"].value] == [[1.0, 1.0], [2.0, 2.0]]
    np.testing.assert_array_equal(inter["total"].value, [11.0, 11.0])
    assert nnx.capture(m)(jnp.ones(2)) is False  # no kinds: the result alone
    kept, inter, cache = nnx.capture(m, nnx.Intermediate, nnx.Cache)(jnp.ones(2))
    assert kept is True and list(cache) == ["c"] and "c" not in inter
    assert not hasattr(m, "c")


def test_forms_of_fn_bound_method_function_and_decorator():
    class Foo(nnx.Module):
        def run(self, x):
            self.sow(nnx.Intermediate, "seen", x + 1)
            return x

    m = Foo()
    for wrapped, args in (
        (nnx.capture(m.run, nnx.Intermediate), (3.0,)),
        (nnx.capture(lambda mod, x: mod.run(x), nnx.Intermediate), (m, 3.0)),
        (nnx.capture(nnx.Intermediate)(lambda mod, x: mod.run(x)), (m, 3.0)),
    ):
        out, inter = wrapped(*args)
        assert out == 3.0 and inter["seen"].value == (4.0,)
    with pytest.raises(TypeError, match=r"capture: call a Module, a bound method"):
        nnx.capture(lambda x: x, nnx.Intermediate)(1.0)
    with pytest.raises(TypeError, match=r"must be Variable types such as"):
        nnx.capture(m, int)
    with pytest.raises(TypeError, match=r"init must be a State"):
        nnx.capture(m.run, nnx.Intermediate, init=[1])(1.0)


def test_nested_modules_are_keyed_by_path():
    class Foo(nnx.Module):
        def __call__(self, x):
            y = 3 * x
            self.sow(nnx.Intermediate, "y", y)
            return y

    class Bar(nnx.Module):
        def __init__(self):
            self.foos = [Foo() for _ in range(3)]

        def __call__(self, x):
            for foo in self.foos:
                x = foo(x)
            return x

    out, inter = nnx.capture(Bar(), nnx.Intermediate)(1.0)
    assert out == 27.0
    assert [inter["foos"][i]["y"].value for i in range(3)] == [(3.0,), (9.0,), (27.0,)]


def test_method_outputs_sow_every_public_method_and_are_undone():
    class Inner(nnx.Module):
        def __call__(self, x):
            return x + 1

        def process(self, x):
            return jnp.sin(x)

        def _private(self, x):
            return x

    class Outer(nnx.Module):
        def __init__(self):
            self.inner = Inner()

        def __call__(self, x):
            return self.inner.process(self.inner(self.inner._private(x)))

    model = Outer()
    x = jnp.ones(3)
    y, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    np.testing.assert_allclose(y, jnp.sin(x + 1))
    np.testing.assert_allclose(inter["__call__"].value[0], y)
    np.testing.assert_allclose(inter["inner"]["__call__"].value[0], x + 1)
    np.testing.assert_allclose(inter["inner"]["process"].value[0], y)
    assert "_private" not in inter["inner"]
    assert not hasattr(Inner.process, "__wrapped__")  # originals are back
    assert model.inner.process(0.0) == 0.0 and not hasattr(model.inner, "process_")


def test_perturbation_gradients_equal_the_derivative_at_the_tap():
    model = Model(nnx.Rngs(0))
    x = jnp.arange(8.0).reshape(4, 2) / 8
    _, perturbations = nnx.capture(model, nnx.Perturbation)(x)
    np.testing.assert_array_equal(perturbations["tap"].value, np.zeros((4, 3)))

    def loss(model, perturbations, x):
        y, inter = nnx.capture(model, nnx.Intermediate, init=perturbations)(x)
        return jnp.sum(y), inter

    grad_fn = nnx.grad(
        loss, argnums=(0, nnx.DiffState(1, nnx.Perturbation)), has_aux=True
    )
    (_, tap_grads), inter = grad_fn(model, perturbations, x)
    h = _features(model, x)
    w2 = model.linear2.kernel.value  # d sum(tanh(h) @ w2) / dh
    expected = (1 - jnp.tanh(h) ** 2) * w2[:, 0][None, :]
    np.testing.assert_allclose(tap_grads["tap"].value, expected, rtol=1e-5)
    np.testing.assert_allclose(inter["features"].value[0], h, rtol=1e-6)
    merged = nnx.merge_state(tap_grads, inter)
    assert set(merged) == {"tap", "features"}


def test_sow_inside_nnx_jit_inside_capture_is_carried_out():
    class Foo(nnx.Module):
        @nnx.jit
        def __call__(self, x):
            self.sow(nnx.Intermediate, "y", 3 * x)
            return 3 * x

    foo = Foo()
    out, inter = nnx.capture(foo, nnx.Intermediate)(jnp.float32(2.0))
    assert float(out) == 6.0 and float(inter["y"].value[0]) == 6.0
    assert not hasattr(foo, "y")


def test_sow_and_perturb_outside_capture_and_their_errors():
    class Foo(nnx.Module):
        def __init__(self):
            self.y = 10
            self.p = nnx.Param(1.0)

    m = Foo()
    with pytest.raises(
        ValueError, match=r"Foo.sow: expected attribute 'y' to be a Variable, got int"
    ):
        m.sow(nnx.Intermediate, "y", 1)
    with pytest.raises(
        ValueError, match=r"expected 'p' to be of type 'Intermediate', got 'Param'"
    ):
        m.sow(nnx.Intermediate, "p", 1)
    with pytest.raises(
        ValueError, match=r"Foo.perturb: expected 'p' to be of type 'Perturbation'"
    ):
        m.perturb("p", 1.0)
    assert m.sow(nnx.Intermediate, "h", 1) is True and m.h.value == (1,)
    np.testing.assert_array_equal(m.perturb("t", jnp.ones(2)), np.ones(2))
    assert isinstance(m.t, nnx.Perturbation)
    m.t.value = jnp.full(2, 0.5)
    np.testing.assert_array_equal(m.perturb("t", jnp.ones(2)), np.full(2, 1.5))
