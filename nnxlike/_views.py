"""Views: new object graphs over the same Variables, with something changed.

Design note: every function here is ``nnx.recursive_map`` over a structural clone
of the graph (new Modules, the same Variables, so writes through either graph are
seen by both), plus one edit per node:

- ``view`` calls each selected Module's ``set_view`` (the layer decides what a
  mode means: MultiHeadAttention's ``decode=True`` also creates its cache);
- ``with_attributes`` sets plain attributes on each selected Module that has them;
- ``with_vars`` replaces selected Variables by copies with new ``ref``/``hijax``
  metadata (the only function here that makes new Variables).

``view_info`` reads the ``set_view`` signatures and docstrings to list what
``view`` can set. The input graph is never modified. flax.nnx's ``view`` silently
leaves alone a Module that has an attribute of the requested name but no
``set_view``; nnxlike warns (``ViewWarning``) naming it and the fix.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, TypeVar

from nnxlike import _config, _errors, _graph
from nnxlike._filters import Filter, to_predicate
from nnxlike._module import Module, has_attribute
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import Variable

A = TypeVar("A")


def _check_tree(node: Any, graph: bool | None, fn: str) -> None:
    if not _config.resolve(graph, None)[0]:
        _graph.check_tree(node, fn)


def _set_view_params(cls: type) -> tuple[inspect.Signature, set[str] | None]:
    """``set_view``'s signature and named parameters (None: it takes ``**kwargs``)."""
    sig = inspect.signature(cls.set_view)
    named: set[str] = set()
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return sig, None
        if name != "self" and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            named.add(name)
    return sig, named


def view(
    node: A,
    /,
    *,
    only: Filter = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **kwargs: Any,
) -> A:
    """A new graph sharing ``node``'s Variables, each selected Module's
    ``set_view(**kwargs)`` applied (a view in another mode, e.g. evaluation).

    Every Module whose class defines ``set_view`` and matches ``only`` gets the
    keyword arguments its ``set_view`` names (all of them if it takes
    ``**kwargs``); ``nnx.view_info(node)`` lists them. A keyword no ``set_view``
    took raises (unless ``raise_if_not_found=False``). ``node`` is unchanged.

    Args:
        node: the graph (Module, or containers of Modules) to view.
        only: filter selecting the Modules whose ``set_view`` is called.
        raise_if_not_found: raise ``ValueError`` for unused keywords.
        graph: graph mode (default from ``nnx.set_graph_mode``); ``False`` is tree
            mode, which refuses shared references.
        **kwargs: the view settings, e.g. ``deterministic=True``.

    Returns:
        The new graph, of the same structure as ``node``.

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    >>> ev = nnx.view(model, deterministic=True)
    >>> ev.layers[1].deterministic, model.layers[1].deterministic
    (True, False)
    >>> ev.layers[0].kernel is model.layers[0].kernel
    True
    """
    _check_tree(node, graph, "view")
    predicate = to_predicate(only)
    remaining = set(kwargs)
    untouched: list[tuple[tuple, Any, list[str]]] = []

    def apply(path: tuple, x: Any) -> Any:
        if not isinstance(x, Object) or not predicate(path, x):
            return x
        if not hasattr(type(x), "set_view"):
            if isinstance(x, Module):
                names = [k for k in kwargs if has_attribute(x, k)]
                if names:
                    untouched.append((path, x, names))
            return x
        _, named = _set_view_params(type(x))
        if named is None:
            x.set_view(**kwargs)
            remaining.clear()
        else:
            x.set_view(**{k: v for k, v in kwargs.items() if k in named})
            remaining.difference_update(named)
        return x

    out = _graph.recursive_map(apply, node, graph=graph)
    if raise_if_not_found and remaining:
        raise ValueError(
            _errors.VIEW_UNUSED_KEYS.format(
                keys=sorted(remaining), hint=_untouched_hint(untouched, remaining)
            )
        )
    consumed = set(kwargs) - remaining
    for path, x, names in untouched:
        names = [n for n in names if n in consumed]
        if names:
            warnings.warn(
                _errors.VIEW_ATTRIBUTE_WITHOUT_SET_VIEW.format(
                    cls=type(x).__name__,
                    path=_errors.path_str(path),
                    names=names,
                    kwargs=", ".join(f"{n}=..." for n in names),
                ),
                _errors.ViewWarning,
                stacklevel=2,
            )
    return out


def _untouched_hint(untouched: list, keys: set[str]) -> str:
    hits = [
        f"{type(x).__name__} at {_errors.path_str(p)}"
        for p, x, names in untouched
        if keys & set(names)
    ]
    if not hits:
        return ""
    return (
        f" These Modules have such an attribute but no set_view: {', '.join(hits)}; "
        "set it with nnx.with_attributes, or give the class a set_view method."
    )


def with_attributes(
    node: A,
    /,
    *,
    only: Filter = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **attributes: Any,
) -> A:
    """A new graph sharing ``node``'s Variables, with ``attributes`` set on every
    selected Module that has them (``set_attributes`` without changing ``node``).

    Args:
        node: the graph to copy.
        only: filter selecting the Modules to set the attributes of.
        raise_if_not_found: raise ``ValueError`` if some attribute is on no
            selected Module.
        graph: graph mode (default from ``nnx.set_graph_mode``); ``False`` is tree
            mode.
        **attributes: the attributes to set.

    Returns:
        The new graph.

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.5))
    >>> new = nnx.with_attributes(model, only=nnx.Dropout, rate=0.1)
    >>> new.layers[1].rate, model.layers[1].rate
    (0.1, 0.5)
    >>> new.layers[0].bias is model.layers[0].bias
    True
    """
    _check_tree(node, graph, "with_attributes")
    predicate = to_predicate(only)
    remaining = set(attributes)

    def apply(path: tuple, x: Any) -> Any:
        if isinstance(x, Module) and predicate(path, x):
            for name, value in attributes.items():
                if has_attribute(x, name):
                    setattr(x, name, value)
                    remaining.discard(name)
        return x

    out = _graph.recursive_map(apply, node, graph=graph)
    if raise_if_not_found and remaining:
        raise ValueError(
            _errors.ATTRIBUTES_NOT_FOUND.format(
                where="with_attributes", names=sorted(remaining)
            )
        )
    return out


def _parse_args_section(doc: str) -> dict[str, list[str]]:
    """``{name: description lines}`` from a Google-style ``Args:`` section,
    whatever its indentation (flax's 2 spaces or this library's 4)."""
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Args:")
    except StopIteration:
        return {}
    out: dict[str, list[str]] = {}
    indent = None
    current: list[str] | None = None
    for ln in lines[start + 1 :]:
        if not ln.strip():
            continue
        depth = len(ln) - len(ln.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or depth == 0:
            break
        if depth == indent and ":" in ln:
            name, _, text = ln.strip().partition(":")
            name = name.split("(")[0].strip().lstrip("*")
            current = out.setdefault(name, [])
            if text.strip():
                current.append(text.strip())
        elif current is not None:
            current.append(ln.strip())
    return out


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is inspect.Parameter.empty:
        return ""
    if isinstance(a, str):
        return f": {a}"
    if isinstance(a, type):
        return f": {a.__qualname__}"
    return f": {a}"


def view_info(node: Any, /, *, only: Filter = ..., graph: bool | None = None) -> str:
    """What ``nnx.view`` can set on ``node``: each Module class with a
    ``set_view`` (sorted by name), its parameters and their documentation.

    The descriptions come from the ``Args:`` section of each ``set_view``
    docstring; a parameter it does not describe is listed by signature alone.

    Args:
        node: the graph to inspect.
        only: filter selecting the Modules to list.
        graph: graph mode (default from ``nnx.set_graph_mode``); ``False`` is tree
            mode.

    Returns:
        The listing, one block per class (empty if no Module has ``set_view``).

    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.5))
    >>> print(nnx.view_info(model))
    Dropout:
      deterministic: bool | None = None
        if True, disables dropout masking.
    """
    _check_tree(node, graph, "view_info")
    predicate = to_predicate(only)
    classes: dict[type, None] = {}

    def collect(path: tuple, x: Any) -> Any:
        if (
            isinstance(x, Object)
            and hasattr(type(x), "set_view")
            and predicate(path, x)
        ):
            classes[type(x)] = None
        return x

    _graph.recursive_map(collect, node, graph=graph)
    out: list[str] = []
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        out.append(f"{cls.__qualname__}:")
        sig = inspect.signature(cls.set_view)
        described = _parse_args_section(inspect.getdoc(cls.set_view) or "")
        for name, p in sig.parameters.items():
            if name == "self" or p.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                continue
            default = (
                "" if p.default is inspect.Parameter.empty else f" = {p.default!r}"
            )
            out.append(f"  {name}{_annotation(p)}{default}")
            out.extend(f"    {ln}" for ln in described.get(name, ()))
    return "\n".join(out)


def with_vars(
    node: A,
    /,
    *,
    hijax: bool | None = None,
    ref: bool | None = None,
    mutable: bool | None = None,
    only: Filter = ...,
    allow_duplicates: bool = False,
) -> A:
    """A new graph whose selected Variables are copies with new ``ref``/``hijax``
    (or ``mutable``) metadata; the other Variables are shared with ``node``.

    ``ref=True`` puts each selected value in a JAX array reference. Only
    Variables whose metadata differs are copied. A selected Variable reachable
    by two paths raises (its copy would silently untie it from other graphs),
    unless ``allow_duplicates=True``.

    Args:
        node: the graph (or a State, list, ...) holding Variables.
        hijax: the new ``hijax`` flag, or None to keep it.
        ref: the new ``ref`` flag, or None to keep it.
        mutable: the new ``mutable`` metadata, or None to keep it.
        only: filter selecting the Variables to copy.
        allow_duplicates: allow shared Variables among the selected ones.

    Returns:
        The new graph.

    >>> import jax
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    >>> refs = nnx.with_vars(model, ref=True, only=nnx.PathContains("bias"))
    >>> refs.bias.ref, refs.kernel.ref, refs.kernel is model.kernel
    (True, False, True)
    >>> isinstance(refs.bias.get_raw_value(), jax.Ref)
    True
    """
    new_meta = {
        k: v
        for k, v in (("hijax", hijax), ("ref", ref), ("mutable", mutable))
        if v is not None
    }
    selected = to_predicate(only)

    def chosen(path: tuple, x: Any) -> bool:
        return (
            isinstance(x, Variable)
            and any(x.get_metadata(k, None) != v for k, v in new_meta.items())
            and selected(path, x)
        )

    if not allow_duplicates:
        duplicates = _graph.find_duplicates(node, only=chosen)
        if duplicates:
            groups = "\n  ---" + "".join(
                "".join(f"\n  {'/'.join(map(str, p))}" for p in group) + "\n  ---"
                for group in duplicates
            )
            raise ValueError(_errors.WITH_VARS_DUPLICATES.format(groups=groups))
    if isinstance(node, State):  # a State's leaves (flax maps them too)
        flat = node.flat_state()
        leaves = [x.copy(**new_meta) if chosen(p, x) else x for p, x in flat]
        return State.from_flat(flat.paths, leaves)
    return _graph.recursive_map(
        lambda path, x: x.copy(**new_meta) if chosen(path, x) else x, node
    )


def vars_as(node: A, /, **kwargs: Any) -> A:
    """Deprecated name of ``nnx.with_vars`` (warns, then calls it).

    >>> import warnings
    >>> import nnxlike as nnx
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     v = nnx.vars_as([nnx.Param(1.0)], ref=True)
    >>> v[0].ref, caught[0].category.__name__
    (True, 'DeprecationWarning')
    """
    warnings.warn(
        "nnx.vars_as is deprecated: call nnx.with_vars(node, ...) (same arguments).",
        DeprecationWarning,
        stacklevel=2,
    )
    return with_vars(node, **kwargs)
