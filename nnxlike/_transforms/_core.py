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

from typing import Any

import jax.tree_util as jtu

from nnxlike import _graph
from nnxlike._graph import Flat, flatten, is_graph_node, unflatten
from nnxlike._variables import Variable

_set_raw = Variable._raw_value.__set__  # slot descriptor: the fastest raw write


class Lifted:
    """Arguments split into a pytree skeleton, graph nodes and JAX leaves."""

    __slots__ = ("treedef", "leaves", "graph_pos", "nodes", "flat")

    def __init__(
        self, treedef: Any, leaves: list, graph_pos: tuple, nodes: tuple, flat: Flat
    ):
        self.treedef = treedef
        self.leaves = leaves  # JAX leaves, with None at graph positions
        self.graph_pos = graph_pos
        self.nodes = nodes  # the caller's graph nodes, in argument order
        self.flat = flat

    @classmethod
    def from_args(cls, tree: Any, *, track: bool = False) -> Lifted:
        leaves, treedef = jtu.tree_flatten(tree, is_leaf=is_graph_node)
        graph_pos = tuple(i for i, x in enumerate(leaves) if is_graph_node(x))
        nodes = tuple(leaves[i] for i in graph_pos)
        for i in graph_pos:
            leaves[i] = None
        return cls(treedef, leaves, graph_pos, nodes, flatten(nodes, track=track))

    @property
    def variables(self) -> list:
        return self.flat.leaves

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
    for i in out_graph_pos:
        out_leaves[i] = None
    flat = flatten((copies.nodes, out_nodes), origin=copies.origin)
    origins = tuple(o for _, o in flat.objects)
    arrays = [v._raw_value if isinstance(v, Variable) else v for v in flat.leaves]
    in_gd = lifted.flat.graphdef
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


def write_back(lifted: Lifted, static: tuple, arrays: list, out_leaves: list) -> Any:
    """Apply what ``collect`` found to the caller's objects; return the output."""
    graphdef, origins, out_treedef, out_graph_pos, unchanged = static[:5]
    if unchanged:
        for v, a in zip(lifted.flat.leaves, arrays):
            _set_raw(v, a)
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
