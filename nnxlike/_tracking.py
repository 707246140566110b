"""Structure versioning and trace-context bookkeeping.

Design note: the jit fast path caches the flattened form of its arguments and must
know, in O(1), whether any object graph it cached may have changed shape. Every
structural mutation of a *tracked* object (one that a transform has flattened)
bumps one global counter; value writes (``variable.value = x``) never do. Objects
that no transform has seen yet (a model under construction, a metric created in a
loop) do not bump it, so they cannot invalidate caches they are not part of.

This module also answers "which JAX trace are we in?" so that Variables can refuse
writes from a trace other than the one they were created in (the closure trap).
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

import jax.extend.core as _jcore

# A one-element list so hot code can read it with a single index operation.
STRUCTURE_VERSION = [0]


def bump_structure_version() -> None:
    STRUCTURE_VERSION[0] += 1


# -- value-write tokens ---------------------------------------------------------
# Every store into an existing Variable's value slot appends a fresh token here
# (after the store). ``nnx.jit`` keeps the raw arrays it last passed and wrote per
# cached call, valid while ``VALUE_WRITES[-1]`` is the token it recorded: a call
# with nothing written in between skips reading every Variable again. Tokens
# come from one counter (``next`` is atomic), and ``deque.append`` is atomic, so
# no lock is needed: ``claim_value_writes`` sees whether anyone else appended
# between a caller's first read and its own append (the deque keeps the last two).
# The kept arrays live in KEPT, which every write empties: a cache never holds an
# array that its Variable no longer holds (no memory beyond the model's own).
_TOKENS = itertools.count(1)
VALUE_WRITES: collections.deque = collections.deque([0], maxlen=2)
KEPT: dict = {}  # cache entry -> (token, arrays...), valid for that token only


def note_value_write() -> None:
    """Record that some Variable's value slot was just written."""
    VALUE_WRITES.append(next(_TOKENS))
    KEPT.clear()


def claim_value_writes(before: int) -> int | None:
    """Record the caller's own writes; the new token if nobody else wrote since
    ``before`` (a token the caller read before reading any value), else None."""
    token = next(_TOKENS)
    VALUE_WRITES.append(token)
    KEPT.clear()
    return token if VALUE_WRITES[0] == before else None


get_trace_state = _jcore.get_opaque_trace_state

try:  # JAX's current trace: private API, with a public fallback.
    from jax._src.core import EvalTrace as _EvalTrace
    from jax._src.core import unsafe_get_current_trace as _current_trace
except ImportError:  # pragma: no cover - other JAX versions
    _EvalTrace = None

if _EvalTrace is not None:

    def under_trace() -> bool:
        """True while JAX traces a function (jit, grad, vmap, scan, ...)."""
        return type(_current_trace()) is not _EvalTrace

else:  # pragma: no cover

    def under_trace() -> bool:
        return not _jcore.trace_state_clean()


_TRANSFORM_OF_TRACE = {
    "DynamicJaxprTrace": "jax.jit (or another staging transform: jax.lax.scan, "
    "jax.lax.cond, jax.eval_shape, ...)",
    "JVPTrace": "jax.grad / jax.jvp",
    "LinearizeTrace": "jax.grad / jax.linearize",
    "BatchTrace": "jax.vmap",
}


def current_transform_name() -> str:
    """The JAX transform tracing now, in words, for error messages."""
    if _EvalTrace is None:  # pragma: no cover
        return "a JAX transform"
    name = type(_current_trace()).__name__
    return _TRANSFORM_OF_TRACE.get(name, f"a JAX transform ({name})")


# -- display hooks ------------------------------------------------------------------
# The core types render through these; nnxlike._display (the outside-world layer)
# registers the treescope renderers at import, so no core file imports it.
_DISPLAY: dict = {}


def register_display(text: Any, treescope: Any) -> None:
    _DISPLAY["text"] = text
    _DISPLAY["treescope"] = treescope


def render_text(obj: Any) -> str:
    fn = _DISPLAY.get("text")
    return fn(obj) if fn is not None else object.__repr__(obj)


def render_treescope(obj: Any, path: Any, subtree_renderer: Any) -> Any:
    return _DISPLAY["treescope"](obj, path, subtree_renderer)
