"""Variables: the mutable boxes that hold every array of a model.

Design note: a ``Variable`` is the unit of state. Modules hold Variables; ``split``
turns each distinct Variable into one leaf of a ``State`` (a fresh Variable of
the same kind sharing the array: flax.nnx 0.12 calls it ``VariableState``) and
``merge`` turns it back. The kind of state is the Python type (``Param``,
``BatchStat``, ...), so filters are ``isinstance`` checks and users make new kinds
by subclassing. Invariants:

- identity hashing (a Variable can be a dict key or a set member);
- a Variable remembers the JAX trace it was created in and refuses writes from any
  other trace (the closure trap), with an error that says to pass the object in;
- a Variable is a JAX pytree, as in flax.nnx 0.12: one child, the value (key
  ``.value``), with kind and metadata as static data. A copy that plain JAX
  rebuilds inside a trace is marked; a write to it that never leaves the trace
  (the function did not return the object) is reported when the copy dies,
  naming the path, the transform and the fix (``LostWriteWarning``).
"""

from __future__ import annotations

import operator
import re
import sys
import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _tracking

_SLOTS = ("_raw_value", "_metadata", "_trace_state", "_nnx_copy")


class LostWriteWarning(UserWarning):
    """A write inside a plain JAX transform to a copy the function did not return.

    Plain ``jax.jit``/``jax.grad``/``jax.vmap``/``jax.lax.scan`` hand the traced
    function *copies* of the objects passed in; a write to a copy is lost unless
    the function returns the object. Return it, or use the ``nnx.`` transform,
    which writes changes back to the caller's objects.
    """


class _CopyInfo:
    """Where a pytree copy made inside a trace sits, and whether it has a lost write.

    ``parent`` is a weak reference to the copy of the object holding it (set by
    the parent's unflatten), so no reference cycle keeps a copy alive after its
    trace ends; ``armed`` is True between a write and the next flatten.
    """

    __slots__ = ("parent", "key", "armed", "path", "transform", "__weakref__")

    def __init__(self) -> None:
        self.parent = None
        self.key = None
        self.armed = False
        self.path = ""
        self.transform = ""


def copy_info(x: Any) -> _CopyInfo | None:
    """The ``_CopyInfo`` of a Variable or Object copy made inside a trace."""
    if isinstance(x, Variable):
        return getattr(x, "_nnx_copy", None)
    return getattr(x, "__dict__", {}).get("_nnx_copy")


def copy_path(x: Any) -> tuple[str, int]:
    """``Linear.kernel``-style path of a traced copy, and ``id`` of its root copy."""
    parts: list[str] = []
    info = copy_info(x)
    root = x
    while info is not None and info.parent is not None:
        parent = info.parent()
        if parent is None:
            break
        key = info.key
        parts.append(f"[{key!r}]" if not isinstance(key, str) else f".{key}")
        root = parent
        info = copy_info(parent)
    return type(root).__name__ + "".join(reversed(parts)), id(root)


# Armed copies by root copy: the copies of one argument die together when the
# trace ends, and the first to go reports all of them in one warning.
_PENDING: dict[int, list[_CopyInfo]] = {}


def _report_lost_write(info: _CopyInfo, root: int) -> None:
    group = _PENDING.get(root, [])
    if info in group:
        group.remove(info)
    if not group:
        _PENDING.pop(root, None)
    if not info.armed:
        return
    paths = [info.path]
    for other in group:
        if other.armed:
            paths.append(other.path)
            other.armed = False  # reported here, not again by its own finalizer
    shown = ", ".join(paths[:8]) + (
        f" and {len(paths) - 8} more" if len(paths) > 8 else ""
    )
    # The copy dies inside JAX, after tracing: point at the user's call instead.
    frame = sys._getframe(1)
    while frame is not None and _INTERNAL_FILES.search(frame.f_code.co_filename):
        frame = frame.f_back
    message = _errors.LOST_WRITE.format(path=shown, transform=info.transform)
    if frame is None:  # pragma: no cover - no user frame on the stack
        warnings.warn(message, LostWriteWarning, stacklevel=2)
    else:
        warnings.warn_explicit(
            message,
            LostWriteWarning,
            frame.f_code.co_filename,
            frame.f_lineno,
            module=frame.f_globals.get("__name__"),
            module_globals=frame.f_globals,
        )


_INTERNAL_FILES = re.compile(r"[/\\](jax|jaxlib|nnxlike)[/\\]|weakref\.py$")


def _arm(var: Variable, info: _CopyInfo) -> None:
    if not info.path:
        info.path, root = copy_path(var)
        info.transform = _tracking.current_transform_name()
        _PENDING.setdefault(root, []).append(info)
        weakref.finalize(var, _report_lost_write, info, root)
    info.armed = True


def _flatten_with_keys(v: Variable):
    info = getattr(v, "_nnx_copy", None)
    if info is not None:
        info.armed = False  # the copy leaves the function: its writes are kept
    meta = v._metadata
    return ((_VALUE_KEY, v._raw_value),), tuple(sorted(meta.items())) if meta else ()


def _flatten(v: Variable):
    info = getattr(v, "_nnx_copy", None)
    if info is not None:
        info.armed = False
    meta = v._metadata
    return (v._raw_value,), tuple(sorted(meta.items())) if meta else ()


def _make_unflatten(cls: type):
    def unflatten(aux: tuple, children: Any) -> Variable:
        var = object.__new__(cls)
        object.__setattr__(var, "_raw_value", children[0])
        object.__setattr__(var, "_metadata", dict(aux))
        object.__setattr__(var, "_trace_state", _tracking.get_trace_state())
        if _tracking.under_trace():
            object.__setattr__(var, "_nnx_copy", _CopyInfo())
        return var

    return unflatten


_VALUE_KEY = jtu.GetAttrKey("value")


def _register(cls: type) -> None:
    jtu.register_pytree_with_keys(
        cls, _flatten_with_keys, _make_unflatten(cls), flatten_func=_flatten
    )


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
        # The pytree registry is keyed by exact type: register every kind.
        _register(cls)

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
        info = getattr(self, "_nnx_copy", None)
        if info is not None:
            _arm(self, info)
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
        return new_variable(type(self), value, {**self._metadata, **metadata})

    def to_state(self) -> Variable:
        """A new Variable of the same kind sharing the value (a ``State`` leaf)."""
        return new_variable(type(self), self._raw_value, self._metadata)

    def to_variable(self) -> Variable:
        return new_variable(type(self), self._raw_value, self._metadata)

    @property
    def type(self) -> type:
        """The Variable kind (flax.nnx 0.12's ``VariableState.type``)."""
        return type(self)

    def get_raw_value(self) -> Any:
        return self._raw_value

    def set_raw_value(self, value: Any) -> None:
        self.set_value(value)

    @property
    def raw_value(self) -> Any:
        return self._raw_value

    @raw_value.setter
    def raw_value(self, value: Any) -> None:
        self.set_value(value)

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
        return _tracking.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _tracking.render_treescope(self, path, subtree_renderer)


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


_register(Variable)


def new_variable(cls: type, value: Any, metadata: dict | None = None) -> Variable:
    """A Variable of kind ``cls`` without running ``__init__`` (no placement)."""
    var = object.__new__(cls)
    object.__setattr__(var, "_raw_value", value)
    object.__setattr__(var, "_metadata", dict(metadata) if metadata else {})
    object.__setattr__(var, "_trace_state", _tracking.get_trace_state())
    return var


def same_state(a: Variable, b: Variable) -> bool:
    """Value equality of two State leaves: same kind, metadata and values."""
    if type(a) is not type(b) or a._metadata != b._metadata:
        return False
    x, y = a._raw_value, b._raw_value
    try:
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        return bool(np.array_equal(np.asarray(x), np.asarray(y)))
    except Exception:  # abstract values (ShapeDtypeStruct) and tracers
        return x is y


VariableState = Variable
"""flax.nnx 0.12's name for the leaves of a ``State``: they are Variables."""


def variable_type(x: Any) -> type | None:
    """The Variable kind of a Variable or VariableState, else None."""
    if isinstance(x, Variable):
        return type(x)
    if isinstance(x, VariableState):
        return x.type
    return None
