"""Convolutions: ``Conv`` and ``ConvTranspose`` (channels-last, 1-D/2-D/3-D).

Design note: inputs are channels-last (``NWC``/``NHWC``/``NDHWC``) and kernels are
``kernel_size + (in_features // feature_group_count, out_features)`` (``HWIO``),
as in flax. Any number of leading batch axes is accepted, including none: they are
flattened into one before the ``lax`` call and restored after. ``ConvTranspose``
is written as a convolution of the stride-dilated input (``lhs_dilation``), which
is what ``lax.conv_transpose`` does; doing it here lets it also take
``feature_group_count`` (an extension over flax). A weight ``mask`` is not a
trainable parameter, so it is held in a plain ``nnx.Variable`` (a raw array
attribute is not allowed). Configuration is stored as tuples, never lists.
The array math of a call is one ``jax.jit``-compiled function of the arrays with
the configuration static, so an eager call compiles once per input shape (not
once per primitive) and dispatches once; under ``nnx.jit`` it is simply inlined.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import Param, Variable
from nnxlike.nn import dtypes, initializers
from nnxlike.nn._checks import check_rngs, check_size, check_sizes
from nnxlike.nn.linear import _NO_METADATA

Initializer = Any
PaddingLike = str | int | Sequence[int | tuple[int, int]]

_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")


class ConvDimensionWarning(UserWarning):
    """An int ``kernel_size`` (a 1-D convolution) met an input with several batch axes.

    ``nnx.Conv(1, 16, 3)`` applied to ``(N, H, W, C)`` images convolves over ``W``
    only, treating ``N`` and ``H`` as batch axes, which flax allows. It is almost
    always meant as ``kernel_size=(3, 3)``; pass ``kernel_size=(3,)`` to say the
    1-D convolution is intended and silence this warning.
    """


def canonicalize_padding(padding: PaddingLike, rank: int, where: str = "Conv") -> Any:
    """A padding string, or one ``(low, high)`` pair per spatial axis."""
    if isinstance(padding, str):
        if padding.upper() not in _PADDING_STRINGS:
            raise ValueError(
                f"{where}: unknown padding {padding!r}; use one of "
                f"{_PADDING_STRINGS}, an int, or one (low, high) pair per axis."
            )
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    if isinstance(padding, Sequence) and len(padding) == rank:
        pairs = []
        for p in padding:
            if isinstance(p, int):
                pairs.append((p, p))
            elif isinstance(p, Sequence) and len(p) == 2:
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        if len(pairs) == rank:
            return tuple(pairs)
    raise ValueError(
        f"{where}: invalid padding {padding!r}; expected a string, an int, or a "
        f"sequence of {rank} ints or (low, high) pairs (one per spatial axis)."
    )


def _tuple(x: int | Sequence[int] | None, n: int, name: str, where: str) -> tuple:
    if x is None:
        x = 1
    if isinstance(x, int):
        return (x,) * n
    x = tuple(int(v) for v in x)
    if len(x) != n:
        raise ValueError(
            f"{where}: {name} {x} must have one entry per spatial axis ({n})."
        )
    return x


def _kernel_size(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(kernel_size, int):
        return (kernel_size,)
    return tuple(int(k) for k in kernel_size)


def _dilated(kernel_size: tuple, dilation: tuple) -> list[int]:
    return [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]


def _dimension_numbers(ndim: int) -> jax.lax.ConvDimensionNumbers:
    # Channels-last input/output, HWIO kernel.
    spatial = tuple(range(1, ndim - 1))
    lhs = (0, ndim - 1, *spatial)
    rhs = (ndim - 1, ndim - 2, *range(ndim - 2))
    return jax.lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _check_input(
    inputs: Any, n_spatial: int, in_features: int, where: str, int_kernel: Any = None
) -> None:
    """Rank and channel checks; ``int_kernel`` is the int ``kernel_size`` if given."""
    shape = tuple(jnp.shape(inputs))
    if int_kernel is not None and len(shape) >= n_spatial + 3:
        k = "kernel_size"
        warnings.warn(
            f"{where}: {k} was given as an int, which means a 1-D convolution "
            f"over axis -2 (size {shape[-2]}), so the input of shape {shape} is "
            f"read as {len(shape) - 2} batch axes {shape[:-2]}, not as an image. "
            f"For a 2-D convolution over (H, W) pass "
            f"`{k}=({int_kernel}, {int_kernel})`; if the 1-D convolution "
            f"is intended, pass `{k}=({int_kernel},)` to silence this warning.",
            ConvDimensionWarning,
            stacklevel=4,
        )
    if len(shape) < n_spatial + 1:
        raise ValueError(
            f"{where}: a {n_spatial}-D convolution expects inputs shaped "
            f"(*batch, {n_spatial} spatial axes, features), got shape {shape}."
        )
    if shape[-1] != in_features:
        raise ValueError(
            f"{where}: expected input with last dimension {in_features} "
            f"(in_features, channels-last), got shape {shape}. For NCHW data "
            f"transpose it first: `jnp.moveaxis(x, 1, -1)`."
        )


def _check_output_size(
    shape: tuple, kernel_size: tuple, kernel_dilation: tuple, input_dilation: tuple,
    padding: Any, where: str,
) -> None:  # fmt: skip
    """A kernel larger than the (padded) input would give an empty output: refuse."""
    if isinstance(padding, str) and padding != "VALID":
        return  # SAME, CIRCULAR, REFLECT and CAUSAL never shrink below one.
    spatial = shape[len(shape) - len(kernel_size) - 1 : -1]
    for axis, (size, k, kd, d) in enumerate(
        zip(spatial, kernel_size, kernel_dilation, input_dilation)
    ):
        eff = (k - 1) * kd + 1
        pad = 0 if isinstance(padding, str) else padding[axis][0] + padding[axis][1]
        room = (size - 1) * d + 1 + pad if size else pad
        if room < eff:
            raise ValueError(
                f"{where}: the kernel (size {eff} on spatial axis {axis}, "
                f"kernel_size={kernel_size}, kernel_dilation={kernel_dilation}) "
                f"is larger than the input there ({room} after padding "
                f"{padding!r}; input shape {shape}), so the output would be empty. "
                "Use padding='SAME', a smaller kernel_size, or a larger input."
            )


def _flatten_batch(x: jax.Array, n_spatial: int) -> tuple[jax.Array, tuple]:
    """Fold every leading batch axis (possibly none) into a single one."""
    batch = x.shape[: x.ndim - n_spatial - 1]
    if len(batch) != 1:
        x = jnp.reshape(x, (int(np.prod(batch)),) + x.shape[len(batch) :])
    return x, batch


def _unflatten_batch(y: jax.Array, batch: tuple) -> jax.Array:
    if len(batch) != 1:
        y = jnp.reshape(y, batch + y.shape[1:])
    return y


def _add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    if bias is None:
        return y
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _value(v: Variable | None) -> jax.Array | None:
    return v.value if v is not None else None


def _check_mask(mask: Variable | None, kernel_shape: tuple, where: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(kernel_shape):
        raise ValueError(
            f"{where}: mask must have the kernel's shape {kernel_shape}, got "
            f"{tuple(mask.shape)}."
        )


class Conv(Module):
    """N-D convolution over channels-last inputs (``lax.conv_general_dilated``).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> conv = nnx.Conv(3, 8, kernel_size=(3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> conv.kernel.shape, conv.bias.shape
    ((3, 3, 3, 8), (8,))
    >>> conv(jnp.ones((2, 16, 16, 3))).shape
    (2, 8, 8, 8)
    >>> conv(jnp.ones((16, 16, 3))).shape  # unbatched
    (8, 8, 8)

    Args:
        in_features: input channels (last axis).
        out_features: output channels.
        kernel_size: window size; an int means a 1-D convolution.
        strides: int or one per spatial axis.
        padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'`` (wrap-around),
            ``'CAUSAL'`` (1-D, left padding only), an int, or one int or
            ``(low, high)`` pair per spatial axis.
        input_dilation: int or one per spatial axis (a transposed convolution).
        kernel_dilation: int or one per spatial axis (atrous convolution).
        feature_group_count: split channels into this many groups.
        use_bias: add a bias of shape ``(out_features,)``.
        mask: optional array of the kernel's shape multiplied into the kernel.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the parameters.
        precision: ``jax.lax.Precision`` of the convolution.
        kernel_init: initializer for the kernel.
        bias_init: initializer for the bias.
        conv_general_dilated: the convolution (default
            ``jax.lax.conv_general_dilated``), same signature.
        promote_dtype: ``f((x, kernel, bias), dtype=...) -> tuple`` casting the
            arrays before the convolution.
        preferred_element_type: dtype the convolution accumulates and returns
            in (passed to ``conv_general_dilated``).
        rngs: the ``params`` stream is drawn for the kernel and bias.
        kernel_metadata: metadata of the kernel Param, e.g.
            ``{"sharding_names": (None, None, None, "model")}``.
        bias_metadata: metadata of the bias Param.

    An int ``kernel_size`` applied to an input with more than one batch axis
    (``Conv(1, 16, 3)`` on ``(N, H, W, C)``) warns with ``ConvDimensionWarning``;
    a kernel larger than the input under ``'VALID'`` padding raises.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: PaddingLike = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        conv_general_dilated: Any = jax.lax.conv_general_dilated,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        _check_conv_args(
            "Conv", in_features, out_features, kernel_size, strides,
            feature_group_count, rngs, input_dilation=input_dilation,
            kernel_dilation=kernel_dilation,
        )  # fmt: skip
        self._int_kernel_size = kernel_size if isinstance(kernel_size, int) else None
        kernel_size = _kernel_size(kernel_size)
        n = len(kernel_size)
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                f"Conv: in_features ({in_features}) and out_features "
                f"({out_features}) must both be divisible by feature_group_count "
                f"({feature_group_count})."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = _tuple(strides, n, "strides", "Conv")
        self.padding = canonicalize_padding(padding, n, "Conv")
        if self.padding == "CAUSAL" and n != 1:
            raise ValueError(
                f"Conv: 'CAUSAL' padding is only defined for 1-D convolutions, got "
                f"kernel_size {kernel_size}."
            )
        self.input_dilation = _tuple(input_dilation, n, "input_dilation", "Conv")
        self.kernel_dilation = _tuple(kernel_dilation, n, "kernel_dilation", "Conv")
        self.feature_group_count = feature_group_count
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.conv_general_dilated = conv_general_dilated
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.kernel_shape = kernel_size + (
            in_features // feature_group_count,
            out_features,
        )
        self.kernel = Param(
            kernel_init(rngs.params(), self.kernel_shape, param_dtype),
            **(kernel_metadata or {}),
        )
        self.bias = (
            Param(
                bias_init(rngs.params(), (out_features,), param_dtype),
                **(bias_metadata or {}),
            )
            if use_bias
            else None
        )
        self.mask = Variable(jnp.asarray(mask)) if mask is not None else None
        _check_mask(self.mask, self.kernel_shape, "Conv")

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        where = "Conv.__call__"
        n = len(self.kernel_size)
        _check_input(inputs, n, self.in_features, where, self._int_kernel_size)
        _check_mask(self.mask, self.kernel_shape, where)
        _check_output_size(
            _shape(inputs), self.kernel_size, self.kernel_dilation,
            self.input_dilation, self.padding, where,
        )  # fmt: skip
        return _conv_forward(
            inputs,
            self.kernel.value,
            _value(self.bias),
            _value(self.mask),
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            input_dilation=self.input_dilation,
            kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            dtype=self.dtype,
            precision=self.precision,
            conv_general_dilated=self.conv_general_dilated,
            promote_dtype=self.promote_dtype,
            conv_kwargs=_conv_kwargs(out_sharding, self.preferred_element_type),
        )


def _shape(x: Any) -> tuple:
    return tuple(jnp.shape(x))


def _conv_kwargs(out_sharding: Any, preferred_element_type: Any) -> tuple:
    """Optional keywords of the convolution, as a hashable static tuple."""
    kwargs = ()
    if out_sharding is not None:
        kwargs += (("out_sharding", out_sharding),)
    if preferred_element_type is not None:
        kwargs += (("preferred_element_type", preferred_element_type),)
    return kwargs


def _check_conv_args(
    where: str, in_features: Any, out_features: Any, kernel_size: Any, strides: Any,
    feature_group_count: Any, rngs: Any, **dilations: Any,
) -> None:  # fmt: skip
    check_size(where, "in_features", in_features)
    check_size(where, "out_features", out_features)
    check_sizes(where, "kernel_size", kernel_size)
    check_sizes(where, "strides", strides, allow_none=True)
    for name, value in dilations.items():
        check_sizes(where, name, value, allow_none=True)
    check_size(where, "feature_group_count", feature_group_count)
    check_rngs(where, rngs)


_CONV_STATIC = (
    "kernel_size",
    "strides",
    "padding",
    "input_dilation",
    "kernel_dilation",
    "feature_group_count",
    "dtype",
    "precision",
    "conv_general_dilated",
    "promote_dtype",
    "conv_kwargs",
)


@functools.partial(jax.jit, static_argnames=_CONV_STATIC)
def _conv_forward(
    inputs, kernel, bias, mask, *, kernel_size, strides, padding, input_dilation,
    kernel_dilation, feature_group_count, dtype, precision, conv_general_dilated,
    promote_dtype, conv_kwargs,
) -> jax.Array:  # fmt: skip
    x, batch = _flatten_batch(inputs, len(kernel_size))
    if padding in ("CIRCULAR", "REFLECT"):
        eff = _dilated(kernel_size, kernel_dilation)
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in eff] + [(0, 0)]
        x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
        padding = "VALID"
    elif padding == "CAUSAL":
        left = kernel_dilation[0] * (kernel_size[0] - 1)
        x = jnp.pad(x, [(0, 0), (left, 0), (0, 0)])
        padding = "VALID"
    elif isinstance(padding, str) and any(d > 1 for d in input_dilation):
        # lax takes only explicit padding with lhs_dilation: resolve the string
        # against the dilated input.
        dilated = [(s - 1) * d + 1 for s, d in zip(x.shape[1:-1], input_dilation)]
        eff = _dilated(kernel_size, kernel_dilation)
        padding = jax.lax.padtype_to_pads(dilated, eff, strides, padding)
    if mask is not None:
        kernel = kernel * mask
    x, kernel, bias = promote_dtype((x, kernel, bias), dtype=dtype)
    y = conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        lhs_dilation=input_dilation,
        rhs_dilation=kernel_dilation,
        dimension_numbers=_dimension_numbers(x.ndim),
        feature_group_count=feature_group_count,
        precision=precision,
        **dict(conv_kwargs),
    )
    return _unflatten_batch(_add_bias(y, bias), batch)


def _transpose_padding(k: int, s: int, mode: str) -> tuple[int, int]:
    """``lax.conv_transpose``'s padding of the dilated input for SAME/VALID.

    ``k`` is the dilated kernel size. SAME gives ``in * s`` outputs, VALID gives
    ``in * s + max(k - s, 0)``.
    """
    if mode == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    return low, total - low


class ConvTranspose(Module):
    """N-D transposed convolution (the gradient of ``Conv`` w.r.t. its input).

    Mirrors ``lax.conv_transpose``: with ``padding='SAME'`` the output is
    ``input * strides`` long; with ``'VALID'`` it is
    ``input * strides + max(kernel - strides, 0)``. By default the kernel is
    ``kernel_size + (in_features // feature_group_count, out_features)`` and is
    applied unflipped to the stride-dilated input; with ``transpose_kernel=True``
    it is ``kernel_size + (out_features // feature_group_count, in_features)``
    (the kernel of the ``Conv`` this layer transposes) and is flipped and
    transposed before use.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> up = nnx.ConvTranspose(8, 3, kernel_size=(3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> up.kernel.shape
    (3, 3, 8, 3)
    >>> up(jnp.ones((2, 8, 8, 8))).shape
    (2, 16, 16, 3)

    Args:
        in_features: input channels (last axis).
        out_features: output channels.
        kernel_size: window size; an int means 1-D.
        strides: int or one per spatial axis (the upsampling factor).
        padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, an int, or one int or
            ``(low, high)`` pair per axis (padding of the dilated input, as in
            ``lax.conv_transpose``).
        kernel_dilation: int or one per spatial axis.
        feature_group_count: channel groups (an extension over flax).
        use_bias: add a bias of shape ``(out_features,)``.
        mask: optional array of the kernel's shape multiplied into the kernel.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the parameters.
        precision: ``jax.lax.Precision`` of the convolution.
        kernel_init: initializer for the kernel.
        bias_init: initializer for the bias.
        transpose_kernel: flip the kernel spatially and swap its channel axes.
        promote_dtype: ``f((x, kernel, bias), dtype=...) -> tuple`` casting the
            arrays before the convolution.
        preferred_element_type: dtype the convolution accumulates and returns
            in.
        rngs: the ``params`` stream is drawn for the kernel and bias.
        kernel_metadata: metadata of the kernel Param (e.g. ``sharding_names``).
        bias_metadata: metadata of the bias Param.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: PaddingLike = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        where = "ConvTranspose"
        _check_conv_args(
            where, in_features, out_features, kernel_size, strides,
            feature_group_count, rngs, kernel_dilation=kernel_dilation,
        )  # fmt: skip
        self._int_kernel_size = kernel_size if isinstance(kernel_size, int) else None
        kernel_size = _kernel_size(kernel_size)
        n = len(kernel_size)
        g = feature_group_count
        if in_features % g or out_features % g:
            raise ValueError(
                f"{where}: in_features ({in_features}) and out_features "
                f"({out_features}) must both be divisible by feature_group_count "
                f"({g})."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = _tuple(strides, n, "strides", where)
        self.padding = canonicalize_padding(padding, n, where)
        if self.padding in ("CAUSAL", "SAME_LOWER", "REFLECT"):
            raise ValueError(
                f"{where}: padding {self.padding!r} is not supported; use 'SAME', "
                "'VALID', 'CIRCULAR' or explicit (low, high) pairs."
            )
        self.kernel_dilation = _tuple(kernel_dilation, n, "kernel_dilation", where)
        self.feature_group_count = g
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.transpose_kernel = transpose_kernel
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        if transpose_kernel:
            self.kernel_shape = kernel_size + (out_features // g, in_features)
        else:
            self.kernel_shape = kernel_size + (in_features // g, out_features)
        self.kernel = Param(
            kernel_init(rngs.params(), self.kernel_shape, param_dtype),
            **(kernel_metadata or {}),
        )
        self.bias = (
            Param(
                bias_init(rngs.params(), (out_features,), param_dtype),
                **(bias_metadata or {}),
            )
            if use_bias
            else None
        )
        self.mask = Variable(jnp.asarray(mask)) if mask is not None else None
        _check_mask(self.mask, self.kernel_shape, where)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        where = "ConvTranspose.__call__"
        n = len(self.kernel_size)
        _check_input(inputs, n, self.in_features, where, self._int_kernel_size)
        _check_mask(self.mask, self.kernel_shape, where)
        return _conv_transpose_forward(
            inputs,
            self.kernel.value,
            _value(self.bias),
            _value(self.mask),
            in_features=self.in_features,
            out_features=self.out_features,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            transpose_kernel=self.transpose_kernel,
            dtype=self.dtype,
            precision=self.precision,
            promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type,
        )


_CONV_T_STATIC = (
    "in_features",
    "out_features",
    "kernel_size",
    "strides",
    "padding",
    "kernel_dilation",
    "feature_group_count",
    "transpose_kernel",
    "dtype",
    "precision",
    "promote_dtype",
    "preferred_element_type",
)


@functools.partial(jax.jit, static_argnames=_CONV_T_STATIC)
def _conv_transpose_forward(
    inputs, kernel, bias, mask, *, in_features, out_features, kernel_size, strides,
    padding, kernel_dilation, feature_group_count, transpose_kernel, dtype, precision,
    promote_dtype, preferred_element_type,
) -> jax.Array:  # fmt: skip
    n = len(kernel_size)
    g = feature_group_count
    x, batch = _flatten_batch(inputs, n)
    if mask is not None:
        kernel = kernel * mask
    x, kernel, bias = promote_dtype((x, kernel, bias), dtype=dtype)
    if g == 1:
        # Exactly flax's computation (lax.conv_transpose), so results are equal
        # to the bit; grouped transposes take the general path below.
        y = jax.lax.conv_transpose(
            x,
            kernel,
            strides,
            "VALID" if padding == "CIRCULAR" else padding,
            rhs_dilation=kernel_dilation,
            transpose_kernel=transpose_kernel,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        if padding == "CIRCULAR":
            y = _wrap_circular(y, x.shape[1:-1], strides, transpose_kernel)
        return _unflatten_batch(_add_bias(y, bias), batch)
    if transpose_kernel:
        # The kernel of the Conv being transposed, (*k, out/g, in): flip it in
        # space and regroup (..., out/g, g, in/g) -> (..., in/g, g, out/g).
        kernel = jnp.flip(kernel, axis=tuple(range(n)))
        kernel = jnp.reshape(kernel, kernel_size + (out_features // g, g, -1))
        kernel = jnp.transpose(kernel, (*range(n), n + 2, n + 1, n))
        kernel = jnp.reshape(kernel, kernel_size + (in_features // g, -1))
    if isinstance(padding, str):
        mode = "VALID" if padding == "CIRCULAR" else padding
        eff = _dilated(kernel_size, kernel_dilation)
        pads = tuple(_transpose_padding(k, s, mode) for k, s in zip(eff, strides))
    else:
        pads = padding
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,) * n,
        padding=pads,
        lhs_dilation=strides,
        rhs_dilation=kernel_dilation,
        dimension_numbers=_dimension_numbers(x.ndim),
        feature_group_count=g,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if padding == "CIRCULAR":
        y = _wrap_circular(y, x.shape[1:-1], strides, transpose_kernel)
    return _unflatten_batch(_add_bias(y, bias), batch)


def _wrap_circular(
    y: jax.Array, in_spatial: tuple, strides: tuple, transpose_kernel: bool
) -> jax.Array:
    # The periodic output has period in * stride per axis: pad y to a whole
    # number of periods (so the data starts at a period boundary), then fold the
    # periods onto each other by summing.
    periods = [d * s for d, s in zip(in_spatial, strides)]
    diffs = [-(yd - p) % (2 * p) for yd, p in zip(y.shape[1:-1], periods)]
    if transpose_kernel:
        pads = [(d // 2, (d + 1) // 2) for d in diffs]
    else:
        pads = [((d + 1) // 2, d // 2) for d in diffs]
    y = jnp.pad(y, [(0, 0), *pads, (0, 0)])
    for i, p in enumerate(periods, start=1):
        y = jnp.reshape(y, y.shape[:i] + (-1, p) + y.shape[i + 1 :])
        y = jnp.sum(y, axis=i)
    return y
