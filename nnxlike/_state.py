"""``State``: the arrays of an object graph as a nested mapping and a JAX pytree.

Design note: a State maps keys (attribute names, list indices, dict keys) to
either a sub-State or a leaf: a Variable or a raw array. It is the currency
between objects and JAX: ``split`` produces it, ``merge``/``update`` consume
it, ``jax.tree.map`` maps over its arrays, optax updates it. Keys keep insertion
order (the order of the model's definition). As in flax.nnx 0.12, the leaves of
``nnx.state(model)`` are the model's own (live) Variables, so the State follows
later training; keep values for later with a copy,
``nnx.clone(nnx.state(model))`` (``nnx.update`` from a live State warns:
``nnx.StaleStateWarning``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, MutableMapping
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _errors, _tracking
from nnxlike._variables import Variable, same_state, variable_type


class FlatState(list):
    """A list of ``(path, leaf)`` pairs with ``paths`` and ``leaves`` views."""

    @property
    def paths(self) -> tuple:
        return tuple(p for p, _ in self)

    @property
    def leaves(self) -> list:
        return [v for _, v in self]

    def to_nested_state(self) -> State:
        return State.from_flat(self.paths, self.leaves)


class State(MutableMapping):
    """A nested mapping of Variable states; a JAX pytree over their values.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> state = nnx.state(model)
    >>> state.kernel.value.shape, state["bias"].value.shape
    ((2, 3), (3,))
    >>> doubled = jax.tree.map(lambda x: 2 * x, state)
    >>> type(doubled).__name__, doubled.kernel.type.__name__
    ('State', 'Param')
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Any = None, /):
        m: dict = {}
        if mapping is not None:
            items = mapping.items() if hasattr(mapping, "items") else mapping
            for k, v in items:
                m[k] = State(v) if type(v) is dict else v
        object.__setattr__(self, "_mapping", m)

    @classmethod
    def from_flat(cls, paths: Any, leaves: Any) -> State:
        """Build a nested State from parallel sequences of paths and leaves."""
        # Sub-States are made as their first path is seen, and paths in walk
        # order share their parent with the previous one (a layer's kernel and
        # bias), so the parent is looked up once per run of siblings.
        new, set_mapping = object.__new__, _set_mapping
        root: dict = {}
        last_prefix: Any = None
        parent = root
        for path, leaf in zip(paths, leaves):
            if not path:
                root[()] = leaf
                continue
            prefix = path[:-1]
            if prefix != last_prefix:
                parent = root
                for key in prefix:
                    child = parent.get(key)
                    if child is None:
                        child = new(cls)
                        set_mapping(child, {})
                        parent[key] = child
                    parent = child._mapping
                last_prefix = prefix
            if type(leaf) is dict:
                leaf = cls._from_raw(leaf)
            parent[path[-1]] = leaf
        s = new(cls)
        set_mapping(s, root)
        return s

    @classmethod
    def from_flat_path(cls, flat_state: Any, /) -> State:
        """A State from ``(path, leaf)`` pairs or a ``{path: leaf}`` mapping.

        >>> import nnxlike as nnx
        >>> nnx.State.from_flat_path({("a", "b"): 1, ("c",): 2}).to_pure_dict()
        {'a': {'b': 1}, 'c': 2}
        """
        items = flat_state.items() if hasattr(flat_state, "items") else flat_state
        pairs = list(items)
        return cls.from_flat([p for p, _ in pairs], [v for _, v in pairs])

    @classmethod
    def _from_raw(cls, raw: dict) -> State:
        s = object.__new__(cls)
        object.__setattr__(
            s,
            "_mapping",
            {k: cls._from_raw(v) if type(v) is dict else v for k, v in raw.items()},
        )
        return s

    # -- mapping ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return self._mapping[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._mapping[key] = State(value) if type(value) is dict else value

    def __delitem__(self, key: Any) -> None:
        del self._mapping[key]

    def __iter__(self) -> Iterator:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(
                f"State has no key {name!r}; its keys are {list(self._mapping)}."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __eq__(self, other: object) -> bool:
        if type(other) is dict:  # State() == {} as in flax.nnx
            other = State(other)
        if not isinstance(other, State):
            return NotImplemented
        a, b = self.flat_state(), other.flat_state()
        return len(a) == len(b) and all(
            pa == pb and _leaf_equal(va, vb) for (pa, va), (pb, vb) in zip(a, b)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- flat views --------------------------------------------------------------
    def flat_state(self) -> FlatState:
        """All ``(path, leaf)`` pairs, depth first, in insertion order."""
        out = FlatState()
        add = out.append
        is_state = _IS_STATE

        def walk(m: dict, prefix: tuple):
            for k, v in m.items():
                t = type(v)
                sub = is_state.get(t)
                if sub is None:  # the ABC check, once per leaf type
                    sub = is_state[t] = issubclass(t, State)
                if sub:
                    walk(v._mapping, (*prefix, k))
                elif not prefix and k == ():
                    add(((), v))
                else:
                    add(((*prefix, k), v))

        walk(self._mapping, ())
        return out

    def flat_dict(self) -> dict:
        return dict(self.flat_state())

    def leaves(self) -> list:
        return [v for _, v in self.flat_state()]

    # -- filtering -----------------------------------------------------------------
    def filter(self, *filters: Any) -> Any:
        """The sub-State(s) of leaves matching each filter (others dropped)."""
        from nnxlike._filters import to_predicate

        if not filters:
            raise TypeError("State.filter needs at least one filter.")
        preds = [to_predicate(f) for f in filters]
        flat = self.flat_state()
        outs = []
        for pred in preds:
            pairs = [(p, v) for p, v in flat if pred(p, v)]
            outs.append(State.from_flat([p for p, _ in pairs], [v for _, v in pairs]))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def split(self, *filters: Any) -> Any:
        """Partition the leaves by filters (first match wins; all must match)."""
        from nnxlike._filters import to_predicate

        if not filters:
            return self
        preds = [to_predicate(f) for f in filters]
        buckets: list[tuple[list, list]] = [([], []) for _ in filters]
        for path, leaf in self.flat_state():
            for pred, (ps, vs) in zip(preds, buckets):
                if pred(path, leaf):
                    ps.append(path)
                    vs.append(leaf)
                    break
            else:
                raise _errors.StructureError(
                    _errors.UNMATCHED_FILTER.format(
                        path=_errors.path_str(path),
                        type=(variable_type(leaf) or type(leaf)).__name__,
                        filters=f"({', '.join(map(_errors.filter_repr, filters))})",
                        first=", ".join(map(_errors.filter_repr, filters)),
                    )
                )
        outs = [State.from_flat(ps, vs) for ps, vs in buckets]
        return outs[0] if len(outs) == 1 else tuple(outs)

    @staticmethod
    def merge(state: State, /, *states: State) -> State:
        """Deep-merge States; later ones win on equal paths."""
        flat = dict(state.flat_state())
        for s in states:
            flat.update(s.flat_state())
        return State.from_flat(list(flat), list(flat.values()))

    # -- pure dicts ------------------------------------------------------------------
    def to_pure_dict(self) -> dict:
        """Nested plain dicts of raw values (no kinds or metadata).

        >>> import nnxlike as nnx
        >>> s = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
        >>> {k: v.shape for k, v in s.to_pure_dict().items()}
        {'kernel': (2, 3), 'bias': (3,)}
        """

        def conv(m: dict) -> dict:
            return {
                k: conv(v._mapping) if isinstance(v, State) else _raw(v)
                for k, v in m.items()
            }

        return conv(self._mapping)

    def replace_by_pure_dict(self, pure: dict, replace_fn: Any = None) -> None:
        """Replace values in place from nested plain dicts (as from to_pure_dict).

        Keys missing from this State are an error naming the path; ``replace_fn``
        (``(leaf, new_value) -> leaf``) customises how a leaf is replaced.
        """

        def walk(m: dict, p: Any, prefix: tuple):
            for k, v in p.items():
                key = k
                if key not in m and isinstance(k, str) and k.isdigit():
                    key = int(k)  # checkpoints often stringify list indices
                if key not in m:
                    raise _errors.StructureError(
                        f"replace_by_pure_dict: path {_errors.path_str((*prefix, k))!r}"
                        f" is not in the State; its keys there are {list(m)}."
                    )
                cur = m[key]
                if isinstance(cur, State):
                    walk(cur._mapping, v, (*prefix, key))
                elif replace_fn is not None:
                    m[key] = replace_fn(cur, v)
                elif isinstance(cur, Variable):
                    path, kind = (*prefix, key), type(cur).__name__
                    check_value_fits(
                        "replace_by_pure_dict", path, kind, cur._raw_value, v
                    )
                    m[key] = cur.replace(v)
                else:
                    m[key] = v

        walk(self._mapping, pure, ())

    def __repr__(self) -> str:
        return _tracking.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _tracking.render_treescope(self, path, subtree_renderer)


_set_mapping = State._mapping.__set__  # type: ignore[attr-defined]
_IS_STATE: dict[type, bool] = {}  # type -> is a State (sub)class, for flat_state


def _raw(v: Any) -> Any:
    if isinstance(v, Variable):
        return v._raw_value
    return v


def _leaf_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Variable) and isinstance(b, Variable):
        return same_state(a, b)
    if isinstance(a, Variable) or isinstance(b, Variable):
        return False
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return a is b


def _flatten_with_keys(s: State):
    m = s._mapping
    return [(_key_entry(k), v) for k, v in m.items()], tuple(m)


def _key_entry(k: Any):
    return jtu.SequenceKey(k) if isinstance(k, int) else jtu.DictKey(k)


def _flatten(s: State):
    m = s._mapping
    return list(m.values()), tuple(m)


def _unflatten(keys: tuple, children: Any) -> State:
    s = object.__new__(State)
    object.__setattr__(s, "_mapping", dict(zip(keys, children)))
    return s


jtu.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, _flatten)

# A FlatState is a pytree over its leaves, the paths static (flax's FlatState):
# split_context(...).flatten output passes through jax.jit like a State does.
jtu.register_pytree_node(
    FlatState,
    lambda fs: ([v for _, v in fs], tuple(p for p, _ in fs)),
    lambda paths, leaves: FlatState(zip(paths, leaves)),
)


# -- module-level forms (flax.nnx exports these as functions) ------------------------


def to_pure_dict(state: State) -> dict:
    """``state.to_pure_dict()``: nested plain dicts of raw values."""
    return _as_state(state, "to_pure_dict").to_pure_dict()


@functools.lru_cache(maxsize=256)
def _dtype_kind(dtype: Any) -> str:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return "PRNG key"
    for kind, base in (("bool", np.bool_), ("integer", np.integer)):
        if jax.dtypes.issubdtype(dtype, base):
            return kind
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        return "complex"
    return "floating" if jax.dtypes.issubdtype(dtype, np.floating) else str(dtype)


def check_value_fits(op: str, path: tuple, kind: str, old: Any, new: Any) -> None:
    """Refuse writing ``new`` where ``old`` is if it changes the shape or dtype kind.

    ``old`` is the value held now (a concrete or abstract array); a target that
    holds no array (None, a Python object) takes any value, and a Python number
    (weakly typed) fits any dtype. Adding or removing leading axes is allowed
    (stacking a model by hand for ``jax.vmap``, as flax's examples do); any other
    shape change is refused. Used by ``update`` and ``replace_by_pure_dict``.
    """
    if not (hasattr(old, "shape") and hasattr(old, "dtype")):
        return
    if isinstance(new, Variable):
        new = new._raw_value
    if isinstance(new, (bool, int, float, complex)):
        got_shape, got_dtype = (), None
    elif hasattr(new, "shape") and hasattr(new, "dtype"):
        got_shape, got_dtype = tuple(new.shape), new.dtype
    else:
        return  # not an array: not ours to judge
    old_shape = tuple(old.shape)
    if got_shape == old_shape and (got_dtype is None or got_dtype == old.dtype):
        return  # the common case: same shape, same dtype
    where = _errors.path_str(path)
    short, long = sorted((got_shape, old_shape), key=len)
    stacking = len(short) < len(long) and long[len(long) - len(short) :] == short
    if got_shape != old_shape and not stacking:
        raise _errors.StructureError(
            _errors.UPDATE_SHAPE.format(
                op=op,
                where=where,
                got=got_shape,
                kind=kind,
                expected=tuple(old.shape),
                dtype=old.dtype,
            )
        )
    if got_dtype is not None:
        got_kind, expected_kind = _dtype_kind(got_dtype), _dtype_kind(old.dtype)
        if got_kind != expected_kind:
            raise _errors.StructureError(
                _errors.UPDATE_DTYPE.format(
                    op=op,
                    where=where,
                    got=got_dtype,
                    got_kind=got_kind,
                    kind=kind,
                    expected=old.dtype,
                    expected_kind=expected_kind,
                )
            )


def replace_by_pure_dict(state: State, pure: dict, replace_fn: Any = None) -> None:
    """``state.replace_by_pure_dict(pure)``: replace values in place."""
    _as_state(state, "replace_by_pure_dict").replace_by_pure_dict(pure, replace_fn)


def restore_int_paths(pure: dict) -> dict:
    """Turn digit-string keys back into ints (list indices a checkpointer stringified).

    >>> restore_int_paths({"layers": {"0": {"w": 1}, "name": {"x": 2}}})
    {'layers': {0: {'w': 1}, 'name': {'x': 2}}}
    """
    return {
        (int(k) if isinstance(k, str) and k.isdigit() else k): (
            restore_int_paths(v) if isinstance(v, dict) else v
        )
        for k, v in pure.items()
    }


def to_flat_state(state: State) -> FlatState:
    """``state.flat_state()``: the ``(path, leaf)`` pairs."""
    return _as_state(state, "to_flat_state").flat_state()


def from_flat_state(flat: Any) -> State:
    """A State from ``(path, leaf)`` pairs (a FlatState, a list or a dict)."""
    items = list(flat.items()) if isinstance(flat, dict) else list(flat)
    return State.from_flat([p for p, _ in items], [v for _, v in items])


def filter_state(state: State, *filters: Any) -> Any:
    """``state.filter(*filters)``."""
    return _as_state(state, "filter_state").filter(*filters)


def split_state(state: State, *filters: Any) -> Any:
    """``state.split(*filters)``."""
    return _as_state(state, "split_state").split(*filters)


def merge_state(state: State, /, *states: State) -> State:
    """``State.merge(state, *states)``: later States win on equal paths."""
    return State.merge(_as_state(state, "merge_state"), *states)


def map_state(f: Any, state: State) -> State:
    """A new State with every leaf replaced by ``f(path, leaf)``.

    >>> import nnxlike as nnx
    >>> s = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> nnx.map_state(lambda path, v: v.shape, s).to_pure_dict()
    {'kernel': (2, 3), 'bias': (3,)}
    """
    flat = _as_state(state, "map_state").flat_state()
    return State.from_flat(flat.paths, [f(p, v) for p, v in flat])


def _as_state(state: Any, name: str) -> State:
    if isinstance(state, State):
        return state
    raise TypeError(
        f"nnx.{name}: expected a State (from nnx.state or nnx.split), got "
        f"{type(state).__name__}. For a model, call `nnx.state(model)` first."
    )
