"""Normalization layers: ``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``GroupNorm``,
``InstanceNorm``, and the weight wrappers ``WeightNorm`` and ``SpectralNorm``.

Design note: every layer is "compute statistics, then normalize" with two shared
helpers, ``_compute_stats`` and ``_normalize``. Statistics are computed in at least
float32 (half-precision inputs would lose too much) with the fast formula
``E[x^2] - E[x]^2`` clipped at zero, or the two-pass one when
``use_fast_variance=False``; with ``axis_name`` set they are averaged across that
named axis (``pmap``/``vmap``/``shard_map``) with one ``lax.pmean``. Variances are
biased (divide by N), as in flax. ``BatchNorm`` keeps running statistics in
``BatchStat`` Variables, updated as ``ra = momentum * ra + (1 - momentum) * batch``
(PyTorch's ``momentum`` is ``1 -`` this one); ``eval()`` switches it to them. Shape
checks run in Python; the array math runs op by op, as flax's does, so an eager
call gives flax's numbers to the bit (one ``jax.jit`` around it would let XLA
fuse and reassociate, off by an ulp); under ``nnx.jit`` both are one compiled
graph anyway. ``WeightNorm``
and ``SpectralNorm`` wrap another layer: for one call they put the normalized
weights into its Params and restore the raw ones afterwards (so gradients reach
the raw weights, and the wrapped layer needs no change).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike._containers import Dict
from nnxlike._graph import iter_graph
from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import BatchStat, Param, Variable
from nnxlike.nn import dtypes, initializers
from nnxlike.nn._checks import check_rngs, check_size
from nnxlike.nn.linear import _NO_METADATA

Initializer = Any
Axes = int | Iterable[int]


def _canonicalize_axes(ndim: int, axes: Axes, where: str) -> tuple[int, ...]:
    if not isinstance(axes, Iterable):
        axes = (axes,)
    out = set()
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: axis {a} is out of range for an input of rank {ndim}."
            )
        out.add(a % ndim)
    return tuple(sorted(out))


def _static_axes(axes: Axes | None) -> Any:
    """Store axes hashably (a list attribute would become an nnx.List)."""
    if axes is None or isinstance(axes, int):
        return axes
    return tuple(int(a) for a in axes)


def _static_axes_groups(groups: Any) -> Any:
    if groups is None:
        return None
    return tuple(tuple(int(i) for i in g) for g in groups)


def _abs_sq(x: jax.Array) -> jax.Array:
    if jnp.iscomplexobj(x):
        return jax.lax.square(jnp.real(x)) + jax.lax.square(jnp.imag(x))
    return jax.lax.square(x)


def _compute_stats(
    x: jax.Array,
    axes: tuple[int, ...],
    dtype: Any,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_mean: bool = True,
    use_fast_variance: bool = True,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance of ``x`` over ``axes`` (axes dropped)."""
    if dtype is None:
        dtype = jnp.result_type(x)
    dtype = jnp.promote_types(dtype, jnp.float32)
    x = jnp.asarray(x, dtype)
    if mask is not None:
        # Not broadcast: jnp.mean(where=...) rounds differently for a mask of
        # the full shape than for a broadcastable one, and flax passes it as is.
        mask = jnp.asarray(mask, bool)

    def mean(*xs: jax.Array) -> list[jax.Array]:
        mus = [jnp.mean(v, axis=axes, where=mask) for v in xs]
        if axis_name is None:
            return mus
        stacked = jax.lax.pmean(
            jnp.stack(mus), axis_name, axis_index_groups=axis_index_groups
        )
        return [stacked[i] for i in range(len(xs))]

    if not use_mean:
        (var,) = mean(_abs_sq(x))
        return jnp.zeros_like(var), var
    if use_fast_variance:
        mu, mu2 = mean(x, _abs_sq(x))
        # E[x^2] - E[x]^2 can come out slightly negative by round-off.
        return mu, jnp.maximum(0.0, mu2 - _abs_sq(mu))
    (mu,) = mean(x)
    (var,) = mean(_abs_sq(x - jnp.expand_dims(mu, axes)))
    return mu, var


def _normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    dtype: Any,
    epsilon: float,
) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` with explicit reshapes."""
    stats_shape = [1 if a in reduction_axes else d for a, d in enumerate(x.shape)]
    feature_shape = [d if a in feature_axes else 1 for a, d in enumerate(x.shape)]
    mean = jnp.reshape(mean, stats_shape)
    var = jnp.reshape(var, stats_shape)
    mul = jax.lax.rsqrt(var + epsilon)
    args = [x]
    if scale is not None:
        scale = jnp.reshape(scale, feature_shape)
        mul = mul * scale
        args.append(scale)
    y = (x - mean) * mul
    if bias is not None:
        bias = jnp.reshape(bias, feature_shape)
        y = y + bias
        args.append(bias)
    if dtype is None:
        dtype = jnp.result_type(*args)
    return jnp.asarray(y, dtype)


_STATIC = (
    "reduction_axes",
    "feature_axes",
    "dtype",
    "epsilon",
    "axis_name",
    "axis_index_groups",
    "use_mean",
    "use_fast_variance",
    "groups",
)


def _forward(
    x, scale, bias, mask, *, reduction_axes, feature_axes, dtype, epsilon, axis_name,
    axis_index_groups, use_mean=True, use_fast_variance=True, groups=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
    """Statistics over ``reduction_axes`` then normalization: ``(y, mean, var)``.

    With ``groups=(num_groups, group_size)`` the last axis is split into groups
    first and the statistics are per group (GroupNorm); ``reduction_axes`` then
    lists the non-channel axes to reduce.
    """
    x = jnp.asarray(x)
    stats_in, axes = x, reduction_axes
    if groups is not None:
        stats_in = jnp.reshape(x, x.shape[:-1] + groups)
        axes = (*reduction_axes, x.ndim)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.ndim == 0 or mask.shape[-1] != x.shape[-1]:
                mask = jnp.broadcast_to(mask, x.shape)
            mask = jnp.reshape(mask, mask.shape[:-1] + groups)
    mean, var = _compute_stats(
        stats_in, axes, dtype, axis_name, axis_index_groups, use_mean,
        use_fast_variance, mask,
    )  # fmt: skip
    if groups is not None:
        mean = jnp.repeat(mean, groups[1], axis=-1)
        var = jnp.repeat(var, groups[1], axis=-1)
    y = _normalize(
        x, mean, var, scale, bias, reduction_axes, feature_axes, dtype, epsilon
    )
    return y, mean, var


def _normalize_jit(x, mean, var, scale, bias, *, reduction_axes, feature_axes, dtype,
                   epsilon) -> jax.Array:  # fmt: skip
    return _normalize(
        jnp.asarray(x), mean, var, scale, bias, reduction_axes, feature_axes, dtype,
        epsilon,
    )  # fmt: skip


def _ema_jit(running: jax.Array, batch: jax.Array, m: Any, one_minus_m: Any) -> Any:
    batch = jnp.reshape(batch, running.shape)
    return m * running + one_minus_m * batch.astype(running.dtype)


def _ema(running: jax.Array, batch: jax.Array, momentum: Any) -> jax.Array:
    # ``1 - momentum`` in Python (double precision), as flax computes it: in
    # float32 it would round differently and the running statistics would drift
    # from flax's by one ulp per step.
    return _ema_jit(running, batch, momentum, 1 - momentum)


def _check_features(
    x: jax.Array, feature_axes: tuple[int, ...], num_features: int, where: str
) -> None:
    shape = tuple(jnp.shape(x))
    size = int(np.prod([shape[a] for a in feature_axes]))
    if size != num_features:
        raise ValueError(
            f"{where}: expected {num_features} features on axes {feature_axes}, "
            f"got input of shape {shape} ({size} features there). Build the layer "
            f"with num_features={size} or normalize along other axes."
        )


def _params(
    num_features: int,
    use_scale: bool,
    use_bias: bool,
    scale_init: Initializer,
    bias_init: Initializer,
    param_dtype: Any,
    rngs: Rngs,
    scale_metadata: Any = None,
    bias_metadata: Any = None,
    where: str = "norm",
) -> tuple[Param | None, Param | None]:
    check_size(where, "num_features", num_features)
    check_rngs(where, rngs)
    shape = (num_features,)
    scale = bias = None
    if use_scale:
        scale = Param(
            scale_init(rngs.params(), shape, param_dtype), **(scale_metadata or {})
        )
    if use_bias:
        bias = Param(
            bias_init(rngs.params(), shape, param_dtype), **(bias_metadata or {})
        )
    return scale, bias


def _value(v: Param | None) -> jax.Array | None:
    return v.value if v is not None else None


class BatchNorm(Module):
    """Normalize over every axis but ``axis`` using batch (or running) statistics.

    In training (``use_running_average=False``) each call normalizes with the
    batch mean and biased variance and updates the running ``mean``/``var``
    (``BatchStat``); ``eval()`` (or ``use_running_average=True``) uses the
    running statistics and updates nothing.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> bn = nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
    >>> bn.mean.shape, bn.var.shape, bn.scale.shape, bn.bias.shape
    ((3,), (3,), (3,), (3,))
    >>> bn(jnp.arange(12.0).reshape(4, 3)).shape
    (4, 3)
    >>> [round(float(m), 4) for m in bn.mean.value]  # 0.9 * 0 + 0.1 * batch mean
    [0.45, 0.55, 0.65]
    >>> bn.eval()(jnp.ones((2, 3))).shape
    (2, 3)

    Args:
        num_features: size of the feature axis (or of the product of the
            feature axes).
        use_running_average: use the stored statistics instead of the batch's.
        axis: the feature axis (or axes); all other axes are reduced.
        momentum: decay of the running averages.
        epsilon: added to the variance.
        dtype: output dtype (default: inferred from input and params).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: learn a shift ``bias``.
        use_scale: learn a factor ``scale``.
        bias_init: initializer for ``bias``.
        scale_init: initializer for ``scale``.
        axis_name: named axis (``pmap``/``vmap``) to average statistics over.
        axis_index_groups: subgroups of ``axis_name`` to average within.
        use_fast_variance: compute the variance as ``E[x^2] - E[x]^2``.
        promote_dtype: ``f(arrays, dtype=...) -> tuple`` casting the input and
            parameters (and, for BatchNorm, the running statistics) first.
        rngs: the ``params`` stream is drawn for ``scale`` and ``bias``.
        bias_metadata: metadata of the ``bias`` Param.
        scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        bias_metadata: Any = _NO_METADATA,
        scale_metadata: Any = _NO_METADATA,
    ):
        self.promote_dtype = promote_dtype
        check_size("BatchNorm", "num_features", num_features)
        feature_shape = (num_features,)
        self.mean = BatchStat(jnp.zeros(feature_shape, jnp.float32))
        self.var = BatchStat(jnp.ones(feature_shape, jnp.float32))
        self.scale, self.bias = _params(
            num_features, use_scale, use_bias, scale_init, bias_init, param_dtype, rngs,
            scale_metadata, bias_metadata, "BatchNorm",
        )  # fmt: skip
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = _static_axes(axis)
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = _static_axes_groups(axis_index_groups)
        self.use_fast_variance = use_fast_variance

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        where = "BatchNorm.__call__"
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                f"{where}: use_running_average is None both here and on the "
                "layer; pass `use_running_average=True/False` or call "
                "`model.train()` / `model.eval()`."
            )
        ndim = np.ndim(x)
        feature_axes = _canonicalize_axes(ndim, self.axis, where)
        reduction_axes = tuple(a for a in range(ndim) if a not in feature_axes)
        _check_features(x, feature_axes, self.num_features, where)
        static = dict(
            reduction_axes=reduction_axes,
            feature_axes=feature_axes,
            dtype=self.dtype,
            epsilon=self.epsilon,
        )
        x, ra_mean, ra_var, scale, bias = self.promote_dtype(
            (x, self.mean.value, self.var.value, _value(self.scale), _value(self.bias)),
            dtype=self.dtype,
        )
        if use_running_average:
            return _normalize_jit(x, ra_mean, ra_var, scale, bias, **static)
        y, mean, var = _forward(
            x,
            scale,
            bias,
            mask,
            **static,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
        )
        new_mean = _ema(self.mean.value, mean, self.momentum)
        new_var = _ema(self.var.value, var, self.momentum)
        if self.mean.ref or self.mean.hijax or self.var.ref or self.var.hijax:
            # A ref/hijax Variable is written in place, also under a plain
            # jax.grad that differentiates the parameters: JAX cannot carry a
            # tangent into it (flax stops the gradient there too).
            new_mean = jax.lax.stop_gradient(new_mean)
            new_var = jax.lax.stop_gradient(new_var)
        self.mean.value = new_mean
        self.var.value = new_var
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """What ``nnx.view(model, use_running_average=...)`` sets on this layer.

        Args:
            use_running_average: if True, the stored batch statistics will be
                used instead of computing the batch statistics on the input.

        >>> import nnxlike as nnx
        >>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
        >>> nnx.view(bn, use_running_average=True).use_running_average
        True
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class LayerNorm(Module):
    """Normalize each example over ``reduction_axes`` (default: the last axis).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> ln = nnx.LayerNorm(6, rngs=nnx.Rngs(0))
    >>> ln.scale.shape, ln.bias.shape, ln(jnp.ones((3, 4, 6))).shape
    ((6,), (6,), (3, 4, 6))

    Args:
        num_features: number of features (product of the ``feature_axes`` sizes).
        epsilon: added to the variance.
        dtype: output dtype (default: inferred from input and params).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: learn a shift ``bias``.
        use_scale: learn a factor ``scale``.
        bias_init: initializer for ``bias``.
        scale_init: initializer for ``scale``.
        reduction_axes: axes the statistics are computed over.
        feature_axes: axes ``scale`` and ``bias`` are laid along.
        axis_name: named axis to also average the statistics over.
        axis_index_groups: subgroups of ``axis_name`` to average within.
        use_fast_variance: compute the variance as ``E[x^2] - E[x]^2``.
        promote_dtype: ``f(arrays, dtype=...) -> tuple`` casting the input and
            parameters (and, for BatchNorm, the running statistics) first.
        rngs: the ``params`` stream is drawn for ``scale`` and ``bias``.
        bias_metadata: metadata of the ``bias`` Param.
        scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        bias_metadata: Any = _NO_METADATA,
        scale_metadata: Any = _NO_METADATA,
    ):
        self.promote_dtype = promote_dtype
        self.scale, self.bias = _params(
            num_features, use_scale, use_bias, scale_init, bias_init, param_dtype, rngs,
            scale_metadata, bias_metadata, "LayerNorm",
        )  # fmt: skip
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = _static_axes(reduction_axes)
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _static_axes_groups(axis_index_groups)
        self.use_fast_variance = use_fast_variance

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        return _per_example_norm(self, x, mask, use_mean=True, bias=_value(self.bias))


def _per_example_norm(
    layer: Any, x: jax.Array, mask: Any, *, use_mean: bool, bias: jax.Array | None
) -> jax.Array:
    """LayerNorm/RMSNorm: statistics over ``reduction_axes`` of each example."""
    where = f"{type(layer).__name__}.__call__"
    ndim = np.ndim(x)
    reduction_axes = _canonicalize_axes(ndim, layer.reduction_axes, where)
    feature_axes = _canonicalize_axes(ndim, layer.feature_axes, where)
    _check_features(x, feature_axes, layer.num_features, where)
    if bias is None and not use_mean:  # RMSNorm: flax promotes (x, scale)
        x, scale = layer.promote_dtype((x, _value(layer.scale)), dtype=layer.dtype)
    else:
        x, scale, bias = layer.promote_dtype(
            (x, _value(layer.scale), bias), dtype=layer.dtype
        )
    y, _, _ = _forward(
        x,
        scale,
        bias,
        mask,
        reduction_axes=reduction_axes,
        feature_axes=feature_axes,
        dtype=layer.dtype,
        epsilon=layer.epsilon,
        axis_name=layer.axis_name,
        axis_index_groups=layer.axis_index_groups,
        use_mean=use_mean,
        use_fast_variance=layer.use_fast_variance,
    )
    return y


class RMSNorm(Module):
    """Divide by the root mean square over ``reduction_axes`` (no centering, no bias).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> norm = nnx.RMSNorm(6, rngs=nnx.Rngs(0))
    >>> norm.scale.shape, norm(jnp.ones((3, 6))).shape
    ((6,), (3, 6))

    Args:
        num_features: number of features (product of the ``feature_axes`` sizes).
        epsilon: added to the mean square.
        dtype: output dtype (default: inferred from input and params).
        param_dtype: dtype of ``scale``.
        use_scale: learn a factor ``scale``.
        scale_init: initializer for ``scale``.
        reduction_axes: axes the mean square is computed over.
        feature_axes: axes ``scale`` is laid along.
        axis_name: named axis to also average the statistics over.
        axis_index_groups: subgroups of ``axis_name`` to average within.
        use_fast_variance: unused (kept for flax's signature).
        promote_dtype: ``f((x, scale), dtype=...) -> tuple`` casting first.
        rngs: the ``params`` stream is drawn for ``scale``.
        scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        scale_metadata: Any = _NO_METADATA,
    ):
        self.promote_dtype = promote_dtype
        self.scale, _ = _params(
            num_features, use_scale, False, scale_init, None, param_dtype, rngs,
            scale_metadata, None, "RMSNorm",
        )  # fmt: skip
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = _static_axes(reduction_axes)
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _static_axes_groups(axis_index_groups)
        self.use_fast_variance = use_fast_variance

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return _per_example_norm(self, x, mask, use_mean=False, bias=None)


class GroupNorm(Module):
    """Normalize each example over groups of channels (and all non-batch axes).

    Channels are the last axis, split into ``num_groups`` contiguous groups (or
    groups of ``group_size``: pass ``num_groups=None``). Axis 0 is the batch axis
    unless ``reduction_axes`` says otherwise.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> gn = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))
    >>> gn.num_groups, gn.group_size, gn(jnp.ones((2, 5, 5, 6))).shape
    (3, 2, (2, 5, 5, 6))

    Args:
        num_features: number of channels (last axis).
        num_groups: number of groups (``None`` when ``group_size`` is given).
        group_size: channels per group.
        epsilon: added to the variance.
        dtype: output dtype (default: inferred from input and params).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: learn a shift ``bias``.
        use_scale: learn a factor ``scale``.
        bias_init: initializer for ``bias``.
        scale_init: initializer for ``scale``.
        reduction_axes: axes to reduce (the channel axis must be the last one);
            default: every axis but the first.
        axis_name: named axis to also average the statistics over.
        axis_index_groups: subgroups of ``axis_name`` to average within.
        use_fast_variance: compute the variance as ``E[x^2] - E[x]^2``.
        promote_dtype: ``f(arrays, dtype=...) -> tuple`` casting the input and
            parameters (and, for BatchNorm, the running statistics) first.
        rngs: the ``params`` stream is drawn for ``scale`` and ``bias``.
        bias_metadata: metadata of the ``bias`` Param.
        scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        bias_metadata: Any = _NO_METADATA,
        scale_metadata: Any = _NO_METADATA,
    ):
        self.promote_dtype = promote_dtype
        if (num_groups is None) == (group_size is None):
            raise ValueError(
                "GroupNorm: give exactly one of num_groups and group_size; to use "
                "group_size pass `num_groups=None` too (num_groups defaults to 32)."
            )
        if group_size is not None:
            if group_size <= 0 or num_features % group_size:
                raise ValueError(
                    f"GroupNorm: num_features ({num_features}) is not a multiple "
                    f"of group_size ({group_size})."
                )
            num_groups = num_features // group_size
        elif num_groups <= 0 or num_features % num_groups:
            raise ValueError(
                f"GroupNorm: num_groups ({num_groups}) does not divide "
                f"num_features ({num_features}); pick a divisor, e.g. "
                f"`num_groups={np.gcd(num_features, num_groups) or 1}`."
            )
        else:
            group_size = num_features // num_groups
        self.scale, self.bias = _params(
            num_features, use_scale, use_bias, scale_init, bias_init, param_dtype, rngs,
            scale_metadata, bias_metadata, "GroupNorm",
        )  # fmt: skip
        self.num_features = num_features
        self.num_groups = int(num_groups)
        self.group_size = int(group_size)
        self.feature_axis = -1
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = _static_axes(reduction_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _static_axes_groups(axis_index_groups)
        self.use_fast_variance = use_fast_variance

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        where = "GroupNorm.__call__"
        ndim = np.ndim(x)
        _check_features(x, (ndim - 1,), self.num_features, where)
        if self.reduction_axes is None:
            reduction_axes = tuple(range(1, ndim))
        else:
            reduction_axes = _canonicalize_axes(ndim, self.reduction_axes, where)
        if ndim - 1 not in reduction_axes:
            raise ValueError(
                f"{where}: reduction_axes {self.reduction_axes} must include the "
                "channel axis -1."
            )
        # The channel axis is split into (groups, group_size) inside _forward and
        # reduced over group_size; the other reduction axes are reduced as given.
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        y, _, _ = _forward(
            x,
            scale,
            bias,
            mask,
            reduction_axes=reduction_axes[:-1],
            feature_axes=(ndim - 1,),
            dtype=self.dtype,
            epsilon=self.epsilon,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
            groups=(self.num_groups, self.group_size),
        )
        return y


class InstanceNorm(Module):
    """Normalize each example and channel over the remaining (spatial) axes.

    Axis 0 is the batch axis; ``feature_axes`` (default: the last) are kept.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> norm = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
    >>> norm.scale.shape, norm(jnp.ones((2, 4, 4, 3))).shape
    ((3,), (2, 4, 4, 3))

    Args:
        num_features: number of features (product of the ``feature_axes`` sizes).
        epsilon: added to the variance.
        dtype: output dtype (default: inferred from input and params).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: learn a shift ``bias``.
        use_scale: learn a factor ``scale``.
        bias_init: initializer for ``bias``.
        scale_init: initializer for ``scale``.
        feature_axes: the axes that are not reduced (besides the batch axis 0).
        axis_name: named axis to also average the statistics over.
        axis_index_groups: subgroups of ``axis_name`` to average within.
        use_fast_variance: compute the variance as ``E[x^2] - E[x]^2``.
        promote_dtype: ``f(arrays, dtype=...) -> tuple`` casting the input and
            parameters (and, for BatchNorm, the running statistics) first.
        rngs: the ``params`` stream is drawn for ``scale`` and ``bias``.
        bias_metadata: metadata of the ``bias`` Param.
        scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        bias_metadata: Any = _NO_METADATA,
        scale_metadata: Any = _NO_METADATA,
    ):
        self.promote_dtype = promote_dtype
        self.scale, self.bias = _params(
            num_features, use_scale, use_bias, scale_init, bias_init, param_dtype, rngs,
            scale_metadata, bias_metadata, "InstanceNorm",
        )  # fmt: skip
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.feature_axes = _static_axes(feature_axes)
        self.axis_name = axis_name
        self.axis_index_groups = _static_axes_groups(axis_index_groups)
        self.use_fast_variance = use_fast_variance

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        where = "InstanceNorm.__call__"
        ndim = np.ndim(x)
        feature_axes = _canonicalize_axes(ndim, self.feature_axes, where)
        if 0 in feature_axes:
            raise ValueError(
                f"{where}: feature_axes {self.feature_axes} include axis 0, which "
                "is the batch axis; add a batch axis (`x[None]`) or pick others."
            )
        _check_features(x, feature_axes, self.num_features, where)
        reduction_axes = tuple(a for a in range(1, ndim) if a not in feature_axes)
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        y, _, _ = _forward(
            x,
            scale,
            bias,
            mask,
            reduction_axes=reduction_axes,
            feature_axes=feature_axes,
            dtype=self.dtype,
            epsilon=self.epsilon,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
        )
        return y


# -- Weight reparameterizations ----------------------------------------------------


def _path_key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _params_of(layer: Module) -> list[tuple[tuple, Param]]:
    """``(path, Param)`` for every Param in ``layer``, each once, in graph order."""
    return [(tuple(p), v) for p, v in iter_graph(layer) if isinstance(v, Param)]


@contextlib.contextmanager
def _swapped(pairs: list[tuple[Param, jax.Array]]):
    """Give each Param a new value for the duration of the block, then restore."""
    old = [v.value for v, _ in pairs]
    try:
        for v, new in pairs:
            v.value = new
        yield
    finally:
        for (v, _), value in zip(pairs, old):
            v.value = value


def _l2_normalize(x: jax.Array, axis: Any = None, eps: float = 1e-12) -> jax.Array:
    """``x`` divided by its l2 norm over ``axis`` (linen's formula and op order)."""
    return x * jax.lax.rsqrt(jnp.sum(_abs_sq(x), axis=axis, keepdims=True) + eps)


def _weight_norm(value, scale, *, feature_axes, epsilon, dtype):
    """``value`` l2-normalized over every axis but ``feature_axes``, times scale.

    Computed op by op as linen's WeightNorm does (no inner ``jax.jit``: a fused
    kernel rounds differently, and the results are meant to equal linen's).
    """
    reduction = tuple(a for a in range(value.ndim) if a not in feature_axes)
    out = _l2_normalize(value, axis=reduction, eps=epsilon)
    args = [value]
    if scale is not None:
        shape = [d if a in feature_axes else 1 for a, d in enumerate(value.shape)]
        scale = jnp.reshape(scale, shape)
        out = out * scale
        args.append(scale)
    return jnp.asarray(out, dtypes.canonicalize_dtype(*args, dtype=dtype))


class WeightNorm(Module):
    """L2 weight normalization (Salimans & Kingma, 2016) around another layer.

    Every ``Param`` of ``layer_instance`` whose path (joined with ``/``) contains
    one of the strings in ``variable_filter`` is replaced, for each call, by
    ``w / ||w|| * scale``: the norm is taken over every axis but
    ``feature_axes`` (for a ``Linear`` or ``Conv`` kernel with the default ``-1``:
    one norm per output feature) and ``scale`` is a learned ``Param`` with the
    shape of the feature axes, in ``scales`` keyed by the Param's path tuple
    (``scales[("kernel",)]``, as in flax). The wrapped layer keeps the unnormalized
    weights; gradients flow to them and to the scales.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> wn = nnx.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    >>> list(wn.scales), wn.scales[("kernel",)].shape
    ([('kernel',)], (2,))
    >>> wn(jnp.ones((4, 3))).shape
    (4, 2)

    Args:
        layer_instance: the layer whose parameters are normalized.
        epsilon: added to the squared norm.
        dtype: dtype of the normalized weights (default: unchanged).
        param_dtype: dtype of the scales.
        use_scale: learn a ``scale`` per feature (otherwise unit norm).
        scale_init: initializer for the scales.
        feature_axes: axes of each weight that keep their own norm (``None``:
            one norm for the whole weight).
        variable_filter: substrings of the Param paths to normalize; ``None``
            normalizes every Param.
        rngs: the ``params`` stream is drawn for the scales.
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        feature_axes: Axes | None = -1,
        variable_filter: Iterable[str] | None = frozenset({"kernel"}),
        rngs: Rngs,
    ):
        self.layer_instance = layer_instance
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.feature_axes = _static_axes(feature_axes)
        self.variable_filter = (
            None if variable_filter is None else tuple(sorted(set(variable_filter)))
        )
        scales = {}
        for key, v in self._selected():
            axes = self._axes(v.value, "WeightNorm")
            if use_scale:
                shape = tuple(v.value.shape[a] for a in axes)
                scales[key] = Param(scale_init(rngs.params(), shape, param_dtype))
        self.scales = Dict(scales)

    def _selected(self) -> list[tuple[str, Param]]:
        pairs = _params_of(self.layer_instance)
        if self.variable_filter is None:
            return pairs
        return [
            (k, v)
            for k, v in pairs
            if any(f in _path_key(k) for f in self.variable_filter)
        ]

    def _axes(self, value: Any, where: str) -> tuple[int, ...]:
        if self.feature_axes is None:
            return ()
        return _canonicalize_axes(np.ndim(value), self.feature_axes, where)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped layer with its selected weights normalized."""
        pairs = []
        for key, v in self._selected():
            scale = self.scales[key].value if self.use_scale else None
            new = _weight_norm(
                v.value,
                scale,
                feature_axes=self._axes(v.value, "WeightNorm.__call__"),
                epsilon=self.epsilon,
                dtype=self.dtype,
            )
            pairs.append((v, new))
        with _swapped(pairs):
            return self.layer_instance(x, *args, **kwargs)


def _power_iteration(w, u, *, n_steps, epsilon):
    """``n_steps`` of power iteration on the matrix ``w``: ``(u, v, sigma)``.

    Op by op, in linen's order (see ``_weight_norm`` for why not jitted).
    """
    v = None
    for _ in range(n_steps):
        v = _l2_normalize(jnp.matmul(u, w.T), eps=epsilon)  # (1, rows)
        u = _l2_normalize(jnp.matmul(v, w), eps=epsilon)  # (1, cols)
    if v is None:  # n_steps == 0: only the stored u
        v = _l2_normalize(jnp.matmul(u, w.T), eps=epsilon)
    u = jax.lax.stop_gradient(u)
    v = jax.lax.stop_gradient(v)
    sigma = jnp.matmul(jnp.matmul(v, w), jnp.transpose(u))[0, 0]
    return u, v, sigma


def _stat_type(collection_name: str) -> type[Variable]:
    """The Variable type for flax's ``collection_name`` (``batch_stats``: BatchStat)."""
    if collection_name == "batch_stats":
        return BatchStat
    t = _STAT_TYPES.get(collection_name)
    if t is None:
        name = "".join(p.capitalize() for p in collection_name.split("_")) or "Stat"
        t = type(name, (Variable,), {"__module__": __name__})
        _STAT_TYPES[collection_name] = t
    return t


_STAT_TYPES: dict[str, type[Variable]] = {}


class SpectralNorm(Module):
    """Spectral normalization (Miyato et al., 2018) around another layer.

    Every ``Param`` of ``layer_instance`` with at least two dimensions is divided,
    for each call, by an estimate of its largest singular value ``sigma``
    (weights of more than two dimensions are seen as a matrix
    ``(-1, shape[-1])``; 0-d and 1-d Params are left alone). The estimate comes
    from ``n_steps`` of power iteration started from a stored vector ``u``;
    with ``update_stats=True`` (the default) each call stores the new ``u`` and
    ``sigma``, so the estimate sharpens over training, and with
    ``update_stats=False`` the stored ``u`` is used and nothing changes. As in
    flax.nnx, ``u`` and ``sigma`` live in ``self.batch_stats`` keyed by the
    Param's path plus ``"u"`` / ``"sigma"`` (``batch_stats[("kernel", "u")]``),
    as ``BatchStat`` Variables (or a Variable type named after another
    ``collection_name``). Unlike flax.nnx, the wrapped layer keeps its
    unnormalized weights (flax overwrites them with the normalized ones on each
    call, so later updates apply to the normalized weights).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> sn = nnx.SpectralNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    >>> sorted(sn.batch_stats)
    [('kernel', 'sigma'), ('kernel', 'u')]
    >>> sn.batch_stats[("kernel", "u")].shape, sn(jnp.ones((4, 3))).shape
    ((1, 2), (4, 2))

    Args:
        layer_instance: the layer whose parameters are normalized.
        n_steps: power-iteration steps per call.
        epsilon: added to the squared norms in the power iteration.
        dtype: dtype of the normalized weights (default: inferred from the
            weight and the statistics).
        param_dtype: dtype of ``u`` and ``sigma``.
        error_on_non_matrix: raise on Params of more than two dimensions instead
            of reshaping them.
        update_stats: the default of ``__call__``'s ``update_stats`` (stored as
            ``use_running_average = not update_stats``, so ``.eval()`` turns
            the updates off and ``.train()`` back on).
        collection_name: ``"batch_stats"`` stores the statistics as
            ``BatchStat``; another name makes a Variable type of that name.
        rngs: the ``params`` stream is drawn for the initial ``u``.
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        collection_name: str = "batch_stats",
        rngs: Rngs,
    ):
        self.layer_instance = layer_instance
        self.n_steps = int(n_steps)
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        self.use_running_average = not update_stats
        self.collection_name = collection_name
        stat = _stat_type(collection_name)
        stats = {}
        for path, v in self._selected():
            cols = np.shape(v.value)[-1]
            key = rngs.params()
            stats[path + ("u",)] = stat(jax.random.normal(key, (1, cols), param_dtype))
            stats[path + ("sigma",)] = stat(jnp.ones((), param_dtype))
        self.batch_stats = Dict(stats)

    def _selected(self) -> list[tuple[tuple, Param]]:
        out = []
        if self.n_steps < 1:
            return out
        for path, v in _params_of(self.layer_instance):
            ndim = np.ndim(v.value)
            if ndim < 2:
                continue
            if ndim > 2 and self.error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: Param {_path_key(path)!r} has shape "
                    f"{np.shape(v.value)}, not a matrix; pass "
                    "error_on_non_matrix=False to normalize it as a "
                    "(-1, shape[-1]) matrix."
                )
            out.append((path, v))
        return out

    def _stat(self, path: tuple, name: str) -> Variable:
        try:
            return self.batch_stats[path + (name,)]
        except KeyError:
            raise RuntimeError(
                f"SpectralNorm: no {name!r} statistic for the Param at "
                f"{_path_key(path)!r} (batch_stats has {sorted(self.batch_stats)}). "
                "The Params of layer_instance must not change after the "
                "SpectralNorm is built; wrap the new layer in a new SpectralNorm."
            ) from None

    def __call__(
        self, x: Any, *args: Any, update_stats: bool | None = None, **kwargs: Any
    ) -> Any:
        """Call the wrapped layer with its weights divided by their ``sigma``.

        ``update_stats=None`` uses ``not self.use_running_average``.
        """
        if update_stats is None:
            update_stats = not self.use_running_average
        pairs = []
        for path, v in self._selected():
            w = v.value
            u_var, sigma_var = self._stat(path, "u"), self._stat(path, "sigma")
            u, vec, sigma = _power_iteration(
                jnp.reshape(w, (-1, w.shape[-1])),
                u_var.value,
                n_steps=self.n_steps,
                epsilon=self.epsilon,
            )
            new = (w / jnp.where(sigma != 0, sigma, 1)).reshape(w.shape)
            dtype = dtypes.canonicalize_dtype(w, u, vec, sigma, dtype=self.dtype)
            pairs.append((v, jnp.asarray(new, dtype)))
            if update_stats:
                u_var.value = u.astype(u_var.value.dtype)
                sigma_var.value = sigma.astype(sigma_var.value.dtype)
        with _swapped(pairs):
            return self.layer_instance(x, *args, **kwargs)
