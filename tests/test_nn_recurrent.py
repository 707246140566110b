"""Tests for ``nnxlike/nn/recurrent.py``.

References: the LSTM/GRU/Elman gate equations written out in numpy one step at a
time, a Python loop calling the cell, and PyTorch's ``nn.LSTM``/``nn.GRU`` numbers in
``fixtures/torch_rnn_attention.npz`` (made by
``fixtures/make_torch_rnn_attention_fixtures.py``; its docstring states the weight
conversions, repeated next to ``_lstm_from_torch``/``_gru_from_torch``). All tests
share input 3, hidden 4, batch 2 and 5 steps so compiled code is reused.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

FIXTURES = np.load(Path(__file__).parent / "fixtures" / "torch_rnn_attention.npz")
IN, HID, B, T = 3, 4, 2, 5


def _rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _randomize_biases(cell: nnx.Module, seed: int) -> None:
    """Default biases are zero; make them nonzero so the tests see them."""
    for i, (_, var) in enumerate(nnx.iter_graph(cell)):
        if isinstance(var, nnx.Param) and var.ndim == 1:
            var.value = jnp.asarray(_rand(seed + i, *var.shape))


def _np(v) -> np.ndarray:
    return np.asarray(v.value)


# -- cells against their equations ------------------------------------------------


def test_lstm_cell_matches_numpy_equations():
    cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    _randomize_biases(cell, 10)
    x, c, h = _rand(0, B, IN), _rand(1, B, HID), _rand(2, B, HID)

    def gate(i_layer, h_layer):
        return x @ _np(i_layer.kernel) + h @ _np(h_layer.kernel) + _np(h_layer.bias)

    i = _sigmoid(gate(cell.ii, cell.hi))
    f = _sigmoid(gate(cell.if_, cell.hf))
    g = np.tanh(gate(cell.ig, cell.hg))
    o = _sigmoid(gate(cell.io, cell.ho))
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    (c_out, h_out), y = cell((c, h), x)
    np.testing.assert_allclose(c_out, c_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_out, h_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, h_out)
    assert cell.ii.bias is None and cell.hi.kernel.shape == (HID, HID)


def test_optimized_lstm_cell_equals_lstm_cell_with_fused_params():
    cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    _randomize_biases(cell, 10)
    fused = nnx.OptimizedLSTMCell(IN, HID, rngs=nnx.Rngs(1))
    assert fused.dense_i.kernel.shape == (IN, 4 * HID) and fused.dense_i.bias is None
    gates_i = (cell.ii, cell.if_, cell.ig, cell.io)
    gates_h = (cell.hi, cell.hf, cell.hg, cell.ho)
    fused.dense_i.kernel.value = jnp.concatenate([g.kernel.value for g in gates_i], -1)
    fused.dense_h.kernel.value = jnp.concatenate([g.kernel.value for g in gates_h], -1)
    fused.dense_h.bias.value = jnp.concatenate([g.bias.value for g in gates_h], -1)
    carry = (jnp.asarray(_rand(1, B, HID)), jnp.asarray(_rand(2, B, HID)))
    x = jnp.asarray(_rand(0, B, IN))
    (c1, h1), _ = cell(carry, x)
    (c2, h2), _ = fused(carry, x)
    np.testing.assert_allclose(c2, c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h2, h1, rtol=1e-5, atol=1e-6)


def test_gru_cell_matches_numpy_equations():
    cell = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
    _randomize_biases(cell, 20)
    assert cell.dense_h.bias is None  # flax.nnx: no recurrent bias
    x, h = _rand(0, B, IN), _rand(2, B, HID)
    wi, bi, wh = (
        _np(cell.dense_i.kernel),
        _np(cell.dense_i.bias),
        _np(cell.dense_h.kernel),
    )
    blocks = [slice(k * HID, (k + 1) * HID) for k in range(3)]
    xr, xz, xn = (x @ wi[:, s] + bi[s] for s in blocks)
    hr, hz, hn = (h @ wh[:, s] for s in blocks)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    expected = (1 - z) * n + z * h
    h_out, y = cell(h, x)
    np.testing.assert_allclose(h_out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, h_out)


@pytest.mark.parametrize("residual", [False, True])
def test_simple_cell_matches_numpy_equations(residual):
    cell = nnx.SimpleCell(IN, HID, residual=residual, rngs=nnx.Rngs(0))
    _randomize_biases(cell, 30)
    x, h = _rand(0, B, IN), _rand(2, B, HID)
    pre = (
        x @ _np(cell.dense_i.kernel)
        + _np(cell.dense_i.bias)
        + h @ _np(cell.dense_h.kernel)
    )
    expected = np.tanh(pre + h if residual else pre)
    h_out, y = cell(h, x)
    np.testing.assert_allclose(h_out, expected, rtol=1e-5, atol=1e-6)


def test_initialize_carry_shapes_and_carry_init():
    lstm = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    c, h = lstm.initialize_carry((B, 7, IN))
    assert c.shape == h.shape == (B, 7, HID) and not np.asarray(c).any()
    assert nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0)).initialize_carry((IN,)).shape == (
        HID,
    )
    ones = lstm.initialize_carry((B, IN), carry_init=nnx.initializers.ones)
    np.testing.assert_array_equal(ones[0], np.ones((B, HID)))
    normal = nnx.initializers.normal(1.0)
    with pytest.raises(ValueError, match=r"needs random keys.*nnx.Rngs\(carry=0\)"):
        lstm.initialize_carry((B, IN), carry_init=normal)
    c, h = lstm.initialize_carry((B, IN), nnx.Rngs(carry=0), carry_init=normal)
    assert np.asarray(c).std() > 0 and not np.allclose(c, h)
    kept = nnx.SimpleCell(IN, HID, carry_init=normal, keep_rngs=True, rngs=nnx.Rngs(0))
    assert kept.rngs.tag == "carry" and kept.initialize_carry((B, IN)).shape == (B, HID)


def test_cell_errors():
    cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((B, IN))
    with pytest.raises(
        ValueError, match=r"LSTMCell.__call__: expected inputs with last"
    ):
        cell(carry, jnp.ones((B, IN + 1)))
    with pytest.raises(ValueError, match=r"GRUCell.__call__: expected a carry"):
        nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))(
            jnp.ones((B, HID + 1)), jnp.ones((B, IN))
        )
    with pytest.raises(ValueError, match="hidden_features must be a positive int"):
        nnx.GRUCell(IN, 0, rngs=nnx.Rngs(0))


# -- PyTorch reference numbers ----------------------------------------------------


def _lstm_from_torch(cell_type) -> nnx.Module:
    """PyTorch stacks gates i, f, g, o in (4H, in) / (4H, H); weights act as x @ W.T.

    Gate k's block k*H:(k+1)*H becomes our input layer kernel W_ih[block].T and our
    recurrent layer kernel W_hh[block].T with bias b_ih[block] + b_hh[block].
    """
    w_ih, w_hh = FIXTURES["lstm_weight_ih"], FIXTURES["lstm_weight_hh"]
    bias = FIXTURES["lstm_bias_ih"] + FIXTURES["lstm_bias_hh"]
    cell = cell_type(IN, HID, rngs=nnx.Rngs(0))
    if cell_type is nnx.OptimizedLSTMCell:
        cell.dense_i.kernel.value = jnp.asarray(w_ih.T)
        cell.dense_h.kernel.value = jnp.asarray(w_hh.T)
        cell.dense_h.bias.value = jnp.asarray(bias)
        return cell
    pairs = [
        (cell.ii, cell.hi),
        (cell.if_, cell.hf),
        (cell.ig, cell.hg),
        (cell.io, cell.ho),
    ]
    for k, (layer_i, layer_h) in enumerate(pairs):
        block = slice(k * HID, (k + 1) * HID)
        layer_i.kernel.value = jnp.asarray(w_ih[block].T)
        layer_h.kernel.value = jnp.asarray(w_hh[block].T)
        layer_h.bias.value = jnp.asarray(bias[block])
    return cell


@pytest.mark.parametrize("cell_type", [nnx.LSTMCell, nnx.OptimizedLSTMCell])
def test_lstm_matches_torch(cell_type):
    rnn = nnx.RNN(_lstm_from_torch(cell_type))
    # PyTorch's carry is (h, c) of shape (1, B, H); flax's is (c, h) of (B, H).
    carry0 = (jnp.asarray(FIXTURES["lstm_c0"]), jnp.asarray(FIXTURES["lstm_h0"]))
    (c, h), y = rnn(FIXTURES["lstm_x"], initial_carry=carry0, return_carry=True)
    np.testing.assert_allclose(y, FIXTURES["lstm_out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, FIXTURES["lstm_hn"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, FIXTURES["lstm_cn"], rtol=1e-5, atol=1e-6)


def _gru_from_torch() -> nnx.GRUCell:
    """PyTorch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); flax.nnx has no b_hn.

    The fixture was made with b_hn = 0 (see its generator), so the conversion is
    exact: dense_i.kernel = W_ih.T, dense_h.kernel = W_hh.T and dense_i.bias =
    b_ih + [b_hr, b_hz, 0] (the r and z gates only ever see b_i* + b_h*).
    """
    b_hh = FIXTURES["gru_bias_hh"]
    np.testing.assert_array_equal(b_hh[2 * HID :], 0.0)  # b_hn really is zero
    cell = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
    cell.dense_i.kernel.value = jnp.asarray(FIXTURES["gru_weight_ih"].T)
    cell.dense_h.kernel.value = jnp.asarray(FIXTURES["gru_weight_hh"].T)
    cell.dense_i.bias.value = jnp.asarray(FIXTURES["gru_bias_ih"] + b_hh)
    return cell


def test_gru_matches_torch():
    rnn = nnx.RNN(_gru_from_torch(), return_carry=True)
    h, y = rnn(FIXTURES["gru_x"], initial_carry=jnp.asarray(FIXTURES["gru_h0"]))
    np.testing.assert_allclose(y, FIXTURES["gru_out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, FIXTURES["gru_hn"], rtol=1e-5, atol=1e-6)


# -- RNN --------------------------------------------------------------------------


def _loop(cell, x, carry=None):
    """Reference: call the cell step by step in Python ([batch, time, features])."""
    x = np.asarray(x)  # numpy slicing: no eager JAX ops to compile
    if carry is None:
        carry = cell.initialize_carry(x[:, 0].shape)
    ys = []
    for t in range(x.shape[1]):
        carry, y = cell(carry, x[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, axis=1)


def _np_loop(cell, x):
    """``_loop`` with numpy results, so the tests' slicing compiles nothing."""
    carry, ys = _loop(cell, x)
    return jax.tree.map(np.asarray, carry), np.asarray(ys)


@pytest.fixture(scope="module")
def gru_rnn():
    cell = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
    _randomize_biases(cell, 40)
    return nnx.RNN(cell)


def test_rnn_equals_python_loop_and_time_major(gru_rnn):
    x = _rand(0, B, T, IN)
    carry_ref, y_ref = _np_loop(gru_rnn.cell, x)
    carry, y = gru_rnn(x, return_carry=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry, carry_ref, rtol=1e-5, atol=1e-6)
    y_tm = gru_rnn(np.swapaxes(x, 0, 1), time_major=True)
    np.testing.assert_allclose(np.swapaxes(y_tm, 0, 1), y_ref, rtol=1e-5, atol=1e-6)
    unrolled = nnx.RNN(gru_rnn.cell, unroll=T)(x)
    np.testing.assert_allclose(unrolled, y_ref, rtol=1e-5, atol=1e-6)


def test_rnn_reverse_and_keep_order(gru_rnn):
    x = _rand(0, B, T, IN)
    carry_ref, y_ref = _np_loop(gru_rnn.cell, x[:, ::-1])
    carry, y = gru_rnn(x, reverse=True, return_carry=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)  # reversed order
    np.testing.assert_allclose(carry, carry_ref, rtol=1e-5, atol=1e-6)
    kept = gru_rnn(x, reverse=True, keep_order=True)
    np.testing.assert_allclose(kept, y_ref[:, ::-1], rtol=1e-5, atol=1e-6)


def test_rnn_seq_lengths_freeze_carry_and_zero_outputs(gru_rnn):
    x = _rand(0, B, T, IN)
    lengths = np.array([T, 2])
    carry, y = jax.tree.map(
        np.asarray, gru_rnn(x, seq_lengths=lengths, return_carry=True)
    )
    for b, n in enumerate(lengths.tolist()):
        carry_ref, y_ref = _np_loop(gru_rnn.cell, x[b : b + 1, :n])
        np.testing.assert_allclose(y[b, :n], y_ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y[b, n:], 0.0)
        np.testing.assert_allclose(carry[b], carry_ref[0], rtol=1e-5, atol=1e-6)

    # Backwards: each sequence's valid part is read last-to-first; padding stays put.
    carry, y = jax.tree.map(
        np.asarray,
        gru_rnn(
            x, seq_lengths=lengths, reverse=True, keep_order=True, return_carry=True
        ),
    )
    for b, n in enumerate(lengths.tolist()):
        carry_ref, y_ref = _np_loop(gru_rnn.cell, x[b : b + 1, :n][:, ::-1])
        np.testing.assert_allclose(y[b, :n], y_ref[0, ::-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y[b, n:], 0.0)
        np.testing.assert_allclose(carry[b], carry_ref[0], rtol=1e-5, atol=1e-6)


def test_flip_sequences_keeps_padding_at_the_end():
    from nnxlike.nn.recurrent import flip_sequences

    x = jnp.arange(2 * 4).reshape(2, 4)
    out = flip_sequences(x, jnp.array([3, 4]), num_batch_dims=1, time_major=False)
    assert out.tolist() == [[2, 1, 0, 3], [7, 6, 5, 4]]
    tm = flip_sequences(x.T, jnp.array([3, 4]), num_batch_dims=1, time_major=True)
    assert tm.T.tolist() == out.tolist()


def test_rnn_gradients_flow_through_the_scan(gru_rnn):
    x = _rand(0, B, T, IN)
    graphdef, params, rest = nnx.split(gru_rnn, nnx.Param, ...)

    def loss(p, use_loop):
        model = nnx.merge(graphdef, p, rest)
        y = _loop(model.cell, x)[1] if use_loop else model(x)
        return (y**2).sum()

    grads = jax.grad(loss)(params, False)
    expected = jax.grad(loss)(params, True)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


class _NoisyCell(nnx.Module):
    """A cell with Dropout inside: its RNG counter must advance every step."""

    def __init__(self, rngs):
        self.cell = nnx.SimpleCell(IN, HID, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, carry, x):
        return self.cell(carry, self.drop(x))

    def initialize_carry(self, input_shape, rngs=None):
        return self.cell.initialize_carry(input_shape, rngs)


def test_rnn_carries_rng_state_through_the_loop_and_writes_it_back():
    rnn = nnx.RNN(_NoisyCell(nnx.Rngs(0)))
    x = jnp.ones((B, T, IN))
    y1 = rnn(x)
    assert int(rnn.cell.drop.rngs.count.value) == T  # one draw per step, kept
    y2 = rnn(x)
    assert int(rnn.cell.drop.rngs.count.value) == 2 * T
    assert not np.allclose(y1, y2)
    nnx.reseed(rnn, dropout=5)
    a = rnn(x)
    nnx.reseed(rnn, dropout=5)
    np.testing.assert_array_equal(rnn(x), a)


def test_rnn_under_nnx_jit_matches_eager(gru_rnn):
    x = _rand(0, B, T, IN)
    jitted = nnx.jit(lambda model, inputs: model(inputs, seq_lengths=jnp.array([T, 3])))
    eager = gru_rnn(x, seq_lengths=jnp.array([T, 3]))
    np.testing.assert_allclose(jitted(gru_rnn, x), eager, rtol=1e-6, atol=1e-6)


class _SowingCell(nnx.Module):
    def __init__(self, rngs):
        self.cell = nnx.SimpleCell(IN, HID, rngs=rngs)

    def __call__(self, carry, x):
        self.sow(nnx.Intermediate, "h", carry)
        return self.cell(carry, x)

    def initialize_carry(self, input_shape, rngs=None):
        return self.cell.initialize_carry(input_shape, rngs)


def test_rnn_errors(gru_rnn):
    x = jnp.ones((B, T, IN))
    with pytest.raises(ValueError, match=r"expected inputs of shape .*no time axis"):
        gru_rnn(jnp.ones((IN,)))
    with pytest.raises(
        ValueError, match=r"seq_lengths must have the batch shape \(2,\)"
    ):
        gru_rnn(x, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(
        ValueError, match=r"GRUCell returned a carry with \(shape, dtype\)"
    ):
        gru_rnn(x, initial_carry=jnp.ones((1, HID)))
    with pytest.raises(nnx.StructureError, match="changed the cell's structure"):
        nnx.RNN(_SowingCell(nnx.Rngs(0)))(x)
    with pytest.raises(TypeError, match="cell must be an nnx cell Module"):
        nnx.RNN(nnx.Linear(IN, HID, rngs=nnx.Rngs(0)))


# -- Bidirectional ----------------------------------------------------------------


def test_bidirectional_is_concat_of_forward_and_reversed_backward():
    fwd = nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0)))
    bwd = nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(1)))
    bi = nnx.Bidirectional(fwd, bwd, return_carry=True)
    x = _rand(0, B, T, IN)
    (carry_f, carry_b), y = jax.tree.map(np.asarray, bi(x))
    assert y.shape == (B, T, 2 * HID)
    cf_ref, yf_ref = _np_loop(fwd.cell, x)
    cb_ref, yb_ref = _np_loop(bwd.cell, x[:, ::-1])
    np.testing.assert_allclose(y[..., :HID], yf_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[..., HID:], yb_ref[:, ::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry_f, cf_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry_b, cb_ref, rtol=1e-5, atol=1e-6)

    lengths = np.array([T, 3])
    y_len = np.asarray(bi(x, seq_lengths=lengths, return_carry=False))
    _, yb_short = _np_loop(bwd.cell, x[1:, :3][:, ::-1])
    np.testing.assert_allclose(
        y_len[1, :3, HID:], yb_short[0, ::-1], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(y_len[1, 3:], 0.0)

    added = nnx.Bidirectional(fwd, bwd, merge_fn=lambda a, b: a + b)(x)
    np.testing.assert_allclose(added, y[..., :HID] + y[..., HID:], rtol=1e-6)
