"""Tests for ``nnx.vmap`` and ``nnx.scan`` (and ``StateAxes`` / ``Carry``)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

X = jnp.array([0.5, -1.0])
N = 3  # ensemble size / number of stacked layers


def make_ensemble(seed=0, split_rngs=True, din=2, dout=3):
    @nnx.vmap(in_axes=None, out_axes=0, axis_size=N, split_rngs=split_rngs)
    def make(rngs):
        return nnx.Linear(din, dout, rngs=rngs)

    return make(nnx.Rngs(seed))


def member(ensemble, i):
    """Member ``i`` of a stacked ensemble, as its own Linear (nnx.merge of a slice)."""
    graphdef, state = nnx.split(ensemble)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


# -- vmap ----------------------------------------------------------------------


def test_vmap_ensemble_members_get_different_weights():
    rngs = nnx.Rngs(0)

    @nnx.vmap(in_axes=None, out_axes=0, axis_size=N)
    def make(rngs):
        return nnx.Linear(2, 3, rngs=rngs)

    ensemble = make(rngs)
    assert isinstance(ensemble, nnx.Linear)
    assert ensemble.kernel.shape == (N, 2, 3) and ensemble.bias.shape == (N, 3)
    kernels = ensemble.kernel.value
    for i in range(N):
        for j in range(i + 1, N):
            assert not np.allclose(kernels[i], kernels[j])
    # Lane i drew from fold_in(key, i) (the module's design note), so each
    # member equals a Linear built eagerly from that key.
    for i in range(N):
        lane_key = jax.random.fold_in(jax.random.key(0), i)
        ref = nnx.Linear(2, 3, rngs=nnx.Rngs(lane_key))
        np.testing.assert_allclose(kernels[i], ref.kernel.value, rtol=1e-6)
    # The caller's stream: key untouched, counter advanced by the two draws.
    assert int(rngs.default.count.value) == 2
    np.testing.assert_array_equal(
        jax.random.key_data(rngs.default.key.value),
        jax.random.key_data(jax.random.key(0)),
    )


def test_vmap_split_rngs_false_gives_identical_members():
    ensemble = make_ensemble(split_rngs=False)
    ref = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    for i in range(N):
        np.testing.assert_allclose(ensemble.kernel.value[i], ref.kernel.value)
        np.testing.assert_allclose(ensemble.bias.value[i], ref.bias.value)


def test_vmap_ensemble_forward_equals_a_loop_over_members():
    ensemble = make_ensemble()
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, X)
    assert ys.shape == (N, 3)
    for i in range(N):
        np.testing.assert_allclose(ys[i], member(ensemble, i)(X), rtol=1e-6)
        k, b = ensemble.kernel.value[i], ensemble.bias.value[i]
        np.testing.assert_allclose(ys[i], X @ k + b, rtol=1e-6)


def test_vmap_over_a_batch_with_a_broadcast_model():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    xs = jnp.arange(8.0).reshape(4, 2)
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, xs)
    ref = jax.vmap(lambda x: x @ model.kernel.value + model.bias.value)(xs)
    np.testing.assert_allclose(ys, ref, rtol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(ys[i], model(xs[i]), rtol=1e-6)


def test_vmap_out_axes_and_in_axes_on_another_axis():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    xs = jnp.arange(8.0).reshape(2, 4)  # the batch is axis 1
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 1), out_axes=1)(model, xs)
    assert ys.shape == (3, 4)
    for i in range(4):
        np.testing.assert_allclose(ys[:, i], model(xs[:, i]), rtol=1e-6)


def test_vmap_nested_in_axes_prefix():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    xs = jnp.arange(8.0).reshape(4, 2)
    ys = nnx.vmap(lambda pair: pair[0](pair[1]), in_axes=((None, 0),))((model, xs))
    for i in range(4):
        np.testing.assert_allclose(ys[i], model(xs[i]), rtol=1e-6)


class Scaled(nnx.Module):
    """A stacked weight (one row per member) and a shared call counter."""

    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(N, 2))
        self.calls = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        self.calls.value = self.calls.value + 1
        return self.w.value * x


def test_vmap_state_axes_per_filter():
    model = Scaled()
    axes = nnx.StateAxes({nnx.Param: 0, ...: None})
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(axes, None))(model, X)
    np.testing.assert_allclose(ys, jnp.arange(6.0).reshape(N, 2) * X[None, :])
    # The broadcast counter is one value, advanced once, still unbatched.
    assert model.calls.value.shape == ()
    assert int(model.calls.value) == 1
    assert model.w.shape == (N, 2)


def test_state_axes_without_a_match_is_an_error():
    axes = nnx.StateAxes({nnx.Param: 0})
    with pytest.raises(nnx.StructureError, match=r"matches none of the filters"):
        nnx.vmap(lambda m, x: m(x), in_axes=(axes, None))(Scaled(), X)


class Member(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 3, rngs=rngs)
        self.last = nnx.BatchStat(jnp.zeros(3))

    def __call__(self, x):
        y = self.lin(x)
        self.last.value = y
        return jnp.sum(y)


def test_vmap_per_member_state_is_written_back_stacked():
    ensemble = nnx.vmap(
        lambda rngs: Member(rngs), in_axes=None, out_axes=0, axis_size=N
    )(nnx.Rngs(0))
    assert ensemble.last.shape == (N, 3)
    last_var = ensemble.last
    sums = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, X)
    assert ensemble.last is last_var
    for i in range(N):
        k, b = ensemble.lin.kernel.value[i], ensemble.lin.bias.value[i]
        np.testing.assert_allclose(ensemble.last.value[i], X @ k + b, rtol=1e-6)
        np.testing.assert_allclose(sums[i], jnp.sum(X @ k + b), rtol=1e-6)


def test_vmap_dropout_masks_differ_per_lane_and_counter_advances():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    key = drop.rngs.key.value
    xs = jnp.ones((4, 16))
    ys = nnx.vmap(lambda d, x: d(x), in_axes=(None, 0))(drop, xs)
    assert int(drop.rngs.count.value) == 1
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(ys[i], ys[j])
        mask = jax.random.bernoulli(
            jax.random.fold_in(jax.random.fold_in(key, i), 0), 0.5, (16,)
        )
        np.testing.assert_allclose(ys[i], jnp.where(mask, 2.0, 0.0))


def test_vmap_dropout_split_rngs_false_gives_the_same_mask():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    twin = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    ys = nnx.vmap(lambda d, x: d(x), in_axes=(None, 0), split_rngs=False)(
        drop, jnp.ones((3, 16))
    )
    eager = twin(jnp.ones(16))
    for i in range(3):
        np.testing.assert_allclose(ys[i], eager)
    assert int(drop.rngs.count.value) == 1


def test_grad_of_an_ensemble_loss_matches_jax():
    ensemble = make_ensemble()

    def loss(m):
        ys = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(m, X)
        return jnp.sum(ys**2)

    grads = nnx.grad(loss)(ensemble)
    k, b = ensemble.kernel.value, ensemble.bias.value
    ref_k, ref_b = jax.grad(
        lambda k, b: jnp.sum((jnp.einsum("i,nij->nj", X, k) + b) ** 2),
        argnums=(0, 1),
    )(k, b)
    np.testing.assert_allclose(grads["kernel"].value, ref_k, rtol=1e-5)
    np.testing.assert_allclose(grads["bias"].value, ref_b, rtol=1e-5)


def test_vmap_in_axes_length_mismatch_error():
    with pytest.raises(
        ValueError, match="in_axes has 3 entries but the function got 2"
    ):
        nnx.vmap(lambda a, b: a + b, in_axes=(0, 0, 0))(jnp.ones(2), jnp.ones(2))


def test_vmap_state_axes_on_a_plain_array_error():
    axes = nnx.StateAxes({...: 0})
    with pytest.raises(TypeError, match="StateAxes applies to object arguments"):
        nnx.vmap(lambda x: x, in_axes=(axes,))(jnp.ones((2, 2)))


# -- scan ------------------------------------------------------------------------


def test_scan_over_a_stack_of_layers_equals_a_loop():
    stack = make_ensemble(din=2, dout=2)
    kernel_var = stack.kernel

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, layer):
        return jnp.tanh(layer(x))

    out = forward(X, stack)
    h = X
    for i in range(N):
        h = jnp.tanh(member(stack, i)(h))
    np.testing.assert_allclose(out, h, rtol=1e-6)
    # The stack is untouched (same Variables, same values).
    assert stack.kernel is kernel_var and stack.kernel.shape == (N, 2, 2)

    # Gradients through the scan equal those of the unrolled plain-JAX loop.
    grads = nnx.grad(lambda s: jnp.sum(forward(X, s) ** 2))(stack)

    def ref(k, b):
        h = X
        for i in range(N):
            h = jnp.tanh(h @ k[i] + b[i])
        return jnp.sum(h**2)

    gk, gb = jax.grad(ref, argnums=(0, 1))(stack.kernel.value, stack.bias.value)
    np.testing.assert_allclose(grads["kernel"].value, gk, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["bias"].value, gb, rtol=1e-5, atol=1e-7)


class Cell(nnx.Module):
    def __init__(self, rngs):
        self.ih = nnx.Linear(2, 3, rngs=rngs)
        self.hh = nnx.Linear(3, 3, rngs=rngs)
        self.steps = nnx.Variable(jnp.array(0))

    def __call__(self, h, x):
        self.steps.value = self.steps.value + 1
        h = jnp.tanh(self.ih(x) + self.hh(h))
        return h, h


def _rnn_ref(cell, h, xs_time_major):
    hs = []
    for x in xs_time_major:
        h = jnp.tanh(
            x @ cell.ih.kernel.value
            + cell.ih.bias.value
            + h @ cell.hh.kernel.value
            + cell.hh.bias.value
        )
        hs.append(h)
    return h, jnp.stack(hs)


def test_rnn_over_time_equals_a_loop():
    cell = Cell(nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (2, 5))  # (features, time)

    @nnx.scan(in_axes=(None, nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def rnn(cell, h, x):
        return cell(h, x)

    h_last, hs = rnn(cell, jnp.zeros(3), xs)
    ref_last, ref_hs = _rnn_ref(cell, jnp.zeros(3), xs.T)
    assert hs.shape == (3, 5)
    np.testing.assert_allclose(h_last, ref_last, rtol=1e-5)
    np.testing.assert_allclose(hs, ref_hs.T, rtol=1e-5)
    # The broadcast counter was carried through every iteration.
    assert int(cell.steps.value) == 5
    rnn(cell, h_last, xs)
    assert int(cell.steps.value) == 10


def test_scan_reverse():
    cell = Cell(nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(2), (4, 2))

    @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0), reverse=True)
    def rnn(cell, h, x):
        return cell(h, x)

    h_last, hs = rnn(cell, jnp.zeros(3), xs)
    ref_last, ref_hs = _rnn_ref(cell, jnp.zeros(3), xs[::-1])
    np.testing.assert_allclose(h_last, ref_last, rtol=1e-5)
    np.testing.assert_allclose(hs, ref_hs[::-1], rtol=1e-5)


def test_scan_dropout_broadcast_draws_a_new_mask_each_step():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    key = drop.rngs.key.value

    @nnx.scan(in_axes=(None, 0), out_axes=0)
    def apply(drop, x):
        return drop(x)

    ys = apply(drop, jnp.ones((4, 16)))
    assert int(drop.rngs.count.value) == 4
    for t in range(4):
        mask = jax.random.bernoulli(jax.random.fold_in(key, t), 0.5, (16,))
        np.testing.assert_allclose(ys[t], jnp.where(mask, 2.0, 0.0))


class Acc(nnx.Module):
    def __init__(self):
        self.v = nnx.Variable(jnp.zeros((4, 2)))
        self.hits = nnx.Variable(jnp.zeros(4, jnp.int32))


def test_scanned_object_state_is_updated_and_restacked():
    acc = Acc()
    v_var = acc.v

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def update(a, c):
        a.v.value = a.v.value + c
        a.hits.value = a.hits.value + 1
        return c + 1.0

    final = update(acc, jnp.array(1.0))
    assert float(final) == 5.0
    assert acc.v is v_var
    np.testing.assert_allclose(
        acc.v.value, jnp.repeat(jnp.arange(1.0, 5.0)[:, None], 2, 1)
    )
    np.testing.assert_array_equal(acc.hits.value, jnp.ones(4, jnp.int32))


def test_scan_with_an_object_carry_and_length():
    acc = Acc()

    @nnx.scan(in_axes=nnx.Carry, out_axes=(nnx.Carry, 0), length=3)
    def step(a):
        a.v.value = a.v.value * 2.0 + 1.0
        return a, jnp.sum(a.v.value)

    out, ys = step(acc)
    assert out is acc
    v = jnp.zeros((4, 2))
    ref = []
    for _ in range(3):
        v = v * 2.0 + 1.0
        ref.append(jnp.sum(v))
    np.testing.assert_allclose(acc.v.value, v)
    np.testing.assert_allclose(ys, jnp.stack(ref))


def test_scan_new_variable_in_a_scanned_argument_is_stacked():
    # flax.nnx 0.12: state created inside a scanned argument gets its axis.
    acc = Acc()

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def grow(a, c):
        a.extra = nnx.Variable(c)
        return c + 1.0

    assert float(grow(acc, jnp.array(1.0))) == 5.0
    np.testing.assert_allclose(acc.extra.value, jnp.arange(1.0, 5.0))
    np.testing.assert_allclose(acc.v.value, jnp.zeros((4, 2)))


def test_scan_in_axes_length_mismatch_error():
    f = nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, 0, 0))
    with pytest.raises(
        ValueError, match="in_axes has 3 entries but the function got 2"
    ):
        f(jnp.ones(1), jnp.ones((3, 1)))


def test_scan_state_axes_on_a_plain_array_error():
    f = nnx.scan(lambda c, x: (c, x), in_axes=(nnx.Carry, nnx.StateAxes({...: 0})))
    with pytest.raises(TypeError, match="StateAxes applies to object arguments"):
        f(jnp.ones(1), jnp.ones((3, 1)))


def test_scan_carry_structure_change_error():
    f = nnx.scan(
        lambda c, x: ((c, c), x), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0)
    )
    with pytest.raises(nnx.StructureError, match="carry must keep its structure"):
        f(jnp.ones(()), jnp.ones(3))


def test_scan_out_axes_carry_requires_a_pair_error():
    f = nnx.scan(lambda c, x: c, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    with pytest.raises(TypeError, match=r"must return a pair \(carry, y\)"):
        f(jnp.ones(()), jnp.ones(3))


def test_nested_vmap_gives_every_member_its_own_weights():
    @nnx.vmap(in_axes=None, out_axes=0, axis_size=2)
    def outer(rngs):
        return nnx.vmap(
            lambda r: nnx.Linear(2, 3, rngs=r), in_axes=None, out_axes=0, axis_size=N
        )(rngs)

    grid = nnx.jit(outer)(nnx.Rngs(0))  # one compilation instead of op by op
    assert grid.kernel.shape == (2, N, 2, 3)
    flat = grid.kernel.value.reshape(2 * N, 6)
    for i in range(2 * N):
        for j in range(i + 1, 2 * N):
            assert not np.allclose(flat[i], flat[j])


def test_repeated_eager_vmap_calls_reuse_compilations():
    # Regression: a fresh axis name per call recompiled every primitive inside.
    make = nnx.vmap(
        lambda rngs: nnx.Linear(2, 3, rngs=rngs), in_axes=None, out_axes=0, axis_size=N
    )
    make(nnx.Rngs(0))
    with jax.log_compiles():
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            make(nnx.Rngs(1))
        finally:
            logger.removeHandler(handler)
    compiles = [r for r in records if "Compiling" in r.getMessage()]
    assert compiles == []


@pytest.mark.parametrize("transform", [nnx.vmap, nnx.scan])
def test_keyword_arguments_get_a_clear_error(transform):
    def f(x, *, scale):
        return x * scale

    with pytest.raises(
        TypeError,
        match=r"nnx\.(vmap|scan)\(.*f\): got keyword argument\(s\) \['scale'\].*"
        r"functools\.partial",
    ):
        transform(f)(jnp.ones(3), scale=2.0)


def test_keyword_arguments_bind_to_their_positional_parameters():
    # As flax.nnx: `MLP(key=keys)` with a vmapped __init__ maps `key` by position.
    def f(x, w):
        return (x * w).sum()

    x = jnp.arange(6.0).reshape(3, 2)
    w = jnp.ones((3, 2)) * 2
    out = nnx.vmap(f, in_axes=(0, 0))(x, w=w)
    np.testing.assert_allclose(out, (x * w).sum(1))


# -- sharding metadata of stacked Variables ---------------------------------------

SHARDED = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))


class ShardedBlock(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 2, kernel_init=SHARDED, rngs=rngs)
        self.scale = nnx.Param(jnp.ones(2))  # no sharding_names

    def __call__(self, x):
        return self.lin(x) * self.scale


def make_sharded_stack(**transform_metadata):
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=transform_metadata)
    def make(rngs):
        return ShardedBlock(rngs)

    return make(nnx.Rngs(0).split(N))


def test_vmap_partition_name_is_inserted_into_created_variables():
    stack = make_sharded_stack(**{nnx.PARTITION_NAME: "layers"})
    assert stack.lin.kernel.shape == (N, 2, 2)
    assert stack.lin.kernel.sharding_names == ("layers", None, "model")
    assert "sharding_names" not in stack.scale._metadata  # untouched
    assert stack.scale.shape == (N, 2)
    specs = nnx.get_partition_spec(stack)
    assert specs.lin.kernel.value == jax.sharding.PartitionSpec("layers", None, "model")
    assert specs.scale.value == jax.sharding.PartitionSpec()


def test_vmap_without_transform_metadata_inserts_none():
    stack = make_sharded_stack()
    assert stack.lin.kernel.sharding_names == (None, None, "model")
    spec = nnx.get_partition_spec(stack).lin.kernel.value
    assert spec == jax.sharding.PartitionSpec(None, None, "model")


def test_vmap_out_axis_decides_where_the_name_goes():
    @nnx.vmap(
        in_axes=None,
        out_axes=1,
        axis_size=N,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def make(rngs):
        return ShardedBlock(rngs)

    stack = make(nnx.Rngs(0))
    assert stack.lin.kernel.shape == (2, N, 2)
    assert stack.lin.kernel.sharding_names == (None, "layers", "model")


def test_scan_sees_per_layer_names_inside_and_restores_them():
    stack = make_sharded_stack(**{nnx.PARTITION_NAME: "layers"})
    seen = []

    @nnx.scan(
        in_axes=(nnx.Carry, 0),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def forward(x, block):
        assert block.lin.kernel.sharding_names == (None, "model")
        seen.append(block.lin.kernel.sharding_names)
        assert "sharding_names" not in block.scale._metadata
        return block(x)

    y = forward(X, stack)
    expected = X
    for i in range(N):
        expected = member(stack, i)(expected)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert seen == [(None, "model")]
    assert stack.lin.kernel.sharding_names == ("layers", None, "model")
    assert "sharding_names" not in stack.scale._metadata


def test_vmap_mapped_in_names_are_put_back_after_a_structure_change():
    stack = make_sharded_stack(**{nnx.PARTITION_NAME: "layers"})

    def f(block, x):
        assert block.lin.kernel.sharding_names == (None, "model")
        block.out = nnx.Intermediate(block(x))  # new attribute: slow write-back
        return block.out.value

    y = nnx.vmap(in_axes=(0, None))(f)(stack, X)
    assert y.shape == (N, 2)
    assert stack.out.shape == (N, 2)
    assert stack.lin.kernel.sharding_names == ("layers", None, "model")
    assert "sharding_names" not in stack.scale._metadata
    assert "sharding_names" not in stack.out._metadata


def test_transform_metadata_unknown_key_error():
    with pytest.raises(ValueError, match="PARTITION_NAME"):
        nnx.vmap(lambda x: x, transform_metadata={"partition": "layers"})


def test_vmap_in_axes_prefix_with_lists_matches_jax_vmap():
    def add(xs):
        return xs[0] * 2 + xs[1]

    xs = [jnp.arange(6.0).reshape(3, 2), jnp.array([10.0, 20.0])]
    want = jax.vmap(add, in_axes=([0, None],))(xs)
    np.testing.assert_array_equal(nnx.vmap(add, in_axes=([0, None],))(xs), want)
    layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    out = nnx.vmap(lambda pair: pair[0](pair[1]), in_axes=([None, 0],))([layer, xs[0]])
    np.testing.assert_allclose(out, layer(xs[0]), rtol=1e-6)


def test_one_variable_given_two_axes_is_refused():
    # The same object in two arguments with in_axes 0 and 1 cannot be mapped both
    # ways; taking the first axis silently would compute the wrong thing.
    class Foo(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.arange(6.0).reshape(2, 3))

    m = Foo()
    msg = r"Inconsistent aliasing detected[\s\S]*Param\n  0/a: 0\n  1/a: 1"
    with pytest.raises(ValueError, match=msg):
        nnx.vmap(lambda a, b: a.a[...] * b.a[...], in_axes=(0, 1))(m, m)
    same = nnx.vmap(lambda a, b: a.a[...] * b.a[...], in_axes=(0, 0))(m, m)
    np.testing.assert_array_equal(same, m.a[...] ** 2)


def test_scan_axes_it_cannot_honour_are_refused_when_decorated():
    with pytest.raises(ValueError, match="Found multiple Carry definitions"):
        nnx.scan(lambda a, b: None, in_axes=(nnx.Carry, nnx.Carry))
    with pytest.raises(ValueError, match=r"Cannot broadcast output state\. Got None"):
        nnx.scan(lambda a, b: None, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, None))
    with pytest.raises(ValueError, match=r"Cannot broadcast output state\. Got State"):
        nnx.scan(
            lambda a, b: None,
            in_axes=(nnx.Carry, 0),
            out_axes=(nnx.Carry, nnx.StateAxes({...: None})),
        )


def test_repeated_vmap_calls_trace_once_and_follow_python_state():
    traces = []
    mode = {"pair": False}

    def f(x):
        traces.append(1)
        return (x * 2, x + 1) if mode["pair"] else x * 2

    g = nnx.vmap(f)
    x = jnp.arange(3.0)
    g(x)
    assert len(traces) == 2  # probe + run
    np.testing.assert_array_equal(g(x), x * 2)
    assert len(traces) == 3  # cached out axes: one trace per call
    mode["pair"] = True  # the output structure changes: redone in full
    a, b = g(x)
    np.testing.assert_array_equal(a, x * 2)
    np.testing.assert_array_equal(b, x + 1)


def test_state_axes_from_a_state_of_axes_stacks_each_path_on_its_axis():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 3, rngs=rngs)

    state = nnx.state(Model(nnx.Rngs(0)))
    state["linear"]["kernel"] = 0
    state["linear"]["bias"] = 1
    axes = nnx.StateAxes(state)
    assert dict(axes.items()) == {k: v for k, v in zip(axes, axes.axes)}
    assert len(axes) == 2 and axes.map_prefix(("linear", "bias"), None) == 1

    @nnx.vmap(in_axes=None, out_axes=axes, axis_size=4, split_rngs=False)
    def make(rngs):
        return Model(rngs)

    m = make(nnx.Rngs(0))
    one = Model(nnx.Rngs(0))
    assert m.linear.kernel.shape == (4, 2, 3) and m.linear.bias.shape == (3, 4)
    np.testing.assert_allclose(m.linear.kernel[...][2], one.linear.kernel[...])
    np.testing.assert_allclose(m.linear.bias[...][:, 1], one.linear.bias[...])


def test_vmap_runs_the_axis_hooks_with_the_partition_name():
    calls = []

    class Tracked(nnx.Param):
        def add_axis(self, axis_index, axis_name):
            calls.append(("add", axis_index, axis_name, self.shape))
            super().add_axis(axis_index, axis_name)

        def remove_axis(self, axis_index, axis_name):
            calls.append(("remove", axis_index, axis_name, self.shape))
            super().remove_axis(axis_index, axis_name)

    meta = {nnx.PARTITION_NAME: "layers"}
    make = nnx.vmap(
        lambda x: Tracked(x * 2), in_axes=0, out_axes=1, transform_metadata=meta
    )
    v = make(jnp.ones((3, 2)))
    assert v.shape == (2, 3)
    assert calls == [("add", 1, "layers", (2, 3))]  # created inside: added once

    calls.clear()
    step = nnx.vmap(lambda v: v[...].sum(), in_axes=1, transform_metadata=meta)
    step(v)
    # Mapped in: the copy inside loses the axis (once per trace: the first call
    # traces twice), the caller's Variable gets it back once.
    removes = [c for c in calls if c[0] == "remove"]
    assert removes and set(removes) == {("remove", 1, "layers", (2,))}
    assert calls[len(removes) :] == [("add", 1, "layers", (2, 3))]

    calls.clear()
    nnx.vmap(lambda v: v[...].sum(), in_axes=1)(v)  # no partition name: no hooks
    assert calls == []
