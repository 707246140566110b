"""to_tree/from_tree: graph nodes in a pytree as (GraphDef, State) leaves.

Design note: ``to_tree`` replaces every graph node (Object or Variable) of a pytree
by a ``NodeStates`` (its GraphDef and State(s)), all split in one
``split_context``, so sharing across the pytree is kept as references;
``from_tree`` merges them back in one ``merge_context``. With a ``ctxtag`` they
are the four steps of an ``update_context`` (see ``_contexts``). A *prefix*
(a tree prefix of the inputs, as JAX's ``in_axes``) gives each node its entry,
and a Variable reached with two different prefixes is refused (flax's
"Inconsistent aliasing"). ``TreeState`` is a node as a tree, what ``nnx.prefix``
returns in graph mode. The public door is ``nnx.extract`` (flax's module).

It does not do flax's ``to_tree2``/``from_tree2`` internals or its
``Updates``/masks bookkeeping: nnxlike's transforms write back their own way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax.tree_util as jtu

from nnxlike import _errors, _graph
from nnxlike._contexts import MergeContext, SplitContext, merge_context, split_context
from nnxlike._filters import to_predicate
from nnxlike._graph import GraphDef
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import Variable

__all__ = [
    "MISSING",
    "NodeStates",
    "PrefixMapping",
    "TreeState",
    "broadcast_prefix",
    "check_consistent_aliasing",
    "clear_non_graph_nodes",
    "default_split_fn",
    "from_tree",
    "is_tree_node",
    "merge_tree_node",
    "to_tree",
    "tree_prefix",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def _is_node(x: Any) -> bool:
    return isinstance(x, (Object, Variable))


@jtu.register_dataclass
@dataclasses.dataclass(frozen=True)
class NodeStates:
    """One graph node of a ``to_tree`` result: its GraphDef and its State(s).

    A pytree (the GraphDef has no leaves); ``metadata`` is static. Made by
    ``from_split`` (a split), ``from_states`` (States only) or ``from_prefixes``
    (an ``in_axes``-like prefix with one entry per State).

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> ns = nnx.NodeStates.from_split(*nnx.split(m, nnx.Param, ...))
    >>> len(ns.states), sorted(ns.states[0])
    (2, ['bias', 'kernel'])
    >>> nnx.NodeStates.from_prefixes((0, None)).states
    (0, None)
    """

    _graphdef: Any
    states: tuple
    metadata: Any = dataclasses.field(default=None, metadata={"static": True})

    @property
    def graphdef(self) -> GraphDef:
        if self._graphdef is None:
            raise ValueError(
                "NodeStates: no graphdef available (this NodeStates was made by "
                "from_states or from_prefixes); make it with "
                "`NodeStates.from_split(graphdef, state)`."
            )
        return self._graphdef

    @property
    def state(self) -> Any:
        if len(self.states) != 1:
            raise ValueError(
                f"NodeStates.state: expected exactly one State, got "
                f"{len(self.states)}; read `.states` instead."
            )
        return self.states[0]

    def replace(self, **changes: Any) -> NodeStates:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_split(
        cls, graphdef: Any, state: Any, /, *states: Any, metadata: Any = None
    ) -> NodeStates:
        return cls(graphdef, (state, *states), metadata)

    @classmethod
    def from_states(cls, state: Any, *states: Any) -> NodeStates:
        return cls(None, (state, *states), None)

    @classmethod
    def from_prefixes(cls, prefixes: Any, /, *, metadata: Any = None) -> NodeStates:
        return cls(None, tuple(prefixes), metadata)


class PrefixMapping:
    """A prefix that picks the prefix of each Variable: ``map_prefix(path, var)``.

    >>> import nnxlike as nnx
    >>> class ByKind(nnx.extract.PrefixMapping):
    ...     def map_prefix(self, path, variable):
    ...         return 0 if isinstance(variable, nnx.BatchStat) else None
    >>> ByKind().map_prefix(("mean",), nnx.BatchStat(1.0))
    0
    """

    def map_prefix(self, path: tuple, variable: Variable, /) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.map_prefix")


def broadcast_prefix(
    prefix_tree: Any,
    full_tree: Any,
    prefix_is_leaf: Callable[[Any], bool] | None = None,
    tree_is_leaf: Callable[[Any], bool] | None = None,
) -> list:
    """The prefix of each leaf of ``full_tree`` (graph nodes count as leaves).

    >>> import nnxlike as nnx
    >>> nnx.extract.broadcast_prefix((0, 1), ([1, 2], {"a": 3}))
    [0, 0, 1]
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))  # one leaf, not two arrays
    >>> nnx.extract.broadcast_prefix((0, 1), (m, [m, 5]))
    [0, 1, 1]
    """
    result: list = []
    is_leaf = _is_node if tree_is_leaf is None else tree_is_leaf

    def count(subtree: Any) -> int:
        return len(jtu.tree_leaves(subtree, is_leaf=is_leaf))

    def add(prefix: Any, subtree: Any) -> None:
        result.extend([prefix] * count(subtree))

    jtu.tree_map(
        add,
        prefix_tree,
        full_tree,
        is_leaf=lambda x: (
            _is_node(x) or (prefix_is_leaf is not None and prefix_is_leaf(x))
        ),
    )
    return result


def check_consistent_aliasing(
    node: Any,
    prefix: Any,
    /,
    *,
    node_prefixes: dict | None = None,
    base_path: tuple = (),
) -> None:
    """Refuse a Variable reached with two different prefixes (e.g. two vmap axes).

    ``node_prefixes`` collects ``id(variable) -> [(path, prefix), ...]`` across
    calls, so several arguments are checked together; ``base_path`` (where
    ``node`` sits among them) starts the paths the message shows.

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> seen = {}
    >>> nnx.extract.check_consistent_aliasing(m, 0, node_prefixes=seen)
    >>> try:
    ...     nnx.extract.check_consistent_aliasing(m, 1, node_prefixes=seen)
    ... except ValueError as e:
    ...     print(str(e).splitlines()[1:4])
    ['Node: Param', '  kernel: 0', '  kernel: 1']
    """
    if node_prefixes is None:
        node_prefixes = {}
    kinds: dict[int, str] = {}
    for path, value in _graph.iter_graph(node, graph=True):
        if not isinstance(value, Variable):
            continue
        if isinstance(prefix, PrefixMapping) or hasattr(prefix, "map_prefix"):
            leaf_prefix = prefix.map_prefix(path, value)  # StateAxes, PrefixMapping
        else:
            leaf_prefix = prefix
        kinds[id(value)] = type(value).__name__
        node_prefixes.setdefault(id(value), []).append(
            ((*base_path, *path), leaf_prefix)
        )
    msgs = []
    for vid, entries in node_prefixes.items():
        if len({_hashable(p) for _, p in entries}) > 1:
            lines = "\n".join(f"  {_errors.path_str(p)}: {x!r}" for p, x in entries)
            msgs.append(f"Node: {kinds.get(vid, 'Variable')}\n{lines}")
    if msgs:
        raise ValueError(
            _errors.INCONSISTENT_ALIASING.format(fn="to_tree", nodes="\n".join(msgs))
        )


def _hashable(x: Any) -> Any:
    try:
        hash(x)
        return x
    except TypeError:
        return ("<unhashable>", repr(x))


def default_split_fn(ctx: SplitContext, path: tuple, prefix: Any, leaf: Any) -> Any:
    """``to_tree``'s default: one ``NodeStates`` from ``ctx.split(leaf)``.

    >>> import nnxlike as nnx
    >>> with nnx.split_context() as ctx:
    ...     ns = nnx.extract.default_split_fn(ctx, (), None, nnx.Param(1.0))
    >>> type(ns).__name__, float(ns.state[...])
    ('NodeStates', 1.0)
    """
    return NodeStates.from_split(*ctx.split(leaf))


def to_tree(
    tree: Any,
    /,
    *,
    prefix: Any = MISSING,
    split_fn: Callable[[SplitContext, tuple, Any, Any], Any] = default_split_fn,
    map_non_graph_nodes: bool = False,
    ctxtag: Hashable | None = None,
    check_aliasing: bool = True,
) -> Any:
    """``tree`` with each graph node (Object or Variable) split into a ``NodeStates``.

    All nodes are split in one ``split_context(ctxtag)``, so a node met twice
    becomes a reference. With a ``prefix`` (a tree prefix of ``tree``, as JAX's
    ``in_axes``), ``split_fn(ctx, path, prefix, node)`` receives each node's
    prefix, and a Variable reached with two prefixes is an error.

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> pure = nnx.to_tree((m, 1, {"b": m}))
    >>> type(pure[0]).__name__, pure[1], len(nnx.to_flat_state(pure[2]["b"].state))
    ('NodeStates', 1, 0)
    >>> out = nnx.from_tree(pure)
    >>> out[0] is out[2]["b"], out[0] is m
    (True, False)
    """
    if prefix is MISSING or prefix is None:
        with split_context(ctxtag) as ctx:
            return jtu.tree_map(
                lambda x: (
                    split_fn(ctx, (), prefix, x)
                    if map_non_graph_nodes or _is_node(x)
                    else x
                ),
                tree,
                is_leaf=_is_node,
            )
    leaf_prefixes = broadcast_prefix(
        prefix, tree, prefix_is_leaf=lambda x: x is None, tree_is_leaf=_is_node
    )
    keyed, treedef = jtu.tree_flatten_with_path(tree, is_leaf=_is_node)
    if len(keyed) != len(leaf_prefixes):  # pragma: no cover  (jax checks first)
        raise ValueError(
            f"to_tree: the prefix gives {len(leaf_prefixes)} entries for "
            f"{len(keyed)} leaves; it must be a tree prefix of the inputs."
        )
    out = []
    node_prefixes: dict = {}
    with split_context(ctxtag) as ctx:
        for (keypath, leaf), leaf_prefix in zip(keyed, leaf_prefixes):
            if _is_node(leaf):
                if check_aliasing:
                    check_consistent_aliasing(
                        leaf,
                        leaf_prefix,
                        node_prefixes=node_prefixes,
                        base_path=_jax_path(keypath),
                    )
                out.append(split_fn(ctx, keypath, leaf_prefix, leaf))
            elif map_non_graph_nodes:
                out.append(split_fn(ctx, keypath, leaf_prefix, leaf))
            else:
                out.append(leaf)
    return jtu.tree_unflatten(treedef, out)


def merge_tree_node(ctx: MergeContext, path: tuple, prefix: Any, leaf: Any) -> Any:
    """``from_tree``'s default: ``ctx.merge`` of a ``NodeStates``.

    >>> import nnxlike as nnx
    >>> ns = nnx.NodeStates.from_split(*nnx.split(nnx.Param(1.0)))
    >>> with nnx.merge_context() as ctx:
    ...     v = nnx.extract.merge_tree_node(ctx, (), None, ns)
    >>> type(v).__name__
    'Param'
    """
    if not isinstance(leaf, NodeStates):
        raise ValueError(
            f"from_tree: expected a NodeStates at {_errors.path_str(_jax_path(path))}, "
            f"got {type(leaf).__name__}; pass what nnx.to_tree returned."
        )
    return ctx.merge(leaf.graphdef, *leaf.states)


def is_tree_node(x: Any) -> bool:
    """Whether ``x`` is a ``NodeStates`` (what ``from_tree`` merges by default).

    >>> import nnxlike as nnx
    >>> nnx.extract.is_tree_node(nnx.NodeStates.from_states(nnx.State({})))
    True
    """
    return isinstance(x, NodeStates)


def _jax_path(keypath: tuple) -> tuple:
    return tuple(_graph._key_of(k) for k in keypath)


def from_tree(
    tree: Any,
    /,
    *,
    prefix: Any = MISSING,
    merge_fn: Callable[[MergeContext, tuple, Any, Any], Any] = merge_tree_node,
    is_node_leaf: Callable[[Any], bool] = is_tree_node,
    is_leaf: Callable[[Any], bool] = is_tree_node,
    map_non_graph_nodes: bool = False,
    is_inner: bool | None = None,
    ctxtag: Hashable | None = None,
) -> Any:
    """Undo ``to_tree``: merge every ``NodeStates`` in one ``merge_context``.

    ``is_inner`` says which merge of the ``update_context(ctxtag)`` this is
    (``True`` inside the transform, ``False`` outside).

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> a, b = nnx.from_tree(nnx.to_tree([m, m]))
    >>> a is b, type(a).__name__
    (True, 'Linear')
    """

    def wanted(x: Any) -> bool:
        return map_non_graph_nodes or is_node_leaf(x) or isinstance(x, Variable)

    if prefix is MISSING or prefix is None:
        with merge_context(ctxtag, is_inner) as ctx:
            return jtu.tree_map(
                lambda x: merge_fn(ctx, (), prefix, x) if wanted(x) else x,
                tree,
                is_leaf=is_leaf,
            )
    leaf_prefixes = broadcast_prefix(
        prefix,
        tree,
        prefix_is_leaf=lambda x: x is None or is_leaf(x),
        tree_is_leaf=is_leaf,
    )
    keyed, treedef = jtu.tree_flatten_with_path(tree, is_leaf=is_leaf)
    out = []
    with merge_context(ctxtag, is_inner) as ctx:
        for (keypath, leaf), leaf_prefix in zip(keyed, leaf_prefixes):
            out.append(
                merge_fn(ctx, keypath, leaf_prefix, leaf) if wanted(leaf) else leaf
            )
    return jtu.tree_unflatten(treedef, out)


def clear_non_graph_nodes(tree: Any) -> Any:
    """``tree`` with every leaf that is not an Object or Variable replaced by None.

    >>> import nnxlike as nnx
    >>> p = nnx.Param(1.0)
    >>> out = nnx.extract.clear_non_graph_nodes((p, 2, {"x": 3.0}))
    >>> out[0] is p, out[1], out[2]
    (True, None, {'x': None})
    """
    return jtu.tree_map(lambda x: x if _is_node(x) else None, tree, is_leaf=_is_node)


# -- graph-mode prefixes (nnx.prefix(..., graph=True)) -----------------------------


class TreeState:
    """A graph node as a tree: its GraphDef and State (``nnx.prefix`` in graph mode).

    ``state`` holds one entry per Variable path; in a prefix it holds the
    Variable's prefix (e.g. its vmap axis). ``prefix_fn`` is the callable that
    computed the entries, ``(path, variable) -> prefix``.

    >>> import jax
    >>> import nnxlike as nnx
    >>> g, s = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> ts = nnx.extract.TreeState(g, s)
    >>> sorted(ts.state), len(jax.tree.leaves(ts))
    (['bias', 'kernel'], 2)
    """

    graphdef: Any = None
    prefix_fn: Any = None

    def __init__(self, graphdef: Any, state: Any, prefix_fn: Any = None) -> None:
        self.graphdef = graphdef
        self.__state__ = state
        self.prefix_fn = prefix_fn

    @property
    def state(self) -> Any:
        return self.__state__

    def replace(self, **changes: Any) -> TreeState:
        fields = {
            "graphdef": self.graphdef,
            "state": self.__state__,
            "prefix_fn": self.prefix_fn,
        }
        fields.update(changes)
        return type(self)(fields["graphdef"], fields["state"], fields["prefix_fn"])

    def __repr__(self) -> str:
        return f"TreeState(state={self.__state__!r})"


jtu.register_pytree_with_keys(
    TreeState,
    lambda t: (
        ((jtu.GetAttrKey("__state__"), t.__state__),),
        (t.graphdef, t.prefix_fn),
    ),
    lambda aux, children: TreeState(aux[0], children[0], aux[1]),
    flatten_func=lambda t: ((t.__state__,), (t.graphdef, t.prefix_fn)),
)


def _predicates(filter_map: Any) -> Callable[[tuple, Any], Any]:
    """``filter_map`` (callable or ``{filter: prefix}``) as one callable."""
    if callable(filter_map) and not isinstance(filter_map, Mapping):
        return filter_map
    preds = [(to_predicate(f), p) for f, p in dict(filter_map).items()]
    filters = list(dict(filter_map))

    def prefix_fn(path: tuple, leaf: Any) -> Any:
        for pred, p in preds:
            if pred(path, leaf):
                return p
        raise ValueError(
            f"No filter matched leaf at path {path!r} ({type(leaf).__name__}); "
            f"filters: {filters}. End the mapping with `...: None` to catch the rest."
        )

    return prefix_fn


def tree_prefix(node: Any, filter_map: Any) -> Any:
    """Graph-mode prefix: each top-level graph node becomes a ``TreeState``.

    The nodes are split together (shared references become references), and
    each Variable entry holds ``filter_map(path, variable)``, the path taken
    inside its node.

    >>> import nnxlike as nnx
    >>> ts = nnx.extract.tree_prefix(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), {nnx.Param: 0})
    >>> ts.state["kernel"], ts.state["bias"]
    (0, 0)
    """
    prefix_fn = _predicates(filter_map)
    with split_context() as ctx:

        def one(kp: tuple, x: Any) -> Any:
            if not _is_node(x):
                return prefix_fn(_jax_path(kp), x)
            graphdef, state = ctx.split(x)
            if not isinstance(state, State):  # a Variable root
                return TreeState(graphdef, prefix_fn(_jax_path(kp), state), prefix_fn)
            base = _jax_path(kp)
            by_path = state.flat_dict()
            entries = [prefix_fn((*base, *p), by_path[p]) for p in graphdef.paths]
            return TreeState(
                graphdef, State.from_flat(graphdef.paths, entries), prefix_fn
            )

        return jtu.tree_map_with_path(one, node, is_leaf=_is_node)
