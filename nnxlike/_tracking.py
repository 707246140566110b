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

import jax.extend.core as _jcore

# A one-element list so hot code can read it with a single index operation.
STRUCTURE_VERSION = [0]


def bump_structure_version() -> None:
    STRUCTURE_VERSION[0] += 1


get_trace_state = _jcore.get_opaque_trace_state
