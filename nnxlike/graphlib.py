"""flax's ``graphlib`` module: the graph functions and their public helpers.

A thin door onto ``nnxlike._graph`` for code that writes ``nnx.graphlib.flatten``
or ``nnx.graph.Key``: ``flatten``/``unflatten`` in flax's form (the FlatState
holds ``(path, Variable)`` pairs, the model's own Variables), ``RefMap`` (a
mapping keyed by object identity), and ``GraphState``/``unpack`` (a State that
carries its GraphDef, so ``nnx.merge(graph_state)`` needs nothing else).

>>> import nnxlike as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> graphdef, flat = nnx.graphlib.flatten(model)
>>> [(path, type(v).__name__) for path, v in flat]
[(('kernel',), 'Param'), (('bias',), 'Param')]
>>> flat[0][1] is model.kernel
True
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, MutableMapping
from typing import Any

import jax.tree_util as jtu

from nnxlike import _contexts, _graph, _state
from nnxlike._contexts import ArrayRefOutput as ArrayRefOutput
from nnxlike._contexts import MergeContext as MergeContext
from nnxlike._contexts import NoUpdate as NoUpdate
from nnxlike._contexts import Repeated as Repeated
from nnxlike._contexts import SplitContext as SplitContext
from nnxlike._contexts import UpdateContext as UpdateContext
from nnxlike._contexts import current_update_context as current_update_context
from nnxlike._contexts import merge_context as merge_context
from nnxlike._contexts import split_context as split_context
from nnxlike._contexts import update_context as update_context
from nnxlike._graph import GraphDef as GraphDef
from nnxlike._graph import NodeDef as NodeDef
from nnxlike._graph import NodeRef as NodeRef
from nnxlike._graph import PureState as PureState
from nnxlike._graph import TreeNodeDef as TreeNodeDef
from nnxlike._graph import VariableDef as VariableDef
from nnxlike._graph import call as call
from nnxlike._graph import clone as clone
from nnxlike._graph import find_duplicates as find_duplicates
from nnxlike._graph import graphdef as graphdef
from nnxlike._graph import is_graph_node as is_graph_node
from nnxlike._graph import iter_graph as iter_graph
from nnxlike._graph import map_graph as map
from nnxlike._graph import merge as merge
from nnxlike._graph import pop as pop
from nnxlike._graph import recursive_map as recursive_map
from nnxlike._graph import set_metadata as set_metadata
from nnxlike._graph import split as split
from nnxlike._graph import state as state
from nnxlike._graph import update as update
from nnxlike._graph import variables as variables
from nnxlike._object import Object
from nnxlike._state import FlatState as FlatState
from nnxlike._state import State
from nnxlike._variables import Variable, fresh_indirect, is_array_ref

Key = Hashable
"""A path component: an attribute name, dict key or list index (flax's ``Key``)."""

PathParts = tuple
"""A path: a tuple of ``Key``s."""

__all__ = [
    *_contexts.__all__,
    "Repeated",
    "FlatState",
    "GraphDef",
    "GraphState",
    "IndexMap",
    "Key",
    "NodeDef",
    "NodeRef",
    "PathParts",
    "PureState",
    "RefMap",
    "TreeNodeDef",
    "VariableDef",
    "as_pure",
    "call",
    "clone",
    "find_duplicates",
    "flatten",
    "graphdef",
    "is_graph_node",
    "iter_graph",
    "map",
    "merge",
    "merge_graph_state",
    "pop",
    "pure",
    "recursive_map",
    "set_metadata",
    "split",
    "state",
    "unflatten",
    "unpack",
    "update",
    "variables",
]


class RefMap(MutableMapping):
    """A mapping keyed by object identity (Variables, Modules, array references).

    >>> import nnxlike as nnx
    >>> a, b = nnx.Param(1.0), nnx.Param(1.0)
    >>> m = nnx.graphlib.RefMap({a: 0})
    >>> a in m, b in m, len(m)
    (True, False, 1)
    """

    def __init__(self, mapping: Any = (), /) -> None:
        self._mapping: dict[int, tuple[Any, Any]] = {}
        items = mapping.items() if hasattr(mapping, "items") else mapping
        for key, value in items:
            self[key] = value

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._mapping[id(key)][1]
        except KeyError:
            raise KeyError(key) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        self._mapping[id(key)] = (key, value)

    def __delitem__(self, key: Any) -> None:
        try:
            del self._mapping[id(key)]
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator:
        return (key for key, _ in self._mapping.values())

    def __len__(self) -> int:
        return len(self._mapping)

    def __contains__(self, key: Any) -> bool:
        return id(key) in self._mapping

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{type(k).__name__}: {v!r}" for k, v in self._mapping.values()
        )
        return f"RefMap({{{inner}}})"

    @staticmethod
    def from_indexmap(indexmap: Any, /) -> RefMap:
        """The inverse of an ``IndexMap``: ``{object: index}``."""
        return RefMap((obj, index) for index, obj in indexmap.items())


class IndexMap(dict):
    """``{index: object}``: the objects ``unflatten`` built, by node index.

    Its inverse is a ``RefMap`` (``RefMap.from_indexmap``), the form ``flatten``
    takes as ``ref_outer_index`` to record which outer object each node is.

    >>> import nnxlike as nnx
    >>> p = nnx.Param(1.0)
    >>> refs = nnx.graphlib.RefMap({p: 3})
    >>> index = nnx.graphlib.IndexMap.from_refmap(refs)
    >>> index[3] is p, nnx.graphlib.RefMap.from_indexmap(index)[p]
    (True, 3)
    """

    @staticmethod
    def from_refmap(refmap: Any, /) -> IndexMap:
        return IndexMap((index, obj) for obj, index in refmap.items())


def flatten(
    node: Any,
    /,
    *,
    ref_index: RefMap | None = None,
    ref_outer_index: RefMap | None = None,
    graph: bool | None = None,
    with_paths: bool = True,
) -> tuple[GraphDef, Any]:
    """``(graphdef, flat_state)``: every leaf of ``node`` with its path.

    The flat state is a ``FlatState`` of ``(path, leaf)`` pairs in walk order
    (definition order; sorted by path in tree mode, ``graph=False``, as jax
    orders a pytree), where a Variable leaf is the model's own Variable (not a
    copy); with ``with_paths=False`` it is the plain list of leaves.
    ``ref_index``, if given, receives each Variable, Object and array reference
    found, mapped to its index. ``ref_outer_index`` (``{object: outer index}``)
    records in the GraphDef which outer object each node is, so that
    ``unflatten(..., outer_index_outer_ref=...)`` updates those objects in place.

    >>> import nnxlike as nnx
    >>> p = nnx.Param(1.0)
    >>> refs = nnx.graphlib.RefMap()
    >>> _, flat = nnx.graphlib.flatten([p, {"b": p}], ref_index=refs)
    >>> flat.paths, p in refs
    (((0,),), True)
    """
    from nnxlike import _config

    use_graph, _ = _config.resolve(graph, None)
    flat = _graph.flatten(node, tree_mode=None if use_graph else "flatten")
    gd = flat.graphdef
    if ref_index is not None:
        for i, obj in enumerate(flat.objects):
            if isinstance(obj, (Variable, Object)) and obj not in ref_index:
                ref_index[obj] = i
        for leaf in flat.leaves:
            raw = getattr(leaf, "_raw_value", leaf)
            if is_array_ref(raw) and raw not in ref_index:
                ref_index[raw] = len(ref_index)
    if ref_outer_index is not None:
        outer = tuple(ref_outer_index.get(obj, -1) for obj in flat.objects)
        gd = GraphDef(gd.tree, gd.paths, gd.tree_mode, outer)
    pairs = list(zip(gd.paths, flat.leaves))
    if not use_graph:  # jax's order: by path
        pairs.sort(key=lambda pair: _graph._path_key(pair[0]))
    if not with_paths:
        return gd, [leaf for _, leaf in pairs]
    return gd, FlatState(pairs)


def unflatten(
    graphdef: GraphDef,
    flat_state: Any,
    /,
    *,
    index_ref: IndexMap | None = None,
    outer_index_outer_ref: Any = None,
    copy_variables: bool = False,
) -> Any:
    """Rebuild a graph from ``flatten``'s output (a FlatState, list of leaves or State).

    ``index_ref``, if given, receives ``{index: object}`` for every node built.
    With ``outer_index_outer_ref`` (``{outer index: object}``) and a GraphDef
    that recorded outer indices (``flatten(..., ref_outer_index=...)``), the
    nodes that are those outer objects are updated in place, not created. As
    flax's, a Variable leaf becomes the new node's Variable itself;
    ``copy_variables=True`` gives new Variables.

    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> same = nnx.graphlib.unflatten(*nnx.graphlib.flatten(model))
    >>> type(same).__name__, same is model, same.kernel is model.kernel
    ('Linear', False, True)
    """
    if isinstance(flat_state, State):
        pairs = list(flat_state.flat_state())
    elif isinstance(flat_state, FlatState) or (
        isinstance(flat_state, list)
        and flat_state
        and all(isinstance(e, tuple) and len(e) == 2 for e in flat_state)
        and all(isinstance(e[0], tuple) for e in flat_state)
    ):
        pairs = list(flat_state)
    else:
        pairs = None
        leaves = list(flat_state)
    if pairs is not None:
        leaves = [leaf for _, leaf in pairs]
    if len(leaves) != graphdef.num_leaves:
        raise ValueError(
            f"graphlib.unflatten: Incorrect number of leaves: the GraphDef has "
            f"{graphdef.num_leaves} leaves, got {len(leaves)}; pass the flat "
            "state (or State) that flatten/split returned with it."
        )
    if pairs is not None and tuple(p for p, _ in pairs) != graphdef.paths:
        by_path = dict(pairs)
        missing = [p for p in graphdef.paths if p not in by_path]
        if missing:
            raise ValueError(
                f"graphlib.unflatten: the flat state lacks the path(s) "
                f"{missing[:10]} the GraphDef needs; pass the flat state flatten "
                "returned with it."
            )
        leaves = [by_path[p] for p in graphdef.paths]
    reuse = None
    outer = graphdef.outer
    if outer_index_outer_ref is not None and outer is not None:

        def reuse(i: int) -> Any:
            j = outer[i] if i < len(outer) else -1
            return outer_index_outer_ref.get(j) if j >= 0 else None

    if copy_variables:  # new Variables (and references), as flax's copies
        leaves = [
            fresh_indirect(x._raw_value) if isinstance(x, Variable) else x
            for x in leaves
        ]
    return _graph.unflatten(
        graphdef,
        leaves,
        reuse=reuse,
        built=index_ref,
        reuse_variables=not copy_variables,
    )


def _flatten_pytree(pytree: Any) -> tuple[list, tuple]:
    """One level of a registered pytree: ``([(key, child), ...] sorted, aux)``.

    ``aux`` remembers jax's own child order, so ``_unflatten_pytree`` restores it.

    >>> import nnxlike as nnx
    >>> children, aux = nnx.graphlib._flatten_pytree({"b": 1, "a": 2})
    >>> children, nnx.graphlib._unflatten_pytree(children, aux)
    ([('a', 2), ('b', 1)], {'a': 2, 'b': 1})
    """
    keyed, treedef = jtu.tree_flatten_with_path(
        pytree, is_leaf=lambda x: x is not pytree
    )
    nodes = [(_graph._key_of(path[0]), value) for path, value in keyed]
    key_index = {key: i for i, (key, _) in enumerate(nodes)}
    nodes.sort(key=lambda kv: _graph._path_key((kv[0],)))
    return nodes, (key_index, treedef)


def _unflatten_pytree(nodes: Any, aux: tuple) -> Any:
    """The inverse of ``_flatten_pytree``."""
    key_index, treedef = aux
    ordered = sorted(nodes, key=lambda kv: key_index[kv[0]])
    return treedef.unflatten([value for _, value in ordered])


class GraphState(MutableMapping):
    """A State that carries its GraphDef (flax's ``nnx.unpack`` result).

    It reads and writes like the State; it is a pytree whose static part holds
    the GraphDef; ``nnx.graphlib.merge_graph_state(gs)`` rebuilds the object.

    >>> import jax
    >>> import nnxlike as nnx
    >>> gs = nnx.unpack(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> gs["kernel"].shape
    (2, 3)
    >>> doubled = jax.tree.map(lambda x: 2 * x, gs)
    >>> type(nnx.graphlib.merge_graph_state(doubled)).__name__
    'Linear'
    """

    __slots__ = ("_graphdef", "_state")

    def __init__(self, graphdef: GraphDef, state: State, /) -> None:
        if not isinstance(state, State):
            raise ValueError(
                f"GraphState: expected an nnx.State, got {type(state).__name__}."
            )
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_state", state)

    @property
    def graphdef(self) -> GraphDef:
        return self._graphdef

    @property
    def state(self) -> State:
        return self._state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in GraphState.__slots__:
            raise AttributeError(name)
        return getattr(self._state, name)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return f"GraphState({self._state!r})"


# One level, like the State itself: the same key paths as the State's.
def _gs_flatten_with_keys(gs: GraphState):
    children, keys = _state._flatten_with_keys(gs._state)
    return children, (gs._graphdef, keys)


def _gs_flatten(gs: GraphState):
    children, keys = _state._flatten(gs._state)
    return children, (gs._graphdef, keys)


def _gs_unflatten(aux: tuple, children: Any) -> GraphState:
    graphdef, keys = aux
    return GraphState(graphdef, _state._unflatten(keys, children))


jtu.register_pytree_with_keys(
    GraphState, _gs_flatten_with_keys, _gs_unflatten, flatten_func=_gs_flatten
)


def unpack(node: Any, /, *filters: Any, graph: bool | None = None) -> Any:
    """``split`` whose States carry the GraphDef: one ``GraphState`` per filter.

    >>> import nnxlike as nnx
    >>> model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    >>> params, stats = nnx.unpack(model, nnx.Param, nnx.BatchStat)
    >>> sorted(params), sorted(stats)
    (['bias', 'scale'], ['mean', 'var'])
    """
    graphdef, *states = _graph.split(node, *filters, graph=graph)
    out = [GraphState(graphdef, s) for s in states]
    return out[0] if len(out) == 1 else tuple(out)


def merge_graph_state(graph_state: GraphState, /, *more: GraphState) -> Any:
    """Rebuild the object from one or more ``GraphState``s of the same GraphDef.

    >>> import nnxlike as nnx
    >>> gs = nnx.unpack(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> type(nnx.graphlib.merge_graph_state(gs)).__name__
    'Linear'
    """
    for gs in (graph_state, *more):
        if not isinstance(gs, GraphState):
            raise ValueError(
                f"merge: Expected GraphState objects, got {type(gs).__name__}; "
                f"with a GraphDef write `nnx.merge(graphdef, state)`."
            )
        if gs._graphdef != graph_state._graphdef:
            raise ValueError(
                "merge: the GraphDef must be the same for every GraphState; these "
                "come from different GraphDefs. Merge the GraphStates of one "
                "nnx.unpack call."
            )
    return _graph.merge(
        graph_state._graphdef, *(gs._state for gs in (graph_state, *more))
    )


def as_pure(tree: Any) -> Any:
    """``tree`` with every Variable replaced by its value (metadata dropped).

    Array references (``jax.Ref``, from ``ref=True`` Variables) are read into
    arrays, so the result is a plain pytree of arrays: for serialization, for
    exporting, or for optax calls that should not see Variables. The input is
    not modified.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> _, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> pure = nnx.as_pure(state)
    >>> type(pure["kernel"]).__name__, jax.tree.map(jnp.shape, dict(pure))
    ('ArrayImpl', {'bias': (3,), 'kernel': (2, 3)})
    """

    def one(x: Any) -> Any:
        if isinstance(x, Variable):
            return as_pure(x.get_raw_value())
        if is_array_ref(x):
            return x[...]
        return x

    return jtu.tree_map(one, tree, is_leaf=lambda x: isinstance(x, Variable))


def pure(tree: Any) -> Any:
    """Deprecated name of ``as_pure`` (flax.nnx renamed it); warns, then calls it.

    >>> import warnings
    >>> import nnxlike as nnx
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out = nnx.pure({"w": nnx.Param(1.0)})
    >>> out, caught[0].category.__name__
    ({'w': 1.0}, 'DeprecationWarning')
    """
    import warnings

    warnings.warn(
        "nnx.pure is deprecated; use nnx.as_pure (same arguments).",
        DeprecationWarning,
        stacklevel=2,
    )
    return as_pure(tree)
