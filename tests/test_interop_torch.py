"""nnxlike.interop.torch against stored PyTorch state dicts and outputs.

Fixtures (made by ``fixtures/make_torch_titanic_fixture.py`` with torch 2.13 and the
``safetensors`` package; torch is never needed here): the Titanic tutorial's
PyTorch MLP and a small ``nn.Sequential`` CNN with BatchNorm, as ``.safetensors``
and ``.npz`` state dicts with PyTorch's eval-mode outputs, and one tensor per dtype
written by the reference safetensors writer. Layer conversions are also checked on
the weights of ``torch_layers.npz``/``torch_rnn_attention.npz``, which the layer
tests convert by hand, so the two derivations must agree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import nnxlike as nnx
from nnxlike.interop import torch as it

FIX = Path(__file__).parent / "fixtures"
IO = np.load(FIX / "torch_interop_io.npz")
LAYERS = np.load(FIX / "torch_layers.npz")
RNN_ATT = np.load(FIX / "torch_rnn_attention.npz")


def torch_case(name: str) -> dict[str, np.ndarray]:
    n = len(name) + 1
    return {k[n:]: LAYERS[k] for k in LAYERS.files if k.startswith(name + ".")}


def nchw_to_nhwc(x):
    return jnp.asarray(np.moveaxis(x, 1, -1))


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def assert_same_dicts(got: dict, want: dict) -> None:
    """Same names in the same order, bit-identical arrays of the same dtype."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def params_of(model) -> dict:
    return {
        ".".join(map(str, p)): np.asarray(v.value)
        for p, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param | nnx.BatchStat)
    }


# -- the Titanic twin --------------------------------------------------------------


class TitanicMLP(nnx.Module):
    """tutorials/titanic.py's model, with 8 input features as in the fixture."""

    def __init__(self, din: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(din, 32, rngs=rngs)
        self.drop1 = nnx.Dropout(0.01, rngs=rngs)
        self.fc2 = nnx.Linear(32, 16, rngs=rngs)
        self.drop2 = nnx.Dropout(0.01, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        x = self.drop1(nnx.leaky_relu(self.fc1(x)))
        x = self.drop2(nnx.leaky_relu(self.fc2(x)))
        return self.out(x).squeeze(-1)


def titanic_state_dict() -> dict[str, np.ndarray]:
    with np.load(FIX / "torch_titanic.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("source", ["safetensors", "npz", "dict"])
def test_titanic_twin_predicts_like_torch(source):
    sd = {
        "safetensors": FIX / "torch_titanic.safetensors",
        "npz": str(FIX / "torch_titanic.npz"),
        "dict": titanic_state_dict(),
    }[source]
    model = TitanicMLP(8, rngs=nnx.Rngs(0))
    report = nnx.load_torch_state_dict(model, sd)
    assert report == ([], []) and report.missing_keys == []
    model.eval()
    close(model(IO["titanic_x"]), IO["titanic_logits"], rtol=1e-5)


def test_titanic_round_trip_is_bit_exact(tmp_path):
    want = titanic_state_dict()
    model = TitanicMLP(8, rngs=nnx.Rngs(1))
    it.load_torch_state_dict(model, want)
    assert_same_dicts(it.to_torch_state_dict(model), want)
    # ... and through a file of our own writer, read back by our reader.
    it.save_safetensors(tmp_path / "m.safetensors", nnx.to_torch_state_dict(model))
    assert_same_dicts(it.load_safetensors(tmp_path / "m.safetensors"), want)
    # The reference writer's file holds the same bytes as the .npz.
    assert_same_dicts(
        it.load_safetensors(FIX / "torch_titanic.safetensors"),
        {k: want[k] for k in it.load_safetensors(FIX / "torch_titanic.safetensors")},
    )


def test_top_level_names_are_the_interop_functions():
    assert nnx.load_torch_state_dict is it.load_torch_state_dict
    assert nnx.to_torch_state_dict is it.to_torch_state_dict
    assert issubclass(it.TorchStateDictError, nnx.NnxError)
    assert issubclass(it.SafetensorsError, nnx.NnxError)


# -- a Sequential CNN with BatchNorm buffers ---------------------------------------


def cnn_twin(seed: int = 0) -> nnx.Sequential:
    # torch: Conv2d, BatchNorm2d, ReLU, AdaptiveAvgPool2d(1), Flatten, Linear.
    # Parameter-free layers keep their places so that indices match.
    return nnx.Sequential(
        nnx.Conv(3, 4, (3, 3), padding=1, rngs=nnx.Rngs(seed)),
        nnx.BatchNorm(4, epsilon=1e-5, momentum=0.9, rngs=nnx.Rngs(seed)),
        nnx.relu,
        lambda x: x.mean(axis=(1, 2)),
        lambda x: x,
        nnx.Linear(4, 2, rngs=nnx.Rngs(seed)),
    )


def test_sequential_cnn_with_batchnorm_matches_torch():
    path = FIX / "torch_cnn.safetensors"
    sd = it.load_safetensors(path)
    assert int(sd["1.num_batches_tracked"]) == 3  # a torch buffer we accept
    model = cnn_twin()
    assert nnx.load_torch_state_dict(model, path) == ([], [])
    close(model.layers[1].var.value, sd["1.running_var"], 0, 0)
    model.eval()
    close(model(nchw_to_nhwc(IO["cnn_x"])), IO["cnn_y"], rtol=1e-5)
    out = it.to_torch_state_dict(model)
    # torch's state_dict() order: per module, params then buffers.
    assert list(out) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "5.weight",
        "5.bias",
    ]
    assert out["1.num_batches_tracked"].dtype == np.int64
    assert int(out.pop("1.num_batches_tracked")) == 0  # not kept: documented
    assert_same_dicts(out, {k: sd[k] for k in out})
    # torch's state dict without the counter loads too.
    del sd["1.num_batches_tracked"]
    assert nnx.load_torch_state_dict(cnn_twin(), sd) == ([], [])


# -- each layer against torch_layers.npz --------------------------------------------

CONV_CASES = {
    "conv2d": lambda w: nnx.Conv(3, 4, (3, 3), padding=1, rngs=nnx.Rngs(0)),
    "conv2d_gsd": lambda w: nnx.Conv(
        4,
        6,
        (3, 2),
        strides=(2, 1),
        padding=((2, 2), (1, 1)),
        kernel_dilation=(2, 1),
        feature_group_count=2,
        rngs=nnx.Rngs(0),
    ),
    "conv1d": lambda w: nnx.Conv(2, 3, (3,), strides=2, padding=1, rngs=nnx.Rngs(0)),
    "conv3d": lambda w: nnx.Conv(2, 2, (2, 2, 2), padding="VALID", rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_weights_load_and_match_torch(case):
    t = torch_case(case)
    conv = CONV_CASES[case](t["weight"])
    sd = {"weight": t["weight"], "bias": t["bias"]}
    nnx.load_torch_state_dict(conv, sd)
    close(conv(nchw_to_nhwc(t["x"])), np.moveaxis(t["y"], 1, -1), 1e-4, 1e-5)
    assert_same_dicts(nnx.to_torch_state_dict(conv), sd)


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("case", ["convT2d", "convT2d_gd"])
def test_conv_transpose_weights_load_and_match_torch(case, transpose_kernel):
    t = torch_case(case)
    # Torch hyper-parameters (make_torch_fixtures.py): padding, output_padding,
    # dilation, groups; our explicit padding of the dilated input.
    p, q, d, g = {"convT2d": (1, 1, 1, 1), "convT2d_gd": (0, 0, 2, 2)}[case]
    cin, k = t["weight"].shape[0], t["weight"].shape[2]
    cout = t["weight"].shape[1] * g
    pad = (d * (k - 1) - p, d * (k - 1) - p + q)
    layer = nnx.ConvTranspose(
        cin,
        cout,
        (k, k),
        strides=2,
        padding=(pad, pad),
        kernel_dilation=d,
        feature_group_count=g,
        transpose_kernel=transpose_kernel,
        rngs=nnx.Rngs(0),
    )
    sd = {"weight": t["weight"], "bias": t["bias"]}
    nnx.load_torch_state_dict(layer, sd)
    close(layer(nchw_to_nhwc(t["x"])), np.moveaxis(t["y"], 1, -1), 1e-4, 1e-5)
    assert_same_dicts(nnx.to_torch_state_dict(layer), sd)


def test_batchnorm_running_stats_load_and_match_torch_eval():
    t = torch_case("bn")
    bn = nnx.BatchNorm(3, epsilon=1e-5, use_running_average=True, rngs=nnx.Rngs(0))
    sd = {k: t[k] for k in ("weight", "bias", "running_mean", "running_var")}
    nnx.load_torch_state_dict(bn, sd)
    close(bn(nchw_to_nhwc(t["x_eval"])), np.moveaxis(t["y_eval"], 1, -1), 1e-4, 1e-5)
    out = nnx.to_torch_state_dict(bn)
    assert list(out) == [*sd, "num_batches_tracked"]
    assert_same_dicts({k: out[k] for k in sd}, sd)


NORMS = {
    "ln": (lambda: nnx.LayerNorm(5, epsilon=1e-5, rngs=nnx.Rngs(0)), False),
    "ln2": (
        lambda: nnx.LayerNorm(
            15,
            epsilon=1e-5,
            reduction_axes=(-2, -1),
            feature_axes=(-2, -1),
            rngs=nnx.Rngs(0),
        ),
        False,
    ),
    "gn": (
        lambda: nnx.GroupNorm(6, num_groups=2, epsilon=1e-5, rngs=nnx.Rngs(0)),
        True,
    ),
    "in": (lambda: nnx.InstanceNorm(3, epsilon=1e-5, rngs=nnx.Rngs(0)), True),
    "rms": (lambda: nnx.RMSNorm(5, epsilon=1e-6, rngs=nnx.Rngs(0)), False),
}


@pytest.mark.parametrize("case", list(NORMS))
def test_norm_weights_load_and_match_torch(case):
    t = torch_case(case)
    make, channels_first = NORMS[case]
    layer = make()
    sd = {k: t[k] for k in ("weight", "bias") if k in t}
    nnx.load_torch_state_dict(layer, sd)
    if channels_first:
        y = np.moveaxis(np.asarray(layer(nchw_to_nhwc(t["x"]))), -1, 1)
    else:
        y = layer(jnp.asarray(t["x"]))
    close(y, t["y"], 1e-5, 1e-5)
    out = nnx.to_torch_state_dict(layer)
    # A (3, 5) normalized_shape comes back flat: our scale is (15,).
    assert_same_dicts(out, {k: v.reshape(out[k].shape) for k, v in sd.items()})


def test_linear_embedding_and_prelu_load_from_torch_names():
    lin = torch_case("linear")
    emb = torch_case("embed")
    pre = torch_case("prelu")

    class Net(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
            self.tok = nnx.Embed(7, 4, rngs=nnx.Rngs(0))
            self.act = nnx.PReLU()

    sd = {
        "fc.weight": lin["weight"],
        "fc.bias": lin["bias"],
        "tok.weight": emb["weight"],
        "act.weight": pre["weight"],
    }
    net = Net()
    assert nnx.load_torch_state_dict(net, sd) == ([], [])
    close(net.fc(lin["x"]), lin["y"])
    close(net.tok(emb["idx"]), emb["y"], 0, 0)
    close(net.tok.attend(jnp.asarray(emb["q"])), emb["attend"])
    close(net.act(jnp.asarray(pre["x"])), pre["y"])
    assert net.act.negative_slope.shape == ()
    assert_same_dicts(nnx.to_torch_state_dict(net), sd)


# -- recurrent and attention against torch_rnn_attention.npz -----------------------

IN, HID = 3, 4


def lstm_state_dict(prefix: str = "") -> dict[str, np.ndarray]:
    return {
        f"{prefix}{name}_l0": RNN_ATT[f"lstm_{name}"]
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }


@pytest.mark.parametrize("cell_type", [nnx.LSTMCell, nnx.OptimizedLSTMCell])
def test_lstm_loads_as_rnn_and_matches_torch(cell_type):
    class Net(nnx.Module):  # torch: self.lstm = nn.LSTM(3, 4, batch_first=True)
        def __init__(self):
            self.lstm = nnx.RNN(cell_type(IN, HID, rngs=nnx.Rngs(0)))

    net = Net()
    sd = lstm_state_dict("lstm.")
    assert nnx.load_torch_state_dict(net, sd) == ([], [])
    carry0 = (jnp.asarray(RNN_ATT["lstm_c0"]), jnp.asarray(RNN_ATT["lstm_h0"]))
    (c, h), y = net.lstm(RNN_ATT["lstm_x"], initial_carry=carry0, return_carry=True)
    close(y, RNN_ATT["lstm_out"])
    close(h, RNN_ATT["lstm_hn"])
    close(c, RNN_ATT["lstm_cn"])
    # Export: the weights exactly; the two biases as (sum, zeros), the same function.
    out = nnx.to_torch_state_dict(net)
    assert list(out) == list(sd)
    for k in ("lstm.weight_ih_l0", "lstm.weight_hh_l0"):
        np.testing.assert_array_equal(out[k], sd[k])
    np.testing.assert_array_equal(
        out["lstm.bias_ih_l0"],
        (sd["lstm.bias_ih_l0"] + sd["lstm.bias_hh_l0"]).astype(np.float32),
    )
    np.testing.assert_array_equal(out["lstm.bias_hh_l0"], 0.0)
    again = Net()
    nnx.load_torch_state_dict(again, out)
    jax.tree.map(np.testing.assert_array_equal, params_of(again), params_of(net))


def test_lstm_cell_uses_torch_lstmcell_names():
    cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    sd = {k[: -len("_l0")]: v for k, v in lstm_state_dict().items()}
    assert nnx.load_torch_state_dict(cell, sd) == ([], [])
    np.testing.assert_array_equal(cell.if_.kernel.value, sd["weight_ih"][HID:8].T)
    assert list(nnx.to_torch_state_dict(cell)) == list(sd)


def test_gru_loads_and_matches_torch():
    sd = {
        f"{name}_l0": RNN_ATT[f"gru_{name}"]
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    rnn = nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0)), return_carry=True)
    nnx.load_torch_state_dict(rnn, sd)
    h, y = rnn(RNN_ATT["gru_x"], initial_carry=jnp.asarray(RNN_ATT["gru_h0"]))
    close(y, RNN_ATT["gru_out"])
    close(h, RNN_ATT["gru_hn"])

    # A nonzero b_hn has no GRUCell equivalent: reported, nothing written.
    bad = dict(sd, bias_hh_l0=sd["bias_hh_l0"] + 0.5)
    fresh = nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(1)))
    before = params_of(fresh)
    with pytest.raises(
        it.TorchStateDictError,
        match=r"(?s)cannot convert.*'bias_ih_l0', 'bias_hh_l0' -> cell\.dense_i\.bias "
        r"\(RNN\): its b_hn \(bias_hh_l0\[8:12\].*is nonzero",
    ):
        nnx.load_torch_state_dict(fresh, bad, strict=False)
    jax.tree.map(np.testing.assert_array_equal, params_of(fresh), before)


def test_bidirectional_uses_reverse_names():
    bi = nnx.Bidirectional(
        nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))),
        nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(1))),
    )
    names = list(nnx.to_torch_state_dict(bi))
    assert names == [
        f"{w}_l0{r}"
        for r in ("", "_reverse")
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    ]
    sd = nnx.to_torch_state_dict(bi)
    fresh = nnx.Bidirectional(
        nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(2))),
        nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(3))),
    )
    nnx.load_torch_state_dict(fresh, sd)
    x = jnp.ones((2, 5, IN))
    close(fresh(x), bi(x), 0, 0)


def mha_state_dict() -> dict[str, np.ndarray]:
    return {
        "in_proj_weight": RNN_ATT["mha_in_proj_weight"],
        "in_proj_bias": RNN_ATT["mha_in_proj_bias"],
        "out_proj.weight": RNN_ATT["mha_out_proj_weight"],
        "out_proj.bias": RNN_ATT["mha_out_proj_bias"],
    }


def test_multi_head_attention_loads_and_matches_torch():
    mha = nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))
    sd = mha_state_dict()
    assert nnx.load_torch_state_dict(mha, sd) == ([], [])
    close(mha(RNN_ATT["mha_x"]), RNN_ATT["mha_self_out"], 1e-5, 1e-5)
    close(
        mha(RNN_ATT["mha_x"], RNN_ATT["mha_xkv"]),
        RNN_ATT["mha_cross_out"],
        1e-5,
        1e-5,
    )
    assert_same_dicts(nnx.to_torch_state_dict(mha), sd)
    # kdim != embed_dim: torch keeps three separate projection weights.
    kv = nnx.MultiHeadAttention(2, 8, in_kv_features=6, rngs=nnx.Rngs(0))
    shapes = {k: v.shape for k, v in nnx.to_torch_state_dict(kv).items()}
    assert shapes == {
        "q_proj_weight": (8, 8),
        "k_proj_weight": (8, 6),
        "v_proj_weight": (8, 6),
        "in_proj_bias": (24,),
        "out_proj.weight": (8, 8),
        "out_proj.bias": (8,),
    }


def test_grouped_query_attention_is_reported_unsupported():
    gqa = nnx.MultiHeadAttention(2, 8, num_key_value_heads=1, rngs=nnx.Rngs(0))
    with pytest.raises(
        it.TorchStateDictError,
        match=r"(?s)unsupported layers:\n    <root> \(MultiHeadAttention\): "
        r"num_key_value_heads=1 differs from num_heads=2",
    ):
        nnx.load_torch_state_dict(gqa, mha_state_dict())
    with pytest.raises(it.TorchStateDictError, match="no PyTorch counterpart"):
        nnx.to_torch_state_dict(gqa)
    # Not strict: it falls back to attribute names, so nothing matches.
    missing, unexpected = nnx.load_torch_state_dict(gqa, mha_state_dict(), strict=False)
    assert "query.kernel" in missing and unexpected == list(mha_state_dict())


# -- names, mapping and errors ------------------------------------------------------


class Wrapped(nnx.Module):
    """torch: self.backbone = nn.Sequential(Linear, ReLU, Linear); self.head = ..."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.backbone = nnx.Sequential(
            nnx.Linear(3, 4, rngs=rngs), nnx.relu, nnx.Linear(4, 4, rngs=rngs)
        )
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.blocks = [nnx.LayerNorm(4, rngs=rngs)]  # an nnx.List: a ModuleList
        self.temperature = nnx.Param(jnp.array(1.5))  # a custom nn.Parameter
        self.drop = nnx.Dropout(0.1, rngs=rngs)  # RNG state: not torch state


def test_default_names_follow_torch_conventions():
    shapes = {k: v.shape for k, v in nnx.to_torch_state_dict(Wrapped()).items()}
    assert shapes == {
        "backbone.0.weight": (4, 3),
        "backbone.0.bias": (4,),
        "backbone.2.weight": (4, 4),
        "backbone.2.bias": (4,),
        "head.weight": (2, 4),
        "head.bias": (2,),
        "blocks.0.weight": (4,),
        "blocks.0.bias": (4,),
        "temperature": (),
    }


def test_one_error_lists_unexpected_missing_and_wrong_shape():
    model = Wrapped()
    sd = nnx.to_torch_state_dict(Wrapped(seed=1))
    sd["head.weight"] = np.zeros((3, 4), np.float32)  # wrong shape
    del sd["backbone.2.bias"]  # missing
    sd["backbone.2.bais"] = np.zeros(4, np.float32)  # unexpected, a typo
    sd["extra.weight"] = np.zeros(2, np.float32)  # unexpected
    before = params_of(model)
    with pytest.raises(it.TorchStateDictError) as info:
        nnx.load_torch_state_dict(model, sd)
    msg = str(info.value)
    assert msg.startswith(
        "load_torch_state_dict into Wrapped: the state dict does not fit the model "
        "(4 problems; nothing was loaded)."
    )
    assert (
        "  wrong shape:\n    'head.weight' -> head.kernel (Linear): expected torch "
        "shape (2, 4), got (3, 4)\n" in msg
    )
    assert "    'backbone.2.bais' (4,) (did you mean 'backbone.2.bias'?)\n" in msg
    assert "    'extra.weight' (2,)\n" in msg
    assert (
        "  missing (model parameters with no entry):\n    'backbone.2.bias' -> "
        "backbone.layers[2].bias (Linear): torch shape (4,)\n" in msg
    )
    assert "Fix: rename entries with `mapping=" in msg and "strict=False" in msg
    jax.tree.map(np.testing.assert_array_equal, params_of(model), before)

    # Not strict: names are reported, the wrong shape still raises (as in torch).
    with pytest.raises(
        it.TorchStateDictError, match=r"\(1 problem; nothing was loaded\)"
    ):
        nnx.load_torch_state_dict(model, sd, strict=False)


def test_not_strict_loads_the_overlap_and_reports_the_rest():
    model, source = Wrapped(), Wrapped(seed=1)
    sd = nnx.to_torch_state_dict(source)
    del sd["head.weight"], sd["head.bias"]
    sd["fc_new.weight"] = np.ones((1, 4), np.float32)
    head_before = np.asarray(model.head.kernel.value)
    report = nnx.load_torch_state_dict(model, sd, strict=False)
    assert isinstance(report, it.LoadReport)
    missing, unexpected = report
    assert missing == ["head.weight", "head.bias"]
    assert unexpected == ["fc_new.weight"]
    np.testing.assert_array_equal(model.head.kernel.value, head_before)
    np.testing.assert_array_equal(
        model.backbone.layers[2].kernel.value, source.backbone.layers[2].kernel.value
    )


def test_partial_rnn_bias_is_missing_not_unexpected():
    cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
    sd = {k[:-3]: v for k, v in lstm_state_dict().items() if k != "bias_hh_l0"}
    missing, unexpected = nnx.load_torch_state_dict(cell, sd, strict=False)
    assert (missing, unexpected) == (["bias_hh"], [])


def test_mapping_dict_renames_drops_and_strips_prefixes():
    source = nnx.to_torch_state_dict(Wrapped(seed=1))
    # DataParallel saves every name under "module."; another model calls the
    # backbone "features" and has an extra "aux" head we do not want.
    theirs = {f"module.{k}": v for k, v in source.items()}
    theirs = {k.replace(".backbone.", ".features."): v for k, v in theirs.items()}
    theirs["module.aux.weight"] = np.zeros((5, 4), np.float32)
    mapping = {"module": "", "module.features": "backbone", "module.aux": None}
    model = Wrapped()
    assert nnx.load_torch_state_dict(model, theirs, mapping=mapping) == ([], [])
    jax.tree.map(
        np.testing.assert_array_equal, params_of(model), params_of(Wrapped(seed=1))
    )
    # Export applies the mapping in reverse (dropped entries stay dropped).
    back = nnx.to_torch_state_dict(model, mapping=mapping)
    assert_same_dicts(back, {k: v for k, v in theirs.items() if ".aux." not in k})
    # Our paths may be written with '/', '.', or without Sequential's 'layers'.
    for ours in ("backbone/layers/0", "backbone.0", ("backbone", "layers", 0)):
        m = Wrapped()
        sd = {"first.weight": source["backbone.0.weight"]}
        nnx.load_torch_state_dict(m, sd, mapping={"first": ours}, strict=False)
        np.testing.assert_array_equal(
            m.backbone.layers[0].kernel.value, source["backbone.0.weight"].T
        )


def test_mapping_errors_name_the_bad_path():
    with pytest.raises(
        it.TorchStateDictError,
        match=r"mapping: our path 'backbone/layers/7' does not exist in Wrapped: "
        r"List at backbone\.layers has no child '7'; its children are \[0, 2\]",
    ):
        nnx.load_torch_state_dict(Wrapped(), {}, mapping={"x": "backbone/layers/7"})
    with pytest.raises(TypeError, match="mapping must be a dict"):
        nnx.load_torch_state_dict(Wrapped(), {}, mapping=["x"])
    sd = nnx.to_torch_state_dict(Wrapped())
    with pytest.raises(
        it.TorchStateDictError, match=r"'head.weight' and 'head.bias' both map to"
    ):
        nnx.to_torch_state_dict(
            Wrapped(), mapping=lambda n: "same" if "head" in n else n
        )
    with pytest.raises(
        it.TorchStateDictError,
        match=r"clashing names:\n    'a.bias' and 'b.bias' both map to 'head.bias'",
    ):
        nnx.load_torch_state_dict(
            Wrapped(),
            {"a.bias": sd["head.bias"], "b.bias": sd["head.bias"]},
            mapping={"a": "head", "b": "head"},
        )
    with pytest.raises(
        it.TorchStateDictError,
        match=r"Linear at head has no child 'weight'; its children are "
        r"\['kernel', 'bias'\]",
    ):
        nnx.load_torch_state_dict(Wrapped(), {}, mapping={"x": "head.weight"})


def test_mapping_callable_loads_a_two_layer_lstm_into_a_list():
    # torch: nn.LSTM(3, 4, num_layers=2) has weight_ih_l0 ... weight_ih_l1; ours:
    # two nnx.RNN in a list, each with the one-layer names.
    class Stack(nnx.Module):
        def __init__(self, seed):
            rngs = nnx.Rngs(seed)
            self.lstms = [
                nnx.RNN(nnx.LSTMCell(IN, HID, rngs=rngs)),
                nnx.RNN(nnx.LSTMCell(HID, HID, rngs=rngs)),
            ]

    def to_ours(name: str) -> str:
        return re.sub(r"^lstm\.(\w+)_l(\d)$", r"lstms.\2.\1_l0", name)

    def to_theirs(name: str) -> str:
        return re.sub(r"^lstms\.(\d)\.(\w+)_l0$", r"lstm.\2_l\1", name)

    theirs = nnx.to_torch_state_dict(Stack(1), mapping=to_theirs)
    assert list(theirs)[:2] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    assert theirs["lstm.weight_ih_l1"].shape == (4 * HID, HID)
    model = Stack(0)
    assert nnx.load_torch_state_dict(model, theirs, mapping=to_ours) == ([], [])
    jax.tree.map(np.testing.assert_array_equal, params_of(model), params_of(Stack(1)))
    # None drops an entry on load.
    report = nnx.load_torch_state_dict(
        Stack(0),
        theirs,
        mapping=lambda k: None if k.endswith("l1") else to_ours(k),
        strict=False,
    )
    assert report.unexpected_keys == [] and len(report.missing_keys) == 4


def test_shared_modules_are_named_like_torch_tied_weights():
    class Tied(nnx.Module):
        def __init__(self):
            self.enc = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
            self.dec = self.enc

    model = Tied()
    sd = nnx.to_torch_state_dict(model)
    assert list(sd) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    # torch's state_dict lists both names; safetensors files often keep one.
    fresh = Tied()
    sd1 = {k: v + 1 for k, v in sd.items() if k.startswith("enc.")}
    assert nnx.load_torch_state_dict(fresh, sd1) == ([], [])
    np.testing.assert_array_equal(fresh.dec.kernel.value, sd1["enc.weight"].T)


# -- inputs and dtypes --------------------------------------------------------------


class FakeTensor:
    """Quacks like a torch.Tensor: the loader never imports torch."""

    def __init__(self, array):
        self.array, self.dtype = array, f"torch.{array.dtype}"

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_tensors_with_detach_cpu_numpy_and_jax_arrays_load():
    sd = titanic_state_dict()
    mixed = {
        k: (FakeTensor(v) if i % 2 else jnp.asarray(v))
        for i, (k, v) in enumerate(sd.items())
    }
    model = TitanicMLP(8, rngs=nnx.Rngs(0))
    nnx.load_torch_state_dict(model, mixed)
    assert_same_dicts(nnx.to_torch_state_dict(model), sd)


def test_values_take_the_model_dtype_and_export_keeps_it(tmp_path):
    sd = titanic_state_dict()
    model = nnx.Sequential(
        nnx.Linear(8, 32, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    sd0 = {"0.weight": sd["fc1.weight"], "0.bias": sd["fc1.bias"]}
    nnx.load_torch_state_dict(model, sd0)
    assert model.layers[0].kernel.value.dtype == jnp.bfloat16
    out = nnx.to_torch_state_dict(model)
    assert out["0.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        out["0.weight"], sd0["0.weight"].astype(ml_dtypes.bfloat16)
    )
    it.save_safetensors(tmp_path / "bf16.safetensors", out)
    again = nnx.Sequential(nnx.Linear(8, 32, rngs=nnx.Rngs(1)))  # float32 model
    nnx.load_torch_state_dict(again, tmp_path / "bf16.safetensors")
    assert again.layers[0].kernel.value.dtype == jnp.float32
    np.testing.assert_array_equal(again.layers[0].kernel.value, out["0.weight"].T)
    # Integer data for a float parameter is refused, not silently converted.
    with pytest.raises(
        it.TorchStateDictError,
        match=r"'0.bias': dtype int64 cannot fill layers\[0\]\.bias of dtype float32",
    ):
        nnx.load_torch_state_dict(again, {**sd0, "0.bias": np.arange(32)})


def test_file_inputs_and_their_errors(tmp_path):
    with pytest.raises(
        it.TorchStateDictError, match=r"expected a \.safetensors.*torch\.load"
    ):
        nnx.load_torch_state_dict(TitanicMLP(8, rngs=nnx.Rngs(0)), tmp_path / "m.pt")
    np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(
        it.TorchStateDictError, match=r"'w\.npy' holds dtype object, which needs pickle"
    ):
        nnx.load_torch_state_dict(TitanicMLP(8, rngs=nnx.Rngs(0)), tmp_path / "obj.npz")
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        nnx.load_torch_state_dict(TitanicMLP(8, rngs=nnx.Rngs(0)), [1, 2])
    with pytest.raises(TypeError, match=r"expected an nnxlike Module .* got State"):
        nnx.to_torch_state_dict(nnx.state(TitanicMLP(8, rngs=nnx.Rngs(0))))


# -- safetensors ----------------------------------------------------------------------


def test_safetensors_reads_the_reference_writer_for_every_dtype():
    tensors, meta = it.load_safetensors(
        FIX / "torch_dtypes.safetensors", with_metadata=True
    )
    assert meta == {"note": "dtypes"}
    want_dtypes = {
        "bf16": ml_dtypes.bfloat16,
        "f16": np.float16,
        "f64": np.float64,
        "i64": np.int64,
        "bool": np.bool_,
        "u8": np.uint8,
        "scalar": np.float32,
        "empty": np.float32,
    }
    assert set(tensors) == set(want_dtypes)
    for name, dtype in want_dtypes.items():
        assert tensors[name].dtype == np.dtype(dtype), name
        ref = IO[f"dtypes.{name}"]
        np.testing.assert_array_equal(tensors[name].astype(ref.dtype), ref)
    assert tensors["scalar"].shape == () and tensors["empty"].shape == (0, 3)


def test_safetensors_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "bf16": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
        "f8": rng.normal(size=(4,)).astype(ml_dtypes.float8_e4m3fn),
        "f8b": rng.normal(size=(4,)).astype(ml_dtypes.float8_e5m2),
        "f16": rng.normal(size=(2, 2)).astype(np.float16),
        "f32": jnp.arange(6.0).reshape(2, 3),  # a JAX array
        "f64": rng.normal(size=(1,)),
        "i8": np.array([-1, 2], np.int8),
        "u16": np.array([7], np.uint16),
        "i32": np.arange(4, dtype=np.int32),
        "u32": np.array([1], np.uint32),
        "i64": np.array(5, np.int64),
        "u64": np.array([2**63], np.uint64),
        "bool": np.array([[True, False]]),
        "empty": np.zeros((2, 0), np.float32),
        "big_endian": np.arange(3, dtype=">f4"),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    }
    path = tmp_path / "all.safetensors"
    it.save_safetensors(path, tensors, metadata={"format": "pt"})
    back, meta = it.load_safetensors(path, with_metadata=True)
    assert meta == {"format": "pt"} and list(back) == list(tensors)
    for k, v in tensors.items():
        v = np.asarray(v)
        assert back[k].dtype == v.dtype.newbyteorder("="), k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
        assert back[k].flags.writeable
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and (8 + n) % 8 == 0  # header padded with spaces
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file(tmp_path, header: bytes, data: bytes = b"", n: int | None = None) -> Path:
    path = tmp_path / "bad.safetensors"
    n = len(header) if n is None else n
    path.write_bytes(n.to_bytes(8, "little") + header + data)
    return path


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _header(**entries) -> bytes:
    import json

    return json.dumps(entries).encode()


MALFORMED = {
    "too short": (lambda p: _raw(p, b"\x01\x02"), r"has 2 bytes"),
    "header length": (
        lambda p: _file(p.parent, b"{}", n=1 << 40),
        r"header length 1099511627776 .* exceeds the 2 bytes that follow",
    ),
    "not json": (
        lambda p: _file(p.parent, b"{nope"),
        r"header is not valid UTF-8 JSON",
    ),
    "not an object": (lambda p: _file(p.parent, b"[1]"), r"must be a JSON object"),
    "out of range": (
        lambda p: _file(
            p.parent,
            _header(w={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}),
            b"\0" * 4,
        ),
        r"tensor 'w': data_offsets \[0, 8\] out of range for a 4-byte data buffer",
    ),
    "size mismatch": (
        lambda p: _file(
            p.parent,
            _header(w={"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}),
            b"\0" * 8,
        ),
        r"span 8 bytes, but F32 of shape \(3,\) needs 12",
    ),
    "overlap": (
        lambda p: _file(
            p.parent,
            _header(
                a={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                b={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            ),
            b"\0" * 8,
        ),
        r"tensor 'b' at data_offsets \[4, 8\] overlaps tensor 'a' \(which ends at 8\)",
    ),
    "gap": (
        lambda p: _file(
            p.parent,
            _header(a={"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}),
            b"\0" * 4,
        ),
        r"leaves a gap after the start of the buffer",
    ),
    "trailing bytes": (
        lambda p: _file(
            p.parent,
            _header(a={"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}),
            b"\0" * 5,
        ),
        r"the tensors cover 2 bytes of a 5-byte data buffer",
    ),
    "dtype": (
        lambda p: _file(
            p.parent,
            _header(a={"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}),
            b"\0" * 8,
        ),
        r"tensor 'a': unsupported dtype 'C64'",
    ),
    "bad shape": (
        lambda p: _file(
            p.parent, _header(a={"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]})
        ),
        r"tensor 'a': bad shape \[-1\]",
    ),
    "metadata": (
        lambda p: _file(p.parent, _header(__metadata__={"a": 1})),
        r"__metadata__ must map strings to strings",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_raise_clear_errors(tmp_path, case):
    make, message = MALFORMED[case]
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(it.SafetensorsError, match=message) as info:
        it.load_safetensors(path)
    assert str(info.value).startswith(f"safetensors file {str(path)!r}: ")


def test_truncated_safetensors_file(tmp_path):
    good = tmp_path / "good.safetensors"
    it.save_safetensors(good, {"a": np.ones(4, np.float32), "b": np.ones(3)})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(it.SafetensorsError, match=r"out of range.*truncated"):
        it.load_safetensors(cut)
    with pytest.raises(it.SafetensorsError, match="truncated"):
        nnx.load_torch_state_dict(TitanicMLP(8, rngs=nnx.Rngs(0)), cut)


def test_safetensors_writer_errors_and_atomicity(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    with pytest.raises(it.SafetensorsError, match=r"tensor 'c' has dtype complex64"):
        it.save_safetensors(path, {"c": np.ones(2, np.complex64)})
    with pytest.raises(it.SafetensorsError, match="metadata must map str to str"):
        it.save_safetensors(path, {}, metadata={"epoch": 3})
    with pytest.raises(it.SafetensorsError, match="names must be strings"):
        it.save_safetensors(path, {"__metadata__": np.ones(1)})
    assert not path.exists()
    it.save_safetensors(path, {"a": np.ones(2, np.float32)})
    old = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        it.save_safetensors(path, {"a": np.zeros(1000, np.float32)})
    assert path.read_bytes() == old  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_docs_page_round_trip_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "docs" / "pytorch_weights.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    example = next(b for b in blocks if "twin = nnx.Sequential" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "docs/pytorch_weights.md", "exec"), namespace)
    assert (tmp_path / "model.safetensors").is_file()
    printed = " ".join(
        line.lstrip("# ") for line in example.splitlines() if line.startswith("# ")
    )
    shapes = {k: v.shape for k, v in namespace["sd"].items()}
    assert " ".join(str(shapes).split()) == " ".join(printed.split())
