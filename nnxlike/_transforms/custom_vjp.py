"""``nnx.custom_vjp``: ``jax.custom_vjp`` for functions taking objects.

Design note: two modes, as in flax.nnx 0.12.

- **Graph updates** (``graph=True, graph_updates=True``, the defaults): the
  arguments are lifted like every transform (``_core.Lifted``). The Variables of
  the differentiated arguments (all of them, or those a ``DiffState`` in
  ``nondiff_argnums`` selects) are the differentiated input of one
  ``jax.custom_vjp`` call; the other Variables are a second input with a zero
  cotangent (an enclosing transform that differentiates them is refused: their
  gradient would be lost). The function's result and the new state of its
  arguments are its outputs, written back outside (``_core.write_back``,
  structural changes included). ``bwd(res, g)`` receives
  ``g = (args_g, out_g)``: ``args_g`` holds, per argument, a ``State`` shaped like
  the argument's state after the call (``None`` for plain values); it returns one
  ``State`` per object argument (missing paths count as zero).
- **Simple** (``graph=False`` or ``graph_updates=False``): objects are pytrees, as
  for ``jax.custom_vjp``. Writes to Variables of the arguments are extra outputs
  (``updates``) applied to the caller's Variables afterwards; ``bwd(res, g)``
  gets the output cotangent, may take ``updates_g`` (the cotangents of those
  writes, laid out like the arguments, ``None`` elsewhere) and returns
  cotangents of the arguments' types (a Module for a Module). A change of
  structure is an error, not a silent loss (``StructureError``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.dtypes import float0

from nnxlike import _config, _errors, _tracking
from nnxlike._filters import to_predicate
from nnxlike._graph import flatten, is_graph_node, unflatten
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._transforms import _core
from nnxlike._transforms.autodiff import DiffState, interleave
from nnxlike._variables import Variable, new_variable


class custom_vjp:  # noqa: N801 - mirrors jax.custom_vjp
    """``jax.custom_vjp`` for functions whose arguments may be objects.

    In graph mode with graph updates (the default) ``bwd(res, g)`` receives
    ``g = (args_g, out_g)``, where ``args_g`` holds a ``State`` per object
    argument (the cotangent of its state after the call), and returns one
    ``State`` per object argument:

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> class Foo(nnx.Module):
    ...     def __init__(self):
    ...         self.x = nnx.Param(jnp.array(1.0))
    ...         self.y = nnx.Param(jnp.array(2.0))
    >>> @nnx.custom_vjp
    ... def f(m):
    ...     return jnp.sin(m.x) * m.y
    >>> def f_fwd(m):
    ...     return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)
    >>> def f_bwd(res, g):
    ...     (m_g,), out_g = g
    ...     cos_x, sin_x, m = res
    ...     return (nnx.State(dict(x=cos_x * out_g * m.y, y=sin_x * out_g)),)
    >>> f.defvjp(f_fwd, f_bwd)
    >>> grads = nnx.grad(f)(Foo())
    >>> round(float(grads["x"][...]), 4), round(float(grads["y"][...]), 4)
    (1.0806, 0.8415)

    With ``graph=False`` or ``graph_updates=False`` it behaves like
    ``jax.custom_vjp`` on pytrees: ``bwd(res, g)`` gets the output cotangent and
    returns cotangents of the arguments' own types (a ``Foo`` for a ``Foo``),
    optionally taking ``updates_g`` (cotangents of Variables written inside).

    Args:
        fun: the function.
        nondiff_argnums: positions of arguments that are not differentiated
            (plain values, handed to ``bwd`` first), or ``nnx.DiffState(argnum,
            filter)`` to differentiate only part of an object argument (graph
            updates mode only).
        graph: graph mode (``None``: ``nnx.set_graph_mode``'s value).
        graph_updates: write structural changes back (``None``: the
            ``nnx.set_graph_updates`` value).
    """

    def __new__(cls, fun: Callable | None = None, *args: Any, **kwargs: Any):
        if fun is None:  # @nnx.custom_vjp(nondiff_argnums=...)
            return functools.partial(cls, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        fun: Callable,
        nondiff_argnums: tuple[int | DiffState, ...] = (),
        *,
        graph: bool | None = None,
        graph_updates: bool | None = None,
    ):
        _core.refuse_bound_method(fun, "custom_vjp")
        functools.update_wrapper(self, fun)
        graph, graph_updates = _config.resolve(graph, graph_updates)
        self.fun = fun
        self.graph = graph
        self.graph_updates = graph_updates
        self.simple = not (graph and graph_updates)
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.diff_filter: dict[int, Any] = {}  # argnum -> False | filter
        for a in self.nondiff_argnums:
            if isinstance(a, DiffState) and self.simple:
                raise ValueError(_errors.CUSTOM_VJP_DIFFSTATE.format(name=self._name))
            if not isinstance(a, (int, DiffState)):
                raise TypeError(
                    f"custom_vjp({self._name}): nondiff_argnums entries must be ints "
                    f"or nnx.DiffState, got {a!r}."
                )
            index = a.argnum if isinstance(a, DiffState) else a
            if index in self.diff_filter:
                raise ValueError(
                    f"custom_vjp({self._name}): argnum {index} is repeated in "
                    "nondiff_argnums; give each argument once."
                )
            self.diff_filter[index] = a.filter if isinstance(a, DiffState) else False
        self.jax_nondiff = tuple(
            sorted(a for a in self.nondiff_argnums if isinstance(a, int))
        )
        self.fwd: Callable | None = None
        self.bwd: Callable | None = None
        self.symbolic_zeros = False

    @property
    def _name(self) -> str:
        return getattr(self.fun, "__name__", "f")

    def defvjp(
        self, fwd: Callable, bwd: Callable, symbolic_zeros: bool = False
    ) -> None:
        """Set the forward (``fwd(*args) -> (out, res)``) and backward rules."""
        self.fwd, self.bwd = fwd, bwd
        self.symbolic_zeros = symbolic_zeros

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError(
                f"custom_vjp({self._name}): call .defvjp(fwd, bwd) before calling "
                "the function."
            )
        args = _bind_positional(self.fun, args, kwargs, self._name)
        if self.simple:
            return self._call_simple(args)
        return self._call_graph(args)

    # -- simple mode: objects as pytrees -------------------------------------------

    def _call_simple(self, args: tuple) -> Any:
        graph, name = self.graph, self._name
        if not graph:
            nodes = [
                x
                for x in jtu.tree_leaves(args, is_leaf=is_graph_node)
                if is_graph_node(x)
            ]
            from nnxlike._graph import check_tree

            check_tree(nodes, "custom_vjp")
        xs = _to_tree(args) if graph else args
        targets = _variables_by_path(xs, name)  # the caller's Variables by key path

        def run(user_fn: Callable, xs: tuple) -> tuple[Any, Any, Any]:
            xs = jtu.tree_map(lambda x: x, xs)  # copies: the caller's stay untouched
            before = _variable_leaves(xs)
            treedefs = [jtu.tree_structure(x, is_leaf=_is_var) for x in xs]
            built: list = []
            inner = _from_tree(xs, built=built) if graph else xs
            result = user_fn(*inner)
            changed = [
                i
                for i, (x, td) in enumerate(zip(xs, treedefs))
                if jtu.tree_structure(x, is_leaf=_is_var) != td
            ]
            if changed or not all(_same_tree(t, obj) for t, obj in built):
                where = (
                    f"argument {changed[0]} ({type(inner[changed[0]]).__name__})"
                    if changed
                    else "an object argument"
                )
                raise _errors.StructureError(
                    _errors.STRUCTURE_WITHOUT_GRAPH_UPDATES.format(
                        fn="custom_vjp",
                        what=f"{where}: a static attribute changed, or an attribute "
                        "was added or removed",
                    )
                )
            after = _variable_leaves(xs)
            paths = tuple(
                p
                for p, (v, raw) in after.items()
                if v is not before[p][0] or raw is not before[p][1]
            )
            return xs, result, _Updates(paths, tuple(after[p][0] for p in paths))

        def check_out(xs: tuple, out: Any) -> Any:
            out = _to_tree(out) if graph else out
            _variables_by_path((xs, out), name, labels=("args", "out"))
            return out

        fun, fwd, bwd = self.fun, self.fwd, self.bwd

        def pure(*xs):
            xs, out, updates = run(fun, xs)
            return check_out(xs, out), updates

        def pure_fwd(*xs):
            xs, result, updates = run(fwd, _primal_values(xs))
            out, res = _fwd_pair(result, name)
            masked = jtu.tree_map(lambda _: None, xs, is_leaf=_is_var)
            res = _to_tree(res) if graph else res
            return (check_out(xs, out), updates), (res, masked)

        takes_updates_g = _accepts(bwd, "updates_g")
        n_diff = len(args) - len(self.jax_nondiff)

        def pure_bwd(*rest):
            *nondiff, (res, masked), (out_g, updates_g) = rest
            given = dict(zip(updates_g.paths, updates_g.values))
            updates_g = jtu.tree_map_with_path(
                lambda p, _: given.get(p), masked, is_leaf=lambda x: x is None
            )
            if graph:
                nondiff = _from_tree(nondiff)
                res, out_g = _from_tree(res), _from_tree(out_g)
                updates_g = _from_tree(updates_g, masked=True)
            kwargs = {"updates_g": updates_g} if takes_updates_g else {}
            ct = bwd(*nondiff, res, out_g, **kwargs)
            ct = _as_tuple(ct, name)
            if len(ct) != n_diff:
                raise TypeError(
                    _errors.CUSTOM_VJP_BWD_ARITY.format(
                        name=name, got=len(ct), want=n_diff
                    )
                )
            jtu.tree_leaves(ct)  # a flatten keeps writes to copies made in bwd
            return _to_tree(ct) if graph else ct

        jfun = jax.custom_vjp(pure, nondiff_argnums=self.jax_nondiff)
        jfun.defvjp(pure_fwd, pure_bwd, symbolic_zeros=self.symbolic_zeros)
        # bwd gets the non-differentiable arguments as the call saw them, not the
        # caller's objects after the writes below.
        xs = tuple(
            jtu.tree_map(lambda x: x, x) if i in self.jax_nondiff else x
            for i, x in enumerate(xs)
        )
        out, updates = jfun(*xs)
        try:
            for path, new in zip(updates.paths, updates.values):
                _core._set_raw(targets[path], new._raw_value)
        finally:
            _tracking.note_value_write()
        return _from_tree(out) if graph else out

    # -- graph mode with graph updates ------------------------------------------

    def _call_graph(self, args: tuple) -> Any:
        name = self._name
        lifted = _core.Lifted.from_args(
            args, graph=True, graph_updates=True, fn="custom_vjp"
        )
        var_index = lifted.index_by_id()
        # Per argument: its treedef (graph nodes as leaves), where the nodes are.
        arg_defs = []
        node_arg = []  # argnum of each lifted node, in order
        for i, a in enumerate(args):
            leaves, td = jtu.tree_flatten(a, is_leaf=is_graph_node)
            arg_defs.append(td)
            for x in leaves:
                if is_graph_node(x):
                    node_arg.append(i)
        # The differentiated Variables: chosen[k] = [(path in node k, index)].
        diff_idx: list[int] = []
        chosen: list[list] = []
        for node, i in zip(lifted.nodes, node_arg):
            filt = self.diff_filter.get(i, ...)
            if filt is False:
                raise TypeError(
                    _errors.CUSTOM_VJP_INT_NONDIFF_NODE.format(
                        name=name, argnum=i, type=type(node).__name__
                    )
                )
            chosen.append(_select(node, filt, var_index, diff_idx))
        diff_set = set(diff_idx)
        rest_idx = [j for j in range(len(lifted.flat.leaves)) if j not in diff_set]
        arrays = lifted.arrays()
        jax_args = [jtu.tree_map(_hole_if_node, a, is_leaf=is_graph_node) for a in args]
        # JAX's arguments: the differentiated Variables, the other Variables (their
        # cotangent is zero, and an enclosing transform must not differentiate
        # them: checked in fwd), then the arguments with holes for the objects.
        jax_nondiff = tuple(2 + i for i in self.jax_nondiff)
        diff_args = [i for i in range(len(args)) if i not in self.jax_nondiff]
        box: dict[str, Any] = {}

        def run(user_fn: Callable, diff: list, rest: list, plain: tuple) -> Any:
            full = interleave(diff_idx, list(diff), rest_idx, list(rest))
            leaves = [x for p in plain for x in jtu.tree_leaves(p, is_leaf=_is_hole)]
            args2, copies = lifted.rebuild(full, leaves)
            result = user_fn(*args2)
            box["inputs"] = full
            return copies, result

        def outputs(copies: Any, out: Any) -> tuple:
            collected = _core.collect(lifted, copies, out)
            # The kinds and paths of what ``collect`` flattened, to build States.
            nodes_out = [
                x
                for x in jtu.tree_leaves(out, is_leaf=is_graph_node)
                if is_graph_node(x)
            ]
            flat = flatten((copies.nodes, tuple(nodes_out)))
            box["static"] = collected.static()
            box["kinds"] = [
                (p, type(v), v._metadata if isinstance(v, Variable) else None)
                for p, v in zip(flat.graphdef.paths, flat.leaves)
            ]
            # Which leaves the function left as they came (structure unchanged).
            box["same"] = collected.unchanged and tuple(
                a is b for a, b in zip(collected.arrays, box["inputs"])
            )
            box["out_treedef"] = collected.out_treedef
            box["out_graph_pos"] = collected.out_graph_pos
            return collected.arrays, collected.out_leaves

        fun, fwd, bwd = self.fun, self.fwd, self.bwd

        def pure(diff, rest, *plain):
            copies, out = run(fun, diff, rest, plain)
            return outputs(copies, out)

        def pure_fwd(diff, rest, *plain):
            perturbed = [j for j, p in zip(rest_idx, rest) if p.perturbed]
            if perturbed:
                self._refuse_perturbed(lifted, node_arg, perturbed)
            diff, rest, plain = _primal_values((diff, rest, plain))
            copies, result = run(fwd, diff, rest, plain)
            out, res = _fwd_pair(result, name)
            return outputs(copies, out), _to_tree(res, every_node=True)

        def pure_bwd(*args_in):
            *nondiff, res, (ct_arrays, ct_out_leaves) = args_in
            if not self.symbolic_zeros:  # JAX's rule runs with them; the user's not
                ct_arrays, ct_out_leaves = _instantiate((ct_arrays, ct_out_leaves))
            res = _from_tree(res)
            states = _states_by_root(box["kinds"], ct_arrays)
            args_g = []
            k = 0
            for i in range(len(args)):
                td = arg_defs[i]
                leaves = jtu.tree_leaves(args[i], is_leaf=is_graph_node)
                g_leaves = []
                for x in leaves:
                    if is_graph_node(x):
                        g_leaves.append(states.get((0, k)))
                        k += 1
                    else:
                        g_leaves.append(None)
                if i in diff_args:
                    args_g.append(td.unflatten(g_leaves))
            full_out = list(ct_out_leaves)
            for n, j in enumerate(box["out_graph_pos"]):
                full_out[j] = states.get((1, n))
            out_g = box["out_treedef"].unflatten(full_out)
            ct = bwd(*nondiff, res, (tuple(args_g), out_g))
            ct = _as_tuple(ct, name)
            jtu.tree_leaves(ct)  # a flatten keeps writes to copies made in bwd
            if len(ct) != len(diff_args):
                raise TypeError(
                    _errors.CUSTOM_VJP_BWD_ARITY.format(
                        name=name, got=len(ct), want=len(diff_args)
                    )
                )
            var_ct, *plain_ct = self._tangents(
                ct, args, arg_defs, diff_args, chosen, diff_idx
            )
            return (var_ct, [None] * len(rest_idx), *plain_ct)

        jfun = jax.custom_vjp(pure, nondiff_argnums=jax_nondiff)
        jfun.defvjp(pure_fwd, pure_bwd, symbolic_zeros=True)
        new_arrays, out_leaves = jfun(
            [arrays[j] for j in diff_idx], [arrays[j] for j in rest_idx], *jax_args
        )
        if box["same"]:
            # A Variable of an enclosing trace (an object closed over by a plain
            # jax.grad) that the function did not change keeps its array: the
            # output is a tracer of this trace and would escape through it.
            here = _tracking.get_trace_state()
            new_arrays = [
                old
                if same and (type(v) is _core.RawSlot or v._trace_state != here)
                else new
                for v, old, new, same in zip(
                    lifted.flat.leaves, arrays, new_arrays, box["same"]
                )
            ]
        return _core.write_back(lifted, box["static"], new_arrays, out_leaves)

    def _refuse_perturbed(self, lifted: Any, node_arg: list, perturbed: list) -> None:
        """An enclosing transform differentiates Variables this rule does not."""
        paths = lifted.flat.graphdef.paths  # (node index, *path in the node)
        shown = [
            f"argument {node_arg[paths[j][0]]} at {_errors.path_str(paths[j][1:])}"
            for j in perturbed
        ]
        raise ValueError(
            _errors.CUSTOM_VJP_PERTURBED_NONDIFF.format(
                name=self._name,
                paths=", ".join(shown[:8]) + (" ..." if len(shown) > 8 else ""),
                filters=[a for a in self.nondiff_argnums if isinstance(a, DiffState)],
            )
        )

    def _tangents(
        self,
        ct: tuple,
        args: tuple,
        arg_defs: list,
        diff_args: list,
        chosen: list,
        diff_idx: list,
    ) -> tuple:
        """The jax-level cotangents (diff Variables, plain arguments) from ``ct``."""
        name = self._name
        pos = {j: n for n, j in enumerate(diff_idx)}
        var_ct: list = [None] * len(diff_idx)
        plain_ct: list = []
        node_k = 0
        node_start = {}
        for i, a in enumerate(args):
            node_start[i] = node_k
            node_k += sum(
                1 for x in jtu.tree_leaves(a, is_leaf=is_graph_node) if is_graph_node(x)
            )
        for t, i in zip(ct, diff_args):
            leaves = jtu.tree_leaves(args[i], is_leaf=is_graph_node)
            if t is None:
                per_leaf = [None] * len(leaves)
            else:
                try:
                    per_leaf = arg_defs[i].flatten_up_to(t)
                except (ValueError, TypeError):
                    raise TypeError(
                        _errors.CUSTOM_VJP_BWD_STRUCTURE.format(
                            name=name,
                            argnum=i,
                            want=_describe_arg(args[i]),
                            got=type(t).__name__,
                        )
                    ) from None
            k = node_start[i]
            out_leaves = []
            for x, g in zip(leaves, per_leaf):
                if not is_graph_node(x):
                    out_leaves.append(g)
                    continue
                known = dict(chosen[k])
                for path, value in _ct_items(g, x, name, i):
                    if path not in known:
                        raise ValueError(
                            _errors.CUSTOM_VJP_BWD_UNKNOWN_PATH.format(
                                name=name,
                                argnum=i,
                                path=_errors.path_str(path) or "the root",
                                known=[_errors.path_str(p) for p in known] or "none",
                            )
                        )
                    n = pos[known[path]]
                    var_ct[n] = value if var_ct[n] is None else var_ct[n] + value
                out_leaves.append(_HOLE)
                k += 1
            plain_ct.append(jtu.tree_unflatten(arg_defs[i], out_leaves))
        return (var_ct, *plain_ct)


# -- helpers ---------------------------------------------------------------------


def _bind_positional(fun: Callable, args: tuple, kwargs: dict, name: str) -> tuple:
    """Keyword arguments moved to their positions (jax.custom_vjp needs positions)."""
    if not kwargs:
        return args
    try:
        sig = inspect.signature(fun)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise TypeError(f"custom_vjp({name}): {e}") from None
    if bound.kwargs:
        raise TypeError(
            f"custom_vjp({name}): keyword-only arguments {sorted(bound.kwargs)} are "
            "not supported; pass them positionally or close over them."
        )
    return tuple(bound.args)


def _accepts(f: Callable, kw: str) -> bool:
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind == p.VAR_KEYWORD
        or (p.name == kw and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def _fwd_pair(result: Any, name: str) -> tuple:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(
            f"custom_vjp({name}): fwd must return a pair (output, residuals), got "
            f"{type(result).__name__}."
        )
    return result


def _as_tuple(ct: Any, name: str) -> tuple:
    if isinstance(ct, list):
        ct = tuple(ct)
    if not isinstance(ct, tuple):
        raise TypeError(
            f"custom_vjp({name}): bwd must return a tuple with one cotangent per "
            f"differentiated argument, got {type(ct).__name__}. Return `(ct,)` for "
            "a single argument."
        )
    return ct


def _primal_values(tree: Any) -> Any:
    """With ``symbolic_zeros=True`` JAX hands fwd ``CustomVJPPrimal``s: unwrap them.

    The objects are rebuilt from the values; bwd still gets ``SymbolicZero``
    cotangents where JAX knows them to be zero.
    """
    return jtu.tree_map(
        lambda p: p.value if isinstance(p, CustomVJPPrimal) else p,
        tree,
        is_leaf=lambda p: isinstance(p, CustomVJPPrimal),
    )


def _instantiate(tree: Any) -> Any:
    """Zeros in place of JAX's ``SymbolicZero`` cotangents."""

    def zeros(z: Any) -> Any:
        if not isinstance(z, SymbolicZero):
            return z
        if z.aval.dtype == float0:
            return np.zeros(z.aval.shape, float0)
        return jnp.zeros(z.aval.shape, z.aval.dtype)

    return jtu.tree_map(zeros, tree, is_leaf=lambda z: isinstance(z, SymbolicZero))


def _is_var(x: Any) -> bool:
    return isinstance(x, Variable)


def _variable_leaves(xs: Any) -> dict:
    """``{key path: (Variable, its raw value)}`` of the Variables in ``xs``."""
    return {
        p: (v, v._raw_value)
        for p, v in jtu.tree_leaves_with_path(xs, is_leaf=_is_var)
        if isinstance(v, Variable)
    }


def _variables_by_path(
    tree: Any, name: str, labels: tuple[str, ...] | None = None
) -> dict:
    """The Variables of ``tree`` by key path; one Variable reached twice is refused."""
    seen: dict[int, Any] = {}
    out = {}
    for p, v in jtu.tree_leaves_with_path(tree, is_leaf=_is_var):
        if not isinstance(v, Variable):
            continue
        where = _label(p, labels)
        if id(v) in seen:
            raise ValueError(
                _errors.CUSTOM_VJP_DUPLICATE.format(
                    type=type(v).__name__, first=seen[id(v)], second=where, name=name
                )
            )
        seen[id(v)] = where
        out[p] = v
    return out


def _label(path: tuple, labels: tuple[str, ...] | None) -> str:
    if labels is None:
        return "args" + jtu.keystr(path)
    return labels[path[0].idx] + jtu.keystr(path[1:])


# Graph-mode pytrees: an Object that is not a pytree (pytree=False) crosses JAX
# as a _Tree (its GraphDef static, its Variables and raw arrays the children).


@dataclasses.dataclass(frozen=True, eq=False)
class _Tree:
    graphdef: Any
    leaves: tuple


jtu.register_pytree_with_keys(
    _Tree,
    lambda t: (
        tuple((jtu.SequenceKey(i), x) for i, x in enumerate(t.leaves)),
        t.graphdef,
    ),
    lambda gd, leaves: _Tree(gd, tuple(leaves)),
    flatten_func=lambda t: (t.leaves, t.graphdef),
)


def _needs_tree(x: Any, every_node: bool) -> bool:
    if isinstance(x, Variable):
        return False
    if isinstance(x, Object):
        return every_node or not type(x)._nnx_is_pytree
    return False


def _to_tree(tree: Any, every_node: bool = False) -> Any:
    """Objects JAX cannot see (or, with ``every_node``, all of them) as ``_Tree``s."""

    def conv(x: Any) -> Any:
        if _needs_tree(x, every_node):
            flat = flatten(x)
            return _Tree(flat.graphdef, tuple(flat.leaves))
        return x

    return jtu.tree_map(conv, tree, is_leaf=lambda x: is_graph_node(x))


def _from_tree(tree: Any, masked: bool = False, built: list | None = None) -> Any:
    """Rebuild the objects of ``_Tree``s (their Variables are kept, not copied).

    ``built``, if given, receives ``(tree, object)`` pairs, for ``_same_tree``.
    """

    def conv(x: Any) -> Any:
        if not isinstance(x, _Tree):
            return x
        if masked:  # updates_g of an object JAX cannot see: the written paths
            items = [
                (p, v) for p, v in zip(x.graphdef.paths, x.leaves) if v is not None
            ]
            return State.from_flat([p for p, _ in items], [v for _, v in items])
        obj = unflatten(x.graphdef, list(x.leaves), keep_variables=True)
        if built is not None:
            built.append((x, obj))
        return obj

    # Graph nodes are leaves here: the objects themselves, not pytree copies.
    return jtu.tree_map(
        conv,
        tree,
        is_leaf=lambda x: (
            isinstance(x, _Tree) or is_graph_node(x) or (x is None and masked)
        ),
    )


def _same_tree(t: _Tree, obj: Any) -> bool:
    """Whether ``obj``, rebuilt from ``t``, still has ``t``'s structure and leaves."""
    flat = flatten(obj)
    return flat.graphdef == t.graphdef and all(
        a is b for a, b in zip(flat.leaves, t.leaves)
    )


class _Hole:
    """Where a graph node sat in a plain argument (an empty pytree node)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<object>"


_HOLE = _Hole()
jtu.register_pytree_node(_Hole, lambda h: ((), None), lambda aux, ch: _HOLE)


def _is_hole(x: Any) -> bool:
    return x is _HOLE


def _hole_if_node(x: Any) -> Any:
    return _HOLE if is_graph_node(x) else x


@dataclasses.dataclass(frozen=True, eq=False)
class _Updates:
    """Variables written inside, by key path (paths static, Variables children)."""

    paths: tuple
    values: tuple


jtu.register_pytree_node(
    _Updates,
    lambda u: (u.values, u.paths),
    lambda paths, values: _Updates(paths, tuple(values)),
)


def _select(node: Any, filt: Any, var_index: dict, diff_idx: list) -> list:
    """``[(path, index)]`` of the Variables (and raw arrays) ``filt`` picks."""
    pred = (lambda p, v: True) if filt is ... else to_predicate(filt)
    flat = flatten(node)
    out = []
    for path, v in zip(flat.graphdef.paths, flat.leaves):
        idx = var_index.get(id(v))
        if idx is None or not pred(path, v):
            continue
        out.append((path, idx))
        if idx not in diff_idx:
            diff_idx.append(idx)
    return out


def _states_by_root(kinds: list, arrays: list) -> dict:
    """``{(0|1, k): State or Variable}`` from the cotangents of ``collect``'s leaves."""
    groups: dict[tuple, list] = {}
    for (path, t, meta), a in zip(kinds, arrays):
        leaf = a if meta is None else new_variable(t, a, meta)
        groups.setdefault(path[:2], []).append((path[2:], leaf))
    out = {}
    for root, items in groups.items():
        if len(items) == 1 and items[0][0] == ():  # the node is a Variable
            out[root] = items[0][1]
        else:
            out[root] = State.from_flat([p for p, _ in items], [v for _, v in items])
    return out


def _ct_items(g: Any, node: Any, name: str, argnum: int) -> list:
    """``[(path, array)]`` of the cotangent ``g`` given for graph node ``node``."""
    if g is None:
        return []
    if isinstance(g, Variable):
        return [((), g._raw_value)]
    if isinstance(g, State):
        return [
            (p, v._raw_value if isinstance(v, Variable) else v)
            for p, v in g.flat_state()
        ]
    if isinstance(g, dict):
        return _ct_items(State(g), node, name, argnum)
    if not isinstance(node, Variable) or not hasattr(g, "shape"):
        raise TypeError(
            _errors.CUSTOM_VJP_BWD_STRUCTURE.format(
                name=name,
                argnum=argnum,
                want=_describe_arg(node),
                got=type(g).__name__,
            )
        )
    return [((), g)]


def _describe_arg(a: Any) -> str:
    if isinstance(a, Variable):
        return f"a {type(a).__name__} (or its value)"
    if is_graph_node(a):
        return f"an nnx.State for the {type(a).__name__}"
    return f"a pytree like {type(a).__name__}"
