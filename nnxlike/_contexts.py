"""Split/merge contexts: several splits sharing one index, and custom lifts.

Design note: ``split_context`` keeps one node index across several ``ctx.split``
calls (the ``shared`` tables of ``_graph.flatten``), so a node split a second time
becomes a reference to the first split and its Variables are not repeated;
``merge_context`` keeps the matching ``{index: object}`` table, so the merges
rebuild one graph with the sharing intact.

``update_context(tag)`` is flax's bookkeeping for writing a custom lifted
transform from plain JAX ones, in four steps::

    (2) inner merge --------------> (3) inner split      inside the transform
         ^                                 |
    (1) outer split --------------> (4) outer merge      outside

(1) records the outer objects by index; (2) maps each outer index to the inner
copy it rebuilt; (3) writes into its GraphDef, for each node, the outer index it
came from (``GraphDef.outer``: the GraphDef is the transform's static output,
so a cached trace still carries it); (4) rebuilds the result onto
the outer objects found by those indices, updating them in place, so structural
changes (new attributes, new shared references, swapped Variables) reach the
caller. Variables holding array references (``ref=True``) that came from outside
return ``NoUpdate`` from (3), as they were written in place; new ones return
their value as ``ArrayRefOutput`` and become new references in (4).

``to_tree``/``from_tree`` (``_extract``) apply these contexts over a pytree.

What this file does not do: flax's ``cached_partial`` static cache (nnxlike's
``nnx.jit`` has its own fast path), and tree-mode (``graph=False``) splits: the
contexts are a graph-mode API.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

import jax
import jax.tree_util as jtu

from nnxlike import _errors, _graph, _tracking
from nnxlike._graph import GraphDef
from nnxlike._object import Object
from nnxlike._state import FlatState, State
from nnxlike._variables import Variable, is_array_ref, new_variable

__all__ = [
    "ArrayRefOutput",
    "MergeContext",
    "NoUpdate",
    "SplitContext",
    "UpdateContext",
    "current_update_context",
    "merge_context",
    "split_context",
    "update_context",
]


# -- markers in the State an inner split returns ---------------------------------


@jtu.register_static
@dataclasses.dataclass(frozen=True, slots=True)
class NoUpdate:
    """The value of a reference Variable that came from outside (written in place).

    An inner split (step 3 of ``update_context``) returns it instead of the array
    reference: the outer Variable already holds the reference, so the outer merge
    leaves it as it is. It is a pytree without leaves.

    >>> import jax
    >>> import nnxlike as nnx
    >>> jax.tree.leaves(nnx.graphlib.NoUpdate())
    []
    """


NO_UPDATE = NoUpdate()


@jtu.register_static
@dataclasses.dataclass(frozen=True, slots=True)
class Repeated:
    """flax's marker for an array reference met a second time (kept for its name).

    >>> import nnxlike as nnx
    >>> nnx.graphlib.Repeated() == nnx.graphlib.Repeated()
    True
    """


@jtu.register_dataclass
@dataclasses.dataclass(frozen=True, slots=True)
class ArrayRefOutput:
    """The value of a reference Variable created inside a transform.

    An inner split returns the array it holds (a reference cannot leave a JAX
    transform); the outer merge makes a new reference from it.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> out = nnx.graphlib.ArrayRefOutput(jnp.ones(2))
    >>> jax.tree.leaves(out)[0].tolist()
    [1.0, 1.0]
    """

    value: Any


# -- the shared index -------------------------------------------------------------


class _RefIndex(Mapping):
    """Object -> index for one split context (flax's ``RefMap`` in ``ref_index``).

    It holds the ``(index_of, objects)`` tables that ``_graph.flatten`` extends,
    keyed by identity; the objects are kept alive so their ids stay valid.
    """

    __slots__ = ("index_of", "objects")

    def __init__(self) -> None:
        self.index_of: dict[int, int] = {}
        self.objects: list = []

    def __getitem__(self, obj: Any) -> int:
        try:
            return self.index_of[id(obj)]
        except KeyError:
            raise KeyError(obj) from None

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self.index_of

    def __iter__(self) -> Iterator:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        kinds = ", ".join(
            f"{i}: {type(o).__name__}" for i, o in enumerate(self.objects)
        )
        return f"RefIndex({{{kinds}}})"


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.split: list[SplitContext] = []
        self.merge: list[MergeContext] = []
        self.update: dict[Hashable, list[UpdateContext]] = {}


_STACKS = _Stacks()


def current_update_context(tag: Hashable) -> UpdateContext:
    """The innermost active ``UpdateContext`` opened with ``tag``.

    >>> import nnxlike as nnx
    >>> with nnx.update_context("mine") as ctx:
    ...     nnx.current_update_context("mine") is ctx
    True
    """
    stack = _STACKS.update.get(tag)
    if not stack:
        raise ValueError(_errors.NO_UPDATE_CONTEXT.format(tag=tag))
    return stack[-1]


def _update_ctx(tag: Hashable | None) -> UpdateContext | None:
    return None if tag is None else current_update_context(tag)


# -- split ------------------------------------------------------------------------


def _ref_outputs(leaves: list, inner_refs: dict) -> list:
    """Inner split: reference Variables become NoUpdate (from outside) or outputs."""
    out = leaves
    for j, leaf in enumerate(leaves):
        if isinstance(leaf, Variable) and is_array_ref(leaf._raw_value):
            raw = leaf._raw_value
            value = NO_UPDATE if id(raw) in inner_refs else ArrayRefOutput(raw[...])
            if out is leaves:
                out = list(leaves)
            out[j] = new_variable(type(leaf), value, leaf._metadata)
    return out


@dataclasses.dataclass(eq=False)
class SplitContext:
    """Splits sharing one index; made by ``nnx.split_context``.

    ``split`` and ``flatten`` take the arguments of ``nnx.split`` and
    ``nnx.graphlib.flatten`` (graph mode). A node an earlier call of the same
    context reached becomes a reference to it, and its Variables are not repeated.

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> with nnx.split_context() as ctx:
    ...     g1, s1 = ctx.split(m)
    ...     g2, s2 = ctx.split(m)
    >>> len(nnx.to_flat_state(s1)), len(nnx.to_flat_state(s2))
    (2, 0)
    """

    ctxtag: Hashable | None
    ref_index: _RefIndex
    is_inner: bool | None

    def _flatten(self, node: Any) -> _graph.Flat:
        ri = self.ref_index
        start = len(ri.objects)
        flat = _graph.flatten(node, shared=(ri.index_of, ri.objects))
        ctx = _update_ctx(self.ctxtag)
        if ctx is None or ctx.inner_ref_outer_index is None:
            return flat
        # Inner split (3): name, for each new node, the outer node it came from
        # (GraphDef.outer: -1 for a node created inside).
        inner = ctx.inner_ref_outer_index
        outer = [-1] * len(ri.objects)
        for i in range(start, len(ri.objects)):
            outer[i] = inner.get(id(ri.objects[i]), -1)
        gd = flat.graphdef
        graphdef = GraphDef(gd.tree, gd.paths, outer=tuple(outer))
        leaves = _ref_outputs(flat.leaves, ctx._inner_refs)
        return _graph.Flat(graphdef, leaves, flat.objects)

    def split(self, node: Any, *filters: Any) -> tuple:
        """``(graphdef, state, ...)`` as ``nnx.split(node, *filters)`` gives."""
        flat = self._flatten(node)
        states = _graph._partition(flat, filters)
        if flat.graphdef.paths == ((),):  # the root is itself a Variable
            states = [s[()] if () in s._mapping else s for s in states]
        return (flat.graphdef, *states)

    def flatten(self, node: Any, *filters: Any, with_paths: bool = True) -> tuple:
        """``(graphdef, flat_state, ...)``, or ``(graphdef, leaves)`` without paths.

        The flat states hold the live Variables, as ``split`` does;
        ``with_paths=False`` gives the raw leaf values in walk order.
        """
        if not with_paths and filters:
            raise ValueError(
                "SplitContext.flatten: filters need paths; drop `with_paths=False` "
                "or the filters."
            )
        flat = self._flatten(node)
        if not with_paths:
            return flat.graphdef, [getattr(v, "_raw_value", v) for v in flat.leaves]
        states = _graph._partition(flat, filters)
        return (flat.graphdef, *(s.flat_state() for s in states))


class split_context:  # noqa: N801  (flax's name; a context manager)
    """Open a ``SplitContext``: several splits sharing one index.

    With a ``ctxtag``, the splits take part in the ``update_context`` of that tag
    (step 1 outside a transform, step 3 inside it).

    >>> import nnxlike as nnx
    >>> inner = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> outer = nnx.Sequential(inner)
    >>> with nnx.split_context() as ctx:
    ...     g1, s1 = ctx.split(outer)
    ...     g2, s2 = ctx.split(inner)  # already in s1: a reference
    >>> with nnx.merge_context() as ctx:
    ...     o = ctx.merge(g1, s1)
    ...     i = ctx.merge(g2, s2)
    >>> i is o.layers[0], i is inner
    (True, False)
    """

    def __init__(self, ctxtag: Hashable | None = None) -> None:
        self.ctxtag = ctxtag

    def __enter__(self) -> SplitContext:
        ctx = _update_ctx(self.ctxtag)
        is_inner = ctx.outer_ref_outer_index is not None if ctx is not None else None
        split_ctx = SplitContext(self.ctxtag, _RefIndex(), is_inner)
        _STACKS.split.append(split_ctx)
        return split_ctx

    def __exit__(self, *exc: Any) -> None:
        split_ctx = _STACKS.split.pop()
        if self.ctxtag is not None:
            current_update_context(self.ctxtag).flatten_end(split_ctx.ref_index)
        del split_ctx.ref_index
        del split_ctx.ctxtag


# -- merge ------------------------------------------------------------------------


def _leaves_in_order(graphdef: GraphDef, states: tuple) -> list:
    """The leaf values in ``graphdef``'s walk order, from States or flat states."""
    if len(states) == 1 and type(states[0]) is list:  # flatten(with_paths=False)
        leaves = states[0]
        if len(leaves) != len(graphdef.paths):
            raise ValueError(
                f"MergeContext: the GraphDef has {len(graphdef.paths)} leaves, got "
                f"{len(leaves)}; pass the leaves the split context returned with it."
            )
        return leaves
    if not graphdef.paths:
        return []
    converted = tuple(
        State.from_flat([p for p, _ in s], [v for _, v in s])
        if isinstance(s, FlatState)
        else s
        for s in states
    )
    return _graph._values_in_order(graphdef, converted)


@dataclasses.dataclass(eq=False)
class MergeContext:
    """Merges sharing one ``{index: object}`` table; made by ``nnx.merge_context``.

    >>> import nnxlike as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> with nnx.split_context() as ctx:
    ...     splits = [ctx.split(m), ctx.split(m)]
    >>> with nnx.merge_context() as ctx:
    ...     a, b = [ctx.merge(*s) for s in splits]
    >>> a is b, a is m
    (True, False)
    """

    ctxtag: Hashable | None
    index_ref: dict
    is_inner: bool | None

    def merge(self, graphdef: GraphDef, state: Any, /, *states: Any) -> Any:
        """Rebuild from ``(graphdef, state, ...)``, as ``nnx.merge`` does."""
        if not isinstance(graphdef, GraphDef):
            raise TypeError(
                f"MergeContext.merge: expected a GraphDef as first argument, got "
                f"{type(graphdef).__name__}. Usage: `ctx.merge(graphdef, state)`."
            )
        leaves = _leaves_in_order(graphdef, (state, *states))
        ctx = _update_ctx(self.ctxtag)
        outer = graphdef.outer
        if ctx is None or outer is None or self.is_inner:
            return _graph.unflatten(graphdef, leaves, built=self.index_ref)
        if ctx.outer_index_outer_ref is None:
            if any(o >= 0 for o in outer):  # flax makes new objects in silence
                raise _errors.StructureError(
                    _errors.OUTER_MERGE_WITHOUT_SPLIT.format(tag=self.ctxtag)
                )
            return _graph.unflatten(graphdef, leaves, built=self.index_ref)
        return _merge_onto(graphdef, leaves, outer, ctx, self.index_ref)

    def unflatten(self, graphdef: GraphDef, flat_state: Any, /, *more: Any) -> Any:
        """Rebuild from ``flatten``'s output (FlatStates or a list of leaves)."""
        if type(flat_state) is list and more:
            raise ValueError(
                "MergeContext.unflatten: cannot use multiple flat states when the "
                "first is a list of leaves; pass one list, or FlatStates."
            )
        return self.merge(graphdef, flat_state, *more)


def _merge_onto(
    graphdef: GraphDef, leaves: list, outer: tuple, ctx: UpdateContext, built: dict
) -> Any:
    """Outer merge (4): rebuild onto the outer objects the inner split named."""
    by_outer = ctx.outer_index_outer_ref
    previous: dict[int, Any] = {}  # reference Variables reused: their old value

    def reuse(index: int) -> Any:
        o = outer[index] if index < len(outer) else -1
        if o < 0:
            return None
        obj = by_outer.get(o)
        if isinstance(obj, Variable):
            previous[index] = obj._raw_value
        return obj if isinstance(obj, (Object, Variable)) else None

    start = set(built)
    node = _graph.unflatten(graphdef, leaves, reuse=reuse, built=built)
    for index, obj in built.items():
        if index in start or not isinstance(obj, Variable):
            continue
        raw = obj._raw_value
        if type(raw) is NoUpdate:
            if index not in previous:
                raise ValueError(
                    f"merge_context: the {type(obj).__name__} at node {index} is "
                    "marked NoUpdate but did not come from outside the transform; "
                    "expected an ArrayRefOutput. Split it inside the same "
                    "update_context it was merged in."
                )
            object.__setattr__(obj, "_raw_value", previous[index])
            _tracking.note_value_write()
        elif type(raw) is ArrayRefOutput:
            object.__setattr__(obj, "_raw_value", jax.new_ref(raw.value))
            _tracking.note_value_write()
    return node


class merge_context:  # noqa: N801  (flax's name; a context manager)
    """Open a ``MergeContext``: several merges sharing one index.

    With a ``ctxtag``, ``inner`` says which merge of the ``update_context`` this
    is: ``True`` inside the transform (step 2), ``False`` outside (step 4, which
    updates the original objects in place).

    >>> import nnxlike as nnx
    >>> class Foo(nnx.Module):
    ...     pass
    >>> m1 = Foo()
    >>> with nnx.update_context("example"):
    ...     with nnx.split_context("example") as ctx:
    ...         graphdef, state = ctx.split(m1)
    ...     with nnx.merge_context("example", inner=True) as ctx:
    ...         m2 = ctx.merge(graphdef, state)  # a copy, as inside a transform
    ...     m2.a = 1
    ...     m2.ref = m2
    ...     with nnx.split_context("example") as ctx:
    ...         graphdef, state = ctx.split(m2)
    ...     with nnx.merge_context("example", inner=False) as ctx:
    ...         m3 = ctx.merge(graphdef, state)
    >>> m3 is m1, m1.a, m1.ref is m1
    (True, 1, True)
    """

    def __init__(self, ctxtag: Hashable | None = None, inner: bool | None = None):
        if ctxtag is not None and inner is None:
            raise ValueError(
                f"merge_context({ctxtag!r}): inner_merge must be specified when "
                "using ctxtag: `merge_context(tag, inner=True)` inside the "
                "transform, `inner=False` outside it."
            )
        self.ctxtag = ctxtag
        self.inner = inner

    def __enter__(self) -> MergeContext:
        if self.ctxtag is not None:
            current_update_context(self.ctxtag)  # fail early, naming the tag
        merge_ctx = MergeContext(self.ctxtag, {}, self.inner)
        _STACKS.merge.append(merge_ctx)
        return merge_ctx

    def __exit__(self, *exc: Any) -> None:
        merge_ctx = _STACKS.merge.pop()
        if self.ctxtag is not None:
            ctx = current_update_context(self.ctxtag)
            ctx.unflatten_end(merge_ctx.index_ref, bool(self.inner))
        del merge_ctx.index_ref
        del merge_ctx.ctxtag


# -- update context ---------------------------------------------------------------


@jtu.register_static
@dataclasses.dataclass(eq=False)
class UpdateContext:
    """The bookkeeping of one ``update_context``: outer and inner object tables.

    ``outer_ref_outer_index`` (outer object -> index) and
    ``outer_index_outer_ref`` come from the outer split (1);
    ``outer_index_inner_ref`` and ``inner_ref_outer_index`` (by object identity)
    from the inner merge (2), and are cleared by the inner split (3). All are
    dropped when the context closes. Opaque to JAX: all contexts compare equal.

    >>> import nnxlike as nnx
    >>> with nnx.update_context("t") as ctx:
    ...     ctx.outer_ref_outer_index is None
    True
    """

    tag: Hashable
    outer_ref_outer_index: _RefIndex | None = None
    outer_index_inner_ref: dict | None = None
    outer_index_outer_ref: dict | None = None
    inner_ref_outer_index: dict | None = None
    static_cache: Any = None
    _inner_refs: dict = dataclasses.field(default_factory=dict, repr=False)

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UpdateContext)

    def flatten_end(self, ref_index: _RefIndex) -> None:
        """End of a split in this context: (1) records, (3) clears the inner maps."""
        if self.outer_ref_outer_index is None:
            self.outer_ref_outer_index = ref_index
            self.outer_index_outer_ref = dict(enumerate(ref_index.objects))
        else:
            self.outer_index_inner_ref = None
            self.inner_ref_outer_index = None
            self._inner_refs = {}

    def unflatten_end(self, index_ref: dict, inner_merge: bool) -> None:
        """End of a merge in this context: (2) records the inner copies."""
        if not inner_merge:
            return
        self.outer_index_inner_ref = index_ref
        self.inner_ref_outer_index = {id(obj): i for i, obj in index_ref.items()}
        self._inner_refs = {
            id(obj._raw_value): obj._raw_value
            for obj in index_ref.values()
            if isinstance(obj, Variable) and is_array_ref(obj._raw_value)
        }


class update_context:  # noqa: N801  (flax's name; a context manager)
    """Bookkeeping to write a lifted transform from plain JAX transforms.

    Inside ``with nnx.update_context(tag):`` the four steps are: split the inputs
    outside (``split_context(tag)``), merge them inside the JAX transform
    (``merge_context(tag, inner=True)``), split the results inside
    (``split_context(tag)``), and merge them outside
    (``merge_context(tag, inner=False)``). The last merge updates the caller's
    objects in place, structural changes included. Usable as a decorator.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> @nnx.update_context("double")
    ... def double(model):
    ...     with nnx.split_context("double") as ctx:
    ...         graphdef, state = ctx.split(model)
    ...     @jax.jit
    ...     def f(graphdef, state):
    ...         with nnx.merge_context("double", inner=True) as ctx:
    ...             m = ctx.merge(graphdef, state)
    ...         m.kernel[...] = 2 * m.kernel[...]
    ...         m.calls = 1  # a new (static) attribute
    ...         with nnx.split_context("double") as ctx:
    ...             return ctx.split(m)
    ...     graphdef, state = f(graphdef, state)
    ...     with nnx.merge_context("double", inner=False) as ctx:
    ...         return ctx.merge(graphdef, state)
    >>> before = model.kernel[...]
    >>> double(model) is model, model.calls
    (True, 1)
    >>> bool(jnp.allclose(model.kernel[...], 2 * before))
    True
    """

    def __init__(self, tag: Hashable) -> None:
        self.tag = tag

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        _STACKS.update.setdefault(self.tag, []).append(ctx)
        return ctx

    def __exit__(self, *exc: Any) -> None:
        stack = _STACKS.update.get(self.tag)
        if not stack:  # pragma: no cover  (only if the stacks were tampered with)
            raise RuntimeError(f"No update context found for tag {self.tag!r}.")
        ctx = stack.pop()
        ctx.outer_ref_outer_index = None
        ctx.outer_index_inner_ref = None
        ctx.outer_index_outer_ref = None
        ctx.inner_ref_outer_index = None
        ctx._inner_refs = {}
        if not stack:
            del _STACKS.update[self.tag]

    def __call__(self, f: Callable) -> Callable:
        @functools.wraps(f)
        def update_context_wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return f(*args, **kwargs)

        return update_context_wrapper
