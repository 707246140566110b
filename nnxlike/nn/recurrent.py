"""Recurrent layers: the cells, ``RNN`` (a cell over time) and ``Bidirectional``.

Design note: a cell is a Module mapping ``(carry, x_t) -> (carry, y_t)`` for one time
step, with its parameters laid out exactly as flax.nnx lays them out (same attribute
names and kernel shapes), so parameter paths and checkpoints carry over. ``RNN`` runs a
cell over time with a single ``jax.lax.scan``. To keep writes, the loop
splits the cell first: the Params are closed over (read-only inside the loop), every
other Variable (RNG counters, caches) rides in the scan carry and is written back after
the loop, and the body rebuilds the cell from its GraphDef (traced once, not per step).
The loop is a module-level ``jax.jit`` keyed on the GraphDef, so eager calls reuse
one compilation per cell structure and shapes (under an outer jit it is inlined).
With ``seq_lengths`` the loop is masked: past a sequence's end the carry is frozen and
the output is zero, so outputs at valid positions and the final carry equal flax's
(which runs the cell over the padding and picks the last valid carry). Deliberately
not done: cells that change their structure inside the loop (``sow``), which raise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nnxlike import _errors
from nnxlike._filters import All, to_predicate
from nnxlike._graph import iter_graph, merge, split, update
from nnxlike._module import Module
from nnxlike._rngs import Rngs, RngStream
from nnxlike._variables import Param, RngState
from nnxlike.nn import initializers
from nnxlike.nn.activations import sigmoid, tanh
from nnxlike.nn.linear import Linear

Array = jax.Array
Carry = Any
Initializer = Any

default_kernel_init = initializers.lecun_normal()


def modified_orthogonal(key: Array, shape: Any, dtype: Any = jnp.float32) -> Array:
    """``orthogonal()`` computed in float32 and cast, so half precision works.

    (The QR decomposition behind ``orthogonal`` has no float16/bfloat16 kernel.)
    In float32 the values equal ``initializers.orthogonal()``'s for the same key.

    >>> import jax, jax.numpy as jnp
    >>> modified_orthogonal(jax.random.key(0), (4, 4), jnp.bfloat16).dtype
    dtype(bfloat16)
    """
    return initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


default_recurrent_kernel_init = modified_orthogonal
default_bias_init = initializers.zeros

# Carry initializers that ignore their key: usable with no random stream at hand.
_KEYLESS_INITS = (initializers.zeros, initializers.ones)


class RNNCellBase(Module):
    """Base class of recurrent cells: one time step ``(carry, x) -> (carry, y)``."""

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        raise NotImplementedError

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> Carry:
        raise NotImplementedError

    @property
    def num_feature_axes(self) -> int:
        """How many trailing axes of an input step are features (1 for these cells)."""
        return 1

    # -- helpers shared by the cells ------------------------------------------
    def _init_cell_common(
        self,
        in_features: int,
        hidden_features: int,
        dtype: Any,
        param_dtype: Any,
        carry_init: Initializer | None,
        keep_rngs: bool,
        rngs: Rngs,
    ) -> None:
        name = type(self).__name__
        for arg, value in (
            ("in_features", in_features),
            ("hidden_features", hidden_features),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"{name}: {arg} must be a positive int, got {value!r}. "
                    f"Usage: `nnx.{name}(in_features, hidden_features, rngs=rngs)`."
                )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        # A user-given carry_init is static: a fresh closure per instance gives each
        # instance its own GraphDef (prefer initialize_carry(..., carry_init=...)).
        self.carry_init = carry_init
        # Tagged "carry" (even when drawn from the default stream) so that
        # `nnx.reseed(model, carry=...)` finds it.
        self.rngs = RngStream(rngs["carry"](), tag="carry") if keep_rngs else None

    def _carry_arrays(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None,
        carry_init: Initializer | None,
        count: int,
    ) -> list[Array]:
        """``count`` arrays of shape ``batch_dims + (hidden_features,)``."""
        name = type(self).__name__
        input_shape = tuple(input_shape)
        if len(input_shape) < 1:
            raise ValueError(
                f"{name}.initialize_carry: input_shape must be (*batch, features), "
                f"got {input_shape}. Pass the shape of one time step of the input, "
                "e.g. `cell.initialize_carry(x[:, 0].shape)`."
            )
        init = carry_init or self.carry_init or initializers.zeros
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, Rngs):
            rngs = rngs["carry"]
        if rngs is None and init not in _KEYLESS_INITS:
            raise ValueError(
                f"{name}.initialize_carry: carry_init {init!r} needs random keys but "
                "no stream was given. Pass one: "
                "`cell.initialize_carry(shape, nnx.Rngs(carry=0))`."
            )
        shape = input_shape[:-1] + (self.hidden_features,)
        out = []
        for _ in range(count):
            if isinstance(rngs, RngStream):
                key = rngs()
            elif rngs is None:
                key = None
            else:  # a raw key
                rngs, key = jax.random.split(rngs)
            out.append(init(key, shape, self.param_dtype))
        return out

    def _check_step(self, inputs: Array, hidden: Array) -> None:
        name = type(self).__name__
        if jnp.shape(inputs)[-1:] != (self.in_features,):
            raise ValueError(
                f"{name}.__call__: expected inputs with last dimension "
                f"{self.in_features} (in_features), got shape "
                f"{tuple(jnp.shape(inputs))}. Feed one time step `x[:, t]` of shape "
                f"(*batch, {self.in_features}), or build the cell with "
                f"in_features={jnp.shape(inputs)[-1] if jnp.ndim(inputs) else '?'}."
            )
        if jnp.shape(hidden)[-1:] != (self.hidden_features,):
            raise ValueError(
                f"{name}.__call__: expected a carry with last dimension "
                f"{self.hidden_features} (hidden_features), got shape "
                f"{tuple(jnp.shape(hidden))}. Build the carry with "
                "`cell.initialize_carry(x[:, 0].shape)`."
            )


class SimpleCell(RNNCellBase):
    r"""Elman cell: ``h' = activation(x @ W_i + b_i + h @ W_h)`` (``+ h`` if residual).

    Parameters: ``dense_i`` (kernel ``(in, hidden)``, bias) and ``dense_h`` (kernel
    ``(hidden, hidden)``, no bias: the two are summed, so one bias suffices). The carry
    is ``h`` and the output is ``h'``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> cell = nnx.SimpleCell(3, 4, rngs=nnx.Rngs(0))
    >>> h = cell.initialize_carry((2, 3))
    >>> h, y = cell(h, jnp.ones((2, 3)))
    >>> h.shape, y.shape, cell.dense_h.kernel.shape
    ((2, 4), (2, 4), (4, 4))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        residual: bool = False,
        activation_fn: Callable[..., Any] = tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: dict | None = None,
        recurrent_kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
    ):
        self._init_cell_common(
            in_features,
            hidden_features,
            dtype,
            param_dtype,
            carry_init,
            keep_rngs,
            rngs,
        )
        self.residual = residual
        self.activation_fn = activation_fn
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Input and recurrent terms are summed, so one bias (on the input side).
        self.dense_h = Linear(
            hidden_features,
            hidden_features,
            use_bias=False,
            kernel_init=recurrent_kernel_init,
            kernel_metadata=recurrent_kernel_metadata,
            **common,
        )
        self.dense_i = Linear(
            in_features,
            hidden_features,
            kernel_init=kernel_init,
            bias_init=bias_init,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
            **common,
        )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        self._check_step(inputs, carry)
        new = self.dense_i(inputs) + self.dense_h(carry)
        if self.residual:
            new = new + carry
        new = self.activation_fn(new)
        return new, new

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> Array:
        """Zeros (or ``carry_init``) of shape ``input_shape[:-1] + (hidden,)``."""
        return self._carry_arrays(input_shape, rngs, carry_init, 1)[0]


class LSTMCell(RNNCellBase):
    r"""Long short-term memory cell, one Linear per gate (flax.nnx's layout).

    .. math::
        i = \sigma(x W_{ii} + h W_{hi} + b_{hi}) \\
        f = \sigma(x W_{if} + h W_{hf} + b_{hf}) \\
        g = \tanh(x W_{ig} + h W_{hg} + b_{hg}) \\
        o = \sigma(x W_{io} + h W_{ho} + b_{ho}) \\
        c' = f c + i g, \qquad h' = o \tanh(c')

    Parameters: input Linears ``ii, if_, ig, io`` (kernel ``(in, hidden)``, no bias)
    and recurrent Linears ``hi, hf, hg, ho`` (kernel ``(hidden, hidden)`` + bias).
    The carry is ``(c, h)`` and the output is ``h'``. PyTorch's ``nn.LSTM`` has two
    biases per gate; their sum is our single bias (see the tests).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
    >>> (c, h), y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> c.shape, h.shape, y.shape, cell.hi.bias.shape
    ((2, 4), (2, 4), (2, 4), (4,))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable[..., Any] = sigmoid,
        activation_fn: Callable[..., Any] = tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: dict | None = None,
        recurrent_kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
    ):
        self._init_cell_common(
            in_features,
            hidden_features,
            dtype,
            param_dtype,
            carry_init,
            keep_rngs,
            rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn

        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        # Input and recurrent terms are summed, so one bias (on the recurrent side).
        def dense_i() -> Linear:
            return Linear(
                in_features,
                hidden_features,
                use_bias=False,
                kernel_init=kernel_init,
                kernel_metadata=kernel_metadata,
                **common,
            )

        def dense_h() -> Linear:
            return Linear(
                hidden_features,
                hidden_features,
                kernel_init=recurrent_kernel_init,
                bias_init=bias_init,
                kernel_metadata=recurrent_kernel_metadata,
                bias_metadata=bias_metadata,
                **common,
            )

        self.ii, self.if_, self.ig, self.io = dense_i(), dense_i(), dense_i(), dense_i()
        self.hi, self.hf, self.hg, self.ho = dense_h(), dense_h(), dense_h(), dense_h()

    def __call__(
        self, carry: tuple[Array, Array], inputs: Array
    ) -> tuple[tuple[Array, Array], Array]:
        c, h = carry
        self._check_step(inputs, h)
        i = self.gate_fn(self.ii(inputs) + self.hi(h))
        f = self.gate_fn(self.if_(inputs) + self.hf(h))
        g = self.activation_fn(self.ig(inputs) + self.hg(h))
        o = self.gate_fn(self.io(inputs) + self.ho(h))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> tuple[Array, Array]:
        """``(c, h)``, each zeros (or ``carry_init``) of shape ``(*batch, hidden)``."""
        c, h = self._carry_arrays(input_shape, rngs, carry_init, 2)
        return c, h


class OptimizedLSTMCell(RNNCellBase):
    r"""``LSTMCell``'s math with the four gates fused into one matmul per operand.

    Parameters: ``dense_i`` (kernel ``(in, 4*hidden)``, no bias) and ``dense_h``
    (kernel ``(hidden, 4*hidden)`` + bias), gate blocks in the order ``i, f, g, o``
    along the last axis, so ``dense_i.kernel[:, :H]`` is ``LSTMCell``'s
    ``ii.kernel``. Usually faster than ``LSTMCell`` for hidden sizes up to ~2048.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> cell = nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))
    >>> (c, h), y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> y.shape, cell.dense_i.kernel.shape, cell.dense_h.bias.shape
    ((2, 4), (3, 16), (16,))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable[..., Any] = sigmoid,
        activation_fn: Callable[..., Any] = tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: dict | None = None,
        recurrent_kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
    ):
        self._init_cell_common(
            in_features,
            hidden_features,
            dtype,
            param_dtype,
            carry_init,
            keep_rngs,
            rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense_i = Linear(
            in_features,
            4 * hidden_features,
            use_bias=False,
            kernel_init=kernel_init,
            kernel_metadata=kernel_metadata,
            **common,
        )
        self.dense_h = Linear(
            hidden_features,
            4 * hidden_features,
            kernel_init=recurrent_kernel_init,
            bias_init=bias_init,
            kernel_metadata=recurrent_kernel_metadata,
            bias_metadata=bias_metadata,
            **common,
        )

    def __call__(
        self, carry: tuple[Array, Array], inputs: Array
    ) -> tuple[tuple[Array, Array], Array]:
        c, h = carry
        self._check_step(inputs, h)
        y = self.dense_i(inputs) + self.dense_h(h)
        i, f, g, o = jnp.split(y, 4, axis=-1)
        i, f, o = self.gate_fn(i), self.gate_fn(f), self.gate_fn(o)
        g = self.activation_fn(g)
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> tuple[Array, Array]:
        """``(c, h)``, each zeros (or ``carry_init``) of shape ``(*batch, hidden)``."""
        c, h = self._carry_arrays(input_shape, rngs, carry_init, 2)
        return c, h


class GRUCell(RNNCellBase):
    r"""Gated recurrent unit, flax.nnx's fused layout.

    .. math::
        r = \sigma(x W_{ir} + b_{ir} + h W_{hr}) \\
        z = \sigma(x W_{iz} + b_{iz} + h W_{hz}) \\
        n = \tanh(x W_{in} + b_{in} + r \odot (h W_{hn})) \\
        h' = (1 - z) n + z h

    Parameters: ``dense_i`` (kernel ``(in, 3*hidden)`` + bias) and ``dense_h``
    (kernel ``(hidden, 3*hidden)``, no bias), gate blocks ordered ``r, z, n``. As in
    flax.nnx the recurrent side has no bias, so PyTorch's ``b_hn`` (inside the reset
    product) has no counterpart: a ``torch.nn.GRU`` converts exactly only when its
    ``b_hn`` is zero; ``b_hr``/``b_hz`` fold into ``dense_i.bias`` (see the tests).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> cell = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
    >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> h.shape, cell.dense_i.kernel.shape, cell.dense_h.kernel.shape
    ((2, 4), (3, 12), (4, 12))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable[..., Any] = sigmoid,
        activation_fn: Callable[..., Any] = tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Initializer | None = None,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: dict | None = None,
        recurrent_kernel_metadata: dict | None = None,
        bias_metadata: dict | None = None,
    ):
        self._init_cell_common(
            in_features,
            hidden_features,
            dtype,
            param_dtype,
            carry_init,
            keep_rngs,
            rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense_i = Linear(
            in_features,
            3 * hidden_features,
            kernel_init=kernel_init,
            bias_init=bias_init,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
            **common,
        )
        self.dense_h = Linear(
            hidden_features,
            3 * hidden_features,
            use_bias=False,
            kernel_init=recurrent_kernel_init,
            kernel_metadata=recurrent_kernel_metadata,
            **common,
        )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        h = carry
        self._check_step(inputs, h)
        xr, xz, xn = jnp.split(self.dense_i(inputs), 3, axis=-1)
        hr, hz, hn = jnp.split(self.dense_h(h), 3, axis=-1)
        r = self.gate_fn(xr + hr)
        z = self.gate_fn(xz + hz)
        n = self.activation_fn(xn + r * hn)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> Array:
        """Zeros (or ``carry_init``) of shape ``input_shape[:-1] + (hidden,)``."""
        return self._carry_arrays(input_shape, rngs, carry_init, 1)[0]


# -- running a cell over time ---------------------------------------------------


def flip_sequences(
    inputs: Array,
    seq_lengths: Array | None,
    num_batch_dims: int,
    time_major: bool,
) -> Array:
    """Reverse each sequence along time, keeping padding at the end.

    Sequence ``b`` of length ``L`` has its first ``L`` steps reversed; its padding
    (steps ``L..T-1``) stays after them (itself reversed). Without ``seq_lengths``
    this is a plain flip of the time axis.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1, 0, 0], [2, 3, 0], [4, 5, 6]])
    >>> flip_sequences(x, jnp.array([1, 2, 3]), num_batch_dims=1, time_major=False)
    Array([[1, 0, 0],
           [3, 2, 0],
           [6, 5, 4]], dtype=int32)
    """
    time_axis = 0 if time_major else num_batch_dims
    steps = inputs.shape[time_axis]
    if seq_lengths is None:
        return jnp.flip(inputs, axis=time_axis)
    lengths = jnp.expand_dims(jnp.asarray(seq_lengths), axis=time_axis)
    rev = jnp.arange(steps - 1, -1, -1)
    rev_shape = [1] * (num_batch_dims + 1)
    rev_shape[time_axis] = steps
    # Position t of a length-L sequence reads step (L - 1 - t) mod T: the valid part
    # reversed, then the padding (reversed) after it.
    idx = (jnp.reshape(rev, rev_shape) + lengths) % steps
    idx = jnp.reshape(idx, idx.shape + (1,) * (inputs.ndim - idx.ndim))
    return jnp.take_along_axis(inputs, idx, axis=time_axis)


def _broadcast_mask(valid: Array, like: Array) -> Array:
    extra = jnp.ndim(like) - valid.ndim
    if extra < 0:
        raise ValueError(
            f"RNN: seq_lengths has shape {valid.shape} (the batch shape) but a carry "
            f"or output of the cell has shape {jnp.shape(like)}, with fewer axes. "
            "Give every carry and output the input's batch axes."
        )
    return jnp.reshape(valid, valid.shape + (1,) * extra)


def _describe(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(jnp.shape(x)), str(jnp.result_type(x))), tree)


def _scan_cell(
    cell: Module,
    carry: Carry,
    xs: Array,
    seq_lengths: Array | None,
    unroll: int,
    broadcast_rngs: Any = None,
) -> tuple[Carry, Any]:
    """Run ``cell`` over the leading (time) axis of ``xs``; write back its state."""
    # Split: Params are closed over, all other state travels in the scan carry.
    # A broadcast RNG stream is forked once (its count advances by one, as flax's
    # split_rngs(splits=1) does): inside, every step restarts from the forked key
    # at count 0, so each step draws the same keys; it is restored afterwards.
    bcast_filter = None
    if broadcast_rngs is not None:
        bcast_filter = All(RngState, _StreamFilter(broadcast_rngs))
    saved = _fork_broadcast_streams(cell, bcast_filter)
    try:
        if bcast_filter is None:
            graphdef, params, rest = split(cell, Param, ...)
            bcast = None
        else:
            graphdef, params, bcast, rest = split(cell, Param, bcast_filter, ...)
        _, rest, carry, ys = _scan_pure(
            graphdef, params, bcast, rest, carry, xs, seq_lengths, unroll, bcast_filter
        )
    finally:
        for stream, key, count in saved:
            stream.key.value, stream.count.value = key, count
    # Write back: RNG counters and other non-Param state advanced inside the loop.
    if len(rest):
        update(cell, rest)
    return carry, ys


class _StreamFilter:
    """``broadcast_rngs`` as a filter: a name matches a stream's tag (flax reads a
    string filter as a tag) or a path entry; anything else is an ordinary filter.
    Hashable, since it is part of the compiled loop's static key."""

    def __init__(self, spec: Any):
        self.spec = tuple(spec) if isinstance(spec, list) else spec
        names = self.spec if isinstance(self.spec, tuple) else (self.spec,)
        self.names = tuple(n for n in names if isinstance(n, str))
        others = tuple(n for n in names if not isinstance(n, str))
        self.other = to_predicate(others) if others else None

    def __call__(self, path: tuple, value: Any) -> bool:
        if getattr(value, "tag", None) in self.names or any(
            n in path for n in self.names
        ):
            return True
        return self.other is not None and bool(self.other(path, value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StreamFilter) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(("_StreamFilter", self.spec))


def _fork_broadcast_streams(cell: Module, bcast_filter: Any) -> list:
    """Point each stream matching ``bcast_filter`` at a forked key (count 0).

    Returns ``(stream, key, count)`` to restore: the original key and the count
    advanced by the one draw the fork took.
    """
    if bcast_filter is None:
        return []
    predicate = to_predicate(bcast_filter)
    saved = []
    for path, node in iter_graph(cell):
        if isinstance(node, RngStream) and predicate((*path, "key"), node.key):
            key = node.key.value
            forked = node()
            saved.append((node, key, node.count.value))
            node.key.value = forked
            node.count.value = jnp.zeros_like(node.count.value)
    return saved


# Compiled once per (cell structure, shapes): an eager RNN call would otherwise
# re-trace and re-compile its scan every time. Under an outer jit it is inlined.
@partial(jax.jit, static_argnums=(0, 7, 8))
def _scan_pure(graphdef, params, bcast, rest, carry, xs, seq_lengths, unroll, bfilter):
    cell_name = graphdef.root_type.__name__
    in_struct = _describe(carry)

    def body(loop_carry, step):
        _, rest_state, carry = loop_carry
        t, x = step
        if bfilter is None:
            live = merge(graphdef, params, rest_state, copy=True)
        else:
            live = merge(graphdef, params, bcast, rest_state, copy=True)
        new_carry, y = live(carry, x)
        if _describe(new_carry) != in_struct:
            raise ValueError(
                f"RNN: {cell_name} returned a carry with (shape, dtype) "
                f"{_describe(new_carry)} but was given {in_struct}; a scan needs the "
                "same carry every step. Build initial_carry with "
                "`cell.initialize_carry(x[:, 0].shape)` (same batch shape, dtype)."
            )
        if bfilter is None:
            new_graphdef, _, new_rest = split(live, Param, ...)
            new_bcast = None
        else:
            new_graphdef, _, new_bcast, new_rest = split(live, Param, bfilter, ...)
        if new_graphdef != graphdef:
            raise _errors.StructureError(
                f"RNN: {cell_name}.__call__ changed the cell's structure (added or "
                "removed Variables or attributes, e.g. with `sow`) inside the time "
                "loop, which needs the same structure every step. Return per-step "
                "values as part of the cell's output instead."
            )
        if seq_lengths is not None:
            valid = t < seq_lengths
            new_carry = jax.tree.map(
                lambda new, old: jnp.where(_broadcast_mask(valid, new), new, old),
                new_carry,
                carry,
            )
            y = jax.tree.map(
                lambda v: jnp.where(_broadcast_mask(valid, v), v, jnp.zeros_like(v)), y
            )
        return (new_bcast, new_rest, new_carry), y

    steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
    (bcast, rest, carry), ys = jax.lax.scan(
        body, (bcast, rest, carry), (steps, xs), unroll=unroll
    )
    return bcast, rest, carry, ys


class RNN(Module):
    """Run a cell over the time axis of a sequence with ``jax.lax.scan``.

    Inputs are ``[batch..., time, features]`` (``[time, batch..., features]`` with
    ``time_major=True``). With ``seq_lengths`` (shape ``[batch...]``), steps past a
    sequence's length leave the carry unchanged and output zeros, so the returned
    carry is the carry after each sequence's last valid step. With ``reverse=True``
    each sequence is read backwards (padding stays at the end, see
    ``flip_sequences``); outputs come back in reversed order unless ``keep_order``.
    ``broadcast_rngs`` (a filter, e.g. the stream name ``'recurrent_dropout'``)
    names RNG streams that give the same keys at every time step (one dropout mask
    for the whole sequence, "variational" recurrent dropout); they advance once per
    call. ``state_axes`` (flax's per-Variable scan axes) is not supported.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)))
    >>> rnn(jnp.ones((2, 5, 3))).shape
    (2, 5, 4)
    >>> (c, h), y = rnn(jnp.ones((2, 5, 3)), return_carry=True,
    ...                 seq_lengths=jnp.array([5, 2]))
    >>> h.shape, y[1, 2:].tolist() == [[0.0] * 4] * 3
    ((2, 4), True)
    """

    def __init__(
        self,
        cell: Module,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        rngs: Rngs | RngStream | bool | None = None,
        state_axes: Any = None,
        broadcast_rngs: Any = None,
    ):
        if state_axes is not None:
            raise NotImplementedError(
                "RNN: state_axes is not supported; every non-Param Variable of the "
                "cell is carried through the time loop (flax's default), and RNG "
                "streams to share across steps go in broadcast_rngs."
            )
        if not isinstance(cell, Module) or not hasattr(cell, "initialize_carry"):
            raise TypeError(
                f"RNN: cell must be an nnx cell Module with __call__(carry, x) and "
                f"initialize_carry(input_shape), got {type(cell).__name__}. Usage: "
                "`nnx.RNN(nnx.LSTMCell(in_features, hidden_features, rngs=rngs))`."
            )
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.state_axes = None
        self.broadcast_rngs = broadcast_rngs
        if isinstance(rngs, Rngs):
            rngs = RngStream(rngs["carry"](), tag="carry")
        elif rngs is None or isinstance(rngs, bool):
            rngs = None  # carries default to zeros, which need no key
        elif not isinstance(rngs, RngStream):
            raise TypeError(
                f"RNN: rngs must be an nnx.Rngs, an RngStream, a bool or None, got "
                f"{type(rngs).__name__}."
            )
        self.rngs = rngs

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Rngs | RngStream | None = None,
    ) -> Any:
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        inputs = jnp.asarray(inputs)
        n_feat = getattr(self.cell, "num_feature_axes", 1)
        if inputs.ndim < n_feat + 1:
            layout = (
                "[time, batch..., features]"
                if time_major
                else "[batch..., time, features]"
            )
            raise ValueError(
                f"RNN.__call__: expected inputs of shape {layout}, got shape "
                f"{inputs.shape} (no time axis). Add one: `x[..., None, :]` for a "
                "single step, or call the cell directly."
            )
        time_axis = 0 if time_major else inputs.ndim - n_feat - 1
        batch_shape = (
            inputs.shape[1:-n_feat] if time_major else inputs.shape[:time_axis]
        )
        if seq_lengths is not None:
            seq_lengths = jnp.asarray(seq_lengths)
            if seq_lengths.shape != batch_shape:
                raise ValueError(
                    f"RNN.__call__: seq_lengths must have the batch shape "
                    f"{batch_shape} of inputs {inputs.shape}, got shape "
                    f"{seq_lengths.shape}. Give one length per sequence."
                )

        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, len(batch_shape), time_major)

        if initial_carry is None:
            step_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
            if rngs is None:
                rngs = self.rngs
            if rngs is None:
                initial_carry = self.cell.initialize_carry(step_shape)
            else:
                initial_carry = self.cell.initialize_carry(step_shape, rngs)

        xs = jnp.moveaxis(inputs, time_axis, 0)
        carry, ys = _scan_cell(
            self.cell, initial_carry, xs, seq_lengths, self.unroll, self.broadcast_rngs
        )
        outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)

        if reverse and keep_order:
            outputs = jax.tree.map(
                lambda y: flip_sequences(y, seq_lengths, len(batch_shape), time_major),
                outputs,
            )
        return (carry, outputs) if return_carry else outputs


def _concatenate(a: Array, b: Array) -> Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Run one RNN forwards and one backwards and merge their outputs.

    The backward RNN reads each sequence in reverse (respecting ``seq_lengths``) and
    its outputs are put back in time order, so position ``t`` of the result merges
    (by default concatenates) what both directions computed at ``t``. With
    ``return_carry`` the carry is ``(forward_carry, backward_carry)``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> bi = nnx.Bidirectional(nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))),
    ...                        nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(1))))
    >>> bi(jnp.ones((2, 5, 3))).shape
    (2, 5, 8)
    """

    def __init__(
        self,
        forward_rnn: Module,
        backward_rnn: Module,
        *,
        merge_fn: Callable[[Array, Array], Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
        rngs: Rngs | RngStream | bool | None = None,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry
        if isinstance(rngs, Rngs):
            rngs = RngStream(rngs["carry"](), tag="carry")
        elif rngs is None or isinstance(rngs, bool):
            rngs = None
        self.rngs = rngs

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: tuple[Carry, Carry] | None = None,
        rngs: Rngs | RngStream | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,  # accepted for flax compatibility; unused
        keep_order: bool | None = None,  # accepted for flax compatibility; unused
    ) -> Any:
        time_major = self.time_major if time_major is None else time_major
        return_carry = self.return_carry if return_carry is None else return_carry
        if rngs is None:
            rngs = self.rngs
        init_fwd, init_bwd = (None, None) if initial_carry is None else initial_carry
        carry_fwd, out_fwd = self.forward_rnn(
            inputs,
            initial_carry=init_fwd,
            rngs=rngs,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=False,
        )
        carry_bwd, out_bwd = self.backward_rnn(
            inputs,
            initial_carry=init_bwd,
            rngs=rngs,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=True,
            keep_order=True,
        )
        outputs = jax.tree.map(self.merge_fn, out_fwd, out_bwd)
        if return_carry:
            return (carry_fwd, carry_bwd), outputs
        return outputs
