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

import functools
import operator
import re
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from nnxlike import _config, _errors, _hijax, _tracking

_SLOTS = ("_raw_value", "_metadata", "_trace_state", "_nnx_copy")
_MISSING: Any = object()  # no default given
_PLACEMENT: list = []  # [shard_value], set by nnxlike.spmd at import


def register_placement(place: Any) -> None:
    """Set the function that places annotated values on a mesh (nnxlike.spmd)."""
    _PLACEMENT[:] = [place]


A = TypeVar("A")
"""Type variable of a Variable's value (``nnx.Variable[nnx.A]``), as flax.nnx."""
M = TypeVar("M", bound="Module")  # noqa: F821 - a forward name, as in flax.nnx
"""Type variable bound to ``Module``, as flax.nnx's ``nnx.M``."""

# Metadata every Variable has (flax.nnx 0.12's ``Variable.required_metadata``).
# Values equal to these defaults are not stored in ``_metadata`` (so GraphDefs,
# pytree aux data, checkpoints and displays of ordinary Variables are unchanged);
# ``get_metadata()`` reports them.
REQUIRED_METADATA = {"hijax": False, "ref": False, "eager_sharding": True}


class _DefaultStacks(threading.local):
    def __init__(self) -> None:
        self.hijax: list[bool] = []
        self.ref: list[bool] = []
        self.eager_sharding: list[bool] = []


_DEFAULTS = _DefaultStacks()


class VarDefaults(Mapping):
    """The current defaults of ``hijax`` and ``ref`` (what ``nnx.var_defaults()``
    returns): a read-only mapping with attribute access.

    >>> import nnxlike as nnx
    >>> d = nnx.var_defaults()
    >>> d.hijax, d["ref"], list(d)
    (False, False, ['hijax', 'ref'])
    """

    __slots__ = ("hijax", "ref")

    def __init__(self, hijax: bool, ref: bool) -> None:
        object.__setattr__(self, "hijax", hijax)
        object.__setattr__(self, "ref", ref)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"VarDefaults is read-only (tried to set {name!r}).")

    def __getitem__(self, key: str) -> bool:
        if key not in ("hijax", "ref"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(("hijax", "ref"))

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"VarDefaults(hijax={self.hijax}, ref={self.ref})"


class VarDefaultsContext:
    """What ``nnx.var_defaults(hijax=..., ref=...)`` returns: the new defaults are
    already set; as a context manager or a decorator they apply inside only."""

    def __init__(self, new: dict[str, bool], prev: dict[str, bool | None]) -> None:
        self._new, self._prev = new, prev

    def __enter__(self) -> VarDefaultsContext:
        for name, prev in self._prev.items():
            if prev is not None:
                getattr(_DEFAULTS, name).insert(-1, prev)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self._new:
            getattr(_DEFAULTS, name).pop()

    def __call__(self, f: Any) -> Any:
        for name, prev in self._prev.items():  # undo the plain-call setting
            stack = getattr(_DEFAULTS, name)
            stack.pop()
            if prev is not None:
                stack.append(prev)
        new = self._new

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name, value in new.items():
                getattr(_DEFAULTS, name).append(value)
            try:
                return f(*args, **kwargs)
            finally:
                for name in new:
                    getattr(_DEFAULTS, name).pop()

        return wrapper


def var_defaults(
    *, hijax: bool | None = None, ref: bool | None = None
) -> VarDefaults | VarDefaultsContext:
    """Read or set the default ``hijax``/``ref`` metadata of new Variables.

    Called with no argument it returns the current defaults. Called with
    ``ref=True`` (or ``hijax=``) it sets them: plainly (from then on), as a
    context manager, or as a decorator (inside only). A ``ref=True`` Variable
    holds its array in a JAX array reference (``jax.new_ref``), so a write
    inside a plain ``jax.jit`` reaches the caller's Variable.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> with nnx.var_defaults(ref=True):
    ...     count = nnx.Variable(jnp.array(0))
    >>> count.ref, nnx.var_defaults().ref
    (True, False)
    >>> @jax.jit
    ... def step(v):
    ...     v[...] += 1
    >>> step(count); step(count)
    >>> int(count[...])
    2
    """
    if hijax is None and ref is None:
        return VarDefaults(
            _DEFAULTS.hijax[-1] if _DEFAULTS.hijax else False,
            _DEFAULTS.ref[-1] if _DEFAULTS.ref else False,
        )
    new: dict[str, bool] = {}
    prev: dict[str, bool | None] = {}
    for name, value in (("hijax", hijax), ("ref", ref)):
        if value is None:
            continue
        if not isinstance(value, bool):
            raise TypeError(
                f"nnx.var_defaults({name}=...) takes True or False, got "
                f"{type(value).__name__} {value!r}."
            )
        stack = getattr(_DEFAULTS, name)
        prev[name] = stack[-1] if stack else None
        if stack:
            stack[-1] = value
        else:
            stack.append(value)
        new[name] = value
    return VarDefaultsContext(new, prev)


class use_eager_sharding(_config._Switch):
    """Choose whether new Variables with sharding metadata are placed on the
    mesh when created (True, the default) or left where they are.

    Called plainly it sets the default; as a context manager or decorator it
    applies inside only. A Variable records the choice as its
    ``eager_sharding`` metadata.

    >>> import nnxlike as nnx
    >>> with nnx.use_eager_sharding(False):
    ...     nnx.using_eager_sharding(), nnx.Param(1.0).eager_sharding
    (False, False)
    >>> nnx.using_eager_sharding()
    True
    """

    _default = True

    @classmethod
    def _stack(cls) -> list[bool]:
        return _DEFAULTS.eager_sharding


def using_eager_sharding() -> bool:
    """Whether new Variables are placed eagerly (see ``nnx.use_eager_sharding``).

    >>> import nnxlike as nnx
    >>> nnx.using_eager_sharding()
    True
    """
    return use_eager_sharding.current_value()


def is_array_ref(x: Any) -> bool:
    """Whether ``x`` is a JAX array reference (``jax.new_ref``), traced or not.

    >>> import jax
    >>> import nnxlike as nnx
    >>> from nnxlike.variablelib import is_array_ref
    >>> is_array_ref(jax.new_ref(1.0)), is_array_ref(1.0)
    (True, False)
    """
    return isinstance(x, jax.Ref)


_NOT_REF_TYPES: set[type] = set()  # concrete types seen that are never references


def _is_ref(x: Any) -> bool:
    """Whether ``x`` holds the value indirectly: a ``jax.Ref`` (``ref=True``) or
    a hijax box (``hijax=True``). Remembered per concrete type (the ABC check
    costs about a microsecond and sits on every Variable read and write).
    Tracers are checked each time: what one is depends on its aval."""
    t = type(x)
    if t in _NOT_REF_TYPES:
        return False
    if isinstance(x, jax.Ref) or _hijax.is_box(x):
        return True
    if not issubclass(t, jax.core.Tracer):
        _NOT_REF_TYPES.add(t)
    return False


def _read(raw: Any) -> Any:
    """The value held: a reference or box is read, anything else returned as is."""
    return _deref(raw) if _is_ref(raw) else raw


def _deref(raw: Any) -> Any:
    """Read an indirect value (``_is_ref(raw)``): a Ref's array, a box's value."""
    if _hijax.is_box(raw):
        inner = _hijax.get(raw)
        return inner[...] if isinstance(inner, jax.Ref) else inner
    return raw[...]


def _unbox(raw: Any) -> Any:
    """A box's content (a hijax+ref box holds a Ref); anything else as is."""
    return _hijax.get(raw) if _hijax.is_box(raw) else raw


def _with_item(raw: Any, index: Any, value: Any) -> Any:
    """``raw`` with ``raw[index] = value``, as a new value (arrays or containers)."""
    if isinstance(raw, (jax.Array, np.ndarray)) or np.isscalar(raw):
        return jnp.asarray(raw).at[index].set(value)
    new = type(raw)(raw)  # a dict or list value: item assignment on a copy
    new[index] = value
    return new


def _write_indirect(raw: Any, index: Any, value: Any) -> None:
    """``raw[index] = value`` for a Ref or a box (any trace may do it: JAX
    carries the write out of a plain transform)."""
    if _hijax.is_box(raw):
        inner = _hijax.get(raw)
        if isinstance(inner, jax.Ref):
            inner[index] = value
            return
        if index is not Ellipsis:
            value = _with_item(inner, index, value)
        _hijax.set(raw, value)
    else:
        raw[index] = value


def fresh_indirect(raw: Any) -> Any:
    """A new reference or box holding what ``raw`` holds (``raw`` itself when it
    is a plain value): what a copy of a ``ref=True``/``hijax=True`` Variable
    stores, so that writes to the copy do not reach the original."""
    if not _is_ref(raw):
        return raw
    if _hijax.is_box(raw):
        return _hijax.new_box(fresh_indirect(_hijax.get(raw)))
    return jax.new_ref(raw[...])


def _boxed(value: Any) -> Any:
    """``value`` in a new hijax box (a box is kept as is)."""
    return value if _hijax.is_box(value) else _hijax.new_box(value)


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


def _flatten(v: Variable):
    info = getattr(v, "_nnx_copy", None)
    if info is not None:
        info.armed = False  # the copy leaves the function: its writes are kept
    meta = v._metadata
    return (v._raw_value,), tuple(sorted(meta.items())) if meta else ()


def _flatten_with_keys(v: Variable):
    (value,), aux = _flatten(v)
    return ((_VALUE_KEY, value),), aux


def _make_unflatten(cls: type):
    def unflatten(aux: tuple, children: Any) -> Variable:
        var = new_variable(cls, children[0], aux)
        if _tracking.under_trace():  # a copy plain JAX made for a traced function
            _set_copy(var, _CopyInfo())
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

    # True for kinds that override get_value / set_value (flax's hooks): reads
    # and writes go through them.
    _nnx_custom_get = False
    _nnx_custom_set = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The pytree registry is keyed by exact type: register every kind.
        _register(cls)
        cls._nnx_custom_get = cls.get_value is not Variable.get_value
        cls._nnx_custom_set = cls.set_value is not Variable.set_value

    def __init__(self, value: Any, **metadata: Any):
        if isinstance(value, Variable):
            metadata = {**value._metadata, **metadata}
            value = _read(value._raw_value)
        elif type(value) is VariableMetadata:
            metadata = {**value.metadata, **metadata}
            value = value.raw_value
        elif _is_ref(value):
            raise ValueError(
                f"{type(self).__name__}(...): got a JAX array reference (jax.Ref) "
                f"as the value; pass the array and ref=True instead: "
                f"`{type(self).__name__}(array, ref=True)`."
            )
        # flax.nnx 0.12's key for the annotation is `out_sharding` (`sharding_names`
        # its alias); nnxlike stores `sharding_names`. (`.sharding` stays the
        # array's concrete sharding: see docs/differences.md.)
        if "out_sharding" in metadata and "sharding_names" not in metadata:
            names = metadata.pop("out_sharding")
            if isinstance(names, (tuple, list, jax.sharding.PartitionSpec)):
                metadata["sharding_names"] = tuple(names)
            elif names is not None:
                metadata["out_sharding"] = names  # a Sharding object: kept
        # hijax/ref/eager_sharding: defaults are not stored (see REQUIRED_METADATA)
        ref = metadata.pop("ref", None)
        if ref is None:
            ref = _DEFAULTS.ref[-1] if _DEFAULTS.ref else False
        hijax = metadata.pop("hijax", None)
        if hijax is None:
            hijax = _DEFAULTS.hijax[-1] if _DEFAULTS.hijax else False
        eager = metadata.pop("eager_sharding", None)
        if eager is None:
            eager = use_eager_sharding.current_value()
        if hijax:
            metadata["hijax"] = True
        if not eager:
            metadata["eager_sharding"] = False
        elif ("sharding_names" in metadata or "out_sharding" in metadata) and (
            _PLACEMENT
        ):
            # Only annotated Variables pay for this (merge/unflatten never come
            # here): under a mesh the value is placed as annotated. nnxlike.spmd
            # registers the placement (it sits above this layer).
            value = _PLACEMENT[0](value, metadata, type(self))
        if ref:
            metadata["ref"] = True
            value = jax.new_ref(value)
        if hijax:
            value = _hijax.new_box(value)
        object.__setattr__(self, "_raw_value", value)
        object.__setattr__(self, "_metadata", metadata)
        object.__setattr__(self, "_trace_state", _tracking.get_trace_state())
        object.__setattr__(self, "_nnx_copy", None)

    # -- value access --------------------------------------------------------
    @property
    def value(self) -> Any:
        if self._nnx_custom_get:
            return self.get_value()
        raw = self._raw_value
        return _deref(raw) if _is_ref(raw) else raw

    @value.setter
    def value(self, value: Any) -> None:
        self.set_value(value)

    def get_value(self, *, index: Any = Ellipsis) -> Any:
        """The value (``index=`` reads ``value[index]``; a reference is read)."""
        raw = self._raw_value
        if index is Ellipsis:
            return _deref(raw) if _is_ref(raw) else raw
        if _hijax.is_box(raw):
            return _deref(raw)[index]
        return raw[index]

    def set_value(self, value: Any, *, index: Any = Ellipsis) -> None:
        """Store ``value`` (``index=`` writes ``value[index]`` only).

        A ``ref=True`` Variable writes into its array reference, which JAX
        lets any trace do (that is how the write leaves a plain ``jax.jit``).
        """
        if isinstance(value, Variable):
            value = _read(value._raw_value)
        raw = self._raw_value
        if _is_ref(raw):  # ref=True / hijax=True: written in place, from any trace
            _write_indirect(raw, index, value)
            return
        if index is not Ellipsis:
            value = _with_item(raw, index, value)
        self._store(value)

    def _store(self, value: Any, check_trace: bool = True) -> None:
        """Replace the raw value: refused from another trace (unless told not to
        check); a traced copy's write arms its lost-write report."""
        if check_trace and self._trace_state != _tracking.get_trace_state():
            raise _errors.TraceContextError(
                _errors.TRACE_CONTEXT.format(cls=type(self).__name__, where="")
            )
        info = getattr(self, "_nnx_copy", None)
        if info is not None:
            _arm(self, info)
        object.__setattr__(self, "_raw_value", value)
        _tracking.note_value_write()

    def __getitem__(self, key: Any) -> Any:
        if self._nnx_custom_get:
            return self.get_value(index=key)
        raw = self._raw_value
        if not _is_ref(raw):
            return raw if key is Ellipsis else raw[key]
        if _hijax.is_box(raw):
            value = _deref(raw)
            return value if key is Ellipsis else value[key]
        return raw[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set_value(value, index=key)

    def __delitem__(self, key: Any) -> None:
        raw = _read(self._raw_value)
        value = type(raw)(raw)
        del value[key]
        self.set_value(value)

    def __contains__(self, item: Any) -> bool:
        return item in _read(self._raw_value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _read(self._raw_value)(*args, **kwargs)

    # -- metadata ------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: metadata lives here.
        if name.startswith("__") or name in _SLOTS:
            raise AttributeError(name)
        try:
            return self._metadata[name]
        except KeyError:
            pass
        if name == "out_sharding":  # flax.nnx 0.12's name of the annotation
            return self._metadata.get("sharding_names")
        # Anything else is the value's (``v.at``, ``v.reshape``, ``v.sharding``),
        # as flax.nnx forwards it.
        raw = self._raw_value
        if _hijax.is_box(raw):
            raw = _deref(raw)
        try:
            return getattr(raw, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__} has no attribute or metadata {name!r}, and "
                f"its value ({type(raw).__name__}) has no such "
                f"attribute; its metadata keys are {sorted(self.get_metadata())}."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "value":
            self.set_value(value)
        elif name == "raw_value":  # the property's setter (flax: set_raw_value)
            self.set_raw_value(value)
        elif name in _SLOTS:
            object.__setattr__(self, name, value)
            if name == "_raw_value":
                _tracking.note_value_write()
        else:
            self._metadata[name] = value
            _tracking.bump_structure_version()

    @property
    def hijax(self) -> bool:
        """flax.nnx's hijax flag (recorded; nnxlike has no hijax Variable type)."""
        return self._metadata.get("hijax", False)

    @property
    def ref(self) -> bool:
        """Whether the value lives in a JAX array reference (``ref=True``)."""
        return self._metadata.get("ref", False)

    @property
    def eager_sharding(self) -> bool:
        """Whether sharding metadata placed the value when it was created."""
        return self._metadata.get("eager_sharding", True)

    required_metadata = frozenset(REQUIRED_METADATA)

    def get_metadata(
        self,
        name: str | None = None,
        default: Any = _MISSING,
        *,
        exclude_required: bool | None = None,
    ) -> Any:
        """All metadata as a new dict, or the entry ``name`` (else ``default``).

        The dict includes ``hijax``, ``ref`` and ``eager_sharding``, as flax.nnx's
        does (``exclude_required=True`` leaves them out).

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0, note="x")
        >>> p.get_metadata()
        {'hijax': False, 'ref': False, 'eager_sharding': True, 'note': 'x'}
        >>> p.get_metadata("note"), p.get_metadata("absent", None)
        ('x', None)
        >>> p.get_metadata(exclude_required=True)
        {'note': 'x'}
        """
        if name is not None and exclude_required is not None:
            raise TypeError(
                "get_metadata: give either a name or exclude_required, not both."
            )
        if name is None:
            if default is not _MISSING:
                raise TypeError(
                    f"get_metadata: a default ({default!r}) needs a name: "
                    f"`v.get_metadata('key', default)`."
                )
            if exclude_required:
                return {
                    k: v
                    for k, v in self._metadata.items()
                    if k not in REQUIRED_METADATA
                }
            return {**REQUIRED_METADATA, **self._metadata}
        if name in self._metadata:
            return self._metadata[name]
        if name in REQUIRED_METADATA:
            return REQUIRED_METADATA[name]
        if default is not _MISSING:
            return default
        raise KeyError(
            f"{type(self).__name__} has no metadata {name!r}; its keys are "
            f"{sorted(self.get_metadata())}. Pass a default: "
            f"`v.get_metadata({name!r}, None)`."
        )

    def set_metadata(self, *args: Any, **kwargs: Any) -> None:
        """Set metadata: ``set_metadata(key=value)``, ``set_metadata('key', value)``,
        or ``set_metadata({...})`` (which replaces all of it).

        ``ref`` and ``hijax`` cannot change (``nnx.with_vars`` makes a new
        Variable for that).

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0)
        >>> p.set_metadata(a=1); p.set_metadata("b", 2)
        >>> p.get_metadata(exclude_required=True)
        {'a': 1, 'b': 2}
        >>> p.set_metadata({"c": 3}); p.get_metadata(exclude_required=True)
        {'c': 3}
        """
        if args and kwargs:
            raise TypeError(
                "set_metadata takes a dict, a name and a value, or keywords; not "
                "positional arguments and keywords together."
            )
        if len(args) == 1 and isinstance(args[0], Mapping):
            new = dict(args[0])
            for key in REQUIRED_METADATA:
                new.setdefault(key, getattr(self, key))
            self._check_required(new)
            metadata = {
                k: v
                for k, v in new.items()
                if not (k in REQUIRED_METADATA and v == REQUIRED_METADATA[k])
            }
            object.__setattr__(self, "_metadata", metadata)
        elif len(args) == 2 and isinstance(args[0], str):
            self._set_meta({args[0]: args[1]})
        elif kwargs and not args:
            self._set_meta(kwargs)
        else:
            raise TypeError(
                f"set_metadata takes a dict, a name and a value, or keywords, got "
                f"{len(args)} positional argument(s) {args!r}. Examples: "
                f"`v.set_metadata(note='x')`, `v.set_metadata('note', 'x')`."
            )
        _tracking.bump_structure_version()

    def _check_required(self, new: Mapping) -> None:
        for key in ("hijax", "ref"):
            if key in new and bool(new[key]) != getattr(self, key):
                raise ValueError(
                    f"Cannot change `{key}` metadata of a {type(self).__name__}, "
                    f"expected {getattr(self, key)}, got {new[key]}; make a new "
                    f"Variable instead: `nnx.with_vars(v, {key}={new[key]})` or "
                    f"`v.copy({key}={new[key]})`."
                )

    def _set_meta(self, updates: Mapping) -> None:
        self._check_required(updates)
        for key, value in updates.items():
            if key in REQUIRED_METADATA and value == REQUIRED_METADATA[key]:
                self._metadata.pop(key, None)
            else:
                self._metadata[key] = value

    def has_metadata(self, name: str) -> bool:
        """Whether the metadata has the key ``name``.

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0, note="x")
        >>> p.has_metadata("note"), p.has_metadata("ref"), p.has_metadata("other")
        (True, True, False)
        """
        return name in self._metadata or name in REQUIRED_METADATA

    def del_metadata(self, name: str) -> None:
        """Remove the metadata entry ``name`` (``hijax``/``ref`` stay).

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0, note="x")
        >>> p.del_metadata("note"); p.has_metadata("note")
        False
        """
        if name in ("hijax", "ref"):
            raise ValueError(f"Cannot delete `{name}` metadata of a Variable.")
        if name not in self._metadata and name not in REQUIRED_METADATA:
            raise KeyError(
                f"{type(self).__name__} has no metadata {name!r}; its keys are "
                f"{sorted(self.get_metadata())}."
            )
        self._metadata.pop(name, None)
        _tracking.bump_structure_version()

    def add_axis(self, axis_index: int, axis_name: Any) -> None:
        """Called by ``nnx.vmap``/``nnx.scan`` after they stack this Variable along
        a new axis ``axis_index`` (named ``axis_name``, their
        ``transform_metadata[nnx.PARTITION_NAME]``, or None).

        The metadata tuples (``sharding_names``) are already updated by then;
        this runs the ``on_add_axis`` metadata hook(s), ``hook(variable,
        axis_index, axis_name)``. Subclasses override it to keep their own
        per-axis state, as in flax.nnx.

        >>> import nnxlike as nnx
        >>> seen = []
        >>> p = nnx.Param(1.0, on_add_axis=lambda v, i, n: seen.append((i, n)))
        >>> p.add_axis(0, "layers"); seen
        [(0, 'layers')]
        """
        _run_axis_hooks(self, "on_add_axis", axis_index, axis_name)

    def remove_axis(self, axis_index: int, axis_name: Any) -> None:
        """Called by ``nnx.vmap``/``nnx.scan`` on the copy a traced function sees,
        without the mapped axis ``axis_index``; runs the ``on_remove_axis``
        hook(s) (see ``add_axis``).

        >>> import nnxlike as nnx
        >>> seen = []
        >>> p = nnx.Param(1.0, on_remove_axis=(lambda v, i, n: seen.append(n),))
        >>> p.remove_axis(0, "layers"); seen
        ['layers']
        """
        _run_axis_hooks(self, "on_remove_axis", axis_index, axis_name)

    def copy_from(self, other: Variable) -> None:
        """Take ``other``'s value and metadata (same kind required), in place.

        >>> import nnxlike as nnx
        >>> a, b = nnx.Param(1.0), nnx.Param(2.0, note="b")
        >>> a.copy_from(b); float(a[...]), a.note
        (2.0, 'b')
        """
        if type(self) is not type(other):
            raise ValueError(
                f"copy_from: cannot copy a {type(other).__name__} into a "
                f"{type(self).__name__}; both must be the same Variable kind."
            )
        if self is other:
            return
        object.__setattr__(self, "_raw_value", other._raw_value)
        _tracking.note_value_write()
        object.__setattr__(self, "_metadata", dict(other._metadata))
        _tracking.bump_structure_version()

    def update_from_state(self, variable_state: Variable) -> None:
        """Take a State leaf's value and metadata, keeping this one's ``ref``/``hijax``.

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0)
        >>> p.update_from_state(nnx.Param(3.0)); float(p[...])
        3.0
        """
        raw, new = self._raw_value, variable_state._raw_value
        if _hijax.is_box(raw) and raw is not new:
            _hijax.set(raw, _unbox(new))  # a hijax Variable keeps its box
        else:
            object.__setattr__(self, "_raw_value", new)
            _tracking.note_value_write()
        if self._metadata != variable_state._metadata:
            meta = {
                k: v
                for k, v in variable_state._metadata.items()
                if k not in ("hijax", "ref")
            }
            for key in ("hijax", "ref"):
                if key in self._metadata:
                    meta[key] = self._metadata[key]
            object.__setattr__(self, "_metadata", meta)
            _tracking.bump_structure_version()

    def copy(self, value: Any = _MISSING, **updates: Any) -> Variable:
        """A new Variable of the same kind: this one's value (or ``value``) and
        metadata updated by ``updates`` (``ref=True`` gives an array reference).

        >>> import nnxlike as nnx
        >>> p = nnx.Param(1.0, note="x")
        >>> q = p.copy(2.0, note="y")
        >>> float(q[...]), q.note, p.note
        (2.0, 'y', 'x')
        >>> p.copy(ref=True).ref
        True
        """
        metadata = {**self._metadata, **updates}
        if value is _MISSING:
            value = metadata.pop("value", _MISSING)
            if value is _MISSING:
                value = self._raw_value
        value = _read(value)
        ref = metadata.pop("ref", False)
        if ref:
            value = jax.new_ref(value)
            metadata["ref"] = True
        if metadata.get("hijax", False):
            value = _hijax.new_box(value)
        return self.from_metadata(value, metadata)

    @classmethod
    def from_metadata(cls, value: Any, attributes: Mapping[str, Any]) -> Variable:
        """A Variable of this kind holding ``value`` with exactly this metadata
        (no placement, no reference made: the value is used as given).

        >>> import nnxlike as nnx
        >>> p = nnx.Param.from_metadata(1.0, {"note": "x", "hijax": False})
        >>> type(p).__name__, p.note, p.hijax
        ('Param', 'x', False)
        """
        metadata = {
            k: v
            for k, v in attributes.items()
            if not (k in REQUIRED_METADATA and v == REQUIRED_METADATA[k])
        }
        if metadata.get("hijax", False):  # a hijax Variable holds a box
            value = _boxed(value)
        return new_variable(cls, value, metadata)

    def __class_getitem__(cls, item: Any) -> Any:
        # ``nnx.Param[jax.Array]``: a typing alias that still builds a Param.
        return types.GenericAlias(cls, item)

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
        """The stored value: an array, a ``jax.Ref`` for ``ref=True`` (for
        ``hijax=True``: what its box holds)."""
        return _unbox(self._raw_value)

    def set_raw_value(self, value: Any, *, _unsafe_bypass_check: bool = False) -> None:
        """Store ``value`` as the raw value (a reference replaces the reference;
        a ``hijax=True`` Variable stores it in its box)."""
        raw = self._raw_value
        if _hijax.is_box(raw) and not _hijax.is_box(value):
            _hijax.set(raw, value)  # a hijax Variable keeps its box
            return
        self._store(value, check_trace=not _unsafe_bypass_check)

    @property
    def raw_value(self) -> Any:
        return _unbox(self._raw_value)

    @raw_value.setter
    def raw_value(self, value: Any) -> None:
        self.set_raw_value(value)

    # -- array-like behaviour ------------------------------------------------
    @property
    def shape(self) -> tuple:
        raw = self._raw_value
        if not _is_ref(raw):
            return np.shape(raw)
        return np.shape(_deref(raw)) if _hijax.is_box(raw) else tuple(raw.shape)

    @property
    def dtype(self) -> Any:
        raw = self._raw_value
        if _hijax.is_box(raw):
            raw = _deref(raw)
        return getattr(raw, "dtype", None) or np.result_type(raw)

    @property
    def ndim(self) -> int:
        return np.ndim(_read(self._raw_value))

    @property
    def size(self) -> int:
        return int(np.size(_read(self._raw_value)))

    def __jax_array__(self) -> jax.Array:
        return jnp.asarray(_read(self._raw_value))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(_read(self._raw_value), dtype=dtype)

    def __len__(self) -> int:
        return len(_read(self._raw_value))

    def __iter__(self):
        return iter(_read(self._raw_value))

    def __bool__(self) -> bool:
        return bool(_read(self._raw_value))

    def __float__(self) -> float:
        return float(_read(self._raw_value))

    def __int__(self) -> int:
        return int(_read(self._raw_value))

    def __index__(self) -> int:
        return operator.index(_read(self._raw_value))

    @property
    def T(self) -> Any:
        return _read(self._raw_value).T

    def astype(self, dtype: Any) -> Any:
        return _read(self._raw_value).astype(dtype)

    # Comparisons act on the value, as in flax.nnx 0.12 (``p1 == p2`` is
    # elementwise); hashing stays by identity, so a Variable can be a dict key.
    def __hash__(self) -> int:
        return object.__hash__(self)

    def __eq__(self, other: object) -> Any:
        if isinstance(other, Variable):
            other = _read(other._raw_value)
        return _read(self._raw_value) == other

    def __ne__(self, other: object) -> Any:
        if isinstance(other, Variable):
            other = _read(other._raw_value)
        return _read(self._raw_value) != other

    def __getstate__(self):
        return {
            "_raw_value": self._raw_value,
            "_metadata": self._metadata,
        }

    def __setstate__(self, state):
        object.__setattr__(self, "_raw_value", state["_raw_value"])
        _tracking.note_value_write()
        object.__setattr__(self, "_metadata", state["_metadata"])
        object.__setattr__(self, "_trace_state", _tracking.get_trace_state())
        object.__setattr__(self, "_nnx_copy", None)

    def __copy__(self) -> Variable:
        return type(self)(_read(self._raw_value), **self._metadata)

    def __deepcopy__(self, memo) -> Variable:
        import copy

        return type(self)(
            copy.deepcopy(_read(self._raw_value), memo),
            **copy.deepcopy(self._metadata, memo),
        )

    def __repr__(self) -> str:
        return _tracking.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _tracking.render_treescope(self, path, subtree_renderer)


def _run_axis_hooks(var: Variable, key: str, axis_index: int, axis_name: Any) -> None:
    hooks = var._metadata.get(key)
    if hooks is None:
        return
    for hook in hooks if isinstance(hooks, tuple) else (hooks,):
        hook(var, axis_index, axis_name)


def _binary(name: str, fn, reflected: bool = False):
    if reflected:

        def method(self, other):
            if isinstance(other, Variable):
                other = _read(other._raw_value)
            return fn(other, _read(self._raw_value))
    else:

        def method(self, other):
            if isinstance(other, Variable):
                other = _read(other._raw_value)
            return fn(_read(self._raw_value), other)

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

Variable.__neg__ = lambda self: -_read(self._raw_value)
Variable.__pos__ = lambda self: +_read(self._raw_value)
Variable.__abs__ = lambda self: abs(_read(self._raw_value))
Variable.__invert__ = lambda self: ~_read(self._raw_value)
Variable.__complex__ = lambda self: complex(_read(self._raw_value))
Variable.__trunc__ = lambda self: _read(self._raw_value).__trunc__()
Variable.__floor__ = lambda self: _read(self._raw_value).__floor__()
Variable.__ceil__ = lambda self: _read(self._raw_value).__ceil__()
Variable.__round__ = lambda self, ndigits=0: _read(self._raw_value).__round__(ndigits)


PARTITION_NAME = "partition_name"
"""The ``transform_metadata`` key naming a new axis in ``sharding_names``."""


def normalize_sharding_names(names: Any, where: str) -> tuple:
    """``sharding_names`` as a hashable tuple (it is part of the GraphDef)."""
    if isinstance(names, jax.sharding.PartitionSpec):
        names = tuple(names)
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise TypeError(
            f"{where}: sharding_names must be a tuple with one entry per array axis "
            f"(a mesh axis or logical name, a tuple of names, or None), got "
            f"{names!r}. Example: `sharding_names=(None, 'model')`."
        )
    out = []
    for n in names:
        if n is None or isinstance(n, str):
            out.append(n)
        elif isinstance(n, (tuple, list)) and all(isinstance(a, str) for a in n):
            out.append(tuple(n))
        else:
            raise TypeError(
                f"{where}: each entry of sharding_names must be a name, a tuple of "
                f"names or None, got {n!r} in {tuple(names)!r}."
            )
    return tuple(out)


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # PyTorch's `optimizer.step()`: here `step` is the step count.
        raise TypeError(
            _errors.VARIABLE_CALLED.format(
                cls=type(self).__name__,
                what=f"an array of shape {self.shape}",
                hint=_errors.OPTIMIZER_STEP_CALLED,
            )
        )


_register(Variable)


_set_raw = Variable._raw_value.__set__  # slot descriptors: the fastest writes
_set_meta = Variable._metadata.__set__
_set_trace = Variable._trace_state.__set__
_set_copy = Variable._nnx_copy.__set__


def set_values(variables: list, values: list) -> None:
    """``var.set_value(value)`` for each pair, with the trace read once.

    ``nnx.update``'s bulk write: a plain kind holding a plain array is written
    directly when it belongs to the current trace; anything else (a reference,
    a kind overriding ``set_value``, a traced copy, another trace) goes through
    ``set_value``, which also raises its errors.
    """
    ts = _tracking.get_trace_state()
    # Two trace states are equal when they hold the same trace reference; the
    # identity test skips the (Python-level) __eq__ for the usual case.
    ref = getattr(ts, "_trace_ref", None)
    if ref is None:
        ref = ts  # no such attribute: no Variable's reference is this object
    setattr_ = object.__setattr__
    not_refs = _NOT_REF_TYPES
    try:
        for var, value in zip(variables, values):
            vts = var._trace_state
            raw = var._raw_value
            if (
                var._nnx_custom_set
                or (getattr(vts, "_trace_ref", None) is not ref and vts != ts)
                or isinstance(value, Variable)
                or (type(raw) not in not_refs and _is_ref(raw))
                or getattr(var, "_nnx_copy", None) is not None
            ):
                var.set_value(value)
            else:
                setattr_(var, "_raw_value", value)
    finally:  # also when a set_value raised after some direct writes
        _tracking.note_value_write()


def new_variable(
    cls: type, value: Any, metadata: Any = None, trace_state: Any = None
) -> Variable:
    """A Variable of kind ``cls`` without running ``__init__`` (no placement).

    ``metadata`` is a dict or ``(key, value)`` pairs; ``trace_state`` lets a
    caller making many Variables (``merge``, ``split``) read it once.
    """
    var = object.__new__(cls)
    _set_raw(var, value)
    _set_meta(var, dict(metadata) if metadata else {})
    _set_trace(var, _tracking.get_trace_state() if trace_state is None else trace_state)
    _set_copy(var, None)
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


class _HijaxMeta(type):
    def __instancecheck__(cls, x: Any) -> bool:
        return isinstance(x, Variable) and _hijax.is_box(x._raw_value)


class HijaxVariable(metaclass=_HijaxMeta):
    """What ``isinstance(v, nnx.variablelib.HijaxVariable)`` tests: a Variable made
    with ``hijax=True`` (or under ``nnx.var_defaults(hijax=True)``).

    In nnxlike such a Variable keeps its kind as its type (``type(v) is
    nnx.Param``; flax.nnx gives it the type ``HijaxVariable``) and holds its value
    in a JAX hijax box, so a plain ``jax.jit`` or ``jax.grad`` that writes to
    it, as an argument or captured by closure, leaves the new value in it, even
    one of a new structure. Calling ``HijaxVariable(value, **metadata)`` makes a
    hijax ``nnx.Variable``.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> metrics = nnx.Variable({}, hijax=True)
    >>> @jax.jit
    ... def f(x, metrics):
    ...     metrics["x_sum"] = jnp.sum(x)
    >>> f(jnp.ones((2, 3)), metrics)
    >>> float(metrics["x_sum"]), isinstance(metrics, nnx.variablelib.HijaxVariable)
    (6.0, True)
    >>> type(nnx.Param(1.0, hijax=True)).__name__
    'Param'
    """

    def __new__(cls, value: Any, **metadata: Any) -> Variable:  # type: ignore[misc]
        return Variable(value, **{**metadata, "hijax": True})


def variable_type(x: Any) -> type | None:
    """The Variable kind of a Variable or VariableState, else None."""
    if isinstance(x, Variable):
        return type(x)
    if isinstance(x, VariableState):
        return x.type
    return None
