"""Object graphs <-> (GraphDef, State): split, merge, update and friends.

Design note: one depth-first walk (``flatten``) turns any mix of Objects, Variables,
lists, tuples and dicts into

- a ``GraphDef``: nested tuples describing node types, attribute names, static
  values and which nodes are the same object (a node seen again becomes a
  reference to its index), hashed once and cached, so it is a cheap jit cache key;
- the Variables (and raw array leaves of plain containers) in walk order, with
  their paths.

``unflatten`` walks a GraphDef and rebuilds objects, creating each node *before*
its children so cycles close. Given a table of existing objects it updates them in
place instead of creating new ones: the same routine serves ``merge``, ``update``
with structural changes, and the write-back of every transform.

Order is insertion order (definition order of attributes), so a State reads like a
PyTorch ``state_dict``. Tuples are values (never shared by identity); lists and
dicts are shared by identity like Objects.
"""

from __future__ import annotations

import functools
import gc
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _config, _errors, _tracking
from nnxlike._filters import Filter, filters_to_predicates, to_predicate
from nnxlike._object import Object, holds_data, key_rank, sort_key
from nnxlike._state import FlatState, State, check_value_fits
from nnxlike._variables import (
    Variable,
    fresh_indirect,
    is_array_ref,
    new_variable,
    set_values,
)

# GraphDef node kinds (first element of every node tuple). PYTREE is any other
# registered JAX pytree node (a NamedTuple, an optax state, a State) held in an
# attribute: (PYTREE, treedef, ((key, child), ...)), a value like a tuple.
NODE, VAR, REF, STATIC, LEAF, PYTREE = 0, 1, 2, 3, 4, 5
_ARRAY_TYPES = (jax.Array, np.ndarray, jax.core.Tracer)


class GraphDef:
    """The static structure of an object graph: hashable, comparable, printable.

    Two graphs built the same way (same types, attribute names, static values,
    sharing pattern) have equal GraphDefs, so compiled functions are reused
    across instances:

    >>> import nnxlike as nnx
    >>> a = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> b = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
    >>> a == b, hash(a) == hash(b)
    (True, True)
    """

    __slots__ = ("tree", "paths", "num_leaves", "_hash", "tree_mode", "outer")
    __class_getitem__ = classmethod(types.GenericAlias)  # GraphDef[Model] hints

    def __init__(
        self,
        tree: tuple,
        paths: tuple,
        tree_mode: bool = False,
        outer: tuple | None = None,
    ):
        self.tree = tree
        self.paths = paths
        self.num_leaves = len(paths)
        self._hash = None
        # Made by a tree-mode walk (graph=False): flax shows it as one TreeNodeDef.
        self.tree_mode = tree_mode
        # For each node index, the index of the same object in an outer graph
        # (-1 if none): set by graphlib.flatten(ref_outer_index=...), read by
        # graphlib.unflatten(outer_index_outer_ref=...) to update objects in place.
        self.outer = outer

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            key = self.tree if self.outer is None else (self.tree, self.outer)
            h = self._hash = hash(key)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, GraphDef):
            return NotImplemented
        return (
            hash(self) == hash(other)
            and self.tree == other.tree
            and self.outer == other.outer
        )

    @property
    def root_type(self) -> type:
        return self.tree[1] if self.tree[0] in (NODE, VAR) else type(None)

    @property
    def nodes(self) -> list:
        """flax's view of the structure: one entry per node, in walk order.

        ``NodeDef`` for an object or container, ``VariableDef`` for a Variable,
        ``NodeRef`` for a node seen before (a shared reference); a tree-mode
        GraphDef (``graph=False``) is a single ``TreeNodeDef``. Built on each
        access from the nested tuples (``tree``), which are what split and merge
        use, so it costs nothing unless asked for.

        >>> import nnxlike as nnx
        >>> gd = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
        >>> [type(n).__name__ for n in gd.nodes]
        ['NodeDef', 'VariableDef', 'VariableDef']
        >>> type(nnx.graphdef(nnx.Param(1.0), graph=False).nodes[0]).__name__
        'TreeNodeDef'
        """
        if self.tree_mode:
            order = sorted(
                range(len(self.paths)), key=lambda i: _path_key(self.paths[i])
            )
            path_index = tuple((self.paths[i], i) for i in order)
            return [TreeNodeDef(self.root_type, self.tree, path_index)]
        out: list = []
        _node_defs(self.tree, self.outer, out)
        return out

    def apply(self, state: Any, *states: Any, graph: bool | None = None) -> Any:
        """Call a method of the merged object; get ``(out, (graphdef, state))``.

        ``graphdef.apply(state).method(*args)`` merges, calls, and splits the
        object again, so pure code gets the updated state back (flax's API).

        >>> import jax.numpy as jnp
        >>> import nnxlike as nnx
        >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
        >>> y, (graphdef2, state2) = graphdef.apply(state)(jnp.ones((1, 2)))
        >>> y.shape, graphdef2 == graphdef
        ((1, 3), True)
        """
        return _ApplyCaller(self, (state, *states), graph, ())

    def __repr__(self) -> str:
        return _tracking.render_text(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _tracking.render_treescope(self, path, subtree_renderer)


def _path_key(path: tuple) -> tuple:
    # Paths mix ints and strings; order ints before strings at each step.
    return tuple(map(key_rank, path))


class _Def:
    """Base of the ``GraphDef.nodes`` entries: compared and printed by fields."""

    __slots__ = ()

    def _fields(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({inner})"


class NodeDef(_Def):
    """An object or container node of a GraphDef (flax's ``NodeDef``)."""

    __slots__ = ("type", "index", "outer_index", "num_attributes", "metadata")

    def __init__(self, type, index, outer_index, num_attributes, metadata=None):
        self.type, self.index, self.outer_index = type, index, outer_index
        self.num_attributes, self.metadata = num_attributes, metadata


class VariableDef(_Def):
    """A Variable node of a GraphDef (flax's ``VariableDef``)."""

    __slots__ = ("type", "index", "outer_index", "metadata")

    def __init__(self, type, index, outer_index, metadata):
        self.type, self.index, self.outer_index = type, index, outer_index
        self.metadata = metadata


class NodeRef(_Def):
    """A node seen before in the walk: a shared reference (flax's ``NodeRef``)."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class TreeNodeDef(_Def):
    """A tree-mode GraphDef's single node (flax's ``TreeNodeDef``).

    ``treedef`` is nnxlike's structure (the GraphDef's nested tuples);
    ``path_index`` pairs each leaf path, sorted, with its leaf's position.
    """

    __slots__ = ("type", "treedef", "path_index")

    def __init__(self, type, treedef, path_index):
        self.type, self.treedef, self.path_index = type, treedef, path_index


def _node_defs(d: tuple, outer: tuple | None, out: list) -> None:
    kind = d[0]
    if kind == REF:
        out.append(NodeRef(d[1]))
    elif kind == VAR:
        o = outer[d[2]] if outer is not None and outer[d[2]] >= 0 else None
        out.append(VariableDef(d[1], d[2], o, dict(d[3])))
    elif kind == PYTREE:
        node_data = d[1].node_data()  # (the pytree's type, its aux data)
        out.append(NodeDef(node_data[0] if node_data else None, None, None, len(d[2])))
        for _, c in d[2]:
            _node_defs(c, outer, out)
    elif kind == NODE:
        index = d[2] if d[2] >= 0 else None
        o = None
        if index is not None and outer is not None and outer[index] >= 0:
            o = outer[index]
        out.append(NodeDef(d[1], index, o, len(d[3])))
        for c in d[3]:
            _node_defs(c if d[1] in (list, tuple) else c[1], outer, out)


class _ApplyCaller:
    """``graphdef.apply(state)``: records attribute/item access, then calls."""

    __slots__ = ("_graphdef", "_states", "_graph", "_access")

    def __init__(self, graphdef, states, graph, access):
        self._graphdef, self._states = graphdef, states
        self._graph, self._access = graph, access

    def __getattr__(self, name: str) -> _ApplyCaller:
        if name.startswith("__"):
            raise AttributeError(name)
        return _ApplyCaller(
            self._graphdef, self._states, self._graph, (*self._access, (0, name))
        )

    def __getitem__(self, key: Any) -> _ApplyCaller:
        return _ApplyCaller(
            self._graphdef, self._states, self._graph, (*self._access, (1, key))
        )

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        node = merge(self._graphdef, *self._states)
        fn = node
        for how, key in self._access:
            fn = getattr(fn, key) if how == 0 else fn[key]
        out = fn(*args, **kwargs)
        return out, split(node, graph=self._graph)


def call(graphdef_state: tuple, /) -> _ApplyCaller:
    """Call a method of the object a ``(graphdef, state)`` pair describes.

    Returns ``(out, (graphdef, state))`` with the updated state, so pure JAX
    code (plain ``jax.jit``) can run stateful methods; the pair is what
    ``nnx.split`` returns (flax's ``nnx.call``).

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class Counter(nnx.Module):
    ...     def __init__(self):
    ...         self.count = nnx.Variable(jnp.array(0))
    ...     def inc(self):
    ...         self.count[...] += 1
    ...         return self.count[...]
    >>> pure = nnx.split(Counter())
    >>> out, pure = jax.jit(lambda p: nnx.call(p).inc())(pure)
    >>> int(out), int(nnx.merge(*pure).count[...])
    (1, 1)
    """
    graphdef, *states = graphdef_state
    return graphdef.apply(*states)


Node = typing.TypeVar("Node")
PureState = tuple[GraphDef[Node], State]
"""``(graphdef, state)``, as ``nnx.split`` returns it: ``nnx.PureState[Model]``."""

# A GraphDef is a leafless pytree: it can be an argument of plain jax.jit.
jtu.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


def _gc_paused(fn: Callable) -> Callable:
    """Run ``fn`` with CPython's cyclic garbage collector paused.

    A walk allocates a few container objects per Variable, all of them reachable
    (no cyclic garbage), yet each allocation threshold crossed triggers a
    collection that rescans the young objects: with the collector on, ``split``
    of 4,000 Variables cost 19 µs per Variable instead of 4. Reference counting
    still frees everything as usual; only the cycle scan waits for the walk to end.
    """

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():  # nested walk, or the caller paused it
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


def is_graph_node(x: Any) -> bool:
    """True for the things ``split`` treats as part of a graph (not static values)."""
    return isinstance(x, (Object, Variable))


def _static_key(x: Any, path: tuple) -> tuple:
    try:
        hash(x)
    except TypeError:
        raise TypeError(
            _errors.UNHASHABLE_STATIC.format(
                where=_errors.path_str(path), type=type(x).__name__
            )
        ) from None
    return (STATIC, type(x), x)


class Flat:
    """The result of ``flatten``: structure, leaves, paths and objects by index."""

    __slots__ = ("graphdef", "leaves", "objects")

    def __init__(self, graphdef: GraphDef, leaves: list, objects: list):
        self.graphdef = graphdef
        self.leaves = leaves  # Variables and raw arrays, in walk order
        self.objects = objects  # every node with an index, by index


# Per-type dispatch, filled lazily: one dict lookup per visited value instead of a
# chain of isinstance checks (jax.Array's ABC check alone costs ~0.5 us).
_K_STATIC, _K_VAR, _K_OBJ, _K_CUSTOM, _K_LIST, _K_DICT, _K_TUPLE, _K_ARRAY = range(8)
_K_PYTREE = 8
_K_AREF = 9  # a bare array reference (jax.new_ref): a leaf shared by identity
_KIND: dict[type, int] = {}
_PLAIN_KINDS = frozenset({_K_LIST, _K_DICT, _K_TUPLE, _K_PYTREE})


def _is_pytree_node(x: Any) -> bool:
    """A registered JAX pytree node with children (not a leaf, not None)."""
    try:
        treedef = jtu.tree_structure(x, is_leaf=lambda y: y is not x)
    except Exception:
        return False
    return not jtu.treedef_is_leaf(treedef) and treedef.num_leaves > 0


def _key_of(entry: Any) -> Any:
    """A path key from a JAX key entry (attribute name, dict key or index)."""
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry  # pragma: no cover


def _classify(t: type, x: Any = None) -> int:
    if issubclass(t, Variable):
        k = _K_VAR
    elif issubclass(t, Object):
        generic = t._nnx_children is Object._nnx_children
        k = _K_OBJ if generic else _K_CUSTOM
    elif t is list:
        k = _K_LIST
    elif t is dict:
        k = _K_DICT
    elif t is tuple:
        k = _K_TUPLE
    elif x is not None and is_array_ref(x):
        k = _K_AREF
    elif issubclass(t, _ARRAY_TYPES):
        k = _K_ARRAY
    elif x is not None and _is_pytree_node(x):
        k = _K_PYTREE
    else:
        k = _K_STATIC
    _KIND[t] = k
    return k


@_gc_paused
def flatten(
    node: Any,
    *,
    track: bool = False,
    origin: dict | None = None,
    tree_mode: str | None = None,
    shared: tuple[dict, list] | None = None,
) -> Flat:
    """Walk ``node`` once; see the module note.

    ``track`` marks Objects so that later structural edits bump the structure
    version. ``origin`` maps ``id(obj)`` to an index in another GraphDef; when
    given, each indexed node's origin is recorded in ``Flat.objects`` as the pair
    ``(obj, origin_index or -1)``. ``tree_mode`` (the calling function's name)
    refuses shared references and non-pytree Objects, as flax's tree mode does.
    ``shared``, an ``(index_of, objects)`` pair kept by the caller, numbers the
    nodes after those of earlier walks and turns a node an earlier walk saw into
    a reference to it (``nnx.split_context``: several splits, one index).
    """
    if tree_mode is not None:
        check_tree(node, tree_mode)
    index_of: dict[int, int]
    objects: list
    index_of, objects = ({}, []) if shared is None else shared
    leaves: list = []
    paths: list = []
    kind_of = _KIND.get

    # Tree mode follows flax: a plain container (tuple, list, dict, pytree) is
    # flattened by JAX's rule, every item but None a leaf (ints included), when
    # it is the root, an item of such a container, or an Object's attribute
    # holding data; an Object's own attributes keep the data/static rule.
    plain = [False]  # set for the container visited next, by its parent

    def kind(x: Any) -> int:
        t = type(x)
        k = kind_of(t)
        return _classify(t, x) if k is None else k

    def visit_item(x: Any, path: tuple):
        plain[0] = kind(x) in _PLAIN_KINDS
        d = visit(x, path)
        plain[0] = False
        if d[0] == STATIC and x is not None:
            leaves.append(x)
            paths.append(path)
            return (LEAF,)
        return d

    def items_by(x: Any):
        """How the items of the plain container ``x`` are visited."""
        if tree_mode is None:
            return visit
        from_plain, plain[0] = plain[0], False
        return visit_item if from_plain or holds_data(x) else visit

    def visit(x: Any, path: tuple):
        t = type(x)
        k = kind_of(t)
        if k is None:
            k = _classify(t, x)
        if k == _K_STATIC:
            return (STATIC, t, x)
        if k == _K_PYTREE:
            keyed, treedef = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
            keys = [_key_of(p[0]) for p, _ in keyed]
            sub = items_by(x)
            return (
                PYTREE,
                treedef,
                tuple((key, sub(v, (*path, key))) for key, (_, v) in zip(keys, keyed)),
            )
        if k == _K_TUPLE:
            sub = items_by(x)
            return (
                NODE,
                tuple,
                -1,
                tuple([sub(v, (*path, j)) for j, v in enumerate(x)]),
            )
        if k == _K_ARRAY:
            leaves.append(x)
            paths.append(path)
            return (LEAF,)
        i = index_of.get(id(x))
        if i is not None:
            return (REF, i)
        i = len(objects)
        index_of[id(x)] = i
        objects.append(x if origin is None else (x, origin.get(id(x), -1)))
        if k == _K_AREF:  # (LEAF, index): a leaf that later REFs point to
            leaves.append(x)
            paths.append(path)
            return (LEAF, i)
        if k == _K_VAR:
            leaves.append(x)
            paths.append(path)
            meta = x._metadata
            return (VAR, t, i, tuple(meta.items()) if meta else ())
        if k == _K_OBJ:
            d = x.__dict__
            if track and "_nnx_tracked" not in d:
                d["_nnx_tracked"] = True
            children = []
            # Attributes marked nnx.static(...) stay values even when they are
            # pytrees (an optax transformation, a config NamedTuple); a value
            # marked nnx.data(...) is a State leaf even when it is a Python
            # scalar (flax's rule).
            own = d.get("_nnx_fields")
            marked = t._nnx_class_fields
            if own:
                marked = {**marked, **own} if marked else own
            add = children.append
            # The hot loop of every walk: static values and Variables (most of
            # an Object's attributes) are handled inline, without a call each.
            for key, v in d.items():
                if key[:5] == "_nnx_":
                    continue
                tv = type(v)
                kv = kind_of(tv)
                if kv is None:
                    kv = _classify(tv, v)
                if kv == _K_STATIC:
                    if marked and v is not None and marked.get(key) is True:
                        leaves.append(v)
                        paths.append((*path, key))
                        add((key, (LEAF,)))
                    else:
                        add((key, (STATIC, tv, v)))
                elif kv == _K_VAR:
                    j = index_of.get(id(v))
                    if j is not None:
                        add((key, (REF, j)))
                        continue
                    j = len(objects)
                    index_of[id(v)] = j
                    objects.append(v if origin is None else (v, origin.get(id(v), -1)))
                    leaves.append(v)
                    paths.append((*path, key))
                    meta = v._metadata
                    add((key, (VAR, tv, j, tuple(meta.items()) if meta else ())))
                elif marked and kv == _K_PYTREE and marked.get(key) is False:
                    add((key, (STATIC, tv, v)))
                else:
                    add((key, visit(v, (*path, key))))
            return (NODE, t, i, tuple(children))
        if k == _K_CUSTOM:
            if track and "_nnx_tracked" not in x.__dict__:
                x.__dict__["_nnx_tracked"] = True
            items = x._nnx_children()
        elif k == _K_DICT:
            sub = items_by(x)
            return (
                NODE,
                t,
                i,
                tuple([(key, sub(v, (*path, key))) for key, v in x.items()]),
            )
        else:  # list
            sub = items_by(x)
            return (
                NODE,
                list,
                i,
                tuple([sub(v, (*path, j)) for j, v in enumerate(x)]),
            )
        return (NODE, t, i, tuple([(key, visit(v, (*path, key))) for key, v in items]))

    plain[0] = tree_mode is not None and kind(node) in _PLAIN_KINDS
    tree = visit(node, ())
    plain[0] = False
    if tree[0] == STATIC and node is not None:  # a root value is its own leaf
        leaves.append(node)
        paths.append(())
        tree = (LEAF,)
    gd = GraphDef(tree, tuple(paths), tree_mode is not None)
    try:
        hash(gd)
    except TypeError:
        _diagnose_unhashable(tree, ())
        raise
    return Flat(gd, leaves, objects)


def check_tree(node: Any, fn: str) -> None:
    """Tree mode: refuse a graph node reachable twice, or a non-pytree Object."""
    first: dict[int, tuple] = {}
    for path, value in iter_graph(node, graph=True, _all_paths=True):
        if isinstance(value, Object) and not type(value)._nnx_is_pytree:
            raise ValueError(
                f"Cannot use '{fn}' with graph=False on a '{type(value).__name__}' "
                f"instance that has pytree=False. Found at path: "
                f"{_errors.path_str(path)}. Pytree subclasses with pytree=False are "
                "not registered as JAX pytrees and cannot be used in tree-mode. "
                f"Pass graph=True to nnx.{fn}, or use nnx.compat.{fn}."
            )
        if isinstance(value, (list, tuple, dict, Object)):
            _check_shared_array_refs(value, path, first, fn)
        if not isinstance(value, (Object, Variable)):
            continue
        _first_time(first, value, path, fn)


def _check_shared_array_refs(node: Any, path: tuple, first: dict, fn: str) -> None:
    """Tree mode: an array reference (``jax.new_ref``) held in two places."""
    if isinstance(node, Object):
        items = node._nnx_children()
    elif isinstance(node, dict):
        items = node.items()
    else:
        items = enumerate(node)
    for key, v in items:
        if not is_array_ref(v):
            continue
        _first_time(first, v, (*path, key), fn)


def _first_time(first: dict, value: Any, path: tuple, fn: str) -> None:
    """Tree mode: record where ``value`` is, or refuse its second place."""
    seen = first.get(id(value))
    if seen is not None:
        raise ValueError(
            _errors.SHARED_IN_TREE_MODE.format(
                fn=fn,
                type=type(value).__name__,
                first=_errors.path_str(seen) or "the root",
                second=_errors.path_str(path),
            )
        )
    first[id(value)] = path


def _diagnose_unhashable(d: tuple, path: tuple) -> None:
    """Raise the clear error for the first unhashable static value or metadata."""
    kind = d[0]
    if kind == PYTREE:
        for key, c in d[2]:
            _diagnose_unhashable(c, (*path, key))
    elif kind == STATIC:
        _static_key(d[2], path)
    elif kind == VAR:
        for k, m in d[3]:
            _static_key(m, (*path, f"<metadata {k}>"))
    elif kind == NODE:
        for j, c in enumerate(d[3]):
            if d[1] in (list, tuple):
                _diagnose_unhashable(c, (*path, j))
            else:
                _diagnose_unhashable(c[1], (*path, c[0]))


_new = object.__new__


@_gc_paused
def unflatten(
    graphdef: GraphDef,
    values: list,
    *,
    reuse: Callable[[int], Any] | None = None,
    built: dict[int, Any] | None = None,
    keep_variables: bool = False,
    reuse_variables: bool = False,
) -> Any:
    """Rebuild the graph from ``graphdef`` and leaf ``values`` (walk order).

    ``values`` are raw values or Variables. ``reuse(index)`` may return an
    existing object to update in place for the node with that index (or None).
    ``built``, if given, receives ``{index: object}`` for every indexed node.
    ``reuse_variables=True`` (``nnx.merge``'s default, as flax's): a Variable
    in ``values`` becomes the node's Variable itself; a raw value gets a new
    Variable. Otherwise every Variable is new (``keep_variables=True``: every
    leaf is used as given, raw values stay raw).
    """
    trace_state = _tracking.get_trace_state()
    if built is None:
        built = {}
    pos = 0

    def build(d: tuple):
        nonlocal pos
        kind = d[0]
        if kind == REF:
            return built[d[1]]
        if kind == STATIC:
            return d[2]
        if kind == VAR:
            value = values[pos]
            pos += 1
            if keep_variables:  # merge(recreate_variables=False): leaves as given
                built[d[2]] = value
                return value
            old = reuse(d[2]) if reuse is not None else None
            if isinstance(value, Variable):
                if reuse_variables and old is None:  # merge: the State's own
                    built[d[2]] = value
                    return value
                value = value._raw_value
            if old is not None:
                object.__setattr__(old, "_raw_value", value)
                _tracking.note_value_write()
                meta = dict(d[3])
                if old._metadata != meta:
                    object.__setattr__(old, "_metadata", meta)
                built[d[2]] = old
                return old
            var = new_variable(d[1], value, d[3], trace_state)
            built[d[2]] = var
            return var
        if kind == LEAF:
            value = values[pos]
            pos += 1
            if isinstance(value, Variable):
                value = value._raw_value
            if len(d) > 1:  # an array reference: later REFs are this object
                built[d[1]] = value
            return value
        if kind == PYTREE:
            return d[1].unflatten([build(c) for _, c in d[2]])
        # NODE
        cls, index, children = d[1], d[2], d[3]
        if cls is tuple:
            return tuple(build(c) for c in children)
        old = reuse(index) if reuse is not None else None
        if cls is list:
            obj = old if old is not None else []
            built[index] = obj
            obj[:] = [build(c) for c in children]
            return obj
        if cls is dict:
            obj = old if old is not None else {}
            built[index] = obj
            items = [(k, build(c)) for k, c in children]
            obj.clear()
            obj.update(items)
            return obj
        if old is not None:
            obj = old
            built[index] = obj
            items = [(k, build(c)) for k, c in children]
            if not _same_items(obj._nnx_children(), items):
                obj._nnx_set_children(items)
                if obj.__dict__.get("_nnx_tracked"):
                    _tracking.bump_structure_version()
            return obj
        obj = _new(cls)
        built[index] = obj
        items = [(k, c[2] if c[0] == STATIC else build(c)) for k, c in children]
        if _KIND.get(cls) == _K_OBJ:
            obj.__dict__.update(items)
        else:
            obj._nnx_set_children(items)
        return obj

    return build(graphdef.tree)


def _same_items(old: list, new: list) -> bool:
    return len(old) == len(new) and all(
        a[0] == b[0] and a[1] is b[1] for a, b in zip(old, new)
    )


# -- public API ----------------------------------------------------------------


def _partition(flat: Flat, filters: tuple[Filter, ...]) -> list[State]:
    """Split the leaves of ``flat`` into one State per filter (first match wins).

    The leaves are the graph's own Variables (live, as flax.nnx's and PyTorch's
    ``state_dict``): a State follows later writes to the model. Keep values for
    later with a copy: ``nnx.clone(nnx.state(model))``.
    """
    gd = flat.graphdef
    if not filters:
        return [State.from_flat(gd.paths, list(flat.leaves))]
    predicates = filters_to_predicates(filters)  # `...` only last, as flax
    buckets: list[tuple[list, list]] = [([], []) for _ in filters]
    for path, leaf in zip(gd.paths, flat.leaves):
        for pred, bucket in zip(predicates, buckets):
            if pred(path, leaf):
                bucket[0].append(path)
                bucket[1].append(leaf)
                break
        else:
            raise _errors.StructureError(
                _errors.UNMATCHED_FILTER.format(
                    path=_errors.path_str(path),
                    type=type(leaf).__name__,
                    filters=f"({', '.join(map(_errors.filter_repr, filters))})",
                    first=", ".join(map(_errors.filter_repr, filters)),
                )
            )
    return [State.from_flat(p, v) for p, v in buckets]


def _tree_mode(graph: bool | None, fn: str) -> str | None:
    return None if _config.resolve(graph, None)[0] else fn


@_gc_paused
def split(node: Any, *filters: Filter, graph: bool | None = None) -> tuple:
    """Split an object graph into a ``GraphDef`` and one ``State`` per filter.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> graphdef, params = nnx.split(model, nnx.Param)
    >>> jax.tree.map(jnp.shape, params.to_pure_dict())  # jax sorts dict keys
    {'bias': (3,), 'kernel': (2, 3)}

    With several filters every Variable goes to the first filter it matches; a
    Variable matching none is an error naming its path (end with ``...`` to catch
    the rest). ``graph=False`` (tree mode) refuses shared references. The
    States hold the object's own Variables (as flax.nnx's do).
    """
    flat = flatten(node, tree_mode=_tree_mode(graph, "split"))
    states = _partition(flat, filters)
    if flat.graphdef.paths == ((),):  # the root is itself a Variable or a leaf
        states = [s[()] if () in s._mapping else s for s in states]
    return (flat.graphdef, *states)


def _values_in_order(graphdef: GraphDef, states: tuple) -> list:
    if len(states) == 1 and isinstance(states[0], State):
        lookup = states[0].flat_dict()
    else:
        lookup = {}
        for s in states:
            if isinstance(s, FlatState):  # graphlib.flatten's (path, leaf) pairs
                lookup.update(s)
                continue
            if graphdef.paths == ((),) and not isinstance(s, (State, dict)):
                lookup[()] = s  # the root is itself a Variable or a leaf
                continue
            if not isinstance(s, State):
                s = State(s)
            lookup.update(s.flat_dict())
    try:
        values = [lookup[p] for p in graphdef.paths]
    except KeyError:
        missing = [_errors.path_str(p) for p in graphdef.paths if p not in lookup]
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise _errors.StructureError(
            f"merge: the State(s) lack {len(missing)} path(s) the GraphDef needs: "
            f"{missing[:10]}{more}. Pass every State "
            "that split returned: `nnx.merge(graphdef, state1, state2, ...)`."
        ) from None
    if len(lookup) != len(values):
        known = set(graphdef.paths)
        extra = [_errors.path_str(p) for p in lookup if p not in known]
        more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
        raise _errors.StructureError(
            f"merge: the State(s) hold {len(extra)} path(s) the GraphDef does not "
            f"have: {extra[:10]}{more}. The State comes from a different structure; "
            "filter it first (`state.filter(...)`) or merge with the GraphDef "
            "that split returned alongside it."
        )
    return values


@_gc_paused
def merge(
    graphdef: GraphDef,
    *states: Any,
    copy: bool = False,
    recreate_variables: bool = True,
) -> Any:
    """Rebuild objects from a GraphDef and the States ``split`` produced.

    As flax.nnx: the State's Variables become the new object's Variables (a
    raw array leaf gets a new Variable, or stays raw with
    ``recreate_variables=False``), so the merged object and the State share
    them; ``copy=True`` gives the new object new Variables.

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> same = nnx.merge(*nnx.split(model))
    >>> type(same).__name__, same is model, same.kernel is model.kernel
    ('Linear', False, True)
    >>> nnx.merge(*nnx.split(model), copy=True).kernel is model.kernel
    False
    """
    if hasattr(graphdef, "_graphdef") and hasattr(graphdef, "_state"):
        # nnx.merge(graph_state, ...): GraphStates carry their GraphDef.
        for s in states:
            if not (hasattr(s, "_graphdef") and hasattr(s, "_state")):
                raise ValueError(
                    "merge: Expected GraphState objects after a GraphState, got "
                    f"{type(s).__name__}. Pass only what nnx.unpack returned: "
                    "`nnx.merge(params, rest)`, or split the object for "
                    "`nnx.merge(graphdef, state)`."
                )
            if s._graphdef != graphdef._graphdef:
                raise ValueError(
                    "merge: the GraphDef must be the same for every GraphState; "
                    "these come from differently structured objects. Merge the "
                    "GraphStates of one nnx.unpack call."
                )
        all_gs = (graphdef, *states)
        graphdef = all_gs[0]._graphdef
        states = tuple(s._state for s in all_gs)
    if not isinstance(graphdef, GraphDef):
        raise TypeError(
            f"merge: expected a GraphDef as first argument, got "
            f"{type(graphdef).__name__}. Usage: `nnx.merge(graphdef, state)`."
        )
    if not states:
        raise TypeError(
            "merge() missing 1 required positional argument: 'state'. Pass the "
            "State(s) split returned: `nnx.merge(graphdef, state)`."
        )
    if graphdef.paths == ((),) and len(states) == 1:
        root = states[0]
        if not isinstance(root, (State, dict, FlatState)):
            if copy and isinstance(root, Variable):
                raw = fresh_indirect(root._raw_value)
                ts = _tracking.get_trace_state()
                return new_variable(type(root), raw, root._metadata, ts)
            return root  # a root Variable or leaf: nothing to rebuild
    values = _values_in_order(graphdef, states)
    if copy:  # new Variables (and new references/boxes, as flax's copies)
        values = [
            fresh_indirect(v._raw_value) if isinstance(v, Variable) else v
            for v in values
        ]
        return unflatten(graphdef, values)
    return unflatten(
        graphdef,
        values,
        keep_variables=not recreate_variables,
        reuse_variables=True,
    )


def graphdef(node: Any, /, *, graph: bool | None = None) -> GraphDef:
    """The GraphDef of ``node`` (its static structure)."""
    return flatten(node, tree_mode=_tree_mode(graph, "graphdef")).graphdef


@_gc_paused
def state(node: Any, *filters: Filter, graph: bool | None = None) -> Any:
    """The ``State`` of ``node``; with several filters, one State per filter.

    Unlike ``split``, Variables matching no filter are simply left out. The
    leaves are the model's own Variables (as in flax.nnx, and like PyTorch's
    ``state_dict``), so the State follows later training; keep values for
    later with a copy: ``nnx.clone(nnx.state(model))``.

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> sorted(nnx.state(model, nnx.Param).to_pure_dict())
    ['bias', 'kernel']
    >>> nnx.state(model)["kernel"] is model.kernel
    True
    >>> nnx.clone(nnx.state(model))["kernel"] is model.kernel
    False
    """
    flat = flatten(node, tree_mode=_tree_mode(graph, "state"))
    if filters:  # a path string matching nothing is most likely a typo
        tags = {getattr(v, "tag", None) for v in flat.leaves}
        _errors.warn_unmatched_path_filters(
            "nnx.state", type(node).__name__, filters, flat.graphdef.paths, 4, tags
        )
    if not filters:
        return _partition(flat, ())[0]
    # Variables matching no filter are left out: a catch-all last bucket takes
    # them, unless the last filter already catches everything.
    if filters[-1] is Ellipsis or filters[-1] is True:
        states = _partition(flat, filters)
    else:
        states = _partition(flat, (*filters, ...))[:-1]
    return states[0] if len(filters) == 1 else tuple(states)


_ARRAY_LIKE: set[type] = set()  # value types seen with .shape and .dtype
_JAX_ARRAYS: set[type] = set()  # jax.Array types: equal avals, same shape and dtype


@_gc_paused
def update(node: Any, *states: Any) -> None:
    """Write the values of ``states`` into the Variables of ``node`` in place.

    Paths in the State must exist in ``node``, except the last step of a path
    naming a new attribute of an Object, which is created. A State whose every
    leaf is the very Variable of ``node`` it would write (``nnx.state(node)``
    itself, live) writes nothing and warns (``nnx.StaleStateWarning``).
    """
    flat = flatten(node)
    own_paths, own_leaves = flat.graphdef.paths, flat.leaves
    n_own = len(own_paths)
    by_path = None  # built only when a State's paths leave the walk order
    targets, values = [], []  # checked first, written after: a refused value
    new_paths, metas = [], []  # changes nothing
    own, first = 0, ()  # leaves that are the very Variable they would write
    for s in states:
        if not isinstance(s, State):
            if isinstance(s, Variable) or not hasattr(s, "items"):
                # split of a root Variable (or leaf) returns the leaf itself
                s = State.from_flat([()], [s])
            else:
                s = State(s)
        pos = 0  # a State from split/state lists its paths in walk order
        for path, leaf in s.flat_state():
            if pos < n_own and own_paths[pos] == path:
                target = own_leaves[pos]
                pos += 1
            else:
                if by_path is None:
                    by_path = dict(zip(own_paths, own_leaves))
                target = by_path.get(path)
                if target is None:
                    # A second path to a shared Variable (weight tying) is not
                    # in by_path: write through it rather than replace it.
                    target = _lookup(node, path)
            if not isinstance(target, Variable):
                new_paths.append((path, leaf))
                continue
            if isinstance(leaf, Variable):
                if leaf is target:
                    own, first = own + 1, first if own else path
                    continue  # a live State's own Variable: nothing to write
                value = leaf._raw_value
                meta = leaf._metadata
                if meta and meta is not target._metadata:
                    metas.append((target, meta))
            else:
                value = leaf
            old = target._raw_value
            if value is not old:
                t = type(value)
                if t is not type(old) or not (  # the common case, without a call
                    value.aval == old.aval  # equal avals: same shape and dtype
                    if t in _JAX_ARRAYS
                    else (
                        t in _ARRAY_LIKE
                        and value.shape == old.shape
                        and value.dtype == old.dtype
                    )
                ):
                    check_value_fits("update", path, type(target).__name__, old, value)
                    if isinstance(value, jax.Array) and hasattr(value, "aval"):
                        _JAX_ARRAYS.add(t)
                    elif hasattr(value, "shape") and hasattr(value, "dtype"):
                        _ARRAY_LIKE.add(t)
            targets.append(target)
            values.append(value)
    if own and not targets and not new_paths:
        warnings.warn(
            _errors.STALE_STATE.format(
                what=type(node).__name__, n=own, first=_errors.path_str(first)
            ),
            _errors.StaleStateWarning,
            stacklevel=3,
        )
    for path, leaf in new_paths:
        _set_new_path(node, path, leaf)
    set_values(targets, values)  # the trace is read once, not per Variable
    for target, meta in metas:
        if meta != target._metadata:
            target.set_metadata(**meta)


def _lookup(node: Any, path: tuple) -> Any:
    """The value at ``path`` in ``node``, or None where the path does not exist."""
    try:
        for key in path:
            node = _child(node, key)
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return node


def _set_new_path(node: Any, path: tuple, leaf: Any) -> None:
    if not path:
        raise _errors.StructureError(
            f"update: the root ({type(node).__name__}) holds no Variable "
            "to write into; update objects that hold Variables."
        )
    parent = node
    for key in path[:-1]:
        try:
            parent = _child(parent, key)
        except (AttributeError, KeyError, IndexError, TypeError):
            raise _errors.StructureError(
                f"update: path {_errors.path_str(path)!r} does not exist in "
                f"{type(node).__name__} (no {key!r} under "
                f"{type(parent).__name__}). Update only paths the object has, or "
                "create the attribute first."
            ) from None
    value = leaf.to_variable() if isinstance(leaf, Variable) else leaf
    key = path[-1]
    if isinstance(parent, (list, dict)) or hasattr(parent, "_nnx_remove"):
        try:
            parent[key] = value  # containers (incl. nnx.List/Dict) hold items
            return
        except IndexError:
            pass
    elif isinstance(parent, Object):
        setattr(parent, key, value)
        return
    raise _errors.StructureError(
        f"update: cannot set {_errors.path_str(path)!r} on a "
        f"{type(parent).__name__}; update only paths the object has."
    )


def _child(parent: Any, key: Any) -> Any:
    # Containers (list, dict, nnx.List, nnx.Dict) hold items; other Objects attributes.
    if isinstance(parent, (list, dict)) or hasattr(parent, "_nnx_remove"):
        return parent[key]
    return getattr(parent, key)


@_gc_paused
def clone(
    node: Any,
    variables: bool = True,
    *,
    arrays: bool = False,
    graph: bool | None = None,
) -> Any:
    """A deep copy of the graph with new Variables (arrays are shared, immutable).

    ``variables=False`` keeps the Variables themselves (a new structure over the
    same Variables, so writes through either are seen by both); ``arrays=True``
    also copies the arrays into new buffers (so donating one copy leaves the
    other intact).
    """
    if arrays and not variables:
        raise ValueError(
            "clone: arrays=True copies the arrays into new Variables, so it needs "
            "variables=True (the default)."
        )
    flat = flatten(node, tree_mode=_tree_mode(graph, "clone"))
    values = [_leaf_value(v) for v in flat.leaves]
    if arrays:
        values = [jax.numpy.copy(v) if isinstance(v, jax.Array) else v for v in values]
    if not variables:
        objects = flat.objects
        return unflatten(
            flat.graphdef,
            values,
            reuse=lambda i: objects[i] if isinstance(objects[i], Variable) else None,
        )
    # New Variables get new references/boxes (ref=True/hijax=True), as flax's
    # copies do: a write to the clone must not reach the original.
    values = [
        fresh_indirect(x) if isinstance(v, Variable) else x
        for v, x in zip(flat.leaves, values)
    ]
    return unflatten(flat.graphdef, values)


def _leaf_value(x: Any) -> Any:
    return x._raw_value if isinstance(x, Variable) else x


@_gc_paused
def pop(node: Any, *filters: Filter) -> Any:
    """Remove the Variables matching ``filters`` from ``node``; return their State(s).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class M(nnx.Module):
    ...     def __call__(self, x):
    ...         self.sow(nnx.Intermediate, "h", x * 2)
    ...         return x
    >>> m = M()
    >>> _ = m(jnp.ones(2))
    >>> jax.tree.map(jnp.shape, nnx.pop(m, nnx.Intermediate).to_pure_dict())
    {'h': ((2,),)}
    >>> hasattr(m, "h")
    False
    """
    if not filters:
        raise TypeError(
            "pop: give at least one filter, e.g. `nnx.pop(model, nnx.Intermediate)`."
        )
    flat = flatten(node)
    predicates = [to_predicate(f) for f in filters]
    buckets: list[tuple[list, list]] = [([], []) for _ in filters]
    to_remove = []
    for path, leaf in zip(flat.graphdef.paths, flat.leaves):
        if not path:
            continue  # the root itself cannot be removed from itself
        for pred, bucket in zip(predicates, buckets):
            if pred(path, leaf):
                bucket[0].append(path)
                bucket[1].append(leaf)  # the removed Variable itself, as flax
                to_remove.append(path)
                break
    # Remove last-first: deleting a list item shifts the indices of later ones.
    for path in reversed(to_remove):
        _remove_path(node, path)
    states = [State.from_flat(p, v) for p, v in buckets]
    return states[0] if len(states) == 1 else tuple(states)


def _remove_path(node: Any, path: tuple) -> None:
    parent = node
    for key in path[:-1]:
        parent = _child(parent, key)
    key = path[-1]
    if isinstance(parent, Object):
        if hasattr(parent, "_nnx_remove"):
            parent._nnx_remove(key)
        else:
            delattr(parent, key)
    elif isinstance(parent, (list, dict)):
        del parent[key]


def iter_graph(
    node: Any,
    /,
    *,
    graph: bool | None = None,
    _all_paths: bool = False,
    _sorted: bool = False,
) -> Iterator[tuple[tuple, Any]]:
    """Yield ``(path, value)`` for every node, Variable and leaf, each object once.

    Children come before their parent (post-order), the root last, as in flax.nnx.

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> [(p, type(v).__name__) for p, v in nnx.iter_graph(model)]
    [(('kernel',), 'Param'), (('bias',), 'Param'), ((), 'Linear')]
    """
    if not _config.resolve(graph, None)[0]:
        check_tree(node, "iter_graph")
    seen: set[int] = set()

    def visit(x, path):
        if isinstance(x, (Object, Variable, list, dict)):
            if id(x) in seen:
                if _all_paths:
                    yield path, x
                return
            seen.add(id(x))
        if isinstance(x, Object):
            items = x._nnx_children()
            for k, v in sorted(items, key=sort_key) if _sorted else items:
                yield from visit(v, (*path, k))
        elif isinstance(x, (list, tuple)):
            for k, v in enumerate(x):
                yield from visit(v, (*path, k))
        elif isinstance(x, dict):
            items = x.items()
            for k, v in sorted(items, key=sort_key) if _sorted else items:
                yield from visit(v, (*path, k))
        elif not isinstance(x, (Variable, *_ARRAY_TYPES)):
            kind = _KIND.get(type(x))
            if kind is None:
                kind = _classify(type(x), x)
            if kind == _K_PYTREE:
                keyed, _ = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
                for p, v in keyed:
                    yield from visit(v, (*path, _key_of(p[0])))
            return  # static values are not graph members
        yield path, x

    yield from visit(node, ())


def variables(node: Any, *filters: Filter) -> State:
    """Like ``state`` (whose leaves are the live Variables too), Variables only."""
    flat = flatten(node)
    pred = (
        to_predicate(filters[0] if len(filters) == 1 else filters) if filters else None
    )
    pairs = [
        (p, v)
        for p, v in zip(flat.graphdef.paths, flat.leaves)
        if isinstance(v, Variable) and (pred is None or pred(p, v))
    ]
    return State.from_flat([p for p, _ in pairs], [v for _, v in pairs])


def set_metadata(
    node: Any, *filters: Filter, only: Filter = ..., **metadata: Any
) -> None:
    """Set ``metadata`` on every Variable in ``node`` that matches ``filters``.

    No filter means every Variable; ``only=`` is flax.nnx's keyword for the
    same (both given: a Variable must match both). Metadata is part of the
    GraphDef, so a later ``nnx.jit`` call sees the change (and compiles again if
    it matters).

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> nnx.set_metadata(model, "bias", frozen=True)
    >>> model.bias.frozen, hasattr(model.kernel, "frozen")
    (True, False)
    >>> nnx.set_metadata(model, only=nnx.Param, note="w")
    >>> model.kernel.note, model.bias.note
    ('w', 'w')
    """
    pred = to_predicate(filters[0] if len(filters) == 1 else filters or ...)
    only_pred = to_predicate(only)
    for path, value in iter_graph(node):
        if isinstance(value, Variable) and pred(path, value) and only_pred(path, value):
            for name, v in metadata.items():
                setattr(value, name, v)


def find_duplicates(node: Any, /, *, only: Filter = ...) -> list[list[tuple]]:
    """The paths of every Object or Variable reachable by more than one path.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> m = nnx.Module()
    >>> m.a = nnx.Param(jnp.array(1.0))
    >>> m.b = m.a  # a shared (tied) Variable
    >>> nnx.find_duplicates(m)
    [[('a',), ('b',)]]
    """
    pred = to_predicate(only)
    paths: dict[int, list[tuple]] = {}

    def visit(x: Any, path: tuple) -> None:
        if isinstance(x, (Object, Variable)):
            seen = paths.get(id(x))
            if seen is not None:
                if pred(path, x):
                    seen.append(path)
                return
            paths[id(x)] = [path]
            if isinstance(x, Object):
                for k, v in x._nnx_children():
                    visit(v, (*path, k))
        elif isinstance(x, (list, tuple)):
            for k, v in enumerate(x):
                visit(v, (*path, k))
        elif isinstance(x, dict):
            for k, v in x.items():
                visit(v, (*path, k))

    visit(node, ())
    return [p for p in paths.values() if len(p) > 1]


def map_graph(
    f: Callable[[tuple, Any], Any],
    node: Any,
    /,
    *,
    graph: bool | None = None,
    recreate_variables: bool = True,
) -> Any:
    """``nnx.map``: a new graph with every State leaf replaced by ``f(path, leaf)``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v[...])), model)
    >>> float(abs(zeros.kernel[...]).sum()), zeros is model
    (0.0, False)
    """
    graphdef, state = split(node, graph=graph)
    if isinstance(state, State):
        flat = state.flat_state()
        state = State.from_flat(flat.paths, [f(p, v) for p, v in flat])
    else:  # the root is a Variable or a leaf
        state = f((), state)
    return merge(graphdef, state, recreate_variables=recreate_variables)


def recursive_map(
    f: Callable[[tuple, Any], Any], node: Any, /, *, graph: bool | None = None
) -> Any:
    """Apply ``f(path, x)`` to every node and leaf, children first; ``f``'s
    result replaces ``x`` in its parent. The input is not modified (its structure
    is cloned; Variables are shared unless ``f`` replaces them).

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    >>> seen = []
    >>> _ = nnx.recursive_map(lambda p, x: (seen.append((p, type(x).__name__)), x)[1],
    ...                       model)
    >>> seen[-2:]
    [(('layers',), 'List'), ((), 'Sequential')]
    """
    tree = not _config.resolve(graph, None)[0]
    if tree:
        check_tree(node, "recursive_map")
    node = clone(node, variables=False, graph=True)
    results: dict[int, Any] = {}
    visiting: set[int] = set()

    def visit(x: Any, path: tuple) -> Any:
        shared = isinstance(x, (Object, Variable))
        if shared:
            if id(x) in results:
                return results[id(x)]
            if id(x) in visiting:
                raise ValueError(
                    f"Found cycle in the graph at path '{_errors.path_str(path)}'. "
                    f"Node of type {type(x)} has already been visited but has not "
                    "been returned yet."
                )
            visiting.add(id(x))
        if isinstance(x, Object):
            for k, v in list(x._nnx_children()):
                new = visit(v, (*path, k))
                if new is not v:
                    _set_child(x, k, new)
        elif isinstance(x, (list, dict)):
            items = enumerate(x) if isinstance(x, list) else list(x.items())
            for k, v in list(items):
                new = visit(v, (*path, k))
                if new is not v:
                    x[k] = new
        elif type(x) is tuple:
            x = tuple(visit(v, (*path, k)) for k, v in enumerate(x))
        out = f(path, x)
        if shared:
            results[id(x)] = out
        return out

    return visit(node, ())


def _set_child(obj: Object, key: Any, value: Any) -> None:
    if hasattr(obj, "_nnx_remove"):  # nnx.List / nnx.Dict hold items
        obj[key] = value
    else:
        setattr(obj, key, value)
