"""``nnx.jit``: ``jax.jit`` over objects, with write-back and a fast path.

Design note. Slow path (first call, or after any structural change): flatten the
arguments (``Lifted``), call one ``jax.jit``-compiled pure function
``_pure(spec, donated_arrays, kept_arrays, donated_leaves, kept_leaves)`` and
write the results back (``_core.write_back``). ``spec`` is the static argument:
GraphDef, pytree structure, static arguments, donation and sharding layout. It
holds no reference to the caller's objects (JAX keeps static arguments in its
compilation cache, which must not keep models alive); equal specs share one
compiled function, so a new model of the same structure does not recompile.

Fast path (every later call): the flattened arguments are cached per argument
set (``_Entry``), keyed by the identities of the graph nodes and the pytree
structure, valid while the global structure version (``_tracking``) is
unchanged. A call is then: read the raw arrays of the cached Variables, one call
into the compiled function, store the returned arrays into the same Variables.
No graph walk, no State, no GraphDef hashing.

What the traced function returns besides arrays (output structure, whether the
graph changed) is learnt at trace time. JAX retraces per input shapes, so it is
recorded per (spec, input avals); only when two avals of one spec gave different
structures does a call pay for computing its avals to pick the right one.

Threads: one wrapper may be called from several threads at once (two models
trained side by side with one jitted step). Nothing about one call lives on the
shared wrapper: a trace reports its output structure to the calling thread's
sink (JAX traces in the calling thread), the tables it records into are keyed
by (spec, avals), and the argument cache is only edited under a lock.

Traps (``_traps``): at trace time a function that reads objects it was not
given (closure, globals) is refused, since their arrays would become constants;
on every call the cached objects' attribute counts and graph edges are compared
(C-level passes), so edits through ``__dict__`` rebuild the entry and a static
config object mutated in place raises; a call that fails after donating says
which Variables now hold deleted arrays.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from nnxlike import _config, _errors, _graph, _tracking
from nnxlike._graph import Flat, flatten, is_graph_node
from nnxlike._object import Object
from nnxlike._transforms import _core, _traps
from nnxlike._variables import Variable

_CACHE_SIZE = 16
_set_raw = _core._set_raw
_get_raw = Variable._raw_value.__get__
_consume = collections.deque(maxlen=0).extend
_WRITES = _tracking.VALUE_WRITES
_KEPT = _tracking.KEPT
_GRAPH_TYPES = (Object, Variable)
_LEAF_TYPES = (jax.Array, np.ndarray, np.generic, float, int, complex)
_tracer_type = jax.core.Tracer
_Sharding = jax.sharding.Sharding


def _as_tuple(x: int | str | Sequence | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, (int, str)):
        return (x,)
    return tuple(x)


def _avals(*trees: Any) -> tuple:
    out = []
    for leaf in jax.tree.leaves(trees):
        aval = jax.typeof(leaf)
        # a hijax box's aval (a mutable hitype) has no shape or dtype
        shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
        out.append((shape, dtype, getattr(aval, "weak_type", False)))
    return tuple(out)


class _Spec:
    """The static argument of the compiled function (see the module note)."""

    __slots__ = (
        "lifted",
        "static_args",
        "donated_idx",
        "kept_idx",
        "jax_leaf_pos",
        "leaf_donated",
        "var_shardings",
        "leaf_shardings",
        "node_shardings",
        "_cmp",
        "_hash",
    )

    def __init__(
        self,
        lifted: _core.Lifted,
        static_args: tuple,
        donated_idx: tuple,
        kept_idx: tuple,
        jax_leaf_pos: tuple,
        leaf_donated: tuple,
        var_shardings: tuple | None,
        leaf_shardings: tuple | None,
    ):
        # A copy of the lifted structure without the caller's objects.
        self.lifted = _core.Lifted(
            lifted.treedef,
            [None] * len(lifted.leaves),
            lifted.graph_pos,
            (),
            Flat(lifted.flat.graphdef, [], []),
            lifted.mode,  # graph_updates=False refuses structure changes when traced
        )
        self.static_args = static_args
        self.donated_idx = donated_idx
        self.kept_idx = kept_idx
        self.jax_leaf_pos = jax_leaf_pos
        self.leaf_donated = leaf_donated
        self.var_shardings = var_shardings
        self.leaf_shardings = leaf_shardings
        self.node_shardings: tuple | None = None
        self._cmp = (
            lifted.flat.graphdef,
            lifted.mode,
            lifted.treedef,
            lifted.graph_pos,
            static_args,
            donated_idx,
            leaf_donated,
            var_shardings,
            leaf_shardings,
        )
        self._hash = hash(self._cmp)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Spec)
            and self._hash == other._hash
            and self._cmp == other._cmp
        )


class _Entry:
    """A cached flattening of one argument set (holds the caller's objects)."""

    __slots__ = (
        "lifted",
        "spec",
        "version",
        "variables",
        "out_static",
        "written",
        "snapshot",
    )

    def __init__(self, lifted: _core.Lifted, spec: _Spec, version: int):
        self.lifted = lifted
        self.spec = spec
        self.version = version
        self.variables = lifted.flat.leaves
        # Attribute counts and edge identities: edits behind the version (_traps).
        self.snapshot = _traps.Snapshot(lifted.flat.objects, lifted.nodes, lifted.slots)
        self.out_static = None
        # (changed, [Variables]): one attribute, so that two threads calling with
        # the same objects never pair a `changed` tuple with another's list.
        self.written: tuple = (None, [])
        # _KEPT[entry] = (token, donated, kept): the raw arrays this entry last
        # passed or wrote, valid while no Variable anywhere was written since
        # (_tracking's value-write token is still `token`, and any write empties
        # _KEPT); then a call reads none of them.


def _remember(entry: _Entry, token, changed, donated, kept, new_arrays) -> None:
    """Keep, in ``_KEPT[entry]``, the arrays the Variables hold after a call.

    ``token`` is the value-write token read before this call read any value.
    With nothing written, what was passed stays valid while no one else writes;
    after writes, the call claims a new token (others' caches go stale) and its
    arrays are valid only if no one else wrote in between. Under an outer trace
    nothing is kept (the values are tracers of that trace).
    """
    if changed is not None and not changed:
        if _WRITES[-1] == token and not _tracking.under_trace():
            _KEPT[entry] = (token, donated, kept)
        return
    mine = _tracking.claim_value_writes(token)  # always: our writes are news
    spec = entry.spec
    if mine is None or _tracking.under_trace():
        return
    if changed is None and not spec.donated_idx:  # all written, in entry order
        _KEPT[entry] = (mine, [], list(new_arrays))
    elif spec.donated_idx or 3 * len(changed) > 2 * len(kept):
        _KEPT[entry] = (mine, *_gather(spec, entry.variables))  # cheaper than a patch
    else:  # a few written: patch what was passed
        kept = kept.copy()
        _consume(map(kept.__setitem__, changed, new_arrays))
        _KEPT[entry] = (mine, [], kept)


def _gather(spec: _Spec, variables: list) -> tuple[list, list]:
    """The raw arrays of the Variables: (donated, kept) as the call passes them."""
    if spec.donated_idx:
        return (
            [variables[i]._raw_value for i in spec.donated_idx],
            [variables[i]._raw_value for i in spec.kept_idx],
        )
    return [], list(map(_get_raw, variables))


class JitWrapped:
    """The callable ``nnx.jit`` returns; ``.lower(...)`` gives JAX's AOT API."""

    def __init__(
        self,
        fun: Callable,
        *,
        static_argnums: int | Sequence[int] | None = None,
        static_argnames: str | Sequence[str] | None = None,
        donate_argnums: int | Sequence[int] | None = None,
        donate_argnames: str | Sequence[str] | None = None,
        in_shardings: Any = None,
        out_shardings: Any = None,
        graph: bool | None = None,
        graph_updates: bool | None = None,
        **jit_kwargs: Any,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        # Resolved when decorated, as flax does (set_graph_mode around the def).
        self._modes = _config.resolve(graph, graph_updates)
        for name, prefix in (
            ("in_shardings", in_shardings),
            ("out_shardings", out_shardings),
        ):
            _core.check_prefix(prefix, name, "jit", *self._modes)
        self.bound_self = None
        if inspect.ismethod(fun) and is_graph_node(fun.__self__):
            # nnx.jit(model.method): the object becomes a real (hidden) first
            # argument, so its writes are lifted instead of tripping the closure
            # check; argnums still count from the first explicit argument.
            self.fun = fun.__func__
            self.bound_self = fun.__self__
        self._offset = 0 if self.bound_self is None else 1
        params = _positional_names(self.fun)
        self._static_nums, self._static_names = _resolve_args(
            _as_tuple(static_argnums), _as_tuple(static_argnames), params, self._offset
        )
        self._donate_nums, self._donate_names = _resolve_args(
            _as_tuple(donate_argnums), _as_tuple(donate_argnames), params, self._offset
        )
        self._donates = bool(self._donate_nums or self._donate_names)
        self._plain_signature = (
            self.bound_self is None
            and not self._static_nums
            and not self._static_names
            and in_shardings is None
        )
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self._cache: OrderedDict = OrderedDict()
        self._out_static: dict[_Spec, dict] = {}
        self._ambiguous: set[_Spec] = set()
        # Per thread: the list a trace of _pure appends its output structure to.
        self._sink = threading.local()
        self._cache_lock = threading.Lock()
        # Positional layout of _pure: (spec, donated, kept, leaves_d, leaves_k).
        self._jitted = jax.jit(
            self._pure,
            static_argnums=(0,),
            donate_argnums=(1, 3) if self._donates else (),
            **jit_kwargs,
        )

    # -- descriptor: @nnx.jit on a method ----------------------------------------------
    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- phase 0: which arguments are static -------------------------------------------
    def _positions(self, nums: tuple, n: int) -> set[int]:
        """Argument positions (counting a bound object) named by ``nums``."""
        explicit = n - self._offset
        out = set()
        for i in nums:
            j = i + explicit if i < 0 else i
            if 0 <= j < explicit:
                out.add(j + self._offset)
        return out

    def _split_static(self, args: tuple, kwargs: dict):
        if self.bound_self is not None:
            args = (self.bound_self, *args)
        if not self._static_nums and not self._static_names:
            return args, kwargs, ()
        pos = self._positions(self._static_nums, len(args))
        static = tuple((i, args[i]) for i in sorted(pos)) + tuple(
            (k, kwargs[k]) for k in sorted(self._static_names) if k in kwargs
        )
        dyn_args = tuple(a for i, a in enumerate(args) if i not in pos)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self._static_names}
        return dyn_args, dyn_kwargs, static

    @staticmethod
    def _rejoin_static(dyn_args: tuple, dyn_kwargs: dict, static: tuple):
        if not static:
            return dyn_args, dyn_kwargs
        args = list(dyn_args)
        kwargs = dict(dyn_kwargs)
        for key, value in static:  # positions in increasing order
            if isinstance(key, int):
                args.insert(key, value)
            else:
                kwargs[key] = value
        return tuple(args), kwargs

    # -- the pure function JAX compiles ------------------------------------------------
    def _pure(self, spec: _Spec, donated, kept, leaves_donated, leaves_kept):
        lifted = spec.lifted
        # Reassemble the Variable arrays and the plain JAX leaves in order.
        arrays: list = [None] * (len(donated) + len(kept))
        for i, a in zip(spec.donated_idx, donated):
            arrays[i] = a
        for i, a in zip(spec.kept_idx, kept):
            arrays[i] = a
        leaves = list(lifted.leaves)
        it_d, it_k = iter(leaves_donated), iter(leaves_kept)
        for i, flag in zip(spec.jax_leaf_pos, spec.leaf_donated):
            leaves[i] = next(it_d) if flag else next(it_k)
        if spec.var_shardings is not None:
            arrays = _constrain_each(arrays, spec.var_shardings)
            leaves = _constrain_at(leaves, spec.jax_leaf_pos, spec.leaf_shardings)
        # Merge fresh copies, call the user's function, flatten what it left.
        (dyn_args, dyn_kwargs), copies = lifted.rebuild(arrays, leaves)
        args, kwargs = self._rejoin_static(dyn_args, dyn_kwargs, spec.static_args)
        # Trace time only: objects read through a closure would become constants.
        _traps.check_captured_reads(self.fun, "nnx.jit")
        try:
            out = self.fun(*args, **kwargs)
        except _errors.TraceContextError as e:  # name the path and the writer
            raise _traps.explain_trace_context(e, self.fun, "nnx.jit") from None
        if self.out_shardings is not None:
            out = _constrain_prefix(self.out_shardings, out)
        collected = _core.collect(lifted, copies, out)
        new_arrays = collected.arrays
        changed = None
        if not collected.unchanged and spec.node_shardings is not None:
            # The structure changed: in_shardings apply by path to what the
            # arguments hold now (a replaced attribute included), as in flax.
            new_arrays = list(new_arrays)
            flat_c = flatten(copies.nodes)
            for j, (path, v) in enumerate(zip(flat_c.graphdef.paths, flat_c.leaves)):
                sh = spec.node_shardings[path[0]](path[1:], v)
                if sh is not None:
                    new_arrays[j] = _constrain(new_arrays[j], sh)
        if collected.unchanged:
            if spec.var_shardings is not None:
                new_arrays = _constrain_each(new_arrays, spec.var_shardings)
            else:
                # Return only the Variables the function wrote: an untouched RNG
                # key or frozen weight costs nothing (no output buffer, no
                # Python-side result object) instead of a round trip.
                # Donated inputs always come back: their old buffers are gone.
                donated_set = set(spec.donated_idx)
                changed = tuple(
                    i
                    for i, (a, b) in enumerate(zip(arrays, new_arrays))
                    if a is not b or i in donated_set
                )
                new_arrays = [new_arrays[i] for i in changed]
        # Record the output structure for this (spec, avals); see the module note.
        out_leaves = collected.out_leaves
        refs = None
        if any(isinstance(x, jax.Ref) for x in out_leaves):
            # jax.jit cannot return array references: an input one comes back
            # as the caller's own, a new one as its value, re-wrapped outside.
            out_leaves, refs = _refs_out(out_leaves, leaves, spec.jax_leaf_pos)
        array_refs = None
        if any(isinstance(a, jax.Ref) for a in new_arrays):
            new_arrays, array_refs = _refs_out(new_arrays, arrays, range(len(arrays)))
        static = (*collected.static(), changed, refs, array_refs)
        variants = self._out_static.setdefault(spec, {})
        variants[_avals(donated, kept, leaves_donated, leaves_kept)] = static
        if len(set(variants.values())) > 1:
            self._ambiguous.add(spec)
        sink = getattr(self._sink, "out", None)
        if sink is not None:  # the call that is tracing us, in this thread
            sink.append(static)
        return new_arrays, out_leaves

    # -- slow path: full flatten -------------------------------------------------------
    def _build_entry(self, dyn_args, dyn_kwargs, static_args) -> _Entry:
        graph, graph_updates = self._modes
        lifted = _core.Lifted.from_args(
            (dyn_args, dyn_kwargs),
            track=True,
            graph=graph,
            graph_updates=graph_updates,
            fn="jit",
        )
        n = len(lifted.flat.leaves)
        jax_leaf_pos = tuple(
            i for i in range(len(lifted.leaves)) if i not in lifted.graph_pos
        )
        donated_vars: set[int] = set()
        leaf_donated = (False,) * len(jax_leaf_pos)
        if self._donates:
            flags = self._arg_flags(dyn_args, dyn_kwargs, static_args, donate=True)
            donated_vars = _vars_where(lifted, flags, dyn_args, dyn_kwargs)
            leaf_donated = tuple(bool(flags[i]) for i in jax_leaf_pos)
        var_sh = leaf_sh = node_sh = None
        if self.in_shardings is not None:
            var_sh, leaf_sh, node_sh = self._shardings(
                lifted, dyn_args, dyn_kwargs, static_args
            )
            leaf_sh = tuple(leaf_sh[i] for i in jax_leaf_pos)
        spec = _Spec(
            lifted,
            static_args,
            tuple(i for i in range(n) if i in donated_vars),
            tuple(i for i in range(n) if i not in donated_vars),
            jax_leaf_pos,
            leaf_donated,
            var_sh,
            leaf_sh,
        )
        spec.node_shardings = node_sh  # follows from in_shardings and the layout
        return _Entry(lifted, spec, _tracking.STRUCTURE_VERSION[0])

    def _arg_flags(self, dyn_args, dyn_kwargs, static_args, *, donate: bool) -> list:
        """Per flattened leaf: is it in a donated argument?"""
        static_pos = {i for i, _ in static_args if isinstance(i, int)}
        n = len(dyn_args) + len(static_pos)
        orig = [i for i in range(n) if i not in static_pos]
        chosen = self._positions(self._donate_nums, n)
        flags = (
            tuple(
                jax.tree.map(lambda _, d=orig[j] in chosen: d, a, is_leaf=is_graph_node)
                for j, a in enumerate(dyn_args)
            ),
            {
                k: jax.tree.map(
                    lambda _, d=k in self._donate_names: d, v, is_leaf=is_graph_node
                )
                for k, v in dyn_kwargs.items()
            },
        )
        return jtu.tree_leaves(flags)

    def _shardings(self, lifted, dyn_args, dyn_kwargs, static_args):
        """Per Variable and per flattened leaf: the input sharding (or None)."""
        static_pos = {i for i, _ in static_args if isinstance(i, int)}
        n = len(dyn_args) + len(static_pos)
        orig = [i for i in range(n) if i not in static_pos]
        spec = self.in_shardings
        explicit = n - self._offset
        if isinstance(spec, (tuple, list)):
            n_static = len([i for i in static_pos if i >= self._offset])
            if len(spec) == explicit - n_static and n_static:
                # As jax.jit: one entry per non-static positional argument.
                it = iter(spec)
                spec = [
                    None if i + self._offset in static_pos else next(it)
                    for i in range(explicit)
                ]
            if len(spec) != explicit:
                raise ValueError(
                    f"nnx.jit: in_shardings has {len(spec)} entries for {explicit} "
                    "positional arguments; give one per argument (None leaves one "
                    "unconstrained) or a single sharding for all."
                )
            per_arg = (None,) * self._offset + tuple(spec)
        else:
            per_arg = (spec,) * n
        var_index = lifted.index_by_id()
        var_sh: list = [None] * len(var_index)
        var_path: dict[int, str] = {}
        leaf_sh: list = []
        node_sh: list = []  # per graph node argument: its entry (by-path lookup)
        for j, a in enumerate(dyn_args):
            s = per_arg[orig[j]]
            for leaf in jtu.tree_leaves(a, is_leaf=is_graph_node):
                if is_graph_node(leaf):
                    at = _sharding_lookup(s)
                    node_sh.append(at)
                    flat = flatten(leaf)
                    for path, v in zip(flat.graphdef.paths, flat.leaves):
                        sh = at(path, v)
                        k = var_index[id(v)]
                        where = f"args[{orig[j] - self._offset}]{_core._at(path)}"
                        if k not in var_path:
                            var_path[k] = where
                            var_sh[k] = sh
                        elif var_sh[k] is not sh and not _core._same(var_sh[k], sh):
                            # One Variable reached twice with two shardings.
                            nodes = (
                                f"Node: {type(v).__name__}\n  {var_path[k]}: "
                                f"{var_sh[k]}\n  {where}: {sh}"
                            )
                            raise ValueError(
                                _errors.INCONSISTENT_ALIASING.format(
                                    fn="jit", nodes=nodes
                                )
                            )
                    leaf_sh.append(None)
                else:
                    leaf_sh.append(s if isinstance(s, _Sharding) or s is None else None)
        for v in dyn_kwargs.values():
            for leaf in jtu.tree_leaves(v, is_leaf=is_graph_node):
                leaf_sh.append(None)
                if is_graph_node(leaf):
                    node_sh.append(_sharding_lookup(None))
        return tuple(var_sh), leaf_sh, tuple(node_sh)

    # -- the call ----------------------------------------------------------------------
    def _key(self, args: tuple, kwargs: dict):
        """(dyn args, dyn kwargs, static args, flat leaves, cache key)."""
        if self._plain_signature and not kwargs:
            # Common case, no pytree walk: every argument is an object or a leaf.
            key = []
            for a in args:
                if isinstance(a, _GRAPH_TYPES):
                    key.append(id(a))
                elif isinstance(a, _LEAF_TYPES):
                    key.append(-1)
                else:
                    break
            else:
                return args, kwargs, (), args, tuple(key)
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        leaves, treedef = jtu.tree_flatten(
            (dyn_args, dyn_kwargs), is_leaf=is_graph_node
        )
        key = (treedef, static_args, *[id(x) for x in leaves if is_graph_node(x)])
        try:
            hash(key)
        except TypeError:  # unhashable static argument
            raise TypeError(
                f"nnx.jit({getattr(self.fun, '__name__', 'fun')}): static arguments "
                f"must be hashable, got {[type(v).__name__ for _, v in static_args]}."
                " Pass tuples instead of lists, or make the argument dynamic."
            ) from None
        return dyn_args, dyn_kwargs, static_args, leaves, key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dyn_args, dyn_kwargs, static_args, leaves, key = self._key(args, kwargs)
        entry = self._cache.get(key)
        if (
            entry is None
            or entry.version != _tracking.STRUCTURE_VERSION[0]
            or not entry.snapshot.intact()
        ):
            if entry is not None:
                # A static object changed in place cannot be fixed by rebuilding
                # (the compiled function compares it by identity): raise. Edits
                # through __dict__ are picked up by the rebuild below.
                self._check_statics(entry, dyn_args, dyn_kwargs, static_args)
            entry = self._build_entry(dyn_args, dyn_kwargs, static_args)
            if not _has_tracer(entry.variables):
                with self._cache_lock:
                    self._cache[key] = entry
                    if len(self._cache) > _CACHE_SIZE:
                        self._cache.popitem(last=False)
        spec = entry.spec
        variables = entry.variables
        # Gather: raw arrays of the cached Variables, plain leaves as they came.
        # When no Variable was written since this entry's last call, they are
        # the arrays that call passed or stored (see _tracking's write tokens).
        token = _WRITES[-1]
        gathered = _KEPT.get(entry)
        if gathered is not None and gathered[0] == token:
            donated, kept = gathered[1], gathered[2]
        else:
            donated, kept = _gather(spec, variables)
        if self._donates:
            jl = [leaves[i] for i in spec.jax_leaf_pos]
            leaves_d = [x for x, f in zip(jl, spec.leaf_donated) if f]
            leaves_k = [x for x, f in zip(jl, spec.leaf_donated) if not f]
        else:
            leaves_d = []
            leaves_k = [leaves[i] for i in spec.jax_leaf_pos]
        local = self._sink
        outer = getattr(local, "out", None)  # a call of this wrapper we are inside
        local.out = traced = []
        try:
            new_arrays, out_leaves = self._jitted(
                spec, donated, kept, leaves_d, leaves_k
            )
        except Exception as e:
            _KEPT.pop(entry, None)
            # A failure can leave Variables holding donated (deleted) buffers:
            # say which ones and why on the error itself (see _note_deleted).
            _note_deleted(self, entry, dyn_args, dyn_kwargs, static_args, e)
            raise
        finally:
            local.out = outer
        # Which output structure: this call's trace, or the recorded one.
        if traced:
            out_static = traced[-1]
            entry.out_static = None if spec in self._ambiguous else out_static
        elif spec in self._ambiguous:
            # Avals survive donation (a deleted array keeps its aval).
            sig = _avals(donated, kept, leaves_d, leaves_k)
            out_static = self._out_static[spec][sig]
        else:
            out_static = entry.out_static
            if out_static is None:
                out_static = list(self._out_static[spec].values())[0]
                entry.out_static = out_static
        if out_static[7] is not None:  # array references in the output
            out_leaves = _refs_in(out_static[7], out_leaves, leaves)
        if out_static[8] is not None:  # Variables holding array references
            new_arrays = _refs_in(
                out_static[8], new_arrays, list(map(_get_raw, variables))
            )
        # Scatter: store results into the same Variables (or rebuild structure).
        if out_static[4]:
            changed = out_static[6]
            if changed is None:
                _consume(map(_set_raw, variables, new_arrays))
            elif changed:
                written_key, written = entry.written
                if written_key is not changed:
                    written = [variables[i] for i in changed]
                    entry.written = (changed, written)
                _consume(map(_set_raw, written, new_arrays))
            _remember(entry, token, changed, donated, kept, new_arrays)
            if entry.lifted.slots:  # raw array attributes: store them back
                _core.flush_slots(entry.lifted)
                entry.snapshot.refresh_slots()
            return out_static[2].unflatten(out_leaves)
        _KEPT.pop(entry, None)
        self._cache.pop(key, None)
        return _core.write_back(entry.lifted, out_static, new_arrays, out_leaves)

    def _check_statics(self, entry: _Entry, dyn_args, dyn_kwargs, static_args):
        names = _argument_names(self, dyn_args, dyn_kwargs, static_args)
        fn = getattr(self.fun, "__name__", "fun")
        entry.snapshot.check_statics(entry.lifted.nodes, names, fn)

    # -- AOT access --------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any):
        """``jax.jit(...).lower`` on the lifted function (memory analysis, HLO)."""
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        leaves = jtu.tree_leaves((dyn_args, dyn_kwargs), is_leaf=is_graph_node)
        entry = self._build_entry(dyn_args, dyn_kwargs, static_args)
        spec = entry.spec
        arrays = [v._raw_value for v in entry.variables]
        jl = [leaves[i] for i in spec.jax_leaf_pos]
        return Lowered(
            self,
            self._jitted.lower(
                spec,
                [arrays[i] for i in spec.donated_idx],
                [arrays[i] for i in spec.kept_idx],
                [x for x, f in zip(jl, spec.leaf_donated) if f],
                [x for x, f in zip(jl, spec.leaf_donated) if not f],
            ),
        )


class Lowered:
    """JAX's ``Lowered`` for an ``nnx.jit`` function; ``compile()`` keeps write-back.

    Everything JAX's object offers (``as_text``, ``cost_analysis``, ...) is
    reachable; calling the compiled result takes the objects as the jitted
    function does and writes their changes back.
    """

    def __init__(self, wrapped: Callable, lowered: Any):
        self._wrapped = wrapped
        self._lowered = lowered

    def compile(self, *args: Any, **kwargs: Any) -> Compiled:
        return Compiled(self._wrapped, self._lowered.compile(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lowered, name)


class Compiled:
    """JAX's ``Compiled`` for an ``nnx.jit`` function, callable with objects.

    A call goes through the jitted function, whose cache holds this executable
    for the same argument structure (no second compile).
    """

    def __init__(self, wrapped: Callable, compiled: Any):
        self._wrapped = wrapped
        self._compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._compiled, name)


def _positional_names(fun: Callable) -> list[str]:
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _resolve_args(nums: tuple, names: tuple, params: list[str], offset: int):
    """Make argnums and argnames cover each other, as jax.jit does."""
    nums_set = set(nums)
    names_set = set(names)
    for name in names:
        if name in params and params.index(name) >= offset:
            nums_set.add(params.index(name) - offset)
    for i in nums:
        if 0 <= i + offset < len(params):
            names_set.add(params[i + offset])
    return tuple(sorted(nums_set)), frozenset(names_set)


def _vars_where(lifted: _core.Lifted, flags: list, dyn_args, dyn_kwargs) -> set[int]:
    """Variables reachable only from flagged (donated) graph arguments."""
    var_index = {id(v): i for i, v in enumerate(lifted.flat.leaves)}
    donated: set[int] = set()
    kept: set[int] = set()
    for pos, node in zip(lifted.graph_pos, lifted.nodes):
        target = donated if flags[pos] else kept
        for v in flatten(node).leaves:
            if id(v) in var_index:
                target.add(var_index[id(v)])
    # A Variable also reachable from a non-donated argument is not donated.
    return donated - kept


# Variables whose buffers a failed call consumed: id -> (weakref, what happened).
# Keyed by id: a Variable's == compares values (elementwise), as in flax.nnx.
_DELETED_BY: dict[int, tuple] = {}


def _deleted_by(v: Variable) -> str | None:
    got = _DELETED_BY.get(id(v))
    return got[1] if got is not None and got[0]() is v else None


def _is_deleted(x: Any) -> bool:
    if isinstance(x, _tracer_type) or not isinstance(x, jax.Array):
        return False
    return x.is_deleted()


def _argument_names(jw: JitWrapped, dyn_args, dyn_kwargs, static_args) -> list:
    """A readable name per graph node argument (``model``, ``args[1]``, ...)."""
    static_pos = {i for i, _ in static_args if isinstance(i, int)}
    n = len(dyn_args) + len(static_pos)
    orig = [i for i in range(n) if i not in static_pos]
    params = _positional_names(jw.fun)
    flat = jtu.tree_flatten_with_path((dyn_args, dyn_kwargs), is_leaf=is_graph_node)
    names = []
    for path, leaf in flat[0]:
        if not is_graph_node(leaf):
            continue
        if path[0].idx == 0:  # positional
            i = orig[path[1].idx]
            base = params[i] if i < len(params) else f"args[{i - jw._offset}]"
        else:
            base = str(path[1].key)
        names.append(base + jtu.keystr(tuple(path[2:])))
    return names


def _note_deleted(jw, entry, dyn_args, dyn_kwargs, static_args, error) -> None:
    """Add to ``error`` which Variables now hold deleted arrays, and why."""
    variables = entry.variables
    deleted = [i for i, v in enumerate(variables) if _is_deleted(v._raw_value)]
    if not deleted:
        return
    fn = getattr(jw.fun, "__name__", "fun")
    try:
        roots = _argument_names(jw, dyn_args, dyn_kwargs, static_args)
    except Exception:  # pragma: no cover - naming must never hide the error
        roots = []
    paths = entry.lifted.flat.graphdef.paths
    names = []
    for i in deleted:
        path = paths[i]
        root = roots[path[0]] if path and path[0] < len(roots) else "<argument>"
        rest = _errors.path_str(path[1:]) if len(path) > 1 else ""
        if rest and not rest.startswith("["):
            rest = "." + rest
        names.append(f"{root}{rest} ({type(variables[i]).__name__})")
    shown = ", ".join(names[:12]) + (
        f", ... ({len(names) - 12} more)" if len(names) > 12 else ""
    )
    donated_now = set(entry.spec.donated_idx)
    earlier = {_deleted_by(variables[i]) for i in deleted} - {None}
    if earlier:
        why = _errors.DELETED_EARLIER.format(what="; ".join(sorted(earlier)))
    elif any(i in donated_now for i in deleted):
        why = _errors.DELETED_NOW.format(fn=fn)
    else:
        why = _errors.DELETED_ELSEWHERE
    what = (
        f"nnx.jit({fn}) failed at run time after its donated arguments were "
        f"handed over ({type(error).__name__})"
    )
    for i in deleted:
        v = variables[i]
        if i in donated_now and _deleted_by(v) is None:
            key = id(v)
            _DELETED_BY[key] = (
                weakref.ref(v, lambda _, k=key: _DELETED_BY.pop(k)),
                what,
            )
    error.add_note(
        _errors.DONATED_DELETED.format(fn=fn, n=len(names), paths=shown, why=why)
    )


def _refs_out(out_leaves: list, leaves: list, jax_leaf_pos: tuple) -> tuple:
    """Trace time: replace the array references among the output leaves.

    Returns the new leaves and ``((k, pos), ...)``: output leaf ``k`` is the
    caller's input leaf ``pos``, or a new reference (``pos == -1``) whose value
    is returned in its place.
    """
    pos_of = {id(leaves[i]): i for i in jax_leaf_pos if leaves[i] is not None}
    out = list(out_leaves)
    marks = []
    for k, x in enumerate(out):
        if isinstance(x, jax.Ref):
            pos = pos_of.get(id(x), -1)
            out[k] = None if pos >= 0 else x[...]
            marks.append((k, pos))
    return out, tuple(marks)


def _refs_in(marks: tuple, out_leaves: list, leaves: list) -> list:
    """After the call: put the array references back (see ``_refs_out``)."""
    out = list(out_leaves)
    for k, pos in marks:
        out[k] = leaves[pos] if pos >= 0 else jax.new_ref(out[k])
    return out


def _has_tracer(variables: list) -> bool:
    for v in variables:
        for leaf in jtu.tree_leaves(v._raw_value):
            if isinstance(leaf, _tracer_type):
                return True
    return False


def _constrain(x: Any, sharding: Any) -> Any:
    if sharding is None:
        return x
    # On a mesh of Explicit axes with_sharding_constraint only asserts; reshard moves.
    types = getattr(getattr(sharding, "mesh", None), "axis_types", None)
    if types and all(t == jax.sharding.AxisType.Explicit for t in types):
        return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding), x)
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), x)


def _sharding_lookup(s: Any) -> Callable[[tuple, Any], Any]:
    """``(path, variable) -> sharding`` for one argument's ``in_shardings`` entry.

    The entry is a sharding (or PartitionSpec) for all of it, a prefix mapping
    (``nnx.StateSharding``, ``nnx.prefix(..., graph=True)``), a State of
    shardings by path, or an object of shardings (``nnx.prefix(...,
    graph=False)``).
    """
    if s is None or isinstance(s, (_Sharding, jax.sharding.PartitionSpec)):
        return lambda path, v: s
    if callable(getattr(s, "map_prefix", None)):
        return lambda path, v: _unbox(s.map_prefix(path, v))
    if hasattr(s, "flat_dict"):
        by_path = {p: _unbox(x) for p, x in s.flat_dict().items()}
        return lambda path, v: by_path.get(path)
    if is_graph_node(s):
        # An object whose leaves are shardings: the one at the same path.
        return lambda path, v: _unbox(_graph._lookup(s, path))
    return lambda path, v: s


def _unbox(x: Any) -> Any:
    return x._raw_value if isinstance(x, Variable) else x


def _constrain_each(values: list, shardings: tuple) -> list:
    return [_constrain(x, s) for x, s in zip(values, shardings)]


def _constrain_at(leaves: list, positions: tuple, shardings: tuple | None) -> list:
    if shardings is None:
        return leaves
    out = list(leaves)
    for i, s in zip(positions, shardings):
        out[i] = _constrain(out[i], s)
    return out


def _constrain_prefix(shardings: Any, out: Any) -> Any:
    """Apply a sharding (or a prefix tree of them) to the arrays of ``out``."""
    if isinstance(shardings, _Sharding):
        return jax.tree.map(
            lambda x: _constrain(x, shardings) if isinstance(x, jax.Array) else x,
            out,
            is_leaf=is_graph_node,
        )
    if _by_path(shardings):
        # Per Variable path (StateSharding, nnx.prefix results): objects in place.
        at = _sharding_lookup(shardings)
        for node in jtu.tree_leaves(out, is_leaf=is_graph_node):
            if not is_graph_node(node):
                continue
            flat = flatten(node)
            for path, v in zip(flat.graphdef.paths, flat.leaves):
                sh = at(path, v) if isinstance(v, Variable) else None
                if sh is not None:
                    _set_raw(v, _constrain(v._raw_value, sh))
                    _tracking.note_value_write()
        return out
    return jax.tree.map(
        lambda s, sub: _constrain_prefix(s, sub) if s is not None else sub,
        shardings,
        out,
        is_leaf=lambda x: x is None or isinstance(x, _Sharding) or _by_path(x),
    )


def _by_path(s: Any) -> bool:
    return (
        callable(getattr(s, "map_prefix", None))
        or hasattr(s, "flat_dict")
        or is_graph_node(s)
    )


def jit(
    fun: Callable | None = None,
    *,
    static_argnums: int | Sequence[int] | None = None,
    static_argnames: str | Sequence[str] | None = None,
    donate_argnums: int | Sequence[int] | None = None,
    donate_argnames: str | Sequence[str] | None = None,
    in_shardings: Any = None,
    out_shardings: Any = None,
    **jit_kwargs: Any,
) -> Any:
    """Compile ``fun`` with ``jax.jit``; objects passed in are updated in place.

    Usable as ``@nnx.jit``, ``@nnx.jit(static_argnums=...)``, on functions and on
    methods. Every change the function makes to Modules, Variables and Rngs in its
    arguments (values, RNG counters, new attributes) is written back.
    ``in_shardings`` is one sharding, or one entry per positional argument (a
    sharding, None, or for an object argument a State of shardings by path);
    ``out_shardings`` is a sharding or a prefix tree of the output.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> @nnx.jit
    ... def set_bias(model, x):
    ...     model.bias.value = jnp.zeros(3) + 1.0
    ...     return model(x)
    >>> set_bias(model, jnp.ones((1, 2))).shape, model.bias.value.tolist()
    ((1, 3), [1.0, 1.0, 1.0])
    """
    kwargs = dict(
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        donate_argnames=donate_argnames,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        **jit_kwargs,
    )
    if fun is None:
        return lambda f: JitWrapped(f, **kwargs)
    return JitWrapped(fun, **kwargs)


def cached_partial(f: Callable, *cached_args: Any) -> Callable:
    """``functools.partial(f, *cached_args)`` for an ``nnx.jit`` function ``f``.

    flax.nnx needs this to skip the graph walk of ``cached_args`` on each call;
    ``nnx.jit`` already skips it for arguments that did not change structure, so
    here it is only a partial application, kept so flax.nnx code runs unchanged.
    Structural changes to ``cached_args`` between calls are still honoured.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> forward = nnx.cached_partial(nnx.jit(lambda m, x: m(x)), model)
    >>> forward(jnp.ones((1, 2))).shape
    (1, 3)
    """
    return functools.partial(f, *cached_args)


def jit_partial(fun: Callable, *partial_args: Any, **jit_kwargs: Any) -> JitPartial:
    """``nnx.jit(fun, **jit_kwargs)`` with ``partial_args`` bound first.

    Argument numbers in ``jit_kwargs`` (``static_argnums``, ``donate_argnums``,
    ``in_shardings`` entries) count ``fun``'s own positions, bound ones included.
    The result has ``.lower(...)`` like any ``nnx.jit`` function. In tree mode
    (``graph=False``) bound arguments sharing a Variable are refused here, when
    bound, with flax's "Duplicate" message.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> forward = nnx.jit_partial(lambda m, x: m(x), model, graph=False)
    >>> forward(jnp.ones((1, 2))).shape, forward.lower(jnp.ones((1, 2))) is not None
    ((1, 3), True)
    """
    return JitPartial(jit(fun, **jit_kwargs), partial_args)


class JitPartial:
    """An ``nnx.jit`` function with its first arguments bound (``jit_partial``)."""

    def __init__(self, wrapped: JitWrapped, partial_args: tuple):
        graph, _ = wrapped._modes
        if not graph:
            nodes = [
                x
                for x in jtu.tree_leaves(partial_args, is_leaf=is_graph_node)
                if is_graph_node(x)
            ]
            _graph.check_tree(tuple(nodes), "jit_partial")
        functools.update_wrapper(self, wrapped.fun)
        self.func = wrapped
        self.args = partial_args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*self.args, *args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """``jax.jit(...).lower`` with the bound arguments first."""
        lowered = self.func.lower(*self.args, *args, **kwargs)
        return Lowered(self, lowered._lowered)  # compiled(...) binds them too
