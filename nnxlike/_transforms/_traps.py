"""Trace-time checks for the traps around transforms (issue 12).

Design note: a transform lifts the objects it is *given*; an object the function
reaches some other way is invisible to it. Writes to such an object already
raise (a Variable refuses writes from another trace). Reads are the silent
half: inside ``nnx.jit`` the arrays of a model read through a closure or a
global are compiled in as constants, so after training the function keeps
returning the old results. This file finds those reads *at trace time only*
(``captured_reads``), by looking at what the function's code can reach without
an argument: closure cells, ``functools.partial`` bindings, and the globals its
bytecode loads (``LOAD_GLOBAL``, not attribute names), following functions of
the user's own module a few levels deep. Nothing here runs on a cached call.

It deliberately does not look at what a call *returns* or at objects created
inside the function (they are new, not stale), and it does not follow library
code (jax, optax, nnxlike): only objects the user's code names.
"""

from __future__ import annotations

import dis
import functools
import operator
import types
from typing import Any

import jax.tree_util as jtu

from nnxlike import _errors
from nnxlike._graph import flatten, is_graph_node, iter_graph
from nnxlike._transforms._core import holder
from nnxlike._variables import Variable

_LOAD_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_MAX_DEPTH = 4
_MAX_CONTAINER = 1000

# code object -> the global names its bytecode (and nested code) loads.
_GLOBALS_OF: dict = {}


def _global_names(code: types.CodeType) -> tuple:
    names = _GLOBALS_OF.get(code)
    if names is None:
        found: list = []
        for ins in dis.get_instructions(code):
            if ins.opname in _LOAD_GLOBAL and ins.argval not in found:
                found.append(ins.argval)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):  # lambdas, inner functions
                found.extend(n for n in _global_names(const) if n not in found)
        names = _GLOBALS_OF[code] = tuple(found)
    return names


def _nodes_in(value: Any) -> list:
    """Graph nodes holding Variables in ``value`` (itself or a small container)."""
    if is_graph_node(value):
        candidates = [("", value)]
    elif isinstance(value, (list, tuple, dict)) and len(value) <= _MAX_CONTAINER:
        try:
            flat = jtu.tree_flatten_with_path(value, is_leaf=is_graph_node)[0]
        except Exception:  # not a pytree of ours: nothing to report
            return []
        candidates = [(jtu.keystr(p), x) for p, x in flat if is_graph_node(x)]
    else:
        return []
    out = []
    for suffix, node in candidates:
        try:
            leaves = flatten(node).leaves
        except Exception:  # an object we cannot walk is not ours to judge
            continue
        if leaves:
            out.append((suffix, node))
    return out


def captured_reads(fun: Any) -> list[tuple[str, str, Any]]:
    """``(how, name, node)`` for each graph node ``fun`` reaches without an argument.

    ``how`` is ``"closure"``, ``"global"`` or ``"functools.partial"``; ``name`` is
    the variable name (with the container path, ``layers[0]``). Only nodes that
    hold at least one Variable are reported.
    """
    found: list = []
    seen_nodes: set = set()
    seen_funs: set = set()

    def report(how: str, name: str, value: Any) -> None:
        for suffix, node in _nodes_in(value):
            if id(node) not in seen_nodes:
                seen_nodes.add(id(node))
                found.append((how, name + suffix, node))

    def visit(f: Any, depth: int, module: str | None) -> None:
        if depth > _MAX_DEPTH or id(f) in seen_funs:
            return
        seen_funs.add(id(f))
        if isinstance(f, functools.partial):
            for i, a in enumerate(f.args):
                report("functools.partial", f"args[{i}]", a)
            for k, v in f.keywords.items():
                report("functools.partial", k, v)
            visit(f.func, depth, module)
            return
        if isinstance(f, types.MethodType):
            # A bound method of a graph node reads that node.
            report("bound method", "self", f.__self__)
            visit(f.__func__, depth, module)
            return
        if not isinstance(f, types.FunctionType):
            return
        if module is None:
            module = f.__module__
        elif f.__module__ != module:  # only the user's own code is followed
            return
        code = f.__code__
        for name, cell in zip(code.co_freevars, f.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (assigned later)
                continue
            report("closure", name, value)
            if callable(value):
                visit(value, depth + 1, module)
        g = f.__globals__
        for name in _global_names(code):
            if name in g:
                value = g[name]
                report("global", name, value)
                if callable(value):
                    visit(value, depth + 1, module)

    visit(fun, 0, None)
    return found


def check_captured_reads(fun: Any, transform: str) -> None:
    """Raise ``TraceContextError`` if ``fun`` reads objects it was not given."""
    found = captured_reads(fun)
    if not found:
        return
    fn = getattr(fun, "__name__", None) or type(fun).__name__
    lines = []
    for how, name, node in found[:8]:
        flat = flatten(node)
        paths = [
            f"{name}.{_errors.path_str(p)}" if p else name
            for p in flat.graphdef.paths[:3]
        ]
        more = len(flat.graphdef.paths) - len(paths)
        lines.append(
            f"  {name} ({type(node).__name__}, read through a {how}): "
            + ", ".join(paths)
            + (f", ... ({more} more)" if more > 0 else "")
        )
    full = found[0][1]
    root = full.split("[")[0] or "model"
    raise _errors.TraceContextError(
        _errors.CAPTURED_READ.format(
            transform=transform, fn=fn, lines="\n".join(lines), name=root, full=full
        )
    )


# -- changes that bypass the structure version ---------------------------------------
#
# ``nnx.jit``'s fast path trusts the structure version, which only sees
# assignments through ``Object.__setattr__``. Two edits slip past it: writing an
# object's ``__dict__`` directly (``m.__dict__['layer'] = new`` or
# ``object.__setattr__``), and mutating a static attribute's own state in place
# (``m.cfg.scale = 2.0`` on a plain config object, which the GraphDef compares by
# identity). ``Snapshot`` keeps, per cached argument set, the number of
# attributes of every Object, every attribute that is an edge of the graph (a
# node, or a container of nodes) and every attribute of such a static object.
# Checking is two C-level map/compare passes per call, no Python code
# per attribute; ordinary static values (ints, dtypes, functions) are not
# re-read, so reassigning one through ``__dict__`` is not seen (assign normally).

_dict_get = dict.get
_is = operator.is_
_LIBRARIES = frozenset(
    {"builtins", "jax", "jaxlib", "numpy", "nnxlike", "optax", "flax", "functools"}
)
_CALLABLE_TYPES = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    functools.partial,
)
_CONTAINERS = (list, tuple, dict)


def _is_mutable_static(value: Any) -> bool:
    """A static attribute whose own state can change in place (a config object)."""
    if not isinstance(getattr(value, "__dict__", None), dict):
        return False
    if isinstance(value, _CALLABLE_TYPES) or is_graph_node(value):
        return False
    return type(value).__module__.split(".")[0] not in _LIBRARIES


def _holds_nodes(value: Any) -> bool:
    # A container of arrays is data the write-back may replace every call; one
    # holding graph nodes is structure.
    if not isinstance(value, _CONTAINERS):
        return False
    try:
        leaves = jtu.tree_leaves(value, is_leaf=is_graph_node)
    except Exception:  # not a pytree we can read: not structure we track
        return False
    return any(map(is_graph_node, leaves))


class Snapshot:
    """What ``intact`` compares: attribute counts and edge identities."""

    __slots__ = (
        "dicts",
        "lens",
        "edge_dicts",
        "edge_keys",
        "edge_values",
        "statics",
        "slot_holders",
        "slot_keys",
        "slot_values",
    )

    def __init__(self, objects: list, nodes: tuple = (), slots: tuple = ()):
        dicts: list = []
        edge_dicts: list = []
        edge_keys: list = []
        statics: list = []  # (owner, attribute name, static object, first edge)
        for obj in objects:
            d = getattr(obj, "__dict__", None)
            if not isinstance(d, dict) or not is_graph_node(obj):
                continue
            if isinstance(obj, Variable):  # its value changes every step
                continue
            dicts.append(d)
            for name, value in d.items():
                if is_graph_node(value) or _holds_nodes(value):
                    edge_dicts.append(d)
                    edge_keys.append(name)
                elif _is_mutable_static(value):
                    statics.append((obj, name, value, len(edge_keys)))
                    edge_dicts.extend([value.__dict__] * len(value.__dict__))
                    edge_keys.extend(value.__dict__)
        self.dicts = dicts
        self.lens = list(map(len, dicts))
        self.edge_dicts = edge_dicts
        self.edge_keys = edge_keys
        self.edge_values = self._values()  # compared by identity
        self.statics = statics
        # Raw array attributes (data, flax-style) are stored back by every call,
        # so they are not edges above; each slot's holding entry is compared with
        # what the last call stored there (refresh_slots), which catches an
        # array replaced through ``__dict__``.
        holders: list = []
        keys: list = []
        for slot in slots:
            path = slot._path
            container, where, key = nodes[path[0]], None, None
            for k in path[1:]:
                if type(container) is not tuple:  # tuples are rebuilt, not edited
                    where, key = holder(container), k
                container = holder(container)[k]
            holders.append(where)
            keys.append(key)
        self.slot_holders = holders
        self.slot_keys = keys
        self.refresh_slots()

    def _slots_now(self) -> list:
        return list(map(operator.getitem, self.slot_holders, self.slot_keys))

    def refresh_slots(self) -> None:
        """Record what the call just stored into the raw array attributes."""
        self.slot_values = self._slots_now()

    def _values(self) -> list:
        return list(map(_dict_get, self.edge_dicts, self.edge_keys))

    def intact(self) -> bool:
        # By identity: a Variable's == compares values (elementwise), so a
        # replaced Variable holding an equal value would otherwise pass.
        # ``all(map(is_, ...))`` runs in C without building id lists.
        if not (
            list(map(len, self.dicts)) == self.lens
            and all(
                map(
                    _is,
                    map(_dict_get, self.edge_dicts, self.edge_keys),
                    self.edge_values,
                )
            )
        ):
            return False
        if not self.slot_holders:
            return True
        try:
            now = self._slots_now()
        except (KeyError, IndexError):  # removed behind our back
            return False
        return all(map(_is, now, self.slot_values))

    def check_statics(self, roots: tuple, names: list, fn: str) -> None:
        """Raise if a static object changed in place (recompiling cannot help).

        ``roots`` are the argument graph nodes, ``names`` how the message calls
        them (``model``, ``args[1]``).
        """
        now = self._values()
        for owner, name, value, first in self.statics:
            if owner.__dict__.get(name) is not value:  # replaced: nothing stale
                continue
            n = len(value.__dict__)
            same = list(value.__dict__) == self.edge_keys[first : first + n] and all(
                a is b for a, b in zip(now[first : first + n], self.edge_values[first:])
            )
            if same:
                continue
            where = f"{type(owner).__name__}.{name}"
            for root, root_name in zip(roots, names):
                for path, node in iter_graph(root):
                    if node is owner:
                        where = _render(root_name, (*path, name))
                        break
                else:
                    continue
                break
            raise _errors.StructureError(
                _errors.STATIC_MUTATED.format(
                    fn=fn, where=where, type=type(value).__name__, name=name
                )
            )


def _render(root: str, path: tuple) -> str:
    rest = _errors.path_str(path) if path else ""
    if rest and not rest.startswith("["):
        rest = "." + rest
    return root + rest


# -- enriching the closure-write error -------------------------------------------------
#
# A Variable refuses a write from a trace it was not created in, but it does not
# know its own path, nor who wrote it. The transform does: the failing frame's
# ``self`` is the Variable, an outer frame's ``self`` the layer that drew from or
# wrote it, and the function's captured objects hold the path.


def _frames(error: BaseException) -> list:
    out = []
    tb = error.__traceback__
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def explain_trace_context(
    error: _errors.TraceContextError, fun: Any, transform: str
) -> _errors.TraceContextError:
    """A TraceContextError naming the Variable's path, the writer and ``transform``."""
    from nnxlike._object import Object
    from nnxlike._rngs import Rngs, RngStream

    frames = _frames(error)
    var = writer = stream = None
    for frame in reversed(frames):  # innermost first
        s = frame.f_locals.get("self")
        if var is None:
            if isinstance(s, Variable):
                var = s
            continue
        if isinstance(s, RngStream) and stream is None:
            stream = s
        elif isinstance(s, Object) and not isinstance(s, (Rngs, RngStream)):
            writer = s
            break
    if var is None:
        return error
    where = owner = None
    for how, name, node in captured_reads(fun):
        for path, value in iter_graph(node):
            if value is var:
                where, owner = (_render(name, path), (how, name, node))
                break
        if where is not None:
            break
    fn = getattr(fun, "__name__", None) or type(fun).__name__
    what = f"{where} ({type(var).__name__})" if where else type(var).__name__
    if stream is not None or isinstance(owner and owner[2], Rngs):
        drew = type(writer).__name__ if writer is not None else "A layer"
        name = owner[1] if owner else "rngs"
        headline = (
            f"{transform}({fn}): {drew} drew from a captured Rngs: `{name}` is read "
            f"through a {owner[0] if owner else 'closure'}, not passed as an "
            f"argument, so advancing its counter {what} cannot be written back. "
            f"Pass it in (`{transform}(lambda model, {name}, x: model(x, "
            f"rngs={name}))`), or give the layer its own stream at construction "
            f"(`nnx.Dropout(rate, rngs=rngs)`) and pass the model."
        )
    else:
        by = f" by {type(writer).__name__}" if writer is not None else ""
        via = f" (`{owner[1]}`, read through a {owner[0]})" if owner else ""
        headline = (
            f"{transform}({fn}): cannot write {what}{by}: its object{via} was "
            f"not passed to {transform} as an argument."
        )
    new = _errors.TraceContextError(headline + " " + str(error))
    new.__cause__ = error
    return new
