"""The one mechanism every transform uses: lift objects across a JAX boundary.

Design note: a transform sees ``(args, kwargs)`` holding objects anywhere. Phases:

1. ``Lifted.from_args``: flatten the arguments as a pytree whose leaves are the
   graph nodes (Objects, Variables) and ordinary JAX leaves; flatten all graph
   nodes *together* (so sharing across arguments is kept) into one ``Flat``.
2. Inside the JAX transform, ``Lifted.rebuild`` merges fresh copies from the
   arrays JAX hands us and reassembles the arguments.
3. ``collect`` flattens the copies again, together with any objects in the
   output, recording for every node which input node it came from (its origin).
   If nothing structural changed, the new arrays line up one-to-one with the
   caller's Variables.
4. Outside, ``write_back`` stores the new arrays in the caller's Variables (fast
   case) or rebuilds the caller's objects in place (``_graph.unflatten`` with
   reuse), so a new attribute or a new shared reference created inside is there
   afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu
from jax.sharding import PartitionSpec, Sharding

from nnxlike import _config, _errors, _graph, _tracking
from nnxlike._containers import Dict, List
from nnxlike._graph import Flat, flatten, is_graph_node, unflatten
from nnxlike._object import Object
from nnxlike._variables import Variable, new_variable

_set_raw = Variable._raw_value.__set__  # slot descriptor: the fastest raw write


class RawSlot(Variable):
    """Stands in, inside a transform, for a raw array held by an object.

    The transforms move Variables; a raw array attribute (data, as in flax) is
    wrapped in a slot that remembers its path, and ``flush_slots`` stores the new
    array back into the holder after the call.
    """

    __slots__ = ("_path",)


class Lifted:
    """Arguments split into a pytree skeleton, graph nodes and JAX leaves."""

    __slots__ = ("treedef", "leaves", "graph_pos", "nodes", "flat", "slots", "mode")

    def __init__(
        self,
        treedef: Any,
        leaves: list,
        graph_pos: tuple,
        nodes: tuple,
        flat: Flat,
        mode: str | None = None,
    ):
        self.treedef = treedef
        self.leaves = leaves  # JAX leaves, with None at graph positions
        self.graph_pos = graph_pos
        self.nodes = nodes  # the caller's graph nodes, in argument order
        self.flat = flat
        self.slots: tuple = ()
        # The transform's name when structural write-back is off (tree mode or
        # graph_updates=False), else None.
        self.mode = mode

    @classmethod
    def from_args(
        cls,
        tree: Any,
        *,
        track: bool = False,
        graph: bool | None = None,
        graph_updates: bool | None = None,
        fn: str = "jit",
    ) -> Lifted:
        graph, graph_updates = _config.resolve(graph, graph_updates)
        leaves, treedef = jtu.tree_flatten(tree, is_leaf=is_graph_node)
        graph_pos = tuple(i for i, x in enumerate(leaves) if is_graph_node(x))
        nodes = tuple(leaves[i] for i in graph_pos)
        for i in graph_pos:
            leaves[i] = None
        if not graph:
            _graph.check_tree(nodes, fn)
        flat = flatten(nodes, track=track)
        mode = None if graph and graph_updates else fn
        lifted = cls(treedef, leaves, graph_pos, nodes, flat, mode)
        if any(not isinstance(v, Variable) for v in flat.leaves):
            lifted._wrap_raw_arrays()
        return lifted

    def _wrap_raw_arrays(self) -> None:
        flat = self.flat
        slots = []
        for j, (path, leaf) in enumerate(zip(flat.graphdef.paths, flat.leaves)):
            if not isinstance(leaf, Variable):
                slot = new_variable(RawSlot, leaf)
                object.__setattr__(slot, "_path", path)
                flat.leaves[j] = slot
                slots.append(slot)
        self.slots = tuple(slots)

    @property
    def variables(self) -> list:
        return self.flat.leaves

    def index_by_id(self) -> dict[int, int]:
        """``id`` of each lifted Variable (or held raw array) -> its index."""
        out = {id(v): i for i, v in enumerate(self.flat.leaves)}
        if self.slots:
            for i, v in enumerate(self.flat.leaves):
                if type(v) is RawSlot:
                    out[id(v._raw_value)] = i
        return out

    def arrays(self) -> list:
        return [v._raw_value for v in self.flat.leaves]

    def rebuild(self, arrays: list, leaves: list | None = None) -> tuple[Any, Copies]:
        """Merge fresh copies from ``arrays``; return (tree, copies)."""
        built: dict[int, Any] = {}
        nodes = unflatten(self.flat.graphdef, arrays, built=built)
        copies = Copies(nodes, {id(obj): i for i, obj in built.items()})
        return self.rebuild_with(nodes, leaves), copies

    def rebuild_with(self, nodes: tuple, leaves: list | None = None) -> Any:
        full = list(self.leaves if leaves is None else leaves)
        for i, node in zip(self.graph_pos, nodes):
            full[i] = node
        return self.treedef.unflatten(full)


class Copies:
    """The merged copies of the graph nodes, and their input indices by ``id``."""

    __slots__ = ("nodes", "origin")

    def __init__(self, nodes: tuple, origin: dict[int, int]):
        self.nodes = nodes
        self.origin = origin


class Collected:
    """What ``collect`` returns: static out-structure plus the new arrays.

    ``leaf_objs[j]`` is the index (in ``graphdef``) of the j-th collected leaf,
    ``origins[k]`` the input index node ``k`` came from (-1 for new nodes).
    """

    __slots__ = (
        "graphdef",
        "origins",
        "arrays",
        "out_treedef",
        "out_leaves",
        "out_graph_pos",
        "unchanged",
        "leaf_objs",
    )

    def __init__(self, **fields: Any):
        for k, v in fields.items():
            setattr(self, k, v)

    def static(self) -> tuple:
        """The hashable part (everything but arrays and output leaves)."""
        return (
            self.graphdef,
            self.origins,
            self.out_treedef,
            self.out_graph_pos,
            self.unchanged,
            self.leaf_objs,
        )


def collect(lifted: Lifted, copies: Copies, out: Any) -> Collected:
    """Flatten the (possibly mutated) copies and any objects in ``out``."""
    out_leaves, out_treedef = jtu.tree_flatten(out, is_leaf=is_graph_node)
    out_graph_pos = tuple(i for i, x in enumerate(out_leaves) if is_graph_node(x))
    out_nodes = tuple(out_leaves[i] for i in out_graph_pos)
    if lifted.mode is not None and out_nodes:
        check_no_output_aliasing(lifted.mode, copies, out_nodes)
    for i in out_graph_pos:
        out_leaves[i] = None
    flat = flatten((copies.nodes, out_nodes), origin=copies.origin)
    origins = tuple(o for _, o in flat.objects)
    arrays = [v._raw_value if isinstance(v, Variable) else v for v in flat.leaves]
    in_gd = lifted.flat.graphdef
    if lifted.mode is not None and flat.graphdef.tree[3][0] != in_gd.tree:
        raise _errors.StructureError(
            _errors.STRUCTURE_WITHOUT_GRAPH_UPDATES.format(
                fn=lifted.mode,
                what="an attribute was added, removed or replaced by a new object",
            )
        )
    n_in = len(copies.origin)  # the input nodes (jit's spec keeps no objects)
    if lifted.mode is not None and origins[:n_in] != tuple(range(n_in)):
        # Same shapes, other objects: attributes swapped (m.a, m.b = m.b, m.a).
        raise _errors.StructureError(
            _errors.STRUCTURE_WITHOUT_GRAPH_UPDATES.format(
                fn=lifted.mode,
                what="objects or Variables were moved to other attributes",
            )
        )
    unchanged = (
        not out_graph_pos
        and flat.graphdef.tree[3][0] == in_gd.tree
        and origins == tuple(range(len(origins)))
    )
    obj_index = {id(o): k for k, (o, _) in enumerate(flat.objects)}
    return Collected(
        graphdef=flat.graphdef,
        origins=origins,
        arrays=arrays,
        out_treedef=out_treedef,
        out_leaves=out_leaves,
        out_graph_pos=out_graph_pos,
        unchanged=unchanged,
        leaf_objs=tuple(obj_index.get(id(v), -1) for v in flat.leaves),
    )


def check_no_output_aliasing(fn: str, copies: Copies, out_nodes: tuple) -> None:
    """Tree mode: an input Variable returned as an output is refused (flax).

    Without graph updates the output is rebuilt as new objects, so a returned
    input Variable would silently become a second, disconnected Variable.
    """
    flat = flatten(out_nodes)
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        if isinstance(v, Variable) and id(v) in copies.origin:
            raise ValueError(
                _errors.VARIABLE_ALIASING.format(
                    var=type(v).__name__,
                    fn=fn,
                    first="an input argument",
                    second="output" + _at(path),
                )
            )


def _at(path: tuple) -> str:
    return "".join(f"[{k!r}]" for k in path)


def check_prefix(prefix: Any, name: str, fn: str, graph: bool, updates: bool) -> None:
    """Refuse prefix entries flax refuses (``argnums``, ``in_axes``, shardings).

    A Variable is never a prefix; a prefix mapping (``DiffState``,
    ``StateSharding``, ``StateAxes``: anything with ``map_prefix``) needs graph
    mode with graph updates; a graph node is a prefix only in tree mode.
    """

    def is_leaf(x: Any) -> bool:
        return x is None or is_graph_node(x) or _is_prefix_mapping(x)

    for path, leaf in jtu.tree_flatten_with_path(prefix, is_leaf=is_leaf)[0]:
        where = jtu.keystr(path) or "<root>"
        kind = type(leaf).__name__
        # A Variable holding a sharding is an entry of what nnx.get_named_sharding
        # returns (nnxlike's documented in_shardings for an object argument).
        if isinstance(leaf, Variable) and isinstance(
            leaf._raw_value, (Sharding, PartitionSpec)
        ):
            continue
        if isinstance(leaf, Variable):
            raise ValueError(
                _errors.PREFIX_VARIABLE.format(type=kind, path=where, name=name, fn=fn)
            )
        if _is_prefix_mapping(leaf) and not (graph and updates):
            raise ValueError(
                _errors.PREFIX_MAPPING_IN_TREE_MODE.format(
                    type=kind, path=where, name=name, fn=fn
                )
            )
        if is_graph_node(leaf) and graph:
            raise ValueError(
                _errors.GRAPH_NODE_AS_PREFIX.format(
                    type=kind, path=where, name=name, fn=fn
                )
            )


def _is_prefix_mapping(x: Any) -> bool:
    # nnx.prefix's per-path result (``by_path``, flax's TreeState) is a computed
    # prefix, allowed in every mode.
    return (
        not isinstance(x, type)
        and callable(getattr(type(x), "map_prefix", None))
        and not hasattr(x, "by_path")
    )


def check_consistent_aliasing(fn: str, groups: list) -> None:
    """Each Variable reached from several arguments gets one prefix.

    ``groups`` is ``[(label, argument, prefix)]``; a Variable reachable from two
    arguments whose prefixes differ (two shardings, differentiated and not)
    raises flax's "Inconsistent aliasing" error naming every path. Shared
    helper for the transforms that take per-argument prefixes.
    """
    seen: dict[int, list] = {}
    kinds: dict[int, str] = {}
    for label, arg, prefix in groups:
        leaves = jtu.tree_flatten_with_path(arg, is_leaf=is_graph_node)[0]
        for kpath, leaf in leaves:
            if not is_graph_node(leaf):
                continue
            flat = flatten(leaf)
            for path, v in zip(flat.graphdef.paths, flat.leaves):
                if not isinstance(v, Variable):
                    continue
                where = label + jtu.keystr(kpath) + _at(path)
                seen.setdefault(id(v), []).append((where, prefix))
                kinds[id(v)] = type(v).__name__
    msgs = []
    for vid, entries in seen.items():
        prefixes = []
        for _, p in entries:
            if not any(p is q or _same(p, q) for q in prefixes):
                prefixes.append(p)
        if len(prefixes) > 1:
            lines = "\n".join(f"  {w}: {p}" for w, p in entries)
            msgs.append(f"Node: {kinds[vid]}\n{lines}")
    if msgs:
        raise ValueError(
            _errors.INCONSISTENT_ALIASING.format(fn=fn, nodes="\n".join(msgs))
        )


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays or odd types: only identity counts
        return False


def write_back(lifted: Lifted, static: tuple, arrays: list, out_leaves: list) -> Any:
    """Apply what ``collect`` found to the caller's objects; return the output."""
    graphdef, origins, out_treedef, out_graph_pos, unchanged = static[:5]
    if unchanged:
        try:
            for v, a in zip(lifted.flat.leaves, arrays):
                _set_raw(v, a)
        finally:
            _tracking.note_value_write()
        if lifted.slots:
            flush_slots(lifted)
        return out_treedef.unflatten(out_leaves)
    objects = lifted.flat.objects

    def reuse(i: int):
        o = origins[i]
        if o < 0:
            return None
        obj = objects[o]
        return obj if isinstance(obj, (Variable, _graph.Object, list, dict)) else None

    # The root is the synthetic (copies, out_nodes) tuple; tuples are values.
    _, out_nodes = unflatten(graphdef, arrays, reuse=reuse)
    full = list(out_leaves)
    for i, node in zip(out_graph_pos, out_nodes):
        full[i] = node
    return out_treedef.unflatten(full)


def flush_slots(lifted: Lifted) -> None:
    """Store each raw-array slot's value back where the array was held."""
    for slot in lifted.slots:
        _set_at(lifted.nodes, slot._path, slot._raw_value)


def _set_at(container: Any, path: tuple, value: Any) -> Any:
    """Set ``value`` at ``path``; tuples on the way are rebuilt (they are values)."""
    key = path[0]
    if len(path) > 1:
        value = _set_at(_item(container, key), path[1:], value)
    if type(container) is tuple:
        return (*container[:key], value, *container[key + 1 :])
    if isinstance(container, (List, Dict)):
        container._nnx_items[key] = value
    elif isinstance(container, Object):
        container.__dict__[key] = value
    else:
        container[key] = value
    return container


def _item(container: Any, key: Any) -> Any:
    return holder(container)[key]


def holder(container: Any) -> Any:
    """What stores ``container``'s items (an object's ``__dict__``, a List's list)."""
    if isinstance(container, (List, Dict)):
        return container._nnx_items
    if isinstance(container, Object):
        return container.__dict__
    return container


def bind_static(f: Callable, args: tuple, static: tuple) -> tuple[Callable, tuple]:
    """Split ``args`` at the ``static`` positions: ``(call, dyn)``.

    ``call(*dyn)`` is ``f(*args)`` with the static values bound as constants
    (remat's ``static_argnums``, pmap's ``static_broadcasted_argnums``).
    """
    static_vals = {i: args[i] for i in static}
    dyn = tuple(a for i, a in enumerate(args) if i not in static_vals)
    n = len(args)

    def call(*dyn_args: Any) -> Any:
        it = iter(dyn_args)
        return f(*[static_vals[i] if i in static_vals else next(it) for i in range(n)])

    return call, dyn


def refuse_bound_method(f: Any, fn: str) -> None:
    """A bound method of an object would hide the object from the transform.

    Its Variables would be read as constants (and not differentiated, mapped or
    written back), so ``nnx.vmap(model.method)`` is refused with the fix.
    """
    self_ = getattr(f, "__self__", None)
    if self_ is not None and inspect.ismethod(f) and is_graph_node(self_):
        name = getattr(f, "__name__", "method")
        raise ValueError(
            f"nnx.{fn} does not accept bound methods of nnx objects "
            f"({type(self_).__name__}.{name}): the object would be captured, its "
            "Variables compiled in as constants and its changes lost. Pass the "
            f"object as an argument: `nnx.{fn}(lambda obj, *args: obj.{name}(*args))"
            "(obj, ...)`, or decorate the method in the class body."
        )
