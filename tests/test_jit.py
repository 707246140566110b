"""Tests for ``nnx.jit``: numbers vs plain JAX, write-back, trace counts, AOT.

The suite runs with ``jax_numpy_rank_promotion="raise"``, so every broadcast in
the reference computations is explicit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxlike as nnx

X = jnp.array([0.5, -1.0])
Y = jnp.array([1.0, 0.0, -1.0])
# A batch of 4 examples for the training-step references.
XB = jnp.array([[0.5, -1.0], [1.0, 2.0], [-0.3, 0.7], [0.0, 1.5]])
YB = jnp.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, -1.0, 2.0], [1.0, 1.0, 0.0]])


class Block(nnx.Module):
    """Linear + a running statistic + Dropout: params, BatchStat and RNG state."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.lin = nnx.Linear(2, 3, rngs=rngs)
        self.stat = nnx.BatchStat(jnp.zeros(3))
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        y = self.lin(x)
        self.stat.value = self.stat.value + y
        return self.drop(y)


class Counter(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, 2.0]))
        self.calls = nnx.Variable(jnp.array(0))

    def scale(self, x):
        self.calls.value = self.calls.value + 1
        return self.w.value * x

    def times(self, n, x):
        return self.w.value * n + x

    @nnx.jit
    def jitted_scale(self, x):
        self.calls.value = self.calls.value + 1
        return self.w.value * x


def linear_ref(kernel, bias, x):
    return x @ kernel + jnp.reshape(bias, (1,) * (x.ndim - 1) + bias.shape)


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


# -- numbers vs plain JAX ----------------------------------------------------------


def test_train_step_matches_plain_jax_optax():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    tx = optax.adam(0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params = {"kernel": model.kernel.value, "bias": model.bias.value}
    opt_state = tx.init(params)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(mse)(model, x, y)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def ref_step(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean((linear_ref(p["kernel"], p["bias"], x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(3):
        loss = step(model, optimizer, XB, YB)
        params, opt_state, ref_loss = ref_step(params, opt_state, XB, YB)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)

    np.testing.assert_allclose(model.kernel.value, params["kernel"], rtol=1e-6)
    np.testing.assert_allclose(model.bias.value, params["bias"], rtol=1e-6)
    assert int(optimizer.step.value) == 3
    # The optax moments held by the optimizer are the reference ones too.
    ref_leaves = jax.tree.leaves(opt_state)
    ours = jax.tree.leaves(optimizer.opt_state_tree())
    assert len(ours) == len(ref_leaves)
    for a, b in zip(ours, ref_leaves):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_caller_objects_hold_new_values():
    model = Block()
    kernel, bias = model.lin.kernel.value, model.lin.bias.value
    stream = model.drop.rngs
    key = stream.key.value

    @nnx.jit
    def forward(model, x):
        return model(x)

    outs = [forward(model, X) for _ in range(3)]

    y = linear_ref(kernel, bias, X)
    np.testing.assert_allclose(model.stat.value, 3 * y, rtol=1e-6)
    assert int(stream.count.value) == 3
    # Each call drew the key fold_in(key, count) for count = 0, 1, 2.
    for count, out in enumerate(outs):
        mask = jax.random.bernoulli(jax.random.fold_in(key, count), 0.5, (3,))
        np.testing.assert_allclose(out, jnp.where(mask, y / 0.5, 0.0), rtol=1e-6)
    # The Variables are the same objects, holding concrete arrays.
    assert isinstance(model.stat.value, jax.Array)
    assert not isinstance(model.stat.value, jax.core.Tracer)


def test_optimizer_step_and_params_written_back():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    kernel0, bias0 = model.kernel.value, model.bias.value
    kernel_var = model.kernel

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(mse)(model, X, Y)
        optimizer.update(model, grads)

    step(model, optimizer)
    g = jax.grad(lambda k, b: jnp.mean((linear_ref(k, b, X) - Y) ** 2), argnums=(0, 1))(
        kernel0, bias0
    )
    np.testing.assert_allclose(model.kernel.value, kernel0 - 0.5 * g[0], rtol=1e-6)
    np.testing.assert_allclose(model.bias.value, bias0 - 0.5 * g[1], rtol=1e-6)
    assert model.kernel is kernel_var
    assert int(optimizer.step.value) == 1


# -- trace counts ----------------------------------------------------------------------


def test_loop_of_calls_traces_once():
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(1)
        return model(x)

    model = Block()
    for _ in range(3):
        forward(model, X)
    assert len(traces) == 1
    assert int(model.drop.rngs.count.value) == 3


def test_new_instance_of_same_structure_does_not_retrace():
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(1)
        return model(x)

    a, b = Block(0), Block(1)
    forward(a, X)
    out_b = forward(b, X)
    assert len(traces) == 1
    # ...and the second instance's own weights were used and updated.
    y_b = linear_ref(b.lin.kernel.value, b.lin.bias.value, X)
    np.testing.assert_allclose(b.stat.value, y_b, rtol=1e-6)
    assert bool(jnp.all((out_b == 0) | jnp.isclose(out_b, 2 * y_b)))
    assert int(a.drop.rngs.count.value) == int(b.drop.rngs.count.value) == 1


def test_static_attribute_change_retraces_once():
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(1)
        return model(x)

    model = Block()
    forward(model, X)
    assert len(traces) == 1

    model.eval()  # Dropout.deterministic: False -> True (a static attribute)
    out = forward(model, X)
    assert len(traces) == 2
    y = linear_ref(model.lin.kernel.value, model.lin.bias.value, X)
    np.testing.assert_allclose(out, y, rtol=1e-6)
    assert int(model.drop.rngs.count.value) == 1  # no draw in eval mode

    forward(model, X)
    assert len(traces) == 2
    model.train()
    forward(model, X)
    assert int(model.drop.rngs.count.value) == 2
    model.eval()
    forward(model, X)
    assert len(traces) == 2  # both structures are compiled already


class Net(nnx.Module):
    def __init__(self):
        self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0))])

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _sgd_step(model, x):
    def loss_fn(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss_fn)(model)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
    return loss_fn(model)


def _net_ref(layers, x):
    for k, b in layers:
        x = jnp.tanh(x @ k + b)
    return x


def test_structural_change_outside_is_honoured():
    step = nnx.jit(_sgd_step)
    model = Net()
    step(model, X)

    # Append a layer between calls: the next call uses and trains it.
    model.layers.append(nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
    before = [(lay.kernel.value, lay.bias.value) for lay in model.layers]
    step(model, X)
    grads = jax.grad(lambda ls: jnp.sum(_net_ref(ls, X) ** 2))(before)
    for layer, (k, b), (gk, gb) in zip(model.layers, before, grads):
        np.testing.assert_allclose(layer.kernel.value, k - 0.1 * gk, rtol=1e-5)
        np.testing.assert_allclose(layer.bias.value, b - 0.1 * gb, rtol=1e-5)
    assert float(jnp.abs(grads[1][0]).sum()) > 0  # the new layer was trained

    # Assign a new submodule (replacing one): its parameters are the ones used.
    new = nnx.Linear(2, 2, rngs=nnx.Rngs(7))
    model.layers[0] = new
    second = model.layers[1]
    before = [(new.kernel.value, new.bias.value)]
    before.append((second.kernel.value, second.bias.value))
    loss = step(model, X)
    assert model.layers[0] is new
    grads = jax.grad(lambda ls: jnp.sum(_net_ref(ls, X) ** 2))(before)
    for layer, (k, b), (gk, gb) in zip(model.layers, before, grads):
        np.testing.assert_allclose(layer.kernel.value, k - 0.1 * gk, rtol=1e-5)
        np.testing.assert_allclose(layer.bias.value, b - 0.1 * gb, rtol=1e-5)
    after = [(layer.kernel.value, layer.bias.value) for layer in model.layers]
    np.testing.assert_allclose(loss, jnp.sum(_net_ref(after, X) ** 2), rtol=1e-5)


def test_new_attribute_on_submodule_outside_between_calls():
    @nnx.jit
    def forward(model, x):
        out = model.lin(x)
        if hasattr(model, "head"):
            out = model.head(out)
        return out

    model = Block()
    forward(model, X)
    model.head = nnx.Linear(3, 1, rngs=nnx.Rngs(3))
    out = forward(model, X)
    h = linear_ref(model.lin.kernel.value, model.lin.bias.value, X)
    ref = linear_ref(model.head.kernel.value, model.head.bias.value, h)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_structural_change_inside_is_written_back_with_identity():
    model = Block()
    lin, kernel = model.lin, model.lin.kernel

    @nnx.jit
    def grow(model):
        model.alias = model.lin  # a new shared reference to a Module
        model.kernel_alias = model.lin.kernel  # ... and to a Variable
        model.extra = nnx.Param(model.lin.bias.value * 2)  # a new Variable
        model.sub = nnx.Linear(3, 1, rngs=nnx.Rngs(5))  # a new Module

    grow(model)
    assert model.alias is lin and model.lin is lin
    assert model.kernel_alias is kernel and model.lin.kernel is kernel
    assert isinstance(model.extra, nnx.Param)
    np.testing.assert_allclose(model.extra.value, 2 * model.lin.bias.value)
    assert isinstance(model.sub, nnx.Linear)
    assert isinstance(model.sub.kernel.value, jax.Array)
    ref = nnx.Linear(3, 1, rngs=nnx.Rngs(5))
    np.testing.assert_allclose(model.sub.kernel.value, ref.kernel.value)

    # Later calls see the sharing: a write through the alias is a write to lin.
    @nnx.jit
    def bump(model):
        model.kernel_alias.value = model.kernel_alias.value + 1.0

    k0 = kernel.value
    bump(model)
    bump(model)
    np.testing.assert_allclose(model.lin.kernel.value, k0 + 2.0)
    assert model.kernel_alias is model.lin.kernel


def test_same_object_passed_twice():
    @nnx.jit
    def f(a, b):
        a.stat.value = a.stat.value + 1.0
        return b.stat.value  # b is a: sees the write

    model = Block()
    out = f(model, model)
    np.testing.assert_allclose(out, jnp.ones(3))
    np.testing.assert_allclose(model.stat.value, jnp.ones(3))
    f(model, model)
    np.testing.assert_allclose(model.stat.value, 2 * jnp.ones(3))


def test_mutating_a_closed_over_object_raises():
    model = Block()

    @nnx.jit
    def f(x):
        model.stat.value = model.stat.value + x

    with pytest.raises(nnx.TraceContextError, match="Pass the object as an argument"):
        f(jnp.ones(3))
    np.testing.assert_allclose(model.stat.value, jnp.zeros(3))


def test_reading_a_closed_over_object_raises():
    # Its arrays would be compiled in as constants and go stale (issue 12.3;
    # more cases in test_reliability_transforms.py).
    model = Block()

    @nnx.jit
    def f(x):
        return model.lin(x)

    with pytest.raises(nnx.TraceContextError, match="model .Block, read through"):
        f(X)


# -- methods ------------------------------------------------------------------------


def test_jit_of_bound_method_writes_back():
    c = Counter()
    f = nnx.jit(c.scale)
    out = f(jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(out, [3.0, 8.0])
    f(jnp.array([1.0, 1.0]))
    assert int(c.calls.value) == 2


def test_jit_decorator_on_method():
    a, b = Counter(), Counter()
    np.testing.assert_allclose(a.jitted_scale(jnp.array([1.0, 1.0])), [1.0, 2.0])
    a.jitted_scale(jnp.array([1.0, 1.0]))
    b.w.value = jnp.array([5.0, 5.0])
    np.testing.assert_allclose(b.jitted_scale(jnp.array([2.0, 1.0])), [10.0, 5.0])
    assert int(a.calls.value) == 2 and int(b.calls.value) == 1


# -- static arguments ------------------------------------------------------------


def test_static_argnums_retrace_only_on_new_value():
    traces = []

    @nnx.jit(static_argnums=1)
    def power(model, n, x):
        traces.append(n)
        out = x
        for _ in range(n):  # needs a Python int
            out = out * model.w.value
        return out

    c = Counter()
    x = jnp.array([1.0, 1.0])
    np.testing.assert_allclose(power(c, 2, x), [1.0, 4.0])
    np.testing.assert_allclose(power(c, 2, x), [1.0, 4.0])
    np.testing.assert_allclose(power(c, 3, x), [1.0, 8.0])
    power(c, 3, x)
    power(c, 2, x)
    assert traces == [2, 3]


def test_static_argnames_retrace_only_on_new_value():
    traces = []

    @nnx.jit(static_argnames="mode")
    def f(model, x, mode="double"):
        traces.append(mode)
        return model.w.value * x * (2.0 if mode == "double" else 3.0)

    c = Counter()
    x = jnp.array([1.0, 1.0])
    np.testing.assert_allclose(f(c, x, mode="double"), [2.0, 4.0])
    np.testing.assert_allclose(f(c, x, mode="double"), [2.0, 4.0])
    np.testing.assert_allclose(f(c, x, mode="triple"), [3.0, 6.0])
    f(c, x, mode="triple")
    assert traces == ["double", "triple"]


def test_unhashable_static_argument_error():
    f = nnx.jit(lambda model, n: model.w.value * len(n), static_argnums=1)
    with pytest.raises(TypeError, match="hashable"):
        f(Counter(), [1, 2])


# -- donation ------------------------------------------------------------------------


def test_donate_argnums_model_and_optimizer():
    # jax on CPU implements donation: donated input buffers are deleted.
    def make():
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)

    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(mse)(model, x, y)
        optimizer.update(model, grads)
        return loss

    donating = nnx.jit(train_step, donate_argnums=(0, 1))
    plain = nnx.jit(train_step)
    model, optimizer = make()
    ref_model, ref_optimizer = make()  # separate buffers, not a clone

    for _ in range(2):
        old_kernel = model.kernel.value
        old_moment = optimizer.opt_state[0].mu["kernel"].value
        old_step = optimizer.step.value
        x_arg = XB + 0.0
        loss = donating(model, optimizer, x_arg, YB)
        ref_loss = plain(ref_model, ref_optimizer, XB, YB)
        assert old_kernel.is_deleted()
        assert old_moment.is_deleted()
        assert old_step.is_deleted()
        assert not x_arg.is_deleted()  # not a donated argument
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)

    assert not model.kernel.value.is_deleted()
    np.testing.assert_allclose(model.kernel.value, ref_model.kernel.value, rtol=1e-6)
    np.testing.assert_allclose(model.bias.value, ref_model.bias.value, rtol=1e-6)
    assert int(optimizer.step.value) == 2


def test_donate_argnames_and_plain_array():
    @nnx.jit(donate_argnames="model", donate_argnums=2)
    def f(other, x, buf, *, model):
        model.w.value = model.w.value + x
        other.w.value = other.w.value - x
        return buf * 2.0

    donated, kept = Counter(), Counter()
    old_donated, old_kept = donated.w.value, kept.w.value
    buf = jnp.array([1.0, 3.0])
    out = f(kept, jnp.ones(2), buf, model=donated)
    np.testing.assert_allclose(out, [2.0, 6.0])
    np.testing.assert_allclose(donated.w.value, [2.0, 3.0])
    np.testing.assert_allclose(kept.w.value, [0.0, 1.0])
    assert old_donated.is_deleted() and buf.is_deleted()
    assert not old_kept.is_deleted()


def test_donation_skips_variables_also_passed_undonated():
    @nnx.jit(donate_argnums=0)
    def f(a, b):
        a.w.value = a.w.value + 1.0
        return b.w.value

    c = Counter()
    old = c.w.value
    np.testing.assert_allclose(f(c, c), [2.0, 3.0])
    assert not old.is_deleted()


# -- outputs that are objects ----------------------------------------------------------


def test_returning_the_input_model_gives_the_caller_object():
    traces = []

    @nnx.jit
    def f(model):
        traces.append(1)
        model.calls.value = model.calls.value + 1
        return model

    c = Counter()
    for _ in range(3):
        out = f(c)
        assert out is c
    assert int(c.calls.value) == 3
    assert len(traces) == 1


def test_returning_a_new_module_created_inside():
    @nnx.jit
    def make(scale):
        layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        layer.bias.value = layer.bias.value + scale
        return layer, scale * 2

    layer, doubled = make(jnp.array(1.5))
    assert type(layer) is nnx.Linear
    assert layer.in_features == 2 and layer.out_features == 3
    for v in (layer.kernel.value, layer.bias.value):
        assert isinstance(v, jax.Array) and not isinstance(v, jax.core.Tracer)
    ref = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer.kernel.value, ref.kernel.value, rtol=1e-6)
    np.testing.assert_allclose(layer.bias.value, ref.bias.value + 1.5)
    assert float(doubled) == 3.0
    # The new module is an ordinary object: usable eagerly and in nnx.jit.
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(layer, X), layer(X), rtol=1e-6
    )


# -- AOT and shardings -----------------------------------------------------------------


def test_lower_compile_and_memory_analysis():
    @nnx.jit
    def forward(model, x):
        return model(x)

    model = Block()
    lowered = forward.lower(model, X)
    assert "@main" in lowered.as_text()
    compiled = lowered.compile()
    stats = compiled.memory_analysis()
    assert stats is not None
    assert stats.argument_size_in_bytes > 0
    # Lowering does not run the function: the caller's state is untouched.
    assert int(model.drop.rngs.count.value) == 0
    np.testing.assert_allclose(model.stat.value, jnp.zeros(3))


@pytest.mark.parametrize("kind", ["single_device", "named"])
def test_in_and_out_shardings_on_one_device(kind):
    if kind == "single_device":
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    else:
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @nnx.jit(in_shardings=sharding, out_shardings=sharding)
    def step(model, x):
        model.calls.value = model.calls.value + 1
        return model.w.value * x

    c = Counter()
    out = step(c, jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(out, [3.0, 8.0])
    assert int(c.calls.value) == 1
    assert out.sharding.device_set == {jax.devices()[0]}


# -- regressions: jit bugs found by review, fixed -----------------------------------


def test_output_structure_depending_on_input_shape():
    @nnx.jit
    def f(model, x):
        if x.shape[0] == 1:
            return x
        return x, x

    c = Counter()
    f(c, jnp.ones(1))
    f(c, jnp.ones(2))
    out = f(c, jnp.ones(1))
    assert out.shape == (1,)


def test_structural_change_depending_on_input_shape():
    @nnx.jit
    def f(model, x):
        if x.shape[0] == 3:
            model.extra = nnx.Variable(x * 2.0)
        return x.sum()

    c = Counter()
    f(c, jnp.ones(2))
    f(c, jnp.ones(3))
    np.testing.assert_allclose(c.extra.value, 2.0 * jnp.ones(3))


def test_static_argnums_given_out_of_order():
    f = nnx.jit(lambda a, b, c, d: (a, b, c, d), static_argnums=(2, 0))
    a, b, c, d = f(1, jnp.array(2.0), 3, jnp.array(4.0))
    assert (int(a), float(b), int(c), float(d)) == (1, 2.0, 3, 4.0)


def test_static_argnums_on_bound_method():
    c = Counter()
    f = nnx.jit(c.times, static_argnums=0)  # jax.jit: 0 is n, the first argument
    np.testing.assert_allclose(f(2, jnp.zeros(2)), [2.0, 4.0])
    c.w.value = jnp.array([5.0, 5.0])
    np.testing.assert_allclose(f(2, jnp.zeros(2)), [10.0, 10.0])


def test_static_argname_passed_positionally():
    @nnx.jit(static_argnames="n")
    def f(model, n):
        return jnp.stack([model.w.value] * n)

    assert f(Counter(), 3).shape == (3, 2)


def test_donate_argnums_on_bound_method():
    c = Counter()
    x, w = jnp.array([1.0, 1.0]), c.w.value
    np.testing.assert_allclose(nnx.jit(c.times, donate_argnums=1)(2.0, x), [3.0, 5.0])
    assert x.is_deleted() and not w.is_deleted()


# -- tree mode, aliasing, jit_partial, array references ------------------------------


def test_tree_mode_jit_refuses_returning_an_input_variable():
    v = nnx.Param(jnp.array(1.0))
    f = nnx.jit(lambda v: v, graph=False)
    with pytest.raises(ValueError, match="does not support Variable aliasing"):
        f(v)
    # A new Variable is fine, and its value is computed.
    out = nnx.jit(lambda x: nnx.Param(x + 1), graph=False)(jnp.array(1.0))
    assert type(out) is nnx.Param and float(out.value) == 2.0


def test_graph_updates_false_swap_is_refused_not_lost():
    class Pair(nnx.Module):
        def __init__(self):
            self.a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            self.b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))

    m = Pair()
    a, b = m.a, m.b

    @nnx.jit(graph_updates=False)
    def swap(m):
        m.a, m.b = m.b, m.a

    with pytest.raises(nnx.StructureError, match="moved to other attributes"):
        swap(m)
    assert m.a is a and m.b is b
    nnx.jit(swap.fun)(m)  # with graph updates the swap reaches the caller
    assert m.a is b and m.b is a


def test_jit_partial_lower_compile_writes_back_and_tree_mode_refuses_duplicates():
    model = Counter()
    f = nnx.jit_partial(lambda m, x: m.scale(x), model, graph=False)
    compiled = f.lower(X).compile()
    np.testing.assert_allclose(compiled(X), jnp.array([1.0, 2.0]) * X, rtol=1e-6)
    assert int(model.calls.value) == 1
    np.testing.assert_allclose(f(X), jnp.array([1.0, 2.0]) * X, rtol=1e-6)
    assert int(model.calls.value) == 2

    v = nnx.Param(jnp.array(1.0))
    c1, c2 = nnx.Dict(v=v), nnx.Dict(v=v)
    with pytest.raises(ValueError, match="Duplicate Param"):
        nnx.jit_partial(lambda a, b, x: x, c1, c2, graph=False)
    # Graph mode keeps the sharing: both see one Variable, written once.
    g = nnx.jit_partial(
        lambda a, b, x: (a["v"].set_value(a["v"].value + x), b["v"].value)[1],
        c1,
        c2,
        graph=True,
        graph_updates=False,
    )
    np.testing.assert_allclose(g(jnp.array(2.0)), 3.0)
    np.testing.assert_allclose(v.value, 3.0)


def test_one_variable_with_two_in_shardings_is_refused():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    P = jax.sharding.PartitionSpec
    s1 = jax.sharding.NamedSharding(mesh, P())
    s2 = jax.sharding.NamedSharding(mesh, P("x"))
    v = nnx.Param(jnp.ones(1))
    f = nnx.jit(lambda a, b: a.value + b.value, in_shardings=(s1, s2))
    with pytest.raises(ValueError, match="Inconsistent aliasing"):
        f(v, v)
    np.testing.assert_allclose(f(v, nnx.Param(jnp.ones(1))), [2.0])


def test_jit_array_references_in_and_out():
    r = jax.new_ref(jnp.array(1.0))

    @nnx.jit
    def f(r):
        r[...] += 1.0
        return jax.new_ref(jnp.array(10.0)), r

    new, same = f(r)
    assert same is r and float(r[...]) == 2.0
    assert isinstance(new, jax.Ref) and float(new[...]) == 10.0
    new2, _ = f(r)  # the cached path gives the same answers
    assert float(r[...]) == 3.0 and new2 is not new and float(new2[...]) == 10.0


def test_out_shardings_by_path_state_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sh = nnx.StateSharding({nnx.PathContains("kernel"): rep, ...: None})
    model = nnx.jit(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)), out_shardings=sh)()
    assert model.kernel.value.sharding == rep
    ref = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model.kernel.value, ref.kernel.value)
