"""Error types and message templates.

Every message says what happened, where (class, attribute or path), what was
expected, what came, and how to fix it, with the fix as code. Tests assert these
messages by substring, so change them here and in the tests together.
"""

from __future__ import annotations


class NnxError(Exception):
    """Base class of nnxlike's own errors."""


class TraceContextError(NnxError, RuntimeError):
    """A Variable was written from a JAX trace other than the one it belongs to."""


class StructureError(NnxError, ValueError):
    """An object graph or State does not have the structure an operation needs."""


VARIABLE_INPLACE = (
    "In-place `{op}` on a {cls} would rebind the name to a plain array and lose "
    "the Variable. Write through the Variable instead: `var[...] {op} x` "
    "(or `var.value = var.value {binop} x`)."
)

TRACE_CONTEXT = (
    "Cannot write {cls}{where} from inside a JAX transform it was not passed to: "
    "the object was captured by closure, so the new value would be a tracer that "
    "leaks out of the transform and the write would be lost. Pass the object as an "
    "argument instead: define `step(model, x)` with `@nnx.jit` and call "
    "`step(model, x)` rather than closing over `model`."
)

RAW_ARRAY_ATTRIBUTE = (
    "{where}: cannot hold a raw array ({what}) as an attribute or item; it would "
    "be invisible to nnx.split/state/jit and silently not trained or saved. Wrap it "
    "in a Variable kind: `{target} = nnx.Param(value)` for trainable weights, "
    "`nnx.BatchStat(value)` for statistics, or `nnx.Variable(value)` for other state."
)

NOT_A_PYTREE = (
    "{cls} is an nnxlike object, not a JAX pytree, and was passed to a plain JAX "
    "function (jax.jit, jax.grad, jax.tree.map, ...), which would silently drop "
    "every change made to it. Use the nnxlike transform instead "
    "(`nnx.jit`, `nnx.grad`, `nnx.vmap`, ...), or go through pytrees explicitly: "
    "`graphdef, state = nnx.split(obj)` ... `obj = nnx.merge(graphdef, state)`; "
    "for a tree of arrays use `nnx.state(obj)`."
)

UNHASHABLE_STATIC = (
    "{where}: static attribute of type {type} is not hashable, so it cannot be "
    "part of a GraphDef (the compilation cache key). Make it hashable (a tuple "
    "instead of a list, a frozen dataclass), or if it is data, wrap it in a "
    "Variable: `nnx.Variable(value)`."
)

UNMATCHED_FILTER = (
    "split: the Variable at path {path!r} ({type}) matches none of the filters "
    "{filters}. Every Variable must fall into exactly one State; add a catch-all "
    "filter at the end: `nnx.split(node, {first}, ...)`."
)


def filter_repr(f: object) -> str:
    """A filter as users write it: ``Param`` rather than ``<class '...Param'>``."""
    return f.__name__ if isinstance(f, type) else repr(f)


def path_str(path: tuple) -> str:
    """Render a path tuple as ``a.b[0].c``-style text for messages."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out or "<root>"
