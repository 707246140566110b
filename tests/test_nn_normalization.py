"""Normalization layers against mean/variance formulas and stored PyTorch numbers."""

from __future__ import annotations

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


def rand(seed: int, *shape: int, scale: float = 1.0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale + shift).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def np_norm(x, axes, scale=None, bias=None, eps=1e-5, center=True):
    """(x - mean) / sqrt(biased var + eps) * scale + bias, by the textbook formula."""
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True) if center else 0.0
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


# -- BatchNorm -------------------------------------------------------------------


def test_batchnorm_state_layout():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    assert isinstance(bn.mean, nnx.BatchStat) and isinstance(bn.var, nnx.BatchStat)
    assert isinstance(bn.scale, nnx.Param) and isinstance(bn.bias, nnx.Param)
    close(bn.mean.value, np.zeros(3))
    close(bn.var.value, np.ones(3))
    shapes = jax.tree.map(jnp.shape, nnx.state(bn)).to_pure_dict()
    assert shapes == {"mean": (3,), "var": (3,), "scale": (3,), "bias": (3,)}
    bare = nnx.BatchNorm(3, use_bias=False, use_scale=False, rngs=nnx.Rngs(0))
    assert bare.scale is None and bare.bias is None


def test_batchnorm_train_updates_running_stats_then_eval_uses_them():
    m = 0.8
    bn = nnx.BatchNorm(3, momentum=m, epsilon=1e-3, rngs=nnx.Rngs(0))
    scale, bias = rand(1, 3, shift=1.0), rand(2, 3)
    bn.scale.value, bn.bias.value = jnp.asarray(scale), jnp.asarray(bias)
    ra_mean, ra_var = np.zeros(3), np.ones(3)
    for step in range(2):
        x = rand(10 + step, 4, 2, 3, scale=step + 1.0, shift=step)
        y = bn(jnp.asarray(x))
        close(y, np_norm(x, (0, 1), scale, bias, eps=1e-3), tol=1e-4)
        ra_mean = m * ra_mean + (1 - m) * x.mean(axis=(0, 1))
        ra_var = m * ra_var + (1 - m) * x.var(axis=(0, 1))  # biased
        close(bn.mean.value, ra_mean)
        close(bn.var.value, ra_var, tol=1e-4)
    # Eval: normalize with the running statistics, and leave them alone.
    bn.eval()
    assert bn.use_running_average is True
    x = rand(20, 2, 2, 3)
    want = (x - ra_mean) / np.sqrt(ra_var + 1e-3) * scale + bias
    close(bn(jnp.asarray(x)), want, tol=1e-4)
    close(bn.mean.value, ra_mean)
    # The call-time flag overrides the attribute.
    close(
        bn(jnp.asarray(x), use_running_average=False),
        np_norm(x, (0, 1), scale, bias, eps=1e-3),
        tol=1e-4,
    )
    bn.train()
    assert bn.use_running_average is False


def test_batchnorm_axis_mask_and_two_pass_variance():
    # Channels-first (axis=1), statistics over the unmasked elements only.
    bn = nnx.BatchNorm(
        2, axis=1, momentum=0.0, use_fast_variance=False, rngs=nnx.Rngs(0)
    )
    x = rand(0, 3, 2, 4, shift=5.0)
    mask = np.ones_like(x, bool)
    mask[0] = False
    y = bn(jnp.asarray(x), mask=jnp.asarray(mask))
    kept = x[1:]
    mean = kept.mean(axis=(0, 2), keepdims=True)
    var = kept.var(axis=(0, 2), keepdims=True)
    close(y, (x - mean) / np.sqrt(var + 1e-5), tol=1e-4)
    close(bn.mean.value, mean.ravel())  # momentum 0: the batch statistics
    close(bn.var.value, var.ravel(), tol=1e-4)


def test_batchnorm_under_jit_writes_back_stats():
    bn = nnx.BatchNorm(3, momentum=0.5, rngs=nnx.Rngs(0))

    @nnx.jit
    def step(bn, x):
        return bn(x)

    x = rand(0, 4, 3)
    step(bn, jnp.asarray(x))
    close(bn.mean.value, 0.5 * x.mean(0))
    step(bn, jnp.asarray(x))
    close(bn.mean.value, 0.75 * x.mean(0))


def test_batchnorm_axis_name_averages_across_lanes():
    # Two vmap lanes of 2 examples each normalize like one batch of 4.
    x = rand(0, 2, 2, 3, shift=1.0)

    def lane(xs):
        bn = nnx.BatchNorm(
            3,
            axis_name="batch",
            momentum=0.0,
            use_bias=False,
            use_scale=False,
            rngs=nnx.Rngs(0),
        )
        return bn(xs), bn.mean.value

    y, mean = jax.vmap(lane, axis_name="batch")(jnp.asarray(x))
    flat = x.reshape(4, 3)
    close(y.reshape(4, 3), np_norm(flat, (0,)), tol=1e-4)
    close(mean, np.broadcast_to(flat.mean(0), (2, 3)))


def test_batchnorm_matches_torch():
    t = torch_case("bn")
    m_torch = 0.1
    m = 1 - m_torch  # flax momentum weighs the old value
    bn = nnx.BatchNorm(3, momentum=m, epsilon=1e-5, rngs=nnx.Rngs(0))
    bn.scale.value, bn.bias.value = jnp.asarray(t["weight"]), jnp.asarray(t["bias"])
    for step in range(3):
        y = bn(jnp.asarray(np.moveaxis(t[f"x{step}"], 1, -1)))
        close(y, np.moveaxis(t[f"y{step}"], 1, -1), tol=1e-4)
    close(bn.mean.value, t["running_mean"])
    # torch keeps the unbiased variance (n = 4 * 2 * 2 elements per channel).
    n, k = 16, 3
    close(bn.var.value, m**k + (t["running_var"] - m**k) * (n - 1) / n, tol=1e-5)
    # Eval with torch's running statistics loaded.
    bn.mean.value = jnp.asarray(t["running_mean"])
    bn.var.value = jnp.asarray(t["running_var"])
    y = bn(jnp.asarray(np.moveaxis(t["x_eval"], 1, -1)), use_running_average=True)
    close(y, np.moveaxis(t["y_eval"], 1, -1), tol=1e-4)


def test_batchnorm_errors():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"BatchNorm.__call__: expected 3 features on axes \(1,\), got input "
        r"of shape \(2, 4\)",
    ):
        bn(jnp.ones((2, 4)))
    with pytest.raises(
        ValueError, match="axis 2 is out of range for an input of rank 2"
    ):
        nnx.BatchNorm(3, axis=2, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))


# -- LayerNorm / RMSNorm -----------------------------------------------------------


def test_layernorm_formula_and_defaults():
    ln = nnx.LayerNorm(5, rngs=nnx.Rngs(0))
    assert ln.epsilon == 1e-6
    scale, bias = rand(1, 5), rand(2, 5)
    ln.scale.value, ln.bias.value = jnp.asarray(scale), jnp.asarray(bias)
    x = rand(0, 2, 3, 5, scale=3.0, shift=2.0)
    close(ln(jnp.asarray(x)), np_norm(x, (-1,), scale, bias, eps=1e-6), tol=1e-4)
    # Several reduction axes with parameters over both.
    ln2 = nnx.LayerNorm(
        15,
        reduction_axes=(-2, -1),
        feature_axes=(-2, -1),
        use_bias=False,
        rngs=nnx.Rngs(0),
    )
    assert ln2.bias is None
    ln2.scale.value = jnp.asarray(rand(3, 15))
    want = np_norm(x, (-2, -1), rand(3, 15).reshape(3, 5), eps=1e-6)
    close(ln2(jnp.asarray(x)), want, tol=1e-4)


@pytest.mark.parametrize("case", ["ln", "ln2"])
def test_layernorm_matches_torch(case):
    t = torch_case(case)
    axes = (-1,) if case == "ln" else (-2, -1)
    ln = nnx.LayerNorm(
        t["weight"].size,
        epsilon=1e-5,
        reduction_axes=axes,
        feature_axes=axes,
        rngs=nnx.Rngs(0),
    )
    ln.scale.value = jnp.asarray(t["weight"].ravel())
    ln.bias.value = jnp.asarray(t["bias"].ravel())
    close(ln(jnp.asarray(t["x"])), t["y"], tol=1e-5)


def test_rmsnorm_formula_and_torch():
    t = torch_case("rms")
    norm = nnx.RMSNorm(5, rngs=nnx.Rngs(0))
    assert not hasattr(norm, "bias")
    norm.scale.value = jnp.asarray(t["weight"])
    x = t["x"].astype(np.float64)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * t["weight"]
    y = norm(jnp.asarray(t["x"]))
    close(y, want)
    close(y, t["y"])


def test_layernorm_mask_and_dtype():
    ln = nnx.LayerNorm(4, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    x = rand(0, 2, 4)
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    y = ln(jnp.asarray(x), mask=jnp.asarray(mask))
    m0 = x[0, :2].mean()
    close(y[0], (x[0] - m0) / np.sqrt(x[0, :2].var() + 1e-6), tol=1e-4)
    y16 = ln(jnp.asarray(x, jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16  # statistics in float32, output as input
    ln32 = nnx.LayerNorm(4, dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert ln32(jnp.asarray(x)).dtype == jnp.float16


def test_layernorm_error_names_features():
    with pytest.raises(
        ValueError,
        match=r"LayerNorm.__call__: expected 5 features on axes \(2,\), got input "
        r"of shape \(2, 3, 4\) \(4 features there\)",
    ):
        nnx.LayerNorm(5, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 4)))


# -- GroupNorm / InstanceNorm ------------------------------------------------------


def np_group_norm(x, groups, scale, bias, eps):
    n, *sp, c = x.shape
    g = x.reshape(n, *sp, groups, c // groups).astype(np.float64)
    axes = (*range(1, len(sp) + 1), len(sp) + 2)
    y = np_norm(g, axes, eps=eps).reshape(x.shape)
    return y * scale + bias


def test_groupnorm_formula_group_size_and_torch():
    t = torch_case("gn")
    x = np.moveaxis(t["x"], 1, -1)  # (2, 3, 3, 6)
    gn = nnx.GroupNorm(6, num_groups=2, epsilon=1e-5, rngs=nnx.Rngs(0))
    gn.scale.value, gn.bias.value = jnp.asarray(t["weight"]), jnp.asarray(t["bias"])
    y = gn(jnp.asarray(x))
    close(y, np_group_norm(x, 2, t["weight"], t["bias"], 1e-5), tol=1e-4)
    close(y, np.moveaxis(t["y"], 1, -1), tol=1e-4)
    # group_size=3 is the same as num_groups=2 for 6 channels.
    by_size = nnx.GroupNorm(
        6, num_groups=None, group_size=3, epsilon=1e-5, rngs=nnx.Rngs(0)
    )
    assert (by_size.num_groups, by_size.group_size) == (2, 3)
    by_size.scale.value, by_size.bias.value = gn.scale.value, gn.bias.value
    close(by_size(jnp.asarray(x)), y)


def test_groupnorm_errors():
    with pytest.raises(ValueError, match=r"num_groups \(4\) does not divide"):
        nnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        nnx.GroupNorm(6, group_size=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"not a multiple of group_size \(4\)"):
        nnx.GroupNorm(6, num_groups=None, group_size=4, rngs=nnx.Rngs(0))
    gn = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"GroupNorm.__call__: expected 6 features"):
        gn(jnp.ones((2, 4, 4)))


def test_instancenorm_formula_and_torch():
    t = torch_case("in")
    x = np.moveaxis(t["x"], 1, -1)
    norm = nnx.InstanceNorm(3, epsilon=1e-5, rngs=nnx.Rngs(0))
    norm.scale.value = jnp.asarray(t["weight"])
    norm.bias.value = jnp.asarray(t["bias"])
    y = norm(jnp.asarray(x))
    close(y, np_norm(x, (1, 2), t["weight"], t["bias"]), tol=1e-4)
    close(y, np.moveaxis(t["y"], 1, -1), tol=1e-4)
    with pytest.raises(ValueError, match="include axis 0, which is the batch axis"):
        nnx.InstanceNorm(2, feature_axes=0, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))


# -- WeightNorm / SpectralNorm -----------------------------------------------------


def wn_kernel(w, scale, eps=1e-12):
    """Each output feature (last axis) of ``w`` scaled to norm ``scale``."""
    axes = tuple(range(w.ndim - 1))
    scale = jnp.broadcast_to(scale, w.shape[-1:])
    norm = jnp.sqrt(jnp.sum(w**2, axis=axes, keepdims=True) + eps)
    return w / norm * jnp.reshape(scale, (1,) * (w.ndim - 1) + (-1,))


def test_weightnorm_linear_matches_formula_and_gradients():
    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    wn = nnx.WeightNorm(lin, rngs=nnx.Rngs(1))
    assert list(wn.scales) == [("kernel",)]  # the default filter: kernels only
    assert isinstance(wn.scales[("kernel",)], nnx.Param)
    scale = jnp.asarray(rand(3, 4, shift=1.0))
    wn.scales[("kernel",)].value = scale
    x = jnp.asarray(rand(4, 5, 3))
    w, b = lin.kernel.value, lin.bias.value

    def ref(w, b, scale, x):
        return x @ wn_kernel(w, scale) + b[None]

    close(wn(x), ref(w, b, scale, x))
    assert lin.kernel.value is w  # the raw weights are back after the call
    grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(wn, x)
    gw, gb, gs = jax.grad(lambda *a: jnp.sum(ref(*a) ** 2), argnums=(0, 1, 2))(
        w, b, scale, x
    )
    close(grads["layer_instance"]["kernel"].value, gw, tol=1e-4)
    close(grads["layer_instance"]["bias"].value, gb, tol=1e-4)
    close(grads["scales"][("kernel",)].value, gs, tol=1e-4)


def test_weightnorm_conv_normalizes_each_output_channel():
    conv = nnx.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    wn = nnx.WeightNorm(conv, rngs=nnx.Rngs(1))
    assert wn.scales[("kernel",)].shape == (3,)
    scale = jnp.asarray(rand(5, 3, shift=1.0))
    wn.scales[("kernel",)].value = scale
    x = jnp.asarray(rand(6, 2, 5, 5, 2))
    raw = conv.kernel.value
    want_conv = nnx.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    want_conv.kernel.value = wn_kernel(raw, scale)
    close(wn(x), want_conv(x), tol=1e-5)
    close(conv.kernel.value, raw)


def test_weightnorm_options():
    lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    every = nnx.WeightNorm(lin, variable_filter=None, rngs=nnx.Rngs(1))
    assert sorted(every.scales) == [("bias",), ("kernel",)]
    bare = nnx.WeightNorm(lin, use_scale=False, rngs=nnx.Rngs(1))
    assert len(bare.scales) == 0
    x = jnp.asarray(rand(7, 2, 3))
    close(bare(x), x @ wn_kernel(lin.kernel.value, 1.0) + lin.bias.value[None])
    whole = nnx.WeightNorm(lin, feature_axes=None, use_scale=False, rngs=nnx.Rngs(1))
    w = lin.kernel.value
    close(whole(x), x @ (w / jnp.linalg.norm(w)) + lin.bias.value[None])


U, S = ("kernel", "u"), ("kernel", "sigma")


def test_spectralnorm_sigma_converges_and_output_uses_kernel_over_sigma():
    lin = nnx.Linear(5, 4, rngs=nnx.Rngs(0))
    sn = nnx.SpectralNorm(lin, n_steps=3, rngs=nnx.Rngs(1))
    assert isinstance(sn.batch_stats[U], nnx.BatchStat)
    assert isinstance(sn.batch_stats[S], nnx.BatchStat)
    assert sn.batch_stats[U].shape == (1, 4) and sn.batch_stats[S].shape == ()
    assert sorted(sn.batch_stats) == [S, U]  # vectors (the bias) are left alone
    x = jnp.asarray(rand(8, 3, 5))
    for _ in range(20):
        y = sn(x)
    w = lin.kernel.value
    top = jnp.linalg.svd(w, compute_uv=False)[0]
    sigma = sn.batch_stats[S].value
    close(sigma, top, tol=1e-4)
    close(y, x @ (w / sigma) + lin.bias.value[None], tol=1e-5)
    # The spectral norm of the weights the layer sees is 1.
    close(jnp.linalg.svd(w / sigma, compute_uv=False)[0], 1.0, tol=1e-4)


def test_spectralnorm_update_stats_false_leaves_u_unchanged():
    sn = nnx.SpectralNorm(nnx.Linear(5, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    u0, s0 = sn.batch_stats[U].value, sn.batch_stats[S].value
    x = jnp.asarray(rand(9, 2, 5))
    y1 = sn(x, update_stats=False)
    assert sn.batch_stats[U].value is u0 and sn.batch_stats[S].value is s0
    y2 = sn(x, update_stats=False)
    close(y1, y2)
    sn(x)  # update_stats=True by default
    assert not np.allclose(sn.batch_stats[U].value, u0)
    frozen = nnx.SpectralNorm(
        nnx.Linear(5, 4, rngs=nnx.Rngs(0)), update_stats=False, rngs=nnx.Rngs(1)
    )
    u0 = frozen.batch_stats[U].value
    frozen(x)  # the constructor's update_stats=False is the default
    assert frozen.batch_stats[U].value is u0
    frozen.train()  # use_running_average=False: updates on
    frozen(x)
    assert not np.allclose(frozen.batch_stats[U].value, u0)


def test_spectralnorm_conv_kernel_as_matrix_and_error_on_non_matrix():
    conv = nnx.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    sn = nnx.SpectralNorm(conv, n_steps=50, rngs=nnx.Rngs(1))
    assert sn.batch_stats[U].shape == (1, 3)
    x = jnp.asarray(rand(10, 1, 5, 5, 2))
    sn(x)
    mat = conv.kernel.value.reshape(-1, 3)
    close(sn.batch_stats[S].value, jnp.linalg.svd(mat, compute_uv=False)[0], 1e-4)
    with pytest.raises(ValueError, match="error_on_non_matrix"):
        nnx.SpectralNorm(conv, error_on_non_matrix=True, rngs=nnx.Rngs(1))


def test_spectralnorm_under_jit_writes_stats_back():
    lin = nnx.Linear(5, 4, rngs=nnx.Rngs(0))
    eager = nnx.SpectralNorm(lin, n_steps=2, rngs=nnx.Rngs(1))
    jitted = nnx.clone(eager)
    x = jnp.asarray(rand(11, 3, 5))
    step = nnx.jit(lambda m, x, update: m(x, update_stats=update), static_argnums=2)
    for _ in range(3):
        close(step(jitted, x, True), eager(x), tol=1e-5)
        close(jitted.batch_stats[U].value, eager.batch_stats[U].value, tol=1e-5)
        close(jitted.batch_stats[S].value, eager.batch_stats[S].value, tol=1e-5)
    u = jitted.batch_stats[U].value
    step(jitted, x, False)
    close(jitted.batch_stats[U].value, u)
    # Gradients reach the raw kernel (u and sigma are not differentiated).
    grads = nnx.grad(lambda m, x: jnp.sum(m(x)))(jitted, x)
    assert set(grads.to_pure_dict()) == {"layer_instance"}


def test_batchnorm_with_hijax_stats_under_plain_grad_matches_plain_batchnorm():
    x = jnp.asarray(rand(12, 6, 3))
    plain = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(plain)
    boxed = nnx.with_vars(nnx.clone(plain), hijax=True)
    assert boxed.mean.hijax

    # boxed is captured by closure; its statistics are written in place while
    # jax.grad differentiates the input (the write carries no tangent).
    g_boxed = jax.grad(lambda x: jnp.sum(boxed(x) ** 2))(x)
    # copy=True: a merge reuses plain's own Variables, which the closure may not
    # write inside jax.grad
    g_plain = jax.grad(
        lambda x: jnp.sum(nnx.merge(graphdef, state, copy=True)(x) ** 2)
    )(x)
    close(g_boxed, g_plain, tol=1e-5)
    plain(x)  # the reference statistics: one eager call
    close(boxed.mean.value, plain.mean.value)
    close(boxed.var.value, plain.var.value)
    assert not np.allclose(boxed.mean.value, 0.0)
