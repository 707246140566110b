"""Tests for nnxlike._rngs: named streams, fallback, fork/split/reseed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


def data(key) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


def test_a_draw_is_fold_in_of_key_and_count():
    rngs = nnx.Rngs(0)
    k0, k1 = rngs(), rngs()
    base = jax.random.key(0)
    np.testing.assert_array_equal(data(k0), data(jax.random.fold_in(base, 0)))
    np.testing.assert_array_equal(data(k1), data(jax.random.fold_in(base, 1)))
    assert int(rngs.default.count.value) == 2


def test_streams_hold_key_and_count_variables():
    rngs = nnx.Rngs(params=0, dropout=1)
    stream = rngs.params
    assert isinstance(stream, nnx.RngStream)
    assert isinstance(stream.key, nnx.RngKey) and isinstance(stream.count, nnx.RngCount)
    assert stream.key.tag == "params" and stream.count.tag == "params"
    assert stream.count.value.dtype == jnp.uint32
    assert jax.dtypes.issubdtype(stream.key.value.dtype, jax.dtypes.prng_key)
    assert sorted(name for name, _ in rngs.items()) == ["dropout", "params"]
    assert "params" in rngs and "default" not in rngs
    assert rngs["dropout"] is rngs.dropout


def test_named_streams_are_independent():
    rngs = nnx.Rngs(params=0, dropout=0)
    a, b = rngs.params(), rngs.params()
    c = rngs.dropout()
    assert not np.array_equal(data(a), data(b))
    np.testing.assert_array_equal(data(a), data(c))  # same seed, own counter
    assert int(rngs.params.count.value) == 2 and int(rngs.dropout.count.value) == 1


def test_unknown_stream_falls_back_to_default():
    rngs = nnx.Rngs(0, dropout=1)
    assert rngs.params is rngs.default
    k = rngs.params()
    np.testing.assert_array_equal(data(k), data(nnx.Rngs(0)()))
    assert int(rngs.default.count.value) == 1


def test_unknown_stream_without_default_names_stream_and_fix():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(
        AttributeError,
        match=r"Rngs has no stream 'dropout' and no 'default' stream.*\['params'\]"
        r".*`nnx.Rngs\(dropout=0, \.\.\.\)`",
    ):
        rngs.dropout()
    with pytest.raises(AttributeError, match="no stream 'x'"):
        rngs["x"]
    with pytest.raises(AttributeError, match="no stream 'default'"):
        rngs()


def test_stream_list_in_error_omits_bookkeeping_attributes():
    rngs = nnx.Rngs(params=0)
    nnx._graph.flatten(rngs, track=True)  # as a transform does
    with pytest.raises(AttributeError, match=r"\(streams: \['params'\]\)"):
        rngs.dropout  # noqa: B018


def test_rngs_needs_a_seed():
    with pytest.raises(
        TypeError, match=r"Rngs needs at least one seed: `nnx.Rngs\(0\)`"
    ):
        nnx.Rngs()


@pytest.mark.parametrize("seed", ["x", 1.5, jnp.ones((3,)), None])
def test_bad_seed_error(seed):
    with pytest.raises(TypeError, match=r"Rngs: a seed must be an int, a typed key"):
        nnx.Rngs(params=seed)


def test_seed_forms_agree():
    ref = data(nnx.Rngs(3)())
    for seed in (
        3,
        jnp.uint32(3),
        jax.random.key(3),
        jax.random.PRNGKey(3),
        nnx.RngKey(jax.random.key(3)),
    ):
        np.testing.assert_array_equal(data(nnx.Rngs(seed)()), ref)


def test_a_stream_as_seed_draws_from_it():
    parent = nnx.Rngs(0)
    child = nnx.Rngs(parent.default)
    assert int(parent.default.count.value) == 1
    assert not np.array_equal(data(child()), data(nnx.Rngs(0)()))


def test_fork_gives_independent_streams_and_advances_parent():
    rngs = nnx.Rngs(params=0, dropout=1)
    forked = rngs.fork()
    assert isinstance(forked, nnx.Rngs) and forked is not rngs
    assert sorted(n for n, _ in forked.items()) == ["dropout", "params"]
    assert int(rngs.params.count.value) == 1
    assert int(forked.params.count.value) == 0
    assert not np.array_equal(data(forked.params()), data(nnx.Rngs(params=0).params()))
    stream = rngs.params.fork()
    assert isinstance(stream, nnx.RngStream) and stream.tag == "params"


def test_split_gives_one_key_per_lane():
    rngs = nnx.Rngs(params=0)
    lanes = rngs.split(4)
    assert lanes.params.key.value.shape == (4,)
    assert lanes.params.count.value.shape == (4,)
    keys = lanes.params()
    assert keys.shape == (4,)
    assert len({tuple(row) for row in data(keys)}) == 4
    assert nnx.Rngs(0).split((2, 3)).default().shape == (2, 3)


def test_reseed_restarts_a_stream():
    rngs = nnx.Rngs(params=0, dropout=1)
    first = rngs.params()
    rngs.params()
    rngs.reseed(params=0)
    assert int(rngs.params.count.value) == 0
    np.testing.assert_array_equal(data(rngs.params()), data(first))
    rngs.reseed(dropout=jax.random.key(0))
    np.testing.assert_array_equal(data(rngs.dropout()), data(first))


def test_reseed_unknown_stream():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(
        AttributeError, match=r"reseed: Rngs has no stream 'foo'; streams: \['params'\]"
    ):
        rngs.reseed(foo=1)


def test_nnx_reseed_reaches_every_stream_with_the_tag():
    class Model(nnx.Module):
        def __init__(self):
            self.a = nnx.Rngs(dropout=0, params=5)
            self.b = [nnx.Rngs(dropout=1)]

    m = Model()
    m.a.dropout(), m.b[0].dropout(), m.a.params()
    nnx.reseed(m, dropout=7)
    expected = data(nnx.Rngs(7)())
    np.testing.assert_array_equal(data(m.a.dropout()), expected)
    np.testing.assert_array_equal(data(m.b[0].dropout()), expected)
    assert int(m.a.params.count.value) == 1  # other tags untouched


def test_rngs_state_and_round_trip():
    rngs = nnx.Rngs(0, dropout=1)
    rngs.dropout()
    state = nnx.state(rngs)
    assert state.flat_state().paths == (
        ("default", "key"),
        ("default", "count"),
        ("dropout", "key"),
        ("dropout", "count"),
    )
    copy = nnx.merge(*nnx.split(rngs))
    assert copy is not rngs
    np.testing.assert_array_equal(data(copy.dropout()), data(rngs.dropout()))
    assert nnx.state(rngs, nnx.RngCount).dropout.count.value == 2


def test_repr_does_not_advance_the_stream():
    rngs = nnx.Rngs(0)
    text = repr(rngs)
    repr([rngs])
    assert int(rngs.default.count.value) == 0
    assert text.startswith("Rngs(") and "RngKey: 1" in text.splitlines()[0]


def test_draws_inside_jit_advance_the_counter_without_recompiling():
    rngs = nnx.Rngs(0)
    traces = []

    @nnx.jit
    def draw(rngs):
        traces.append(1)
        return jax.random.uniform(rngs(), ())

    a, b = draw(rngs), draw(rngs)
    assert float(a) != float(b)
    assert int(rngs.default.count.value) == 2
    assert len(traces) == 1


def test_split_rngs_decorator_gives_lanes_their_own_keys_and_restores():
    rngs = nnx.Rngs(params=0)
    key_before = rngs.params.key.value

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        assert rngs.params.key.value.shape == ()  # one key per lane inside
        return nnx.Linear(2, 2, rngs=rngs)

    stack = make(rngs)
    k = stack.kernel.value
    assert k.shape == (3, 2, 2)
    assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])
    # lane i is the layer built from key i of a split of the stream's next draw
    lane_keys = jax.random.split(jax.random.fold_in(key_before, 0), 3)
    for i in range(3):
        ref = nnx.Linear(2, 2, rngs=nnx.Rngs(params=lane_keys[i]))
        np.testing.assert_allclose(k[i], ref.kernel.value, rtol=1e-6)
    # restored: the caller's stream holds its scalar key, advanced by one draw
    assert rngs.params.key.value.shape == ()
    assert jnp.array_equal(
        jax.random.key_data(rngs.params.key.value), jax.random.key_data(key_before)
    )
    assert int(rngs.params.count.value) == 1


def test_split_rngs_context_manager():
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=(2, 3)):
        assert rngs.default.key.value.shape == (2, 3)
        assert rngs.default.count.value.shape == (2, 3)
    assert rngs.default.key.value.shape == ()
    two = nnx.Rngs(params=0, dropout=1)
    with nnx.split_rngs(two, splits=4, only="dropout"):
        assert two.dropout.key.value.shape == (4,)
        assert two.params.key.value.shape == ()  # not selected by `only`
    assert int(two.dropout.count.value) == 1 and int(two.params.count.value) == 0
    with pytest.raises(ValueError, match="already split"):
        with nnx.split_rngs(rngs, splits=2):
            nnx.split_rngs(rngs, splits=2)
