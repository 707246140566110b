"""Conv and ConvTranspose against loop references and stored PyTorch numbers."""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx

TORCH = np.load(Path(__file__).parent / "fixtures" / "torch_layers.npz")


def torch_case(name: str) -> dict[str, np.ndarray]:
    return {
        k.split(".", 1)[1]: TORCH[k] for k in TORCH.files if k.startswith(name + ".")
    }


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_conv(x, k, strides, padding, kernel_dilation=None, lhs_dilation=None, groups=1):
    """Channels-last cross-correlation by explicit loops over output positions.

    x: (N, *spatial, C), k: (*window, C // groups, O), padding: (lo, hi) pairs.
    """
    n_sp = x.ndim - 2
    kd = kernel_dilation or (1,) * n_sp
    ld = lhs_dilation or (1,) * n_sp
    if any(d > 1 for d in ld):  # insert d - 1 zeros between input elements
        shape = [x.shape[0]] + [(s - 1) * d + 1 for s, d in zip(x.shape[1:-1], ld)]
        xd = np.zeros(shape + [x.shape[-1]], x.dtype)
        xd[(slice(None), *(slice(None, None, d) for d in ld))] = x
        x = xd
    x = np.pad(x, [(0, 0), *padding, (0, 0)])
    window = k.shape[:n_sp]
    eff = [(w - 1) * d + 1 for w, d in zip(window, kd)]
    out_sp = [(s - e) // st + 1 for s, e, st in zip(x.shape[1:-1], eff, strides)]
    cin, cout = k.shape[-2], k.shape[-1]
    y = np.zeros((x.shape[0], *out_sp, cout), np.float64)
    for pos in itertools.product(*(range(o) for o in out_sp)):
        idx = tuple(
            slice(p * st, p * st + e, d) for p, st, e, d in zip(pos, strides, eff, kd)
        )
        patch = x[(slice(None), *idx)]  # (N, *window, C)
        for g in range(groups):
            cols = slice(g * (cout // groups), (g + 1) * (cout // groups))
            xs = patch[..., g * cin : (g + 1) * cin]
            kg = k[..., cols].reshape(-1, cout // groups)
            y[(slice(None), *pos, cols)] = xs.reshape(len(xs), -1) @ kg
    return y.astype(np.float32)


def np_conv_transpose(x, kt, strides):
    """Textbook transposed convolution (padding 0) by scattering each input.

    kt: (*window, out, in), the kernel of the forward Conv from ``out`` to ``in``
    channels; y[i * s + j] += kt[j] @ x[i].
    """
    n_sp = x.ndim - 2
    window = kt.shape[:n_sp]
    out_sp = [(s - 1) * st + w for s, st, w in zip(x.shape[1:-1], strides, window)]
    y = np.zeros((x.shape[0], *out_sp, kt.shape[-2]), np.float64)
    for pos in itertools.product(*(range(s) for s in x.shape[1:-1])):
        for off in itertools.product(*(range(w) for w in window)):
            tgt = tuple(p * st + o for p, st, o in zip(pos, strides, off))
            y[(slice(None), *tgt)] += x[(slice(None), *pos)] @ kt[off].T
    return y.astype(np.float32)


# Layers whose weights a test overwrites skip the default truncated-normal init:
# compiling it for every new kernel shape dominates the runtime of this file.
Z = dict(kernel_init=nnx.initializers.zeros)


def set_params(layer, kernel, bias=None):
    layer.kernel.value = jnp.asarray(kernel)
    if bias is not None:
        layer.bias.value = jnp.asarray(bias)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# -- Conv ------------------------------------------------------------------------


def test_conv_shapes_and_state():
    conv = nnx.Conv(3, 8, kernel_size=(3, 3), rngs=nnx.Rngs(0))  # default init
    assert conv.kernel.shape == (3, 3, 3, 8)
    assert conv.bias.shape == (8,)
    shapes = jax.tree.map(jnp.shape, nnx.state(conv)).to_pure_dict()
    assert shapes == {"kernel": (3, 3, 3, 8), "bias": (8,)}
    assert float(jnp.abs(conv.kernel.value).sum()) > 0
    grouped = nnx.Conv(4, 6, 2, feature_group_count=2, **Z, rngs=nnx.Rngs(0))
    assert grouped.kernel.shape == (2, 2, 6)
    assert nnx.Conv(2, 3, 1, use_bias=False, **Z, rngs=nnx.Rngs(0)).bias is None


@pytest.mark.parametrize(
    "kwargs, padding",
    [
        (dict(padding="VALID"), ((0, 0), (0, 0))),
        (dict(padding="SAME"), ((1, 1), (1, 1))),
        (dict(padding=((2, 0), (1, 1)), strides=(2, 1)), ((2, 0), (1, 1))),
        (dict(padding=1, kernel_dilation=(2, 1)), ((1, 1), (1, 1))),
        (dict(padding="VALID", feature_group_count=2), ((0, 0), (0, 0))),
        (dict(padding="VALID", input_dilation=2), ((0, 0), (0, 0))),
        (dict(padding="SAME", input_dilation=2), ((1, 1), (1, 1))),
    ],
)
def test_conv2d_matches_loop_reference(kwargs, padding):
    groups = kwargs.get("feature_group_count", 1)
    conv = nnx.Conv(4, 6, kernel_size=(3, 3), **kwargs, **Z, rngs=nnx.Rngs(0))
    k, b = rand(1, 3, 3, 4 // groups, 6), rand(2, 6)
    set_params(conv, k, b)
    x = rand(3, 2, 5, 5, 4)
    want = np_conv(
        x,
        k,
        conv.strides,
        padding,
        conv.kernel_dilation,
        conv.input_dilation,
        groups=groups,
    )
    close(conv(jnp.asarray(x)), want + b)


def test_conv_circular_and_causal_padding():
    # CIRCULAR: the reference wraps the input by hand.
    conv = nnx.Conv(2, 3, kernel_size=(3,), padding="CIRCULAR", **Z, rngs=nnx.Rngs(0))
    k = rand(1, 3, 2, 3)
    set_params(conv, k)
    x = rand(2, 2, 6, 2)
    xw = np.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
    close(
        conv(jnp.asarray(x)),
        np_conv(xw, k, (1,), ((0, 0),)) + np.asarray(conv.bias.value),
    )
    # CAUSAL: output t only sees inputs <= t (left padding of (k - 1) * dilation).
    causal = nnx.Conv(
        2, 3, kernel_size=3, padding="CAUSAL", kernel_dilation=2, **Z, rngs=nnx.Rngs(0)
    )
    set_params(causal, k)
    want = np_conv(x, k, (1,), ((4, 0),), (2,)) + np.asarray(causal.bias.value)
    close(causal(jnp.asarray(x)), want)
    with pytest.raises(ValueError, match="CAUSAL.*only defined for 1-D"):
        nnx.Conv(2, 3, kernel_size=(3, 3), padding="CAUSAL", rngs=nnx.Rngs(0))


def test_conv_unbatched_and_many_batch_axes():
    conv = nnx.Conv(3, 2, kernel_size=(2, 2), **Z, rngs=nnx.Rngs(0))
    set_params(conv, rand(1, 2, 2, 3, 2))
    x = jnp.asarray(rand(0, 2, 3, 4, 4, 3))
    y = conv(x)
    assert y.shape == (2, 3, 4, 4, 2)
    close(conv(x[1, 2]), y[1, 2])  # unbatched
    close(conv(x.reshape(6, 4, 4, 3)).reshape(y.shape), y)


def test_conv_gradients_through_the_compiled_forward():
    conv = nnx.Conv(3, 2, kernel_size=(2, 2), padding="VALID", **Z, rngs=nnx.Rngs(0))
    x = jnp.asarray(rand(0, 2, 4, 4, 3))
    grads = nnx.grad(lambda m: m(x).sum())(conv).to_pure_dict()
    # d(sum y)/d(bias) = number of output positions; d/d(kernel) = patch sums.
    close(grads["bias"], np.full(2, 2 * 3 * 3, np.float32))
    patch_sums = np.stack(
        [
            np.asarray(x)[:, i : i + 3, j : j + 3].sum((0, 1, 2))
            for i in (0, 1)
            for j in (0, 1)
        ]
    ).reshape(2, 2, 3)
    close(grads["kernel"], np.repeat(patch_sums[..., None], 2, -1), tol=1e-4)


def test_conv_mask_zeroes_kernel_entries():
    mask = np.zeros((3, 2, 3), np.float32)
    mask[0] = 1.0  # only the first tap
    conv = nnx.Conv(2, 3, 3, padding="VALID", mask=mask, **Z, rngs=nnx.Rngs(0))
    set_params(conv, rand(1, 3, 2, 3))
    assert isinstance(conv.mask, nnx.Variable)
    assert not isinstance(conv.mask, nnx.Param)  # not trained
    x = rand(1, 1, 5, 2)
    want = x[:, :3] @ np.asarray(conv.kernel.value[0]) + np.asarray(conv.bias.value)
    close(conv(jnp.asarray(x)), want)
    with pytest.raises(ValueError, match=r"mask must have the kernel's shape"):
        nnx.Conv(2, 3, kernel_size=2, mask=mask, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("case", ["conv2d", "conv2d_gsd", "conv1d", "conv3d"])
def test_conv_matches_torch(case):
    t = torch_case(case)
    w = t["weight"]  # (out, in // groups, *k)
    n = w.ndim - 2
    # Hyper-parameters of the torch layers in make_torch_fixtures.py.
    cfg = {
        "conv2d": dict(padding=1),
        "conv2d_gsd": dict(
            strides=(2, 1),
            padding=((2, 2), (1, 1)),
            kernel_dilation=(2, 1),
            feature_group_count=2,
        ),
        "conv1d": dict(strides=2, padding=1),
        "conv3d": dict(padding="VALID"),
    }[case]
    groups = cfg.get("feature_group_count", 1)
    conv = nnx.Conv(
        w.shape[1] * groups, w.shape[0], w.shape[2:], **cfg, **Z, rngs=nnx.Rngs(0)
    )
    # OIHW -> HWIO
    set_params(conv, np.transpose(w, (*range(2, n + 2), 1, 0)), t["bias"])
    y = conv(jnp.asarray(np.moveaxis(t["x"], 1, -1)))
    close(y, np.moveaxis(t["y"], 1, -1))


def test_conv_errors_name_layer_and_shapes():
    conv = nnx.Conv(3, 4, kernel_size=(3, 3), **Z, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"Conv.__call__: expected input with last dimension 3 "
        r"\(in_features, channels-last\), got shape \(2, 3, 8, 8\)",
    ):
        conv(jnp.ones((2, 3, 8, 8)))
    with pytest.raises(
        ValueError, match=r"2-D convolution expects .* got shape \(3,\)"
    ):
        conv(jnp.ones((3,)))
    with pytest.raises(ValueError, match="divisible by feature_group_count"):
        nnx.Conv(3, 4, kernel_size=3, feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="invalid padding"):
        nnx.Conv(3, 4, kernel_size=(3, 3), padding=(1, 2, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown padding 'FULL'"):
        nnx.Conv(3, 4, kernel_size=3, padding="FULL", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"strides \(1, 2, 3\) must have one entry"):
        nnx.Conv(3, 4, kernel_size=(3, 3), strides=(1, 2, 3), rngs=nnx.Rngs(0))


# -- ConvTranspose ---------------------------------------------------------------


def test_conv_transpose_is_textbook_transpose():
    # transpose_kernel=True: the kernel is the forward Conv's (window, out, in).
    layer = nnx.ConvTranspose(
        3,
        2,
        (3, 2),
        strides=(2, 1),
        padding="VALID",
        transpose_kernel=True,
        **Z,
        rngs=nnx.Rngs(0),
    )
    assert layer.kernel.shape == (3, 2, 2, 3)
    kt, b = rand(1, 3, 2, 2, 3), rand(2, 2)
    set_params(layer, kt, b)
    x = rand(3, 2, 3, 4, 3)
    y = layer(jnp.asarray(x))
    close(y, np_conv_transpose(x, kt, (2, 1)) + b)
    # The same map with transpose_kernel=False takes the flipped, swapped kernel.
    plain = nnx.ConvTranspose(
        3, 2, (3, 2), strides=(2, 1), padding="VALID", **Z, rngs=nnx.Rngs(0)
    )
    assert plain.kernel.shape == (3, 2, 3, 2)
    set_params(plain, np.swapaxes(kt[::-1, ::-1], -1, -2), b)
    close(plain(jnp.asarray(x)), y)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (0, 1))])
@pytest.mark.parametrize("strides", [1, 2])
def test_conv_transpose_matches_lax(padding, strides):
    layer = nnx.ConvTranspose(
        2,
        3,
        (3, 2),
        strides=strides,
        padding=padding,
        kernel_dilation=(1, 2),
        **Z,
        rngs=nnx.Rngs(0),
    )
    set_params(layer, rand(1, 3, 2, 2, 3), rand(2, 3))
    x = jnp.asarray(rand(0, 2, 4, 3, 2))
    want = (
        jax.lax.conv_transpose(
            x,
            layer.kernel.value,
            (strides,) * 2,
            padding,
            rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + layer.bias.value[None, None, None]
    )
    y = layer(x)
    close(y, want)
    if padding == "SAME":
        assert y.shape == (2, 4 * strides, 3 * strides, 3)


@pytest.mark.parametrize("case", ["convT2d", "convT2d_gd"])
def test_conv_transpose_matches_torch(case):
    t = torch_case(case)
    w = t["weight"]  # (in, out // groups, kH, kW)
    cin, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    # Torch hyper-parameters from make_torch_fixtures.py.
    p, q, d, g = {"convT2d": (1, 1, 1, 1), "convT2d_gd": (0, 0, 2, 2)}[case]
    cout = w.shape[1] * g
    pads = tuple((d * (k - 1) - p, d * (k - 1) - p + q) for k in (kh, kw))
    x = jnp.asarray(np.moveaxis(t["x"], 1, -1))
    want = np.moveaxis(t["y"], 1, -1)
    # transpose_kernel=True: kernel = weight.transpose(2, 3, 1, 0), no flip.
    lt = nnx.ConvTranspose(
        cin,
        cout,
        (kh, kw),
        strides=2,
        padding=pads,
        kernel_dilation=d,
        feature_group_count=g,
        transpose_kernel=True,
        **Z,
        rngs=nnx.Rngs(0),
    )
    set_params(lt, np.transpose(w, (2, 3, 1, 0)), t["bias"])
    close(lt(x), want)
    # Default layout: regroup to (kH, kW, in/G, out) and flip in space.
    lf = nnx.ConvTranspose(
        cin,
        cout,
        (kh, kw),
        strides=2,
        padding=pads,
        kernel_dilation=d,
        feature_group_count=g,
        **Z,
        rngs=nnx.Rngs(0),
    )
    k = w.reshape(g, cin // g, cout // g, kh, kw).transpose(3, 4, 1, 0, 2)
    set_params(lf, k.reshape(kh, kw, cin // g, cout)[::-1, ::-1], t["bias"])
    close(lf(x), want)


def test_conv_transpose_circular_is_periodic():
    layer = nnx.ConvTranspose(
        3,
        4,
        (6, 6),
        strides=(2, 2),
        padding="CIRCULAR",
        transpose_kernel=True,
        **Z,
        rngs=nnx.Rngs(0),
    )
    set_params(layer, rand(1, 6, 6, 4, 3), rand(2, 4))
    x = jnp.asarray(rand(0, 1, 5, 5, 3))
    y = layer(x)
    assert y.shape == (1, 10, 10, 4)
    # Periodic boundary: shifting the input by one shifts the output by a stride.
    close(layer(jnp.roll(x, 1, axis=1)), jnp.roll(y, 2, axis=1), tol=1e-4)
    # It is the transpose of the circular Conv with the same kernel: <Ty, x> = <y, Cx>.
    conv = nnx.Conv(
        4,
        3,
        (6, 6),
        strides=2,
        padding="CIRCULAR",
        use_bias=False,
        **Z,
        rngs=nnx.Rngs(0),
    )
    conv.kernel.value = layer.kernel.value
    z = jnp.asarray(rand(1, 1, 10, 10, 4))
    lhs = jnp.vdot(layer(x) - layer.bias.value[None, None, None], z)
    close(lhs, jnp.vdot(x, conv(z)), tol=1e-3)


def test_conv_transpose_unbatched_and_errors():
    layer = nnx.ConvTranspose(2, 3, 3, strides=2, **Z, rngs=nnx.Rngs(0))
    set_params(layer, rand(1, 3, 2, 3))
    x = jnp.asarray(rand(0, 2, 4, 2))
    close(layer(x[0]), layer(x)[0])
    with pytest.raises(
        ValueError,
        match=r"ConvTranspose.__call__: expected input with last dimension 2 "
        r"\(in_features, channels-last\), got shape \(2, 4, 5\)",
    ):
        layer(jnp.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="'CAUSAL' is not supported"):
        nnx.ConvTranspose(2, 3, 3, padding="CAUSAL", rngs=nnx.Rngs(0))
