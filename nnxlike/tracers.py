"""flax's ``nnx.tracers`` module: which JAX trace is current.

Objects and Variables record the trace they were created in and refuse changes
from another one; these are the public pieces of that bookkeeping.

>>> import jax
>>> import nnxlike as nnx
>>> outside = nnx.tracers.TraceState()
>>> seen = []
>>> _ = jax.jit(lambda: seen.append(outside.is_valid()))()
>>> outside.is_valid(), seen
(True, [False])
"""

from __future__ import annotations

from typing import Any

import jax.tree_util as jtu

from nnxlike import _tracking


def current_jax_trace() -> Any:
    """An opaque token for the JAX trace running now (equal within one trace)."""
    return _tracking.get_trace_state()


class TraceState:
    """The JAX trace current when it was made; ``is_valid()`` inside that trace only.

    A pytree without leaves; pickling or unflattening records the trace current
    at that time.
    """

    __slots__ = ("_jax_trace",)

    def __init__(self) -> None:
        self._jax_trace = current_jax_trace()

    @property
    def jax_trace(self) -> Any:
        return self._jax_trace

    def is_valid(self) -> bool:
        return self._jax_trace == current_jax_trace()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceState) and self._jax_trace == other._jax_trace

    __hash__ = None  # type: ignore[assignment]  # compared by trace, mutable

    def __repr__(self) -> str:
        return f"TraceState(valid={self.is_valid()})"

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._jax_trace = current_jax_trace()


jtu.register_pytree_node(TraceState, lambda t: ((), None), lambda _a, _c: TraceState())
