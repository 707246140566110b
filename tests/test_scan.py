"""Tests for ``nnx.scan`` (``_transforms/scan.py``); reference: ``jax.lax.scan``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

XS = jnp.arange(12.0).reshape(4, 3)


def test_new_variables_are_stacked_along_their_out_axis():
    @nnx.scan(in_axes=0, out_axes=0)
    def make(x):
        return nnx.Param(x * 2.0), nnx.BatchStat(jnp.sum(x))

    p, s = make(XS)
    assert type(p) is nnx.Param and type(s) is nnx.BatchStat
    np.testing.assert_allclose(p[...], XS * 2.0)
    _, ref = jax.lax.scan(lambda c, x: (c, jnp.sum(x)), None, XS)
    np.testing.assert_allclose(s[...], ref)
    # out_axes=1: the stack axis is put second.
    q = nnx.scan(lambda x: nnx.Param(jnp.outer(x, x)), in_axes=0, out_axes=1)(XS)
    np.testing.assert_allclose(q[...], jnp.moveaxis(jax.vmap(jnp.outer)(XS, XS), 0, 1))


def test_a_module_created_inside_is_stacked_and_scanned_over():
    @nnx.split_rngs(splits=4)
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def create(c, rngs):
        return c + 1, nnx.Linear(3, 3, rngs=rngs)

    n, stack = create(jnp.array(0), nnx.Rngs(0))
    assert int(n) == 4 and stack.kernel.shape == (4, 3, 3)
    assert not np.allclose(stack.kernel[0], stack.kernel[1])  # split keys

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(h, layer):
        return jnp.tanh(layer(h))

    def ref_step(h, kb):
        k, b = kb
        return jnp.tanh(h @ k + b[None]), None

    h0 = jnp.ones((2, 3))
    ref, _ = jax.lax.scan(ref_step, h0, (stack.kernel[...], stack.bias[...]))
    np.testing.assert_allclose(forward(h0, stack), ref, rtol=1e-6)


class Counter(nnx.Module):
    def __init__(self):
        self.total = nnx.BatchStat(jnp.array(0.0))

    def __call__(self, x):
        self.total[...] = self.total[...] + jnp.sum(x)
        self.sow(nnx.Intermediate, "seen", self.total[...])
        return x * 2.0


def test_sown_values_are_stacked_while_the_rest_is_carried():
    m = Counter()
    axes = nnx.StateAxes({nnx.Intermediate: 0, ...: nnx.Carry})

    @nnx.scan(in_axes=(axes, 0), out_axes=0)
    def run(m, x):
        return m(x)

    ys = run(m, XS)
    totals = jnp.cumsum(jnp.sum(XS, axis=1))
    np.testing.assert_allclose(ys, XS * 2.0)
    np.testing.assert_allclose(m.total[...], totals[-1])
    np.testing.assert_allclose(m.seen[0], totals)  # one entry per iteration


def test_sow_inside_scan_is_captured_stacked():
    # capture's Variable holds a dict that grows inside: it is stacked like an array.
    axes = nnx.StateAxes({nnx.Intermediate: 0, ...: nnx.Carry})
    run = nnx.scan(lambda m, x: m(x), in_axes=(axes, 0), out_axes=0)
    m = Counter()
    ys, inter = nnx.capture(run, nnx.Intermediate)(m, XS)
    np.testing.assert_allclose(ys, XS * 2.0)
    np.testing.assert_allclose(inter["seen"][0], jnp.cumsum(jnp.sum(XS, axis=1)))
    assert not hasattr(m, "seen")


def test_carry_in_the_middle_of_out_axes():
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(0, nnx.Carry, 1))
    def f(x, c):
        c = c + x
        return x * 2.0, c, jnp.stack([c, c])

    a, c, b = f(XS, jnp.zeros(3))

    def ref(c, x):
        c = c + x
        return c, (x * 2.0, jnp.stack([c, c]))

    rc, (ra, rb) = jax.lax.scan(ref, jnp.zeros(3), XS)
    np.testing.assert_allclose(c, rc)
    np.testing.assert_allclose(a, ra)
    np.testing.assert_allclose(b, jnp.moveaxis(rb, 0, 1))


def test_object_carry_comes_back_as_the_same_object():
    v = nnx.Variable(jnp.array(1.0))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def f(pair, x):
        var, acc = pair
        var[...] = var[...] * 2.0
        return (var, acc + x), var[...]

    (var, acc), ys = f((v, jnp.zeros(3)), XS)
    assert var is v
    np.testing.assert_allclose(v[...], 16.0)
    np.testing.assert_allclose(ys, [2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(acc, jnp.sum(XS, axis=0))


@pytest.mark.parametrize(
    ("graph_updates", "phrase"),
    [
        (True, "Carry references must be the same between iterations"),
        (False, "scan Variable identity must be preserved across iterations"),
    ],
)
def test_a_new_object_as_carry_is_refused(graph_updates, phrase):
    @nnx.scan(graph_updates=graph_updates)
    def f(count, x):
        return nnx.Variable(count[...] + 1), x

    with pytest.raises(ValueError, match=phrase + r".*new Variable at carry"):
        f(nnx.Variable(jnp.array(0)), jnp.arange(3))


@pytest.mark.parametrize("graph_updates", [True, False])
def test_returning_an_input_variable_is_refused(graph_updates):
    f = nnx.scan(lambda v: v, in_axes=0, out_axes=0, graph_updates=graph_updates)
    with pytest.raises(ValueError, match="does not support Variable aliasing") as e:
        f(nnx.Param(jnp.arange(5)))
    assert "Param" in str(e.value)


def test_carry_on_one_side_only_is_refused_when_decorated():
    with pytest.raises(ValueError, match="If one of in_axes or out_axes has Carry"):
        nnx.scan(lambda a, b: a, in_axes=(nnx.Carry, 0), out_axes=0)
    with pytest.raises(ValueError, match="If one of in_axes or out_axes has Carry"):
        nnx.scan(lambda a: a, in_axes=0, out_axes=(nnx.Carry, 0))


def test_in_axes_carry_takes_one_argument():
    f = nnx.scan(lambda a, b: a, in_axes=nnx.Carry, out_axes=nnx.Carry, length=2)
    with pytest.raises(ValueError, match="When in_axes=Carry, the function must take"):
        f(jnp.ones(()), jnp.ones(()))


def test_state_created_in_a_carried_object_is_refused():
    m = Counter()

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def f(m, x):
        m.extra = nnx.Variable(jnp.sum(x))
        return m, x

    with pytest.raises(nnx.StructureError, match=r"created a new Variable.*extra"):
        f(m, XS)
    assert not hasattr(m, "extra")


def test_removing_carried_state_is_refused():
    m = Counter()

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def f(m, x):
        del m.total
        return m, x

    with pytest.raises(nnx.StructureError, match="removed the carried Variable"):
        f(m, XS)
    assert isinstance(m.total, nnx.BatchStat)


def test_the_body_is_traced_once_per_structure():
    traces = []
    model = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

    @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def f(m, c, x):
        traces.append(x.shape)
        return c + 1, m(x)

    c, y = f(model, jnp.array(0), XS)
    c, y2 = f(model, c, XS)
    assert traces == [(3,)] and int(c) == 8
    np.testing.assert_allclose(y2, y)
    f(nnx.Linear(3, 3, rngs=nnx.Rngs(1)), c, XS)  # same structure: no new trace
    assert len(traces) == 1
    f(model, c, jnp.ones((2, 5, 3)))  # new shapes: traced again
    assert traces == [(3,), (5, 3)]


def test_broadcast_stream_repeats_when_another_key_is_scanned():
    rngs = nnx.Rngs(params=jax.random.split(jax.random.key(0), 3), dropout=1)
    dropout_key = rngs.dropout.key[...]

    @nnx.scan(in_axes=(nnx.Carry, nnx.StateAxes({"params": 0, ...: None})))
    def f(c, rngs):
        return c, (rngs.params(), rngs.dropout())

    _, (p, d) = f((), rngs)
    same = jax.random.fold_in(dropout_key, 0)
    for t in range(3):
        np.testing.assert_array_equal(
            jax.random.key_data(d[t]), jax.random.key_data(same)
        )
    assert not np.array_equal(jax.random.key_data(p[0]), jax.random.key_data(p[1]))
    assert int(rngs.dropout.count[...]) == 1  # the last iteration's counter


def test_gradient_through_a_scan_that_creates_nothing_matches_lax_scan():
    w = nnx.Param(jnp.array([0.5, -1.0, 2.0]))

    def loss(w):
        @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def step(w, h, x):
            h = jnp.tanh(h * w[...] + x)
            return h, h

        h, _ = step(w, jnp.zeros(3), XS)
        return jnp.sum(h)

    def ref(w):
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(h * w + x), None), jnp.zeros(3), XS)
        return jnp.sum(h)

    g = nnx.grad(loss)(w)
    np.testing.assert_allclose(g[...], jax.grad(ref)(w[...]), rtol=1e-6)


def test_transform_metadata_inside_a_scan_removes_the_named_axis():
    w = nnx.Param(jnp.ones((4, 3)), sharding_names=("layers", "model"))
    seen = []

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph_updates=False)
    @nnx.transform_metadata(
        in_axes=(0, nnx.Carry), out_axes=nnx.Carry, partition="layers"
    )
    def f(w, c):
        seen.append(w.sharding_names)
        return c + w[...]

    c = f(w, jnp.zeros(3))
    assert seen == [("model",)]
    assert w.sharding_names == ("layers", "model")
    np.testing.assert_allclose(c, jnp.full(3, 4.0))


def test_scan_over_a_module_built_by_vmap_with_state_axes():
    axes = nnx.StateAxes({(nnx.Param, nnx.RngState): 0, ...: None})

    class MLP(nnx.Module):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(axes, axes))
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 3, rngs=rngs)
            self.calls = nnx.BatchStat(jnp.array(0))  # axis None: not stacked

        @nnx.scan(in_axes=(axes, nnx.Carry), out_axes=nnx.Carry)
        def __call__(self, x):
            self.calls[...] += 1  # broadcast state written inside: carried
            return jnp.tanh(self.linear(x))

    m = MLP(nnx.Rngs(0))
    assert m.linear.kernel.shape == (3, 3, 3) and m.calls.shape == ()
    x = jnp.ones((2, 3))
    k, b = m.linear.kernel[...], m.linear.bias[...]
    ref, _ = jax.lax.scan(
        lambda h, kb: (jnp.tanh(h @ kb[0] + kb[1][None]), None), x, (k, b)
    )
    np.testing.assert_allclose(m(x), ref, rtol=1e-6)
    assert int(m.calls[...]) == 3


def test_per_step_dropout_keys_selected_by_tag():
    # flax's recurrent-dropout recipe: the string 'dropout' selects the Dropout's
    # own stream by its tag; with_rngs gives it one key per step, scanned along 0.
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    axes = nnx.prefix(drop, {"dropout": 0, ...: None})
    key = drop.rngs.key[...]

    @nnx.with_rngs(broadcast={"dropout": 4})
    @nnx.scan(in_axes=(axes, 0), out_axes=0)
    def run(drop, x):
        return drop(x)

    ys = run(drop, jnp.ones((4, 8)))
    assert set(np.unique(ys[0]).tolist()) == {0.0, 2.0}
    for t in range(1, 4):  # one broadcast key: the same mask in every step
        np.testing.assert_array_equal(ys[t], ys[0])
    # The caller's stream is as before, one draw on: the next call draws anew.
    assert drop.rngs.key.shape == () and int(drop.rngs.count[...]) == 1
    np.testing.assert_array_equal(
        jax.random.key_data(drop.rngs.key[...]), jax.random.key_data(key)
    )
    assert not np.array_equal(run(drop, jnp.ones((4, 8))), ys)
    assert "dropout" in str(nnx.state(drop, "dropout"))  # no FilterWarning either


def test_scanning_a_python_number_is_refused_with_its_path():
    f = nnx.scan(lambda c, x: (c, x))
    with pytest.raises(
        ValueError, match=r"Expected an array to scan over at args\[1\]"
    ):
        f(jnp.zeros(()), {"a": [1, 2]})


def test_state_axes_for_a_plain_array_output_is_refused():
    f = nnx.scan(lambda x: x, in_axes=0, out_axes=nnx.StateAxes({...: 0}))
    with pytest.raises(ValueError, match="out_axes gives a plain array output"):
        f(XS)


def test_axis_hooks_run_once_per_trace_with_a_partition_name():
    seen = []
    w = nnx.Param(
        jnp.ones((4, 3)),
        sharding_names=("layers", "model"),
        on_remove_axis=lambda v, i, n: seen.append(("remove", i, n, v.shape)),
        on_add_axis=lambda v, i, n: seen.append(("add", i, n)),
    )

    @nnx.scan(
        in_axes=(0, nnx.Carry),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def f(w, c):
        assert w.sharding_names == ("model",)
        return c + w[...]

    np.testing.assert_allclose(f(w, jnp.zeros(3)), jnp.full(3, 4.0))
    assert seen == [("remove", 0, "layers", (3,)), ("add", 0, "layers")]
    f(w, jnp.zeros(3))  # the cached trace: no hook runs again
    assert len(seen) == 2
    assert w.sharding_names == ("layers", "model")
    nnx.scan(lambda w, c: c, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)(w, 0.0)
    assert len(seen) == 2  # no partition name: no hooks (as in flax)
