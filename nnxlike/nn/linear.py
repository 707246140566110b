"""Dense layers: ``Linear``, ``LinearGeneral``, ``Einsum`` and ``Embed``.

Design note: kernels are stored ``(in_features, out_features)`` (the transpose of
PyTorch's ``weight``), so a forward pass is ``x @ kernel + bias``. Initializer
functions are used in ``__init__`` and not stored: storing a freshly built closure
(``normal(0.02)``) would make two identical models differ in their GraphDef and
compile twice. Static configuration is stored hashable (tuples, ``FrozenMapping``)
so it can be part of a GraphDef; only ``Param`` values are state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import Param, VariableMetadata
from nnxlike.nn import initializers

Initializer = Any


def _reshape_init(x: Any, shape: tuple) -> Any:
    """Reshape an initializer's result, keeping ``with_partitioning`` metadata."""
    if isinstance(x, VariableMetadata):
        return VariableMetadata(jnp.reshape(x.raw_value, shape), x.metadata)
    return jnp.reshape(x, shape)


class Linear(Module):
    """``y = x @ kernel + bias`` over the last axis.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape, layer(jnp.ones((2, 3))).shape
    ((3, 4), (4,), (2, 4))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
        rngs: Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel = Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
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

    def __call__(self, x: jax.Array) -> jax.Array:
        if jnp.shape(x)[-1:] != (self.in_features,):
            raise ValueError(
                f"Linear.__call__: expected input with last dimension "
                f"{self.in_features}, got shape {tuple(jnp.shape(x))}. "
                f"Reshape the input or build Linear({(jnp.shape(x) or ('?',))[-1]}, "
                f"{self.out_features})."
            )
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = jnp.matmul(x, kernel, precision=self.precision)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + bias.shape)
        return y


# -- shared helpers (also used by conv, normalization and lora) ---------------


def promote_dtype(xs: tuple, *, dtype: Any = None, inexact: bool = True) -> list:
    """Cast the non-None arrays of ``xs`` to ``dtype`` (default: their result type).

    With ``inexact=True`` an integer result type is promoted to a float type, as
    flax's ``promote_dtype`` does.
    """
    present = [x for x in xs if x is not None]
    if dtype is None:
        dtype = jnp.result_type(*present)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.promote_types(jnp.float32, dtype)
    return [jnp.asarray(x, dtype) if x is not None else None for x in xs]


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(x, Iterable):
        return tuple(int(v) for v in x)
    return (int(x),)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(jnp.shape(x))


class FrozenMapping(Mapping):
    """A hashable, read-only mapping (static Module config such as ``batch_axis``).

    A plain ``dict`` attribute would become an ``nnx.Dict`` graph node; this one
    stays a static, hashable value, like flax's ``FrozenDict``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | Iterable = ()):
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


def _normalize_axes(axes: tuple[int, ...], ndim: int, where: str) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: axis {a} is out of range for an input of rank {ndim}."
            )
        out.append(a % ndim)
    return tuple(sorted(out))


# -- LinearGeneral -------------------------------------------------------------


class LinearGeneral(Module):
    """A linear map contracting several input axes into several output features.

    The kernel has shape ``batch_sizes + in_features + out_features``. As in flax,
    ``axis`` is sorted before use, so list ``in_features`` in the order the axes
    appear in the input. ``batch_axis`` maps leading input axes (0, 1, ...) to
    their sizes; those axes get one kernel slice each (a batched matmul) and come
    first in the output.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(1, -1), rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape
    ((2, 3, 4, 5), (4, 5))
    >>> layer(jnp.ones((16, 2, 3))).shape
    (16, 4, 5)

    Args:
        in_features: size(s) of the contracted input axes.
        out_features: size(s) of the new output axes (appended last).
        axis: the input axes to contract (default: the last one).
        batch_axis: ``{axis: size}`` for leading axes with their own kernel.
        use_bias: add a bias of shape ``batch_sizes + out_features``.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the parameters.
        kernel_init: initializer, called on the flattened 2-D kernel shape
            ``(prod(batch + in), prod(out))`` so fan-in/fan-out are the true ones.
        bias_init: initializer for the (flattened) bias.
        precision: ``jax.lax.Precision`` of the contraction.
        kernel_metadata: metadata of the kernel Param, e.g.
            ``{"sharding_names": (None, "model")}`` (one name per kernel axis).
        bias_metadata: metadata of the bias Param.
        rngs: the ``params`` stream is drawn for the kernel and bias.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
        batch_axis: Mapping[int, int] = FrozenMapping(),
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        precision: Any = None,
        kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
        rngs: Rngs,
    ):
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.axis = _as_tuple(axis)
        self.batch_axis = FrozenMapping(
            {int(k): int(v) for k, v in dict(batch_axis).items()}
        )
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        if len(self.in_features) != len(self.axis):
            raise ValueError(
                f"LinearGeneral: in_features {self.in_features} and axis "
                f"{self.axis} must have the same length (one size per contracted "
                "axis)."
            )
        batch_dims = sorted(self.batch_axis)
        if batch_dims != list(range(len(batch_dims))):
            raise ValueError(
                f"LinearGeneral: batch_axis keys {tuple(batch_dims)} must be the "
                "consecutive leading axes 0, 1, ..., e.g. `batch_axis={0: 8}`."
            )
        batch_shape = tuple(self.batch_axis[k] for k in batch_dims)
        kernel_shape = batch_shape + self.in_features + self.out_features
        flat = (
            int(np.prod(batch_shape + self.in_features)),
            int(np.prod(self.out_features)),
        )
        kernel = kernel_init(rngs.params(), flat, param_dtype)
        self.kernel = Param(
            _reshape_init(kernel, kernel_shape), **(kernel_metadata or {})
        )
        if use_bias:
            bias_shape = batch_shape + self.out_features
            bias = bias_init(rngs.params(), (int(np.prod(bias_shape)),), param_dtype)
            self.bias = Param(_reshape_init(bias, bias_shape), **(bias_metadata or {}))
        else:
            self.bias = None

    def __call__(self, inputs: jax.Array) -> jax.Array:
        where = "LinearGeneral.__call__"
        shape = _shape(inputs)
        ndim = len(shape)
        axis = _normalize_axes(self.axis, ndim, where)
        batch_axis = tuple(sorted(self.batch_axis))
        got = tuple(shape[a] for a in axis)
        if got != self.in_features:
            raise ValueError(
                f"{where}: expected input axes {axis} to have sizes "
                f"{self.in_features} (in_features), got shape {shape}. Reshape "
                f"the input or build LinearGeneral({got}, {self.out_features}, "
                f"axis={self.axis})."
            )
        batch_sizes = tuple(self.batch_axis[a] for a in batch_axis)
        if tuple(shape[a] for a in batch_axis) != batch_sizes:
            raise ValueError(
                f"{where}: batch_axis {dict(self.batch_axis)} does not match the "
                f"input shape {shape}."
            )
        n_batch = len(batch_axis)
        contract = tuple(range(n_batch, n_batch + len(axis)))
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = jax.lax.dot_general(
            x,
            kernel,
            ((axis, contract), (batch_axis, tuple(range(n_batch)))),
            precision=self.precision,
        )
        if bias is not None:
            # dot_general puts batch axes first, then the free input axes.
            free = tuple(
                shape[a] if a in batch_axis else 1 for a in range(ndim) if a not in axis
            )
            y = y + jnp.reshape(bias, free + self.out_features)
        return y


# -- Einsum --------------------------------------------------------------------


def _parse_einsum(einsum_str: str, where: str) -> tuple[str, str, str, str]:
    s = einsum_str.replace(" ", "")
    if s.count("->") != 1:
        raise ValueError(
            f"{where}: `einsum_str` must be explicit, with exactly one '->' "
            f"(e.g. 'nta,hab->nthb'), got {einsum_str!r}."
        )
    ins, out = s.split("->")
    if ins.count(",") != 1:
        raise ValueError(
            f"{where}: `einsum_str` must have exactly two operands (the input and "
            f"the kernel), so exactly one ',', got {einsum_str!r}."
        )
    lhs, rhs = ins.split(",")
    return s, lhs, rhs, out


def _labels(spec: str, ndim: int) -> list[str]:
    """One label per axis; the axes an ellipsis covers get the label '.'."""
    if "..." not in spec:
        return list(spec)
    left, right = spec.split("...")
    return list(left) + ["."] * (ndim - len(left) - len(right)) + list(right)


class Einsum(Module):
    """``y = einsum(einsum_str, x, kernel) + bias`` with a learned kernel.

    The bias (if ``bias_shape`` is given) is broadcast over the output axes that
    do not come from the kernel.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> layer = nnx.Einsum('nta,hab->nthb', (8, 2, 4), (8, 4), rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape
    ((8, 2, 4), (8, 4))
    >>> layer(jnp.ones((16, 11, 2))).shape
    (16, 11, 8, 4)

    Args:
        einsum_str: a two-operand equation, input first, kernel second.
        kernel_shape: shape of the kernel.
        bias_shape: shape of the bias, or None for no bias.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the parameters.
        precision: ``jax.lax.Precision`` of the contraction.
        kernel_init: initializer for the kernel.
        bias_init: initializer for the bias.
        kernel_metadata: metadata of the kernel Param, e.g.
            ``{"sharding_names": ...}`` (one name per kernel axis).
        bias_metadata: metadata of the bias Param.
        rngs: the ``params`` stream is drawn for the kernel and bias.
    """

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = initializers.default_kernel_init,
        bias_init: Initializer = initializers.default_bias_init,
        kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
        rngs: Rngs,
    ):
        einsum_str, _, rhs, _ = _parse_einsum(einsum_str, "Einsum")
        kernel_shape = _as_tuple(kernel_shape)
        if "..." not in rhs and len(rhs) != len(kernel_shape):
            raise ValueError(
                f"Einsum: the kernel operand {rhs!r} of {einsum_str!r} has "
                f"{len(rhs)} axes but kernel_shape {kernel_shape} has "
                f"{len(kernel_shape)}."
            )
        self.kernel = Param(
            kernel_init(rngs.params(), kernel_shape, param_dtype),
            **(kernel_metadata or {}),
        )
        if bias_shape is not None:
            bias_shape = _as_tuple(bias_shape)
            self.bias = Param(
                bias_init(rngs.params(), bias_shape, param_dtype),
                **(bias_metadata or {}),
            )
        else:
            self.bias = None
        self.einsum_str = einsum_str
        self.kernel_shape = kernel_shape
        self.bias_shape = bias_shape
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, inputs: jax.Array, einsum_str: str | None = None) -> jax.Array:
        where = "Einsum.__call__"
        if einsum_str is None:
            einsum_str = self.einsum_str
        einsum_str, lhs, rhs, out = _parse_einsum(einsum_str, where)
        shape = _shape(inputs)
        if "..." not in lhs and len(lhs) != len(shape):
            raise ValueError(
                f"{where}: the input operand {lhs!r} of {einsum_str!r} has "
                f"{len(lhs)} axes, got input of shape {shape}."
            )
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = jnp.einsum(einsum_str, x, kernel, precision=self.precision)
        if bias is not None:
            rhs_sizes = dict(zip(_labels(rhs, kernel.ndim), kernel.shape))
            rhs_sizes.pop(".", None)
            bshape = tuple(rhs_sizes.get(c, 1) for c in _labels(out, y.ndim))
            if int(np.prod(bshape)) != bias.size:
                raise ValueError(
                    f"{where}: bias of shape {bias.shape} does not fit the kernel "
                    f"axes kept in the output of {einsum_str!r} (shape {bshape})."
                )
            y = y + jnp.reshape(bias, bshape)
        return y


# -- Embed -----------------------------------------------------------------------

default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


class Embed(Module):
    """A lookup table from integers ``[0, num_embeddings)`` to feature vectors.

    ``attend`` is the transpose map (``query @ embedding.T``), for output layers
    that share weights with the input embedding. Indices outside the table give
    NaN (``jnp.take``'s fill mode), as in flax.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> emb = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    >>> emb.embedding.shape, emb(jnp.array([[1, 2, 3]])).shape
    ((10, 4), (1, 3, 4))
    >>> emb.attend(jnp.ones((2, 4))).shape
    (2, 10)

    Args:
        num_embeddings: number of rows (vocabulary size).
        features: size of each embedding vector.
        dtype: dtype of the looked-up vectors (default: the parameter dtype).
        param_dtype: dtype of the table.
        embedding_init: initializer for the ``(num_embeddings, features)`` table.
        embedding_metadata: metadata of the table Param, e.g.
            ``{"sharding_names": ("vocab", None)}``.
        rngs: the ``params`` stream is drawn for the table.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Initializer = default_embed_init,
        embedding_metadata: dict | None = None,
        rngs: Rngs,
    ):
        self.embedding = Param(
            embedding_init(rngs.params(), (num_embeddings, features), param_dtype),
            **(embedding_metadata or {}),
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.param_dtype = param_dtype

    def __call__(self, inputs: jax.Array) -> jax.Array:
        inputs = jnp.asarray(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(
                f"Embed.__call__: input type must be an integer or unsigned integer "
                f"(indices into the table), got {inputs.dtype} of shape "
                f"{inputs.shape}. Cast it: `x.astype(jnp.int32)`; to project "
                "vectors onto the table use `embed.attend(x)`."
            )
        (embedding,) = promote_dtype(
            (self.embedding.value,), dtype=self.dtype, inexact=False
        )
        if self.num_embeddings == 1:
            # One row: broadcast it, NaN for any index but 0 (as jnp.take would).
            row = jnp.reshape(embedding, (1,) * inputs.ndim + (self.features,))
            hit = inputs[..., None] == 0
            return jnp.where(hit, row, jnp.asarray(jnp.nan, embedding.dtype))
        return jnp.take(embedding, inputs, axis=0)

    def attend(self, query: jax.Array) -> jax.Array:
        """``query @ embedding.T``: scores of ``query`` against every row."""
        if _shape(query)[-1:] != (self.features,):
            raise ValueError(
                f"Embed.attend: expected a query with last dimension "
                f"{self.features} (features), got shape {_shape(query)}."
            )
        query, embedding = promote_dtype(
            (query, self.embedding.value), dtype=self.dtype
        )
        return jnp.matmul(query, embedding.T)
