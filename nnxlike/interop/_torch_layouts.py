"""Per-layer PyTorch <-> nnxlike weight layouts, as pairs of numpy functions.

Design note: a layer's conversion is a list of ``Rule``s. A rule reads one or more
torch entries (names relative to the layer, e.g. ``weight`` or ``bias_ih_l0``),
with the torch shapes it expects, and fills one or more of our Variables; ``load``
maps torch arrays to ours and ``save`` is its exact inverse, so export followed by
import is the identity. Rules are the unit of "filled": an LSTM's two torch biases
are one rule (their sum is our one bias), so half of it is reported missing. A
layout also names the child Modules it consumes (an LSTM cell's eight Linears), so
the walker does not convert them a second time. The tables here are the single
statement of the conversions; ``tests/fixtures/make_torch_fixtures.py`` and
``make_torch_rnn_attention_fixtures.py`` derive the same ones from PyTorch's
numbers. Deliberately not here: names, mapping and error reporting
(``_torch_io.py``), and hyper-parameters (momentum, eps, padding, which are
configuration, not weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from nnxlike._variables import Variable
from nnxlike.nn.activations import PReLU
from nnxlike.nn.attention import MultiHeadAttention
from nnxlike.nn.conv import Conv, ConvTranspose
from nnxlike.nn.linear import Embed, Linear
from nnxlike.nn.normalization import (
    BatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
)
from nnxlike.nn.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    OptimizedLSTMCell,
    SimpleCell,
)


class Unsupported(Exception):
    """This layer's configuration has no PyTorch counterpart (message: why)."""


class Unconvertible(Exception):
    """These torch values cannot be represented by our layer (message: why)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Torch entries ``sources`` (relative names, shapes) <-> our ``targets``."""

    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    targets: tuple[tuple[tuple, Variable], ...]  # (path relative to layer, Variable)
    load: Callable[..., tuple]  # torch arrays -> target arrays
    save: Callable[..., tuple]  # target arrays -> torch arrays
    reshape_ok: bool = False  # accept any torch shape with as many elements
    optional: bool = False  # accepted and exported, never reported missing


Layout = tuple[list[Rule], tuple[str, ...]]  # rules, consumed child attributes


def _one(src: str, shape: tuple, path: tuple, var: Variable, **kw: Any) -> Rule:
    """An entry copied as is (reshaped when ``reshape_ok``)."""
    return Rule(
        (src,), (tuple(shape),), ((path, var),), lambda a: (a,), lambda a: (a,), **kw
    )


def _transposed(src: str, path: tuple, var: Variable) -> Rule:
    """Torch ``(out, in)`` <-> our ``(in, out)``."""
    shape = tuple(reversed(var.shape))
    return Rule((src,), (shape,), ((path, var),), lambda w: (w.T,), lambda k: (k.T,))


def _bias_like(m: Any, name: str = "bias", src: str = "bias") -> list[Rule]:
    var = getattr(m, name, None)
    return [] if var is None else [_one(src, var.shape, (name,), var)]


# -- dense, embedding, activation ----------------------------------------------


def linear(m: Linear) -> Layout:
    return [_transposed("weight", ("kernel",), m.kernel), *_bias_like(m)], ()


def embed(m: Embed) -> Layout:
    return [_one("weight", m.embedding.shape, ("embedding",), m.embedding)], ()


def prelu(m: PReLU) -> Layout:
    # torch.nn.PReLU() holds one slope of shape (1,); ours is a scalar.
    var = m.negative_slope
    return [_one("weight", (1,), ("negative_slope",), var, reshape_ok=True)], ()


# -- convolutions ------------------------------------------------------------------


def conv(m: Conv) -> Layout:
    # torch (out, in/g, *k)  <->  ours (*k, in/g, out)
    n = len(m.kernel_size)
    to_ours = (*range(2, n + 2), 1, 0)
    to_torch = (n + 1, n, *range(n))
    shape = tuple(m.kernel.shape[i] for i in to_torch)
    rule = Rule(
        ("weight",),
        (shape,),
        ((("kernel",), m.kernel),),
        lambda w: (w.transpose(to_ours),),
        lambda k: (k.transpose(to_torch),),
    )
    return [rule, *_bias_like(m)], ()


def conv_transpose(m: ConvTranspose) -> Layout:
    # torch (in, out/g, *k). With transpose_kernel=True ours is (*k, out/g, in), the
    # same axes permutation as Conv. Otherwise ours is (*k, in/g, out) applied
    # unflipped to the dilated input: regroup the channels and flip in space.
    n, g = len(m.kernel_size), m.feature_group_count
    cin, cout, k = m.in_features, m.out_features, tuple(m.kernel_size)
    shape = (cin, cout // g, *k)
    space = tuple(range(n))
    if m.transpose_kernel:
        to_ours, to_torch = (*range(2, n + 2), 1, 0), (n + 1, n, *range(n))

        def load(w):
            return (w.transpose(to_ours),)

        def save(kernel):
            return (kernel.transpose(to_torch),)
    else:

        def load(w):
            w = w.reshape(g, cin // g, cout // g, *k)
            w = w.transpose(*range(3, n + 3), 1, 0, 2).reshape(*k, cin // g, cout)
            return (np.flip(w, space),)

        def save(kernel):
            w = np.flip(kernel, space).reshape(*k, cin // g, g, cout // g)
            return (w.transpose(n + 1, n, n + 2, *space).reshape(shape),)

    rule = Rule(("weight",), (shape,), ((("kernel",), m.kernel),), load, save)
    return [rule, *_bias_like(m)], ()


# -- normalization -----------------------------------------------------------------


def _norm_params(m: Any) -> list[Rule]:
    # A torch LayerNorm((3, 5)) weight is our flat (15,) scale: any shape with as
    # many elements loads (export gives our shape).
    rules = []
    for ours, theirs in (("scale", "weight"), ("bias", "bias")):
        var = getattr(m, ours, None)
        if var is not None:
            rules.append(_one(theirs, var.shape, (ours,), var, reshape_ok=True))
    return rules


def norm(m: Any) -> Layout:
    return _norm_params(m), ()


def batch_norm(m: BatchNorm) -> Layout:
    rules = _norm_params(m)
    for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
        var = getattr(m, ours)
        rules.append(_one(theirs, var.shape, (ours,), var, reshape_ok=True))
    # torch's step counter only matters for momentum=None (cumulative average);
    # accepted on import, exported as 0 so that torch's strict load succeeds.
    rules.append(
        Rule(
            ("num_batches_tracked",),
            ((),),
            (),
            lambda a: (),
            lambda: (np.zeros((), np.int64),),
            optional=True,
        )
    )
    return rules, ()


# -- recurrent ---------------------------------------------------------------------


def _stacked(src: str, at: tuple, layers: list, names: list[str], blocks: int) -> Rule:
    """Torch ``(blocks*H, in)`` stacked gates <-> one ``(in, H)`` kernel per gate."""
    vars_ = [layer.kernel for layer in layers]
    h, d = vars_[0].shape[1], vars_[0].shape[0]

    def load(w):
        return tuple(w[i * h : (i + 1) * h].T for i in range(blocks))

    def save(*kernels):
        return (np.concatenate([k.T for k in kernels], axis=0),)

    targets = tuple(((*at, n, "kernel"), v) for n, v in zip(names, vars_))
    return Rule((src,), ((blocks * h, d),), targets, load, save)


def _summed_bias(sfx: str, at: tuple, targets: list, hidden: int, blocks: int) -> Rule:
    """Torch ``bias_ih + bias_hh`` (only ever summed) <-> our bias (split per gate
    when ``targets`` has one Variable per gate). Exported as ``(sum, zeros)``."""
    n = blocks * hidden
    per_gate = len(targets) > 1

    def load(b_ih, b_hh):
        b = b_ih + b_hh
        return tuple(np.split(b, blocks)) if per_gate else (b,)

    def save(*biases):
        b = np.concatenate(biases) if per_gate else biases[0]
        return b, np.zeros_like(b)

    return Rule(
        (f"bias_ih{sfx}", f"bias_hh{sfx}"),
        ((n,), (n,)),
        tuple(((*at, *p), v) for p, v in targets),
        load,
        save,
    )


def lstm_cell(m: LSTMCell, sfx: str = "", at: tuple = ()) -> Layout:
    # torch gate order i, f, g, o along the first axis of W_ih (4H, in).
    gi, gh = ["ii", "if_", "ig", "io"], ["hi", "hf", "hg", "ho"]
    rules = [
        _stacked(f"weight_ih{sfx}", at, [getattr(m, n) for n in gi], gi, 4),
        _stacked(f"weight_hh{sfx}", at, [getattr(m, n) for n in gh], gh, 4),
        _summed_bias(
            sfx,
            at,
            [((n, "bias"), getattr(m, n).bias) for n in gh],
            m.hidden_features,
            4,
        ),
    ]
    return rules, (*gi, *gh)


def _fused_cell(m: Any, sfx: str, at: tuple, blocks: int, bias_on: str) -> Layout:
    rules = [
        _transposed(f"weight_ih{sfx}", (*at, "dense_i", "kernel"), m.dense_i.kernel),
        _transposed(f"weight_hh{sfx}", (*at, "dense_h", "kernel"), m.dense_h.kernel),
    ]
    bias = getattr(m, bias_on).bias
    target = [((bias_on, "bias"), bias)]
    rules.append(_summed_bias(sfx, at, target, m.hidden_features, blocks))
    return rules, ("dense_i", "dense_h")


def optimized_lstm_cell(m: OptimizedLSTMCell, sfx: str = "", at: tuple = ()) -> Layout:
    return _fused_cell(m, sfx, at, 4, "dense_h")


def simple_cell(m: SimpleCell, sfx: str = "", at: tuple = ()) -> Layout:
    return _fused_cell(m, sfx, at, 1, "dense_i")


def gru_cell(m: GRUCell, sfx: str = "", at: tuple = ()) -> Layout:
    # torch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)). Our GRUCell (as
    # flax.nnx's) has no recurrent bias, so b_hr, b_hz fold into dense_i.bias and
    # b_hn must be zero.
    rules, consumed = _fused_cell(m, sfx, at, 3, "dense_i")
    h = m.hidden_features
    summed = rules[-1]

    def load(b_ih, b_hh):
        b_hn = b_hh[2 * h :]
        if np.any(b_hn != 0):
            raise Unconvertible(
                f"its b_hn (bias_hh{sfx}[{2 * h}:{3 * h}], inside the reset "
                f"product) is nonzero (max |b_hn| = {float(np.abs(b_hn).max()):.3g}); "
                "GRUCell has no recurrent bias (as flax.nnx's), so this GRU has no "
                "exact equivalent. Retrain it with b_hn frozen at zero, or drop the "
                "GRU from the load (mapping={prefix: None}, strict=False)"
            )
        return summed.load(b_ih, b_hh)

    rules[-1] = dataclasses.replace(summed, load=load)
    return rules, consumed


CELLS: dict[type, Callable[..., Layout]] = {
    LSTMCell: lstm_cell,
    OptimizedLSTMCell: optimized_lstm_cell,
    GRUCell: gru_cell,
    SimpleCell: simple_cell,
}


def _cell_layout(cell: Any) -> Callable[..., Layout] | None:
    return next((f for t, f in CELLS.items() if isinstance(cell, t)), None)


def rnn(m: RNN) -> Layout | None:
    # torch.nn.LSTM/GRU/RNN (one layer) <-> nnx.RNN(cell): names with suffix _l0.
    layout = _cell_layout(m.cell)
    if layout is None:
        return None  # a custom cell: walk it like any module
    rules, _ = layout(m.cell, "_l0", ("cell",))
    return rules, ("cell",)


def bidirectional(m: Bidirectional) -> Layout | None:
    # torch bidirectional=True: suffix _l0 forward, _l0_reverse backward.
    parts = []
    for attr, sfx in (("forward_rnn", "_l0"), ("backward_rnn", "_l0_reverse")):
        r = getattr(m, attr)
        layout = _cell_layout(getattr(r, "cell", None))
        if not isinstance(r, RNN) or layout is None:
            return None
        parts.extend(layout(r.cell, sfx, (attr, "cell"))[0])
    return parts, ("forward_rnn", "backward_rnn")


# -- attention ---------------------------------------------------------------------


def multi_head_attention(m: MultiHeadAttention) -> Layout:
    # torch.nn.MultiheadAttention(E, H, kdim=, vdim=): one embed size E for the
    # query input, the q/k/v width and the output.
    e, h, d = m.in_features, m.num_heads, m.head_dim
    if m.qkv_features != e or m.out_features != e:
        raise Unsupported(
            f"qkv_features={m.qkv_features} and out_features={m.out_features} must "
            f"both equal in_features={e}: torch.nn.MultiheadAttention uses one "
            "embed_dim for all three"
        )
    if m.num_key_value_heads != h:
        raise Unsupported(
            f"num_key_value_heads={m.num_key_value_heads} differs from "
            f"num_heads={h} (grouped-query attention); torch.nn.MultiheadAttention "
            "has no such layout"
        )
    projs = ("query", "key", "value")
    kernels = [getattr(m, p).kernel for p in projs]
    rules = []
    if m.in_kv_features == e:  # torch packs [W_q; W_k; W_v] as in_proj_weight

        def load_w(w):
            return tuple(w[i * e : (i + 1) * e].T.reshape(e, h, d) for i in range(3))

        def save_w(*ks):
            return (np.concatenate([k.reshape(e, e).T for k in ks], axis=0),)

        targets = tuple(((p, "kernel"), v) for p, v in zip(projs, kernels))
        rules.append(Rule(("in_proj_weight",), ((3 * e, e),), targets, load_w, save_w))
    else:  # kdim = vdim != embed_dim: three separate weights
        for p, v in zip(projs, kernels):
            din = v.shape[0]
            rules.append(
                Rule(
                    (f"{p[0]}_proj_weight",),
                    ((e, din),),
                    (((p, "kernel"), v),),
                    lambda w, din=din: (w.T.reshape(din, h, d),),
                    lambda k, din=din: (k.reshape(din, e).T,),
                )
            )
    if m.use_bias:
        biases = tuple(((p, "bias"), getattr(m, p).bias) for p in projs)
        rules.append(
            Rule(
                ("in_proj_bias",),
                ((3 * e,),),
                biases,
                lambda b: tuple(x.reshape(h, d) for x in np.split(b, 3)),
                lambda *bs: (np.concatenate([x.reshape(e) for x in bs]),),
            )
        )
    rules.append(
        Rule(
            ("out_proj.weight",),
            ((e, e),),
            ((("out", "kernel"), m.out.kernel),),
            lambda w: (w.T.reshape(h, d, e),),
            lambda k: (k.reshape(e, e).T,),
        )
    )
    if m.use_bias:
        rules.append(_one("out_proj.bias", (e,), ("out", "bias"), m.out.bias))
    return rules, (*projs, "out")


# Looked up along the MRO, so subclasses (LoRALinear) convert as their base.
LAYOUTS: dict[type, Callable[[Any], Layout | None]] = {
    Linear: linear,
    Embed: embed,
    PReLU: prelu,
    Conv: conv,
    ConvTranspose: conv_transpose,
    BatchNorm: batch_norm,
    LayerNorm: norm,
    RMSNorm: norm,
    GroupNorm: norm,
    InstanceNorm: norm,
    **CELLS,
    RNN: rnn,
    Bidirectional: bidirectional,
    MultiHeadAttention: multi_head_attention,
}


def layout_of(module: Any) -> Layout | None:
    """The layout of ``module``, or None to walk its children one by one."""
    for cls in type(module).__mro__:
        fn = LAYOUTS.get(cls)
        if fn is not None:
            return fn(module)
    return None
