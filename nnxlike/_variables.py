"""Variables: the mutable boxes that hold every array of a model.

Design note: a ``Variable`` is the unit of state. Modules hold Variables; ``split``
turns each distinct Variable into one ``VariableState`` leaf of a ``State`` and
``merge`` turns it back. The kind of state is the Python type (``Param``,
``BatchStat``, ...), so filters are ``isinstance`` checks and users make new kinds
by subclassing. Invariants:

- identity equality and hashing (two Variables are never "equal" by value);
- a Variable remembers the JAX trace it was created in and refuses writes from any
  other trace (the closure trap), with an error that says to pass the object in;
- a Variable is *not* a pytree: handing one to plain ``jax.jit`` raises an error
  pointing at ``nnx.jit``/``split`` instead of silently dropping writes.

``VariableState`` is the pytree twin used inside ``State``: the array is its only
child, type and metadata are static.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _tracking

_SLOTS = ("_raw_value", "_metadata", "_trace_state")


def _variable_not_a_pytree(v):
    raise TypeError(
        _errors.NOT_A_PYTREE.format(cls=type(v).__name__)
        + " To use the array inside in a jnp function, read it: `jnp.sum(v[...])`."
    )


def _never_unflatten(aux, children):  # pragma: no cover - flatten always raises
    raise TypeError("Variables are not pytrees")


class Variable:
    """A mutable box holding one array (or any value) plus metadata.

    Read with ``v.value`` or ``v[...]``, write with ``v.value = x`` or
    ``v[...] = x``. Any keyword given at construction is metadata, readable as an
    attribute (``v.sharding_names``) and kept through ``split``/``merge``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> w = nnx.Param(jnp.ones((2, 3)), note="demo")
    >>> w.shape, w.note
    ((2, 3), 'demo')
    >>> w[...] = w[...] * 2
    >>> float(w.value.sum())
    12.0
    """

    __slots__ = (*_SLOTS, "__weakref__")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The pytree registry is keyed by exact type: register every kind (Param,
        # user subclasses) so plain jax.jit/tree.map raise NOT_A_PYTREE for it too.
        jtu.register_pytree_node(cls, _variable_not_a_pytree, _never_unflatten)

    def __init__(self, value: Any, **metadata: Any):
        if isinstance(value, Variable):
            metadata = {**value._metadata, **metadata}
            value = value._raw_value
        elif type(value) is VariableMetadata:
            metadata = {**value.metadata, **metadata}
            value = value.raw_value
        if "sharding_names" in metadata:
            # Only annotated Variables pay for this (merge/unflatten never come
            # here): under a mesh the value is placed as annotated (nnxlike.spmd).
            from nnxlike import spmd

            value = spmd.shard_value(value, metadata, type(self))
        object.__setattr__(self, "_raw_value", value)
        object.__setattr__(self, "_metadata", metadata)
        object.__setattr__(self, "_trace_state", _tracking.get_trace_state())

    # -- value access --------------------------------------------------------
    @property
    def value(self) -> Any:
        return self._raw_value

    @value.setter
    def value(self, value: Any) -> None:
        self.set_value(value)

    def get_value(self) -> Any:
        return self._raw_value

    def set_value(self, value: Any) -> None:
        if isinstance(value, Variable):
            value = value._raw_value
        if self._trace_state != _tracking.get_trace_state():
            raise _errors.TraceContextError(
                _errors.TRACE_CONTEXT.format(cls=type(self).__name__, where="")
            )
        object.__setattr__(self, "_raw_value", value)

    def __getitem__(self, key: Any) -> Any:
        if key is Ellipsis:
            return self._raw_value
        return self._raw_value[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if key is Ellipsis:
            self.set_value(value)
        else:
            self.set_value(jnp.asarray(self._raw_value).at[key].set(value))

    # -- metadata ------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: metadata lives here.
        if name.startswith("__") or name in _SLOTS:
            raise AttributeError(name)
        try:
            return self._metadata[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no attribute or metadata {name!r}; "
                f"its metadata keys are {sorted(self._metadata)}."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "value":
            self.set_value(value)
        elif name in _SLOTS:
            object.__setattr__(self, name, value)
        else:
            self._metadata[name] = value
            _tracking.bump_structure_version()

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def set_metadata(self, **metadata: Any) -> None:
        self._metadata.update(metadata)
        _tracking.bump_structure_version()

    def replace(self, value: Any = None, **metadata: Any) -> Variable:
        """A new Variable of the same type with a new value and/or metadata."""
        if value is None:
            value = self._raw_value
        return type(self)(value, **{**self._metadata, **metadata})

    def to_state(self) -> VariableState:
        return VariableState(type(self), self._raw_value, dict(self._metadata))

    # -- array-like behaviour ------------------------------------------------
    @property
    def shape(self) -> tuple:
        return np.shape(self._raw_value)

    @property
    def dtype(self) -> Any:
        return getattr(self._raw_value, "dtype", None) or np.result_type(
            self._raw_value
        )

    @property
    def ndim(self) -> int:
        return np.ndim(self._raw_value)

    @property
    def size(self) -> int:
        return int(np.size(self._raw_value))

    def __jax_array__(self) -> jax.Array:
        return jnp.asarray(self._raw_value)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self._raw_value, dtype=dtype)

    def __len__(self) -> int:
        return len(self._raw_value)

    def __iter__(self):
        return iter(self._raw_value)

    def __bool__(self) -> bool:
        return bool(self._raw_value)

    def __float__(self) -> float:
        return float(self._raw_value)

    def __int__(self) -> int:
        return int(self._raw_value)

    def __index__(self) -> int:
        return operator.index(self._raw_value)

    @property
    def T(self) -> Any:
        return self._raw_value.T

    def astype(self, dtype: Any) -> Any:
        return self._raw_value.astype(dtype)

    def __hash__(self) -> int:
        return object.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __getstate__(self):
        return {
            "_raw_value": self._raw_value,
            "_metadata": self._metadata,
        }

    def __setstate__(self, state):
        object.__setattr__(self, "_raw_value", state["_raw_value"])
        object.__setattr__(self, "_metadata", state["_metadata"])
        object.__setattr__(self, "_trace_state", _tracking.get_trace_state())

    def __copy__(self) -> Variable:
        return type(self)(self._raw_value, **self._metadata)

    def __deepcopy__(self, memo) -> Variable:
        import copy

        return type(self)(
            copy.deepcopy(self._raw_value, memo), **copy.deepcopy(self._metadata, memo)
        )

    def __repr__(self) -> str:
        from nnxlike import _display

        return _display.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlike import _display

        return _display.render_variable(self, path, subtree_renderer)


def _binary(name: str, fn, reflected: bool = False):
    if reflected:

        def method(self, other):
            if isinstance(other, Variable):
                other = other._raw_value
            return fn(other, self._raw_value)
    else:

        def method(self, other):
            if isinstance(other, Variable):
                other = other._raw_value
            return fn(self._raw_value, other)

    method.__name__ = name
    return method


_BINARY_OPS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}
_SYMBOLS = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "truediv": "/",
    "floordiv": "//",
    "mod": "%",
    "pow": "**",
    "matmul": "@",
    "and": "&",
    "or": "|",
    "xor": "^",
    "lshift": "<<",
    "rshift": ">>",
}


def _inplace(name: str):
    symbol = _SYMBOLS[name]

    def method(self, other):
        raise TypeError(
            _errors.VARIABLE_INPLACE.format(
                op=symbol + "=", cls=type(self).__name__, binop=symbol
            )
        )

    method.__name__ = f"__i{name}__"
    return method


for _name, _fn in _BINARY_OPS.items():
    setattr(Variable, f"__{_name}__", _binary(f"__{_name}__", _fn))
    setattr(Variable, f"__r{_name}__", _binary(f"__r{_name}__", _fn, reflected=True))
    setattr(Variable, f"__i{_name}__", _inplace(_name))

for _name, _fn in {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}.items():
    setattr(Variable, f"__{_name}__", _binary(f"__{_name}__", _fn))

Variable.__neg__ = lambda self: -self._raw_value
Variable.__pos__ = lambda self: +self._raw_value
Variable.__abs__ = lambda self: abs(self._raw_value)
Variable.__invert__ = lambda self: ~self._raw_value


class VariableMetadata:
    """A value plus metadata for the Variable that will hold it.

    Initializers wrapped by ``nnx.with_partitioning`` return one; a Variable built
    from it (``Param(init(key, shape))``) takes the value and the metadata, and
    keywords given to the Variable win over the wrapped ones.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> p = nnx.Param(nnx.VariableMetadata(jnp.ones(2), {"note": "x"}))
    >>> p.shape, p.note
    ((2,), 'x')
    """

    __slots__ = ("raw_value", "metadata")

    def __init__(self, raw_value: Any, metadata: dict[str, Any] | None = None):
        self.raw_value = raw_value
        self.metadata = dict(metadata or {})

    @property
    def shape(self) -> tuple:
        return np.shape(self.raw_value)

    @property
    def dtype(self) -> Any:
        return getattr(self.raw_value, "dtype", None)

    def __repr__(self) -> str:
        shape = getattr(self.raw_value, "shape", None)
        return f"VariableMetadata(shape={shape}, metadata={self.metadata!r})"


class Param(Variable):
    """A trainable parameter: what ``nnx.grad`` and ``Optimizer`` act on by default."""


class BatchStat(Variable):
    """Running statistics (BatchNorm mean/var): updated in training, not by grads."""


class Cache(Variable):
    """Autoregressive decoding caches and similar per-call state."""


class Intermediate(Variable):
    """Values recorded with ``Module.sow`` for inspection."""


class Perturbation(Intermediate):
    """Zero-valued taps recorded with ``Module.perturb`` for gradient inspection."""


class RngState(Variable):
    """Base kind of the Variables that hold random-number-generator state."""


class RngKey(RngState):
    """The key of an RNG stream."""


class RngCount(RngState):
    """The draw counter of an RNG stream."""


class OptState(Variable):
    """Optimizer state (momenta, step counts) held by ``Optimizer``."""


jtu.register_pytree_node(Variable, _variable_not_a_pytree, _never_unflatten)


class VariableState:
    """The pytree form of a Variable inside a ``State``: type + value + metadata.

    The value is the only pytree child, so ``jax.tree.map`` over a ``State`` maps
    over arrays while the kind and metadata ride along as static data.
    """

    __slots__ = ("type", "value", "_metadata")

    def __init__(self, type: type, value: Any, metadata: dict | None = None):
        self.type = type
        self.value = value
        self._metadata = metadata if metadata is not None else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_metadata":
            raise AttributeError(name)
        try:
            return self._metadata[name]
        except KeyError:
            raise AttributeError(
                f"VariableState({self.type.__name__}) has no attribute or metadata "
                f"{name!r}."
            ) from None

    def __getitem__(self, key: Any) -> Any:
        return self.value if key is Ellipsis else self.value[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if key is Ellipsis:
            self.value = value
        else:
            self.value = jnp.asarray(self.value).at[key].set(value)

    def get_value(self) -> Any:
        return self.value

    def set_value(self, value: Any) -> None:
        self.value = value

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def shape(self) -> tuple:
        return np.shape(self.value)

    @property
    def dtype(self) -> Any:
        return getattr(self.value, "dtype", None)

    def replace(self, value: Any) -> VariableState:
        return VariableState(self.type, value, self._metadata)

    def to_variable(self) -> Variable:
        var = object.__new__(self.type)
        object.__setattr__(var, "_raw_value", self.value)
        object.__setattr__(var, "_metadata", dict(self._metadata))
        object.__setattr__(var, "_trace_state", _tracking.get_trace_state())
        return var

    def __jax_array__(self) -> jax.Array:
        return jnp.asarray(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VariableState):
            return NotImplemented
        if self.type is not other.type or self._metadata != other._metadata:
            return False
        a, b = self.value, other.value
        try:
            if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        except Exception:  # abstract values (ShapeDtypeStruct) and tracers
            return self.value is other.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        from nnxlike import _display

        return _display.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        from nnxlike import _display

        return _display.render_variable(self, path, subtree_renderer)


class _HashableMeta(dict):
    """Metadata as pytree aux data: compares by value, hashes by keys."""

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(self.keys()))


_VALUE_KEY = (jtu.GetAttrKey("value"),)

jtu.register_pytree_with_keys(
    VariableState,
    lambda vs: (
        ((_VALUE_KEY[0], vs.value),),
        (vs.type, _HashableMeta(vs._metadata)),
    ),
    lambda aux, children: VariableState(aux[0], children[0], dict(aux[1])),
    flatten_func=lambda vs: ((vs.value,), (vs.type, _HashableMeta(vs._metadata))),
)


def variable_type(x: Any) -> type | None:
    """The Variable kind of a Variable or VariableState, else None."""
    if isinstance(x, Variable):
        return type(x)
    if isinstance(x, VariableState):
        return x.type
    return None
