"""Dense layers: ``Linear``, ``LinearGeneral``, ``Einsum`` and ``Embed``.

Design note: kernels are stored ``(in_features, out_features)`` (the transpose of
PyTorch's ``weight``), so a forward pass is ``x @ kernel + bias``. Initializer
functions are used in ``__init__`` and not stored: storing a freshly built closure
(``normal(0.02)``) would make two identical models differ in their GraphDef and
compile twice. Static configuration is stored hashable (tuples, ``FrozenMapping``)
so it can be part of a GraphDef; only ``Param`` values are state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nnxlike._module import Module
from nnxlike._rngs import Rngs
from nnxlike._variables import Param, VariableMetadata
from nnxlike.nn import dtypes, initializers
from nnxlike.nn._checks import check_rngs, check_size, check_sizes
from nnxlike.nn.dtypes import promote_dtype as promote_dtype

Initializer = Any

default_kernel_init = initializers.default_kernel_init
default_bias_init = initializers.default_bias_init
# flax's default for metadata arguments: an empty read-only mapping.
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


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

    Args:
        in_features: size of the input's last axis.
        out_features: size of the output's last axis.
        use_bias: add a bias of shape ``(out_features,)``.
        dtype: computation dtype (default: inferred from input and params).
        param_dtype: dtype of the parameters.
        precision: ``jax.lax.Precision`` of the matmul.
        kernel_init: initializer for the ``(in_features, out_features)`` kernel.
        bias_init: initializer for the bias.
        dot_general: the contraction (default ``jax.lax.dot_general``), e.g. a
            quantized one.
        promote_dtype: ``f((x, kernel, bias), dtype=...) -> tuple`` casting the
            arrays before the contraction.
        preferred_element_type: dtype the contraction accumulates and returns
            in (passed to ``dot_general``).
        rngs: the ``params`` stream is drawn for the kernel and bias.
        kernel_metadata: metadata of the kernel Param (e.g. ``sharding_names``).
        bias_metadata: metadata of the bias Param.
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
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dot_general: Any = lax.dot_general,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        check_size("Linear", "in_features", in_features)
        check_size("Linear", "out_features", out_features)
        check_rngs("Linear", rngs)
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
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        shape = _shape(inputs)
        # The kernel's rows, not in_features: under shard_map a kernel sharded
        # along its input axis holds a slice of them (tensor parallelism).
        rows = _shape(self.kernel.value)[:1]
        if shape[-1:] != rows:
            raise ValueError(
                f"Linear.__call__: expected input with last dimension "
                f"{rows[0] if rows else self.in_features}, got shape {shape}. "
                f"Reshape the input or build Linear({(shape or ('?',))[-1]}, "
                f"{self.out_features})."
            )
        kernel = self.kernel.value
        bias = self.bias.value if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = self.dot_general(
            x,
            kernel,
            (((x.ndim - 1,), (0,)), ((), ())),
            precision=self.precision,
            **_dot_kwargs(out_sharding, self.preferred_element_type),
        )
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


def _dot_kwargs(out_sharding: Any, preferred_element_type: Any) -> dict:
    """Optional keywords of an injected contraction, passed only when set.

    A user's ``dot_general``/``einsum_op`` written before these keywords existed
    keeps working as long as they are not used.
    """
    kwargs = {}
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    if preferred_element_type is not None:
        kwargs["preferred_element_type"] = preferred_element_type
    return kwargs


# -- shared helpers (also used by conv, normalization and lora) ---------------


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
        promote_dtype: ``f((x, kernel, bias), dtype=...) -> tuple`` casting the
            arrays before the contraction.
        dot_general: the contraction (default ``jax.lax.dot_general``).
        dot_general_cls: a class whose instance is the contraction (built per
            call, as in flax); takes precedence over ``dot_general``.
        preferred_element_type: dtype the contraction accumulates and returns
            in (passed to ``dot_general``).
        rngs: the ``params`` stream is drawn for the kernel and bias.
        kernel_metadata: metadata of the kernel Param, e.g.
            ``{"sharding_names": (None, "model")}`` (one name per kernel axis).
        bias_metadata: metadata of the bias Param.
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
        promote_dtype: Any = dtypes.promote_dtype,
        dot_general: Any = None,
        dot_general_cls: Any = None,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        check_sizes("LinearGeneral", "in_features", in_features)
        check_sizes("LinearGeneral", "out_features", out_features)
        check_rngs("LinearGeneral", rngs)
        self.promote_dtype = promote_dtype
        self.dot_general = dot_general
        self.dot_general_cls = dot_general_cls
        self.preferred_element_type = preferred_element_type
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

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
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
        x, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        if self.dot_general_cls is not None:
            dot_general = self.dot_general_cls()
        elif self.dot_general is not None:
            dot_general = self.dot_general
        else:
            dot_general = lax.dot_general
        y = dot_general(
            x,
            kernel,
            ((axis, contract), (batch_axis, tuple(range(n_batch)))),
            precision=self.precision,
            **_dot_kwargs(out_sharding, self.preferred_element_type),
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
    """One label per axis.

    The axes an ellipsis covers are labelled by their distance from the ellipsis'
    right end (``'.1'``, ``'.0'``), since broadcasting aligns them on the right:
    the same label then names the same axis in an operand and in the output.
    """
    if "..." not in spec:
        return list(spec)
    left, right = spec.split("...")
    width = ndim - len(left) - len(right)
    return list(left) + [f".{width - 1 - i}" for i in range(width)] + list(right)


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
        promote_dtype: ``f((x, kernel, bias), dtype=...) -> tuple`` casting the
            arrays before the contraction.
        einsum_op: the contraction (default ``jnp.einsum``), same signature.
        preferred_element_type: dtype the contraction accumulates and returns
            in (passed to ``einsum_op``).
        rngs: the ``params`` stream is drawn for the kernel and bias.
        kernel_metadata: metadata of the kernel Param, e.g.
            ``{"sharding_names": ...}`` (one name per kernel axis).
        bias_metadata: metadata of the bias Param.
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
        promote_dtype: Any = dtypes.promote_dtype,
        einsum_op: Any = jnp.einsum,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        einsum_str, _, rhs, _ = _parse_einsum(einsum_str, "Einsum")
        check_sizes("Einsum", "kernel_shape", kernel_shape)
        if bias_shape is not None:
            check_sizes("Einsum", "bias_shape", bias_shape)
        check_rngs("Einsum", rngs)
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
        self.promote_dtype = promote_dtype
        self.einsum_op = einsum_op
        self.preferred_element_type = preferred_element_type

    def __call__(
        self,
        inputs: jax.Array,
        einsum_str: str | None = None,
        out_sharding: Any = None,
    ) -> jax.Array:
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
        x, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = self.einsum_op(
            einsum_str,
            x,
            kernel,
            precision=self.precision,
            **_dot_kwargs(out_sharding, self.preferred_element_type),
        )
        if bias is not None:
            rhs_sizes = dict(zip(_labels(rhs, kernel.ndim), kernel.shape))
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
    that share weights with the input embedding.

    Indices outside the table behave as in flax (``jnp.take``): a negative index
    ``-k`` with ``k <= num_embeddings`` counts from the end (``-1`` is the last
    row), any other out-of-range index gives a row of NaN; a one-row table is
    broadcast whatever the index. A padding id of ``-1`` therefore silently reads
    the last row. ``check_indices=True`` turns every index outside
    ``[0, num_embeddings)`` into an ``IndexError`` (eagerly, or when the compiled
    function runs under ``nnx.jit``, through a host callback).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> emb = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    >>> emb.embedding.shape, emb(jnp.array([[1, 2, 3]])).shape
    ((10, 4), (1, 3, 4))
    >>> emb.attend(jnp.ones((2, 4))).shape
    (2, 10)
    >>> bool(jnp.isnan(emb(jnp.array([10]))).all())  # out of range: NaN
    True
    >>> strict = nnx.Embed(10, 4, check_indices=True, rngs=nnx.Rngs(0))
    >>> strict(jnp.array([3, 10]))
    Traceback (most recent call last):
    ...
    IndexError: Embed.__call__: index 10 is outside the table [0, 10) ...

    Args:
        num_embeddings: number of rows (vocabulary size).
        features: size of each embedding vector.
        dtype: dtype of the looked-up vectors (default: the table's dtype).
        param_dtype: dtype of the table.
        embedding_init: initializer for the ``(num_embeddings, features)`` table.
        promote_dtype: ``f((embedding,), dtype=..., inexact=False) -> tuple`` in
            ``__call__`` and ``f((query, embedding), dtype=...)`` in ``attend``.
        rngs: the ``params`` stream is drawn for the table.
        embedding_metadata: metadata of the table Param, e.g.
            ``{"sharding_names": ("vocab", None)}``.
        check_indices: raise ``IndexError`` for an index outside
            ``[0, num_embeddings)`` instead of flax's NaN / wrap-around.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Initializer = default_embed_init,
        promote_dtype: Any = dtypes.promote_dtype,
        rngs: Rngs,
        embedding_metadata: Mapping[str, Any] = _NO_METADATA,
        check_indices: bool = False,
    ):
        check_size("Embed", "num_embeddings", num_embeddings)
        check_size("Embed", "features", features)
        check_rngs("Embed", rngs)
        self.embedding = Param(
            embedding_init(rngs.params(), (num_embeddings, features), param_dtype),
            **(embedding_metadata or {}),
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype or self.embedding.dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        self.check_indices = bool(check_indices)

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        inputs = jnp.asarray(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(
                f"Embed.__call__: input type must be an integer or unsigned integer "
                f"(indices into the table), got {inputs.dtype} of shape "
                f"{inputs.shape}. Cast it: `x.astype(jnp.int32)`; to project "
                "vectors onto the table use `embed.attend(x)`."
            )
        if self.check_indices:
            _check_indices(inputs, self.num_embeddings)
        (embedding,) = self.promote_dtype(
            (self.embedding.value,), dtype=self.dtype, inexact=False
        )
        if self.num_embeddings == 1:
            return jnp.broadcast_to(embedding, inputs.shape + (self.features,))
        if out_sharding is not None:
            take = jax.sharding.auto_axes(
                lambda e, i: jnp.take(e, i, axis=0), out_sharding=out_sharding
            )
            return take(embedding, inputs)
        return jnp.take(embedding, inputs, axis=0)

    def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
        """``query @ embedding.T``: scores of ``query`` against every row.

        >>> import jax.numpy as jnp
        >>> import nnxlike as nnx
        >>> nnx.Embed(5, 3, rngs=nnx.Rngs(0)).attend(jnp.ones((2, 3))).shape
        (2, 5)
        """
        if _shape(query)[-1:] != (self.features,):
            raise ValueError(
                f"Embed.attend: expected a query with last dimension "
                f"{self.features} (features), got shape {_shape(query)}."
            )
        query, embedding = self.promote_dtype(
            (query, self.embedding.value), dtype=self.dtype
        )
        if out_sharding is not None:
            return jnp.dot(query, embedding.T, out_sharding=out_sharding)
        return jnp.dot(query, embedding.T)


def _index_error(bad: Any, n: int) -> IndexError:
    return IndexError(
        f"Embed.__call__: index {int(bad)} is outside the table [0, {n}) "
        f"(num_embeddings={n}). Without check_indices it would read "
        + ("a row from the end" if -n <= int(bad) < 0 else "a row of NaN")
        + "; map padding or unknown tokens to a valid id (e.g. 0) or build "
        f"Embed({int(bad) + 1 if int(bad) >= n else n}, ...) for a larger vocabulary."
    )


def _raise_on_bad_index(bad: Any, found: Any, *, n: int) -> None:
    if bool(found):
        raise _index_error(bad, n)


def _check_indices(inputs: jax.Array, n: int) -> None:
    """Raise for any index outside ``[0, n)``: now if concrete, else at run time."""
    if inputs.size == 0:
        return
    outside = (inputs < 0) | (inputs >= n)
    if not isinstance(inputs, jax.core.Tracer):
        if bool(outside.any()):
            raise _index_error(inputs[outside][0], n)
        return
    first = jnp.reshape(inputs, (-1,))[jnp.argmax(jnp.reshape(outside, (-1,)))]
    jax.debug.callback(
        functools.partial(_raise_on_bad_index, n=n), first, outside.any()
    )
