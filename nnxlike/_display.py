"""Display: treescope renderings of Modules, Variables, State and GraphDef.

Design note: treescope is the single source of display truth. Every class's
``__treescope_repr__`` delegates here and ``__repr__`` is the text rendering
(``render_text``). The first line of an Object or State carries parameter counts
and bytes per Variable kind; an object reached a second time is shown as a
reference naming where it was first shown (``<shared Linear: same object as
.encoder>``) instead of being expanded again. Nothing here
defines ``_repr_html_`` (treescope calling back into it would recurse).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import numpy as np

from nnxlike import _graph, _tracking
from nnxlike._graph import GraphDef
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import RngState, Variable

_SEEN: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "nnx_display_seen", default=None
)


_TREESCOPE: tuple | None = None


def _treescope() -> tuple:
    """``(treescope, formatting_util, rendering_parts)``, imported on first use.

    treescope pulls in IPython when it is installed (a quarter of a second), so
    ``import nnxlike`` does not import it; the first display does.
    """
    global _TREESCOPE
    if _TREESCOPE is None:
        import treescope
        from treescope import formatting_util, type_registries
        from treescope import rendering_parts as rp

        # treescope annotates every object it meets twice with "# Repeated python
        # obj at 0x...". We mark shared Objects and Variables ourselves, by path,
        # so tell treescope not to add its own comment for them (its registry is
        # keyed by base class: subclasses are covered).
        for cls in (Object, Variable):
            type_registries.IMMUTABLE_TYPES_REGISTRY.setdefault(cls, True)
        _TREESCOPE = (treescope, formatting_util, rp)
    return _TREESCOPE


def render_text(obj: Any) -> str:
    treescope = _treescope()[0]
    return treescope.render_to_text(obj, ignore_exceptions=True)


def display(*objs: Any) -> None:
    """Show objects with treescope's rich view in a notebook; print elsewhere."""
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]

        in_notebook = get_ipython() is not None and hasattr(get_ipython(), "kernel")
    except ImportError:
        in_notebook = False
    for obj in objs:
        if in_notebook:
            _treescope()[0].display(obj)
        else:
            print(render_text(obj))


def _color(cls: type) -> str:
    return _treescope()[1].color_from_string(cls.__qualname__)


def _nbytes(value: Any) -> int:
    size = getattr(value, "size", None)
    dtype = getattr(value, "dtype", None)
    if size is None or dtype is None:
        return 0
    try:
        return int(size) * np.dtype(dtype).itemsize
    except TypeError:  # typed PRNG keys
        return int(size) * 8


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def count_by_kind(node: Any) -> dict[str, tuple[int, int]]:
    """``{kind name: (number of elements, bytes)}`` over the distinct Variables."""
    out: dict[str, list[int]] = {}
    # isinstance, not hasattr: Rngs answers any attribute name with a stream, and
    # calling that would draw a key (printing must not advance the RNG).
    if isinstance(node, State):
        leaves = [v for _, v in node.flat_state()]
    else:
        leaves = _graph.flatten(node).leaves
    for leaf in leaves:
        if isinstance(leaf, Variable):
            # flax counts RNG keys and counters together, as RngState
            name = "RngState" if isinstance(leaf, RngState) else type(leaf).__name__
            value = leaf.get_raw_value()
        else:
            name, value = "array", leaf
        size = getattr(value, "size", None)
        if size is None:
            continue
        acc = out.setdefault(name, [0, 0])
        acc[0] += int(size)
        acc[1] += _nbytes(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def _summary_comment(node: Any) -> str:
    try:
        counts = count_by_kind(node)
    except Exception:
        return ""
    if not counts:
        return ""
    parts = [f"{k}: {n:,} ({_human(b)})" for k, (n, b) in counts.items()]
    if len(counts) > 1:  # flax's summary of every kind together
        n_all = sum(n for n, _ in counts.values())
        b_all = sum(b for _, b in counts.values())
        parts.append(f"Total: {n_all:,} ({_human(b_all)})")
    return "# " + ", ".join(parts)


@contextlib.contextmanager
def _seen_scope():
    seen = _SEEN.get()
    if seen is None:
        token = _SEEN.set({})
        try:
            yield _SEEN.get()
        finally:
            _SEEN.reset(token)
    else:
        yield seen


def _constructor(
    cls: type,
    items: list[tuple[str, Any]],
    path: Any,
    subtree_renderer: Any,
    comment: str = "",
    color: str | None = None,
):
    rp = _treescope()[2]
    prefix = [rp.maybe_qualified_type_name(cls), "("]
    if comment:
        prefix.append(rp.comment_color(rp.text(" " + comment)))
    children = []
    for i, (name, value) in enumerate(items):
        child_path = None if path is None else f"{path}.{name}"
        comma = (
            rp.siblings(",", rp.fold_condition(collapsed=rp.text(" ")))
            if i < len(items) - 1
            else rp.fold_condition(expanded=rp.text(","))
        )
        children.append(
            rp.build_full_line_with_annotations(
                rp.siblings_with_annotations(
                    f"{name}=", subtree_renderer(value, path=child_path)
                ),
                comma,
            )
        )
    return rp.build_foldable_tree_node_from_children(
        prefix=rp.siblings(*prefix),
        children=children,
        suffix=rp.text(")"),
        path=path,
        background_color=color,
    )


def _where(path: Any, n_seen: int) -> str:
    """How a later reference names this first occurrence: its path, else the root."""
    if path:
        return path if path.startswith(".") else "." + path
    return "the root" if n_seen == 0 else f"object #{n_seen + 1}"


def _shared_marker(obj: Any, first: str, path: Any):
    text = f"<shared {type(obj).__name__}: same object as {first}>"
    rp = _treescope()[2]
    return rp.build_one_line_tree_node(rp.comment_color(rp.text(text)), path)


def render_object(obj: Any, path: Any, subtree_renderer: Any):
    with _seen_scope() as seen:
        first = seen.get(id(obj))
        if first is not None:
            return _shared_marker(obj, first, path)
        seen[id(obj)] = _where(path, len(seen))
        is_root = len(seen) == 1
        items = [(str(k), v) for k, v in obj._nnx_children()]
        comment = _summary_comment(obj) if is_root else ""
        return _constructor(
            type(obj), items, path, subtree_renderer, comment, _color(type(obj))
        )


def render_variable(var: Any, path: Any, subtree_renderer: Any):
    with _seen_scope() as seen:
        first = seen.get(id(var))
        if first is not None:
            return _shared_marker(var, first, path)
        seen[id(var)] = _where(path, len(seen))
        cls = type(var)
        # get_raw_value: a hijax Variable shows what its box holds
        items = [("value", var.get_raw_value()), *var._metadata.items()]
        return _constructor(cls, items, path, subtree_renderer, color=_color(cls))


def render_state(state: Any, path: Any, subtree_renderer: Any):
    with _seen_scope():
        items = [
            (repr(k) if not isinstance(k, str) else k, v) for k, v in state.items()
        ]
        comment = _summary_comment(state) if path in (None, "") else ""
        return _constructor(State, items, path, subtree_renderer, comment)


def render_graphdef(gd: Any, path: Any, subtree_renderer: Any):
    lines = _graphdef_lines(gd.tree, 0)
    text = "GraphDef(\n" + "\n".join(lines) + "\n)"
    rp = _treescope()[2]
    return rp.build_one_line_tree_node(rp.text(text), path)


def _graphdef_lines(d: tuple, depth: int, name: str = "") -> list[str]:
    pad = "  " * (depth + 1)
    label = f"{name}: " if name != "" else ""
    kind = d[0]
    if kind == _graph.REF:
        return [f"{pad}{label}<shared #{d[1]}>"]
    if kind == _graph.STATIC:
        return [f"{pad}{label}{d[2]!r}"]
    if kind == _graph.LEAF:
        return [f"{pad}{label}<array>"]
    if kind == _graph.PYTREE:
        out = [f"{pad}{label}<pytree {d[1]}>"]
        for key, c in d[2]:
            out += _graphdef_lines(c, depth + 1, str(key))
        return out
    if kind == _graph.VAR:
        meta = f" {dict(d[3])}" if d[3] else ""
        return [f"{pad}{label}{d[1].__name__} #{d[2]}{meta}"]
    cls, index, children = d[1], d[2], d[3]
    head = f"{pad}{label}{cls.__name__}" + (f" #{index}" if index >= 0 else "")
    out = [head]
    for i, c in enumerate(children):
        if cls in (list, tuple):
            out += _graphdef_lines(c, depth + 1, str(i))
        else:
            out += _graphdef_lines(c[1], depth + 1, str(c[0]))
    return out


def _render_any(obj: Any, path: Any, subtree_renderer: Any):
    if isinstance(obj, Variable):
        return render_variable(obj, path, subtree_renderer)
    if isinstance(obj, State):
        return render_state(obj, path, subtree_renderer)
    if isinstance(obj, GraphDef):
        return render_graphdef(obj, path, subtree_renderer)
    return render_object(obj, path, subtree_renderer)


_tracking.register_display(render_text, _render_any)
