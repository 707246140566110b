"""``Object`` (public ``nnx.Pytree``): the base of every graph node users hold.

Design note: an Object is a plain mutable Python object whose attributes form the
edges of the object graph that ``split`` walks, and, as in flax.nnx 0.12, a JAX
pytree, so plain ``jax.jit``/``jax.tree.map`` accept Modules. This file owns:

- the rules for what an attribute may hold, checked once at assignment: plain
  ``list``/``dict`` values become ``nnx.List``/``nnx.Dict`` (so in-place edits are
  seen as structural changes); raw arrays are data leaves; an array inside an
  attribute marked ``nnx.static`` is refused; a structural assignment on an
  object some transform has flattened bumps the structure version;
- which attributes are pytree *data* (children) and which are *static* (part of
  the treedef): ``nnx.data(...)``/``nnx.static(...)`` decide explicitly, else the
  value does (arrays, Variables, Objects, registered data types, and containers
  holding any of them are data; everything else is static);
- the pytree protocol: children sorted by name (flax's leaf order and key paths
  ``GetAttrKey(name)``), static attributes and the attribute order in the
  treedef, so ``jax.tree.map`` returns a new object of the same structure.

Attributes whose names start with ``_nnx_`` are bookkeeping and never part of the
graph or the pytree. The internal name of the class is ``Object``; users see it
as ``nnx.Pytree``, and ``nnx.Object`` is its non-pytree flavour (``pytree=False``).
"""

from __future__ import annotations

import dataclasses
import typing
import weakref
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _tracking
from nnxlike._variables import Variable, copy_info

# Set by _containers at import time (it depends on this module).
_LIST_TYPE: type | None = None
_DICT_TYPE: type | None = None

INTERNAL_PREFIX = "_nnx_"
_ARRAY_TYPES = (jax.Array, np.ndarray, jax.core.Tracer)
A = typing.TypeVar("A")
Data = typing.Annotated[A, "__data__"]
"""``x: nnx.Data[T]``: flax's older annotation for a data attribute (``nnx.data()``)."""
Static = typing.Annotated[A, "__static__"]
"""``x: nnx.Static[T]``: flax's older annotation for a static attribute."""
DATA_REGISTRY: set[type] = set()
_MISSING = object()


# -- nnx.data / nnx.static ---------------------------------------------------------


def data(value: Any = _MISSING, /, **kwargs: Any) -> Any:
    """Mark an attribute as pytree data (a child that JAX transforms see).

    Assign the result directly to an attribute, or use it as a dataclass field.

    >>> import jax
    >>> import nnxlike as nnx
    >>> class Foo(nnx.Pytree):
    ...     def __init__(self):
    ...         self.count = nnx.data(42)  # an int, but data
    ...         self.name = "hello"        # static
    >>> jax.tree.leaves(Foo())
    [42]
    """
    return _field(value, kwargs, static=False, name="data")


def static(value: Any = _MISSING, /, **kwargs: Any) -> Any:
    """Mark an attribute as static (part of the treedef, never a JAX leaf).

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class Foo(nnx.Pytree):
    ...     def __init__(self):
    ...         self.a = nnx.static("one")
    ...         self.b = nnx.data("two")
    >>> jax.tree.leaves(Foo())
    ['two']
    """
    return _field(value, kwargs, static=True, name="static")


def _field(value: Any, kwargs: dict, *, static: bool, name: str) -> Any:
    if value is not _MISSING and kwargs:
        raise TypeError(
            f"nnx.{name}() accepts either a single positional argument or keyword "
            "arguments (dataclass field options), not both."
        )
    metadata = {"nnx_value": value}
    extra = kwargs.pop("metadata", None)
    if extra is not None:
        if "static" in extra:
            raise ValueError(
                f"Cannot use 'static' key in metadata argument for nnx.{name}."
            )
        metadata.update(extra)
    metadata["static"] = static
    return dataclasses.field(**kwargs, metadata=metadata)


def register_data_type(type_: type, /) -> type:
    """Treat values of ``type_`` as pytree data when assigned to an attribute.

    Usable as a decorator.

    >>> import dataclasses, jax
    >>> import nnxlike as nnx
    >>> @nnx.register_data_type
    ... @dataclasses.dataclass(frozen=True)
    ... class Box:
    ...     value: int
    >>> class Foo(nnx.Pytree):
    ...     def __init__(self):
    ...         self.box = Box(1)
    >>> nnx.is_data(Box(1)), jax.tree.leaves(Foo())
    (True, [Box(value=1)])
    """
    DATA_REGISTRY.add(type_)
    return type_


def is_data(value: Any, /) -> bool:
    """True for values that are pytree data when assigned to an attribute.

    Arrays, Variables, graph nodes (Modules, Rngs, ...) and registered data types.
    Python scalars, strings and containers are not data by themselves.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> nnx.is_data(jnp.array(0)), nnx.is_data(nnx.Param(1)), nnx.is_data(42)
    (True, True, False)
    """
    return (
        isinstance(value, (*_ARRAY_TYPES, Variable, Object))
        or type(value) in DATA_REGISTRY
        or _is_array_ref(value)
    )


def has_data(value: Any, /) -> list:
    """The data leaves (arrays, Variables, graph nodes...) found inside ``value``.

    An empty list means ``value`` would be static as a Pytree attribute.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> [type(x).__name__ for x in nnx.has_data(("a", 1, jnp.ones(2), nnx.Param(0)))]
    ['ArrayImpl', 'Param']
    >>> nnx.has_data({"lr": 0.1})
    []
    """
    seen: set[int] = set()

    def stop(x: Any) -> bool:
        if id(x) in seen:
            return True
        seen.add(id(x))
        return is_data(x)

    try:
        leaves = jtu.tree_leaves(value, is_leaf=stop)
    except Exception:
        leaves = [value]
    return [x for x in leaves if is_data(x)]


def _is_array_ref(x: Any) -> bool:
    t = type(x).__name__
    return t in ("ArrayRef", "Ref", "MutableArray")


def holds_data(value: Any) -> bool:
    """``is_data`` for the value or any leaf of it (a tuple of Modules is data)."""
    if is_data(value):
        return True
    t = type(value)
    if t in (int, float, bool, str, complex, type(None)) or callable(value):
        return False
    try:
        leaves = jtu.tree_leaves(value, is_leaf=is_data)
    except Exception:
        return False
    return any(is_data(x) for x in leaves if x is not value)


def _explicit_status(value: Any) -> tuple[Any, bool | None]:
    """Unwrap ``nnx.data``/``nnx.static``: (value, True/False, or None if plain)."""
    if isinstance(value, dataclasses.Field) and "nnx_value" in value.metadata:
        return value.metadata["nnx_value"], not value.metadata["static"]
    return value, None


def dataclass(cls: Any = None, /, **kwargs: Any) -> Any:
    """``dataclasses.dataclass`` for Pytree subclasses (``nnx.data``/``nnx.static``
    fields), with the Pytree's own ``repr``.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> @nnx.dataclass
    ... class Point(nnx.Pytree):
    ...     x: jax.Array
    ...     label: str = nnx.static(default="p")
    >>> p = Point(jnp.ones(2))
    >>> jax.tree.leaves(p)[0].shape, p.label
    ((2,), 'p')
    """
    kwargs["repr"] = False

    def wrap(c: type) -> type:
        return dataclasses.dataclass(c, **kwargs)

    return wrap if cls is None else wrap(cls)


# -- the class -------------------------------------------------------------------


class Object:
    """Base class of mutable graph nodes (``Module``, ``Rngs``, ``Optimizer``...).

    Public as ``nnx.Pytree``: a registered JAX pytree whose data attributes are
    its children.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class Counter(nnx.Pytree):
    ...     def __init__(self):
    ...         self.count = nnx.Variable(jnp.array(0))
    ...         self.step = 1                      # static
    >>> c = Counter()
    >>> [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(c)[0]]
    ['.count.value']
    """

    _nnx_is_pytree = True
    _nnx_class_fields: dict = {}

    def __new__(cls, *args: Any, **kwargs: Any):
        # Remember the JAX trace the object was created in: mutating it from
        # another one (a closure under jax.jit) is refused, as in flax.nnx.
        # Objects rebuilt by merge/unflatten skip this and accept any trace.
        obj = object.__new__(cls)
        obj.__dict__["_nnx_trace"] = _tracking.get_trace_state()
        return obj

    def __init_subclass__(cls, *, pytree: bool = True, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if slots := cls.__dict__.get("__slots__", ()):
            raise TypeError(
                "Pytree currently does not support __slots__, "
                f"found __slots__={slots} in '{cls.__name__}'. Remove __slots__ "
                "(attributes of nnx objects live in their __dict__)."
            )
        cls._nnx_is_pytree = pytree
        cls._nnx_class_fields = {**_inherited_fields(cls), **_class_fields(cls)}
        if pytree:
            # The JAX pytree registry is keyed by exact type: every subclass.
            jtu.register_pytree_with_keys(
                cls,
                _flatten_with_keys,
                _unflatten_for(cls),
                flatten_func=_flatten,
            )

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith(INTERNAL_PREFIX):
            value, explicit = _explicit_status(value)
            if explicit is not None:
                _set_explicit(self, name, explicit)
            value = check_attribute(self, name, value, wrapped=explicit is not None)
            if self.__dict__.get("_nnx_tracked"):
                _tracking.bump_structure_version()
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if not name.startswith(INTERNAL_PREFIX):
            check_trace(self)
        object.__delattr__(self, name)
        fields = self.__dict__.get("_nnx_fields")
        if fields and name in fields:
            del fields[name]
        if self.__dict__.get("_nnx_tracked"):
            _tracking.bump_structure_version()

    # -- graph protocol (used by _graph) --------------------------------------
    def _nnx_children(self):
        return [
            (k, v)
            for k, v in self.__dict__.items()
            if not k.startswith(INTERNAL_PREFIX)
        ]

    def _nnx_set_children(self, items) -> None:
        d = self.__dict__
        internal = {k: v for k, v in d.items() if k.startswith(INTERNAL_PREFIX)}
        d.clear()
        d.update(items)
        d.update(internal)

    # -- pickling: bookkeeping is per process ----------------------------------
    def __getstate__(self):
        return {
            k: v
            for k, v in self.__dict__.items()
            if k in ("_nnx_fields", "_nnx_items") or not k.startswith(INTERNAL_PREFIX)
        }

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- display (registered from above: see _display) --------------------------
    def __repr__(self) -> str:
        return _tracking.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _tracking.render_treescope(self, path, subtree_renderer)


def _unflatten_for(cls: type):
    def unflatten(aux: tuple, children: Any) -> Any:
        return _unflatten(cls, aux, children)

    return unflatten


def _class_fields(cls: type) -> dict:
    """``nnx.data``/``nnx.static`` declared on the class (fields or annotations)."""
    out: dict[str, bool] = {}
    for name, value in list(cls.__dict__.items()):
        if isinstance(value, dataclasses.Field) and "static" in value.metadata:
            if not isinstance(value.metadata["static"], bool):
                raise ValueError(
                    f"Invalid 'static' metadata for attribute '{cls.__name__}."
                    f"{name}': expected bool, got "
                    f"{type(value.metadata['static']).__name__}."
                )
            out[name] = not value.metadata["static"]
    fields = getattr(cls, "__dataclass_fields__", None) or {}
    for name, f in fields.items():
        if "static" in f.metadata:
            out.setdefault(name, not f.metadata["static"])
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        hints = cls.__dict__.get("__annotations__", {})
    for name, hint in hints.items():
        meta = getattr(hint, "__metadata__", ())
        if "__data__" in meta:
            out.setdefault(name, True)
        elif "__static__" in meta:
            out.setdefault(name, False)
    return out


def _inherited_fields(cls: type) -> dict:
    out: dict = {}
    for base in reversed(cls.__mro__[1:]):
        out.update(base.__dict__.get("_nnx_class_fields", {}))
    return out


def _set_explicit(obj: Object, name: str, is_data_: bool) -> None:
    fields = obj.__dict__.get("_nnx_fields")
    if fields is None:
        fields = {}
        object.__setattr__(obj, "_nnx_fields", fields)
    fields[name] = is_data_


def _explicit(obj: Object, name: str) -> bool | None:
    fields = obj.__dict__.get("_nnx_fields")
    if fields is not None and name in fields:
        return fields[name]
    return type(obj)._nnx_class_fields.get(name)


def attribute_is_data(obj: Object, name: str, value: Any) -> bool:
    """Whether ``obj.name`` is a pytree child (see the module note)."""
    explicit = _explicit(obj, name)
    if explicit is not None:
        return explicit
    sticky = obj.__dict__.get("_nnx_sticky")
    if sticky is not None and name in sticky:
        return True
    return holds_data(value)


# -- pytree protocol -----------------------------------------------------------------


def _split_items(obj: Object):
    items = obj._nnx_children()
    order = tuple(k for k, _ in items)
    data_items = []
    static_items = []
    for k, v in items:
        name = k if isinstance(k, str) else str(k)
        if attribute_is_data(obj, name, v):
            data_items.append((k, v))
        else:
            static_items.append((k, v))
    data_items.sort(key=sort_key)
    fields = obj.__dict__.get("_nnx_fields")
    aux = (
        order,
        tuple(k for k, _ in data_items),
        tuple(static_items),
        tuple(sorted(fields.items())) if fields else (),
    )
    return data_items, aux


def key_rank(k: Any) -> tuple:
    """Where a key sorts, as flax orders children: ints first, then by name."""
    return (0, k, "") if isinstance(k, int) else (1, 0, str(k))


def sort_key(item: tuple) -> tuple:
    """Sort key of a ``(key, child)`` pair (see ``key_rank``)."""
    return key_rank(item[0])


def _key_entry(k: Any):
    return jtu.GetAttrKey(k) if isinstance(k, str) else jtu.SequenceKey(k)


def _flatten_with_keys(obj: Object):
    data_items, aux = _split_items(obj)
    return [(_key_entry(k), v) for k, v in data_items], _HashableAux(aux)


def _flatten(obj: Object):
    data_items, aux = _split_items(obj)
    return [v for _, v in data_items], _HashableAux(aux)


class _HashableAux(tuple):
    """Treedef data of an Object: static values must be hashable, with the fix."""

    __slots__ = ()

    def __hash__(self) -> int:
        try:
            return tuple.__hash__(self)
        except TypeError:
            for k, v in self[2]:
                try:
                    hash(v)
                except TypeError:
                    raise TypeError(
                        _errors.UNHASHABLE_STATIC.format(
                            where=str(k), type=type(v).__name__
                        )
                    ) from None
            raise


def _unflatten(cls: type, aux: tuple, children: Any) -> Object:
    order, data_keys, static_items, fields = aux
    by_key = dict(static_items)
    by_key.update(zip(data_keys, children))
    obj = object.__new__(cls)
    obj._nnx_set_children([(k, by_key[k]) for k in order])
    # A rebuilt object remembers which attributes were data (flax's sticky
    # status): jax.tree.map(lambda v: 0, model) gives an in_axes-like prefix
    # whose ints are still its leaves.
    # (kept apart from the explicit fields, so the treedef stays the same)
    if fields:
        object.__setattr__(obj, "_nnx_fields", dict(fields))
    if data_keys:
        object.__setattr__(obj, "_nnx_sticky", frozenset(map(str, data_keys)))
    if _tracking.under_trace():
        _link_copies(obj, data_keys, children)
    return obj


def _link_copies(obj: Object, keys: tuple, children: Any) -> None:
    """Record on traced copies where they sit, for lost-write messages."""
    from nnxlike._variables import _CopyInfo

    info = _CopyInfo()
    object.__setattr__(obj, "_nnx_copy", info)
    ref = weakref.ref(obj)
    for k, child in zip(keys, children):
        ci = copy_info(child)
        if ci is not None and ci.parent is None:
            ci.parent, ci.key = ref, k


# -- attribute rules -------------------------------------------------------------


def check_attribute(
    obj: Object, name: str, value: Any, *, wrapped: bool = False
) -> Any:
    """Validate (and normalise) a value assigned to ``obj.name``.

    ``wrapped`` is True when the value came inside ``nnx.data``/``nnx.static``.
    """
    check_trace(obj)
    t = type(value)
    explicit = _explicit(obj, name) if not name.startswith("[") else None
    if t is list and explicit is not False:
        return _LIST_TYPE(value)  # type: ignore[misc]
    if t is dict and explicit is not False:
        return _DICT_TYPE(value)  # type: ignore[misc]
    if explicit is False and holds_data(value):
        # flax's three phrases: nnx.static(...) around data ("in value"), data
        # into an attribute made static earlier ("on value"), data into an
        # attribute the class declares static ("unexpected data").
        fields = obj.__dict__.get("_nnx_fields")
        if wrapped:
            template = _errors.DATA_IN_STATIC_WRAPPER
        elif fields is not None and name in fields:
            template = _errors.DATA_ON_STATIC_ATTRIBUTE
        else:
            template = _errors.DATA_IN_STATIC_FIELD
        raise ValueError(
            template.format(type=t.__name__, name=name, cls=type(obj).__name__)
        )
    return value


def check_trace(obj: Object) -> None:
    """Refuse a structural change from a JAX trace other than the object's own."""
    created = obj.__dict__.get("_nnx_trace")
    if created is not None and created != _tracking.get_trace_state():
        raise _errors.TraceContextError(
            _errors.OBJECT_TRACE_CONTEXT.format(
                cls=type(obj).__name__, transform=_tracking.current_transform_name()
            )
        )


def check_pytree(pytree: Any) -> None:
    """Check every attribute of ``pytree`` against the attribute rules.

    >>> import nnxlike as nnx
    >>> nnx.check_pytree(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    """
    if not isinstance(pytree, Object):
        raise TypeError(f"Expected a Pytree, got {type(pytree)}.")
    for name, value in pytree._nnx_children():
        if isinstance(name, str):
            check_attribute(pytree, name, value)


class PlainObject(Object, pytree=False):
    """``nnx.Object``: a graph node that is not a JAX pytree (flax's ``pytree=False``).

    nnx transforms and ``split``/``merge`` handle it as usual; plain JAX sees it as
    an opaque leaf.
    """

    def __init_subclass__(cls, **kwargs: Any):
        pytree = kwargs.pop("pytree", False)
        if pytree is not False:
            raise ValueError(
                "Object is not a pytree, but 'pytree' was explicitly set to "
                f"{pytree!r} for type {cls}. Subclass nnx.Pytree for a pytree."
            )
        super().__init_subclass__(pytree=False, **kwargs)


PlainObject.__name__ = PlainObject.__qualname__ = "Object"
