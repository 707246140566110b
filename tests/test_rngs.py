"""Tests for nnxlike._rngs: named streams, fallback, fork/split/reseed."""

from __future__ import annotations

from pathlib import Path

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
        match=r"No RngStream named 'dropout' found in Rngs, and no 'default' stream"
        r".*\['params'\].*`nnx.Rngs\(dropout=0, \.\.\.\)`",
    ):
        rngs.dropout()
    with pytest.raises(AttributeError, match="No RngStream named 'x'"):
        rngs["x"]
    with pytest.raises(AttributeError, match="No RngStream named 'default'"):
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
    # as flax.nnx: the streams get successive draws of Rngs(dropout=7), count 0
    seed = jax.random.key(7)
    for i, stream in enumerate((m.a.dropout, m.b[0].dropout)):
        expected = jax.random.fold_in(jax.random.fold_in(seed, i), 0)
        np.testing.assert_array_equal(data(stream()), data(expected))
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
    copy = nnx.merge(*nnx.split(rngs), copy=True)
    assert copy is not rngs
    np.testing.assert_array_equal(data(copy.dropout()), data(rngs.dropout()))
    assert nnx.state(rngs, nnx.RngCount).dropout.count.value == 2
    live = nnx.merge(*nnx.split(rngs))  # flax's default: the same counters
    live.dropout()
    assert int(rngs.dropout.count.value) == 3


def test_repr_does_not_advance_the_stream():
    rngs = nnx.Rngs(0)
    text = repr(rngs)
    repr([rngs])
    assert int(rngs.default.count.value) == 0
    assert text.startswith("Rngs(") and "RngState: 2" in text.splitlines()[0]


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


# -- numbers equal flax.nnx 0.12.8's (tests/fixtures/flax_rngs.npz) -------------------

FLAX = np.load(Path(__file__).parent / "fixtures" / "flax_rngs.npz")


def test_samplers_draw_flax_numbers_from_the_named_stream():
    rngs = nnx.Rngs(0, params=1)
    got = {
        "normal_32x20": rngs.normal((32, 20)),
        "uniform_3x4": rngs.uniform((3, 4), minval=-2.0, maxval=3.0),
        "params_uniform_5": rngs.params.uniform((5,)),
        "lecun_normal_4x3": rngs.lecun_normal()((4, 3)),
        "params_glorot_uniform_3x5": rngs.params.glorot_uniform()((3, 5)),
        "randint_6": rngs.randint((6,), 0, 10),
        "bernoulli_7": rngs.bernoulli(0.3, (7,)),
        "permutation_8": rngs.permutation(8),
        "truncated_normal_4": rngs.truncated_normal(-1.0, 1.0, (4,)),
        "variance_scaling_2x6": rngs.variance_scaling(2.0, "fan_out", "uniform")(
            (2, 6)
        ),
    }
    for name, value in got.items():
        np.testing.assert_array_equal(np.asarray(value), FLAX[name], err_msg=name)
    np.testing.assert_array_equal(
        [int(rngs.default.count.value), int(rngs.params.count.value)],
        FLAX["counts_after_samplers"],
    )


def test_sampler_is_jax_random_on_fold_in_of_key_and_count():
    rngs = nnx.Rngs(0, params=1)
    x = rngs.normal((2, 3))
    ref = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (2, 3))
    np.testing.assert_array_equal(x, ref)
    init = rngs.params.lecun_uniform()  # the key is drawn at each call, not here
    assert int(rngs.params.count.value) == 0
    w = init((2, 3))
    ref = jax.nn.initializers.lecun_uniform()(
        jax.random.fold_in(jax.random.key(1), 0), (2, 3)
    )
    np.testing.assert_array_equal(w, ref)
    assert callable(nnx.RngStream(0, tag="t").multinomial)
    assert set(nnx._rngs.RANDOM_FUNCTIONS) <= set(dir(nnx.Rngs))


def test_fork_split_broadcast_match_flax():
    rngs = nnx.Rngs(params=3, dropout=4)
    np.testing.assert_array_equal(
        data(rngs.fork().params.key.value), FLAX["fork_params_key"]
    )
    np.testing.assert_array_equal(
        data(rngs.split({"params": 3}).params.key.value), FLAX["split_params_key"]
    )
    # a stream no rule matches restarts from its key (flax.nnx rebuilds it)
    np.testing.assert_array_equal(
        data(rngs.split({"params": 3}).dropout.key.value), FLAX["split_dropout_key"]
    )
    np.testing.assert_array_equal(
        data(rngs.params.broadcast(2).key.value), FLAX["broadcast_params_key"]
    )
    np.testing.assert_array_equal(
        data(rngs.dropout.split((2, 2)).key.value), FLAX["stream_split_key"]
    )
    np.testing.assert_array_equal(
        [int(rngs.params.count.value), int(rngs.dropout.count.value)],
        FLAX["counts_after_fork"],
    )


def test_layer_initialisations_equal_flax():
    lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(lin.kernel.value), FLAX["linear_kernel"])
    rngs = nnx.Rngs(params=5)
    a, b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)
    both = np.concatenate(
        [np.asarray(a.kernel.value).ravel(), np.asarray(b.kernel.value).ravel()]
    )
    np.testing.assert_array_equal(both, FLAX["two_linears_kernels"])


def test_graph_helpers_match_flax():
    rngs = nnx.Rngs(params=0, dropout=1)
    backups = nnx.split_rngs(rngs, splits=3, only="params")
    np.testing.assert_array_equal(
        data(rngs.params.key.value), FLAX["split_rngs_params_key"]
    )
    nnx.restore_rngs(backups)
    backups = nnx.fork_rngs(rngs)
    np.testing.assert_array_equal(
        data(rngs.dropout.key.value), FLAX["fork_rngs_dropout_key"]
    )
    nnx.restore_rngs(backups)
    new = nnx.with_rngs(rngs, split={"params": 2}, fork=...)
    np.testing.assert_array_equal(
        data(new.params.key.value), FLAX["with_rngs_params_key"]
    )
    np.testing.assert_array_equal(
        data(new.dropout.key.value), FLAX["with_rngs_dropout_key"]
    )
    np.testing.assert_array_equal(
        [int(rngs.params.count.value), int(rngs.dropout.count.value)],
        FLAX["counts_after_helpers"],
    )


def test_reseed_derives_keys_as_flax():
    class Two(nnx.Module):
        def __init__(self):
            self.a = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
            self.b = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))

    two = Two()
    nnx.reseed(two, dropout=9)
    got = np.stack([data(two.a.rngs.key.value), data(two.b.rngs.key.value)])
    np.testing.assert_array_equal(got, FLAX["reseed_two_keys"])


# -- the graph helpers: in place with backups, or copies --------------------------


def test_split_rngs_copy_leaves_the_input_whole():
    rngs = nnx.Rngs(params=0, dropout=1)
    copy = nnx.split_rngs(rngs, splits=5, graph_updates=False)
    assert copy is not rngs and isinstance(copy, nnx.Rngs)
    assert copy.params.key.value.shape == (5,) and copy.dropout.count.value.shape == (
        5,
    )
    assert rngs.params.key.value.shape == () and int(rngs.params.count.value) == 1
    lanes = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), 5)
    np.testing.assert_array_equal(data(copy.params.key.value), data(lanes))
    one = nnx.split_rngs(rngs, splits=1, squeeze=True, graph=False)
    assert one.params.key.value.shape == ()
    with pytest.raises(
        ValueError, match=r"squeeze=True .* needs splits=1, got splits=2"
    ):
        nnx.split_rngs(rngs, splits=2, squeeze=True)


def test_split_rngs_copy_of_a_model_shares_nothing():
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    copy = nnx.split_rngs(model, splits=2, graph_updates=False)
    assert copy.rngs.key.value.shape == (2,) and model.rngs.key.value.shape == ()
    assert copy.rngs is not model.rngs
    decorated = nnx.split_rngs(splits=4, graph_updates=False)(
        lambda m, n=1: (m.rngs.key.value.shape, n)
    )
    assert decorated(model, n=2) == ((4,), 2)
    assert model.rngs.key.value.shape == ()


def test_fork_rngs_in_place_restores_and_as_copy():
    rngs = nnx.Rngs(params=0, dropout=1)
    before = data(rngs.params.key.value)
    backups = nnx.fork_rngs(rngs)
    assert isinstance(backups, nnx.SplitBackups) and len(list(backups)) == 2
    forked = jax.random.fold_in(jax.random.key(0), 0)
    np.testing.assert_array_equal(data(rngs.params.key.value), data(forked))
    assert int(rngs.params.count.value) == 0
    nnx.restore_rngs(backups)
    np.testing.assert_array_equal(data(rngs.params.key.value), before)
    assert int(rngs.params.count.value) == 1  # the fork's draw stays counted
    copy = nnx.fork_rngs(rngs, split={"dropout": 3}, graph_updates=False)
    assert copy.dropout.key.value.shape == (3,) and copy.params.key.value.shape == ()
    np.testing.assert_array_equal(data(rngs.params.key.value), before)

    @nnx.fork_rngs(split=2)
    def shapes(r):
        return r.params.key.value.shape

    assert shapes(rngs) == (2,) and rngs.params.key.value.shape == ()


def test_with_rngs_rules():
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    new = nnx.with_rngs(rngs, split={"params": 4, ...: (2, 3)}, graph=False)
    assert new.params.key.value.shape == (4,)
    assert new.dropout.key.value.shape == (2, 3) and new.noise.key.value.shape == (2, 3)
    new = nnx.with_rngs(rngs, broadcast={"params": 5}, fork="noise")
    b = data(new.params.key.value)
    assert b.shape == (5, 2) and (b == b[:1]).all()
    assert new.dropout is not rngs.dropout
    np.testing.assert_array_equal(
        data(new.dropout.key.value), data(rngs.dropout.key.value)
    )
    new = nnx.with_rngs(rngs, split=2, only="dropout")
    assert new.dropout.key.value.shape == (2,) and new.params.key.value.shape == ()
    with pytest.raises(ValueError, match=r"matches multiple rules:\n  - split"):
        nnx.with_rngs(rngs, split={"params": 4}, fork="params")
    with pytest.raises(TypeError, match=r"with_rngs\(split=\): expected an int"):
        nnx.with_rngs(rngs, split="params")
    tree = {"a": nnx.RngStream(0, tag="params"), "b": [nnx.RngStream(1, tag="x")]}
    new_tree = nnx.with_rngs(tree, split=4)
    assert new_tree["a"].key.value.shape == (4,) and new_tree["b"][0].tag == "x"
    assert tree["a"].key.value.shape == ()


def test_reseed_policies_for_split_streams():
    rngs = nnx.Rngs(params=0).split(3)
    with pytest.raises(ValueError, match=r"reseed: the stream at path \('params',\)"):
        nnx.reseed(rngs, params=1)
    nnx.reseed(rngs, policy="match_shape", params=1)
    expected = jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 3)
    np.testing.assert_array_equal(data(rngs.params.key.value), data(expected))
    with pytest.raises(ValueError, match="policy must be"):
        nnx.reseed(rngs, policy="nope", params=1)


def test_rngs_mapping_iteration_and_dunders():
    rngs = nnx.Rngs({"params": 0}, dropout=1)
    assert list(rngs) == ["params", "dropout"] and len(rngs) == 2
    assert nnx.Rngs(default=3).default.tag == "default"
    with pytest.raises(AttributeError):
        rngs.__json__  # noqa: B018


def test_hijax_rngs_advance_through_plain_jax_jit():
    with nnx.var_defaults(hijax=True):
        rngs = nnx.Rngs(0)
    assert rngs.default.key.hijax and rngs.default.count.hijax
    draw = jax.jit(lambda r: r())
    k1, k2 = draw(rngs), draw(rngs)
    assert int(rngs.default.count[...]) == 2  # the count came back both times
    reference = nnx.Rngs(0)  # the same draws, eagerly
    assert jax.random.key_data(k1).tolist() == jax.random.key_data(reference()).tolist()
    assert jax.random.key_data(k2).tolist() == jax.random.key_data(reference()).tolist()
