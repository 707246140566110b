"""flax's ``traversals`` helpers: nested mappings to flat ``{path: value}`` and back.

>>> import nnxlike as nnx
>>> flat = nnx.traversals.flatten_mapping({"a": {"b": 1}, "c": 2})
>>> flat
{('a', 'b'): 1, ('c',): 2}
>>> nnx.traversals.unflatten_mapping(flat)
{'a': {'b': 1}, 'c': 2}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["empty_node", "flatten_mapping", "unflatten_mapping"]


class _EmptyNode:
    """Marks an empty sub-mapping kept by ``flatten_mapping(keep_empty_nodes=True)``."""

    def __repr__(self) -> str:
        return "empty_node"


empty_node = _EmptyNode()


def flatten_mapping(
    xs: Mapping[Any, Any],
    /,
    *,
    keep_empty_nodes: bool = False,
    is_leaf: Callable[[tuple, Any], bool] | None = None,
    sep: str | None = None,
) -> dict[Any, Any]:
    """Flatten a nested mapping into ``{path tuple: leaf}`` (or ``sep``-joined keys).

    Args:
        xs: the nested mapping (dicts, ``nnx.State``, any ``Mapping``).
        keep_empty_nodes: keep an empty sub-mapping as ``empty_node``.
        is_leaf: ``is_leaf(path, value)`` stops descending into ``value``.
        sep: join the keys with this string instead of returning tuples.

    >>> import nnxlike as nnx
    >>> nnx.traversals.flatten_mapping({"a": {"b": 1}, "e": {}}, sep="/")
    {'a/b': 1}
    >>> nnx.traversals.flatten_mapping({"e": {}}, keep_empty_nodes=True)
    {('e',): empty_node}
    """
    if not isinstance(xs, Mapping):
        raise TypeError(
            f"flatten_mapping: expected a mapping, got {type(xs).__name__}; pass a "
            f"dict or an nnx.State."
        )
    out: dict[Any, Any] = {}

    def walk(m: Mapping, prefix: tuple) -> None:
        for key, value in m.items():
            path = (*prefix, key)
            if isinstance(value, Mapping) and not (is_leaf and is_leaf(path, value)):
                if not value:
                    if keep_empty_nodes:
                        out[_join(path, sep)] = empty_node
                    continue
                walk(value, path)
            else:
                out[_join(path, sep)] = value

    walk(xs, ())
    return out


def _join(path: tuple, sep: str | None) -> Any:
    return path if sep is None else sep.join(map(str, path))


def unflatten_mapping(xs: Any, /, *, sep: str | None = None) -> dict[Any, Any]:
    """Rebuild the nested dict from ``{path: leaf}`` (``sep``-joined keys if given).

    ``xs`` may also be a sequence of ``(path, leaf)`` pairs; ``empty_node`` leaves
    come back as empty dicts.

    >>> import nnxlike as nnx
    >>> nnx.traversals.unflatten_mapping({"a/b": 1, "c": 2}, sep="/")
    {'a': {'b': 1}, 'c': 2}
    """
    items = xs.items() if isinstance(xs, Mapping) else xs
    root: dict[Any, Any] = {}
    for path, value in items:
        if sep is not None:
            if not isinstance(path, str):
                raise TypeError(
                    f"unflatten_mapping(sep={sep!r}): keys must be strings, got "
                    f"{path!r}."
                )
            path = tuple(path.split(sep))
        elif not isinstance(path, tuple):
            raise TypeError(
                f"unflatten_mapping: keys must be path tuples, got {path!r}; pass "
                f"sep='/' for joined string keys."
            )
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"unflatten_mapping: path {path!r} passes through a leaf at "
                    f"{key!r}."
                )
        node[path[-1]] = {} if value is empty_node else value
    return root
