"""flax's ``statelib`` module: ``State`` and the functions over it.

A thin door onto ``nnxlike._state``, plus ``diff`` and ``from_flat_path``.

>>> import nnxlike as nnx
>>> s = nnx.statelib.from_flat_path({("a", "b"): 1, ("c",): 2})
>>> s.flat_state().paths
(('a', 'b'), ('c',))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nnxlike._state import FlatState as FlatState
from nnxlike._state import State as State
from nnxlike._state import filter_state as filter_state
from nnxlike._state import from_flat_state as from_flat_state
from nnxlike._state import map_state as map_state
from nnxlike._state import merge_state as merge_state
from nnxlike._state import replace_by_pure_dict as replace_by_pure_dict
from nnxlike._state import restore_int_paths as restore_int_paths
from nnxlike._state import split_state as split_state
from nnxlike._state import to_flat_state as to_flat_state
from nnxlike._state import to_pure_dict as to_pure_dict

__all__ = [
    "FlatState",
    "State",
    "diff",
    "filter_state",
    "from_flat_path",
    "from_flat_state",
    "map_state",
    "merge_state",
    "replace_by_pure_dict",
    "restore_int_paths",
    "split_state",
    "to_flat_state",
    "to_pure_dict",
]


def from_flat_path(flat_state: Any, /) -> State:
    """A nested State from ``{path: leaf}`` or ``(path, leaf)`` pairs (flax's
    ``State.from_flat_path``).

    >>> import nnxlike as nnx
    >>> s = nnx.statelib.from_flat_path([(("layer", "w"), 1.0)])
    >>> s["layer"]["w"]
    1.0
    """
    items = flat_state.items() if isinstance(flat_state, Mapping) else flat_state
    paths, leaves = [], []
    for path, leaf in items:
        if not isinstance(path, tuple):
            raise TypeError(
                f"from_flat_path: each path must be a tuple of keys, got {path!r}; "
                f"write ('layer', 'kernel') for state['layer']['kernel']."
            )
        paths.append(path)
        leaves.append(leaf)
    return State.from_flat(paths, leaves)


def diff(state: State, other: State) -> State:
    """The entries of ``state`` whose paths are not in ``other``.

    >>> import nnxlike as nnx
    >>> a = nnx.statelib.from_flat_path({("x",): 1, ("y",): 2})
    >>> b = nnx.statelib.from_flat_path({("x",): 5})
    >>> nnx.statelib.diff(a, b).flat_state().paths
    (('y',),)
    """
    if not other:
        return state
    have = set(other.flat_state().paths)
    kept = [(p, v) for p, v in state.flat_state() if p not in have]
    return State.from_flat([p for p, _ in kept], [v for _, v in kept])
