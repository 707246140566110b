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


class ShardingError(NnxError, ValueError):
    """A sharding annotation does not fit the value or the device mesh."""


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

CHECKPOINT_MISMATCH = (
    "restore: the checkpoint {file} does not match the target at {n} path(s):\n"
    "{lines}\n"
    "Nothing was restored. Build the target like the tree that was saved, or "
    "restore the paths that match and keep the target's values elsewhere: "
    "`nnx.checkpoint.restore(path, target, strict=False)` (it warns with this list)."
)

UPDATE_SHAPE = (
    "{op}: the new value for {where!r} has shape {got}, but the {kind} there holds "
    "shape {expected} ({dtype}). Writing values never changes a Variable's shape "
    "other than by leading (stacking) axes: the model would silently compute with "
    "other sizes. Build the target with "
    "the shapes of the values (e.g. the layer sizes they were saved from), or "
    "replace the Variable itself: `module.attr = nnx.Param(new_value)`."
)

UPDATE_DTYPE = (
    "{op}: the new value for {where!r} has dtype {got} ({got_kind}), but the {kind} "
    "there holds {expected} ({expected_kind}); {op} does not turn {expected_kind} "
    "data into {got_kind} data. Cast the values first, e.g. "
    "`jax.tree.map(lambda x: x.astype(jnp.{expected}), state)`. (Another precision "
    "of the same kind, such as float32 to bfloat16, is accepted.)"
)

CHECKPOINT_CORRUPT = (
    "restore: the file {file} {what}. Its values cannot be trusted and nothing was "
    "restored; restore an earlier checkpoint (a CheckpointManager keeps the last "
    "max_to_keep) or save again."
)


SHARDING_RANK = (
    "{where}: sharding_names={names} has {n} entries but the value has shape "
    "{shape} (rank {rank}). Give one entry per axis, a mesh axis or logical name, "
    "or None for an axis that is not sharded: `sharding_names={example}`."
)

SHARDING_UNKNOWN_NAME = (
    "{where}: sharding name {name!r} (axis {dim} of sharding_names={names}) is "
    "neither an axis of the mesh {mesh_axes} nor a logical name in the rules "
    "{rules}. Use a mesh axis name, or map the logical name to one: "
    "`with nnx.logical_axis_rules([({name!r}, {suggest!r})]): ...` (or pass "
    "`rules=` to get_partition_spec/get_named_sharding/get_abstract_model)."
)

SHARDING_BAD_RULE_TARGET = (
    "{where}: the logical axis rule ({name!r}, {target!r}) maps axis {dim} to mesh "
    "axis {axis!r}, but the mesh has only the axes {mesh_axes}. Map {name!r} to "
    "one of those axes (or to None to replicate it)."
)

SHARDING_DUPLICATE_AXIS = (
    "{where}: mesh axis {axis!r} shards two axes of the value (sharding_names="
    "{names}); a mesh axis can shard at most one axis of an array. Use None for "
    "one of them or a different mesh axis."
)

SHARDING_INDIVISIBLE = (
    "{where}: axis {dim} of shape {shape} has size {size}, which the mesh axes "
    "{axes} ({devices} devices) cannot split evenly. Make that size a multiple "
    "of {devices}, or shard the axis over fewer devices (None replicates it)."
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


# -- transforms and traps (issue 12) ----------------------------------------------

DONATED_DELETED = (
    "nnx.jit({fn}): {n} Variable(s) of the arguments now hold deleted arrays: "
    "{paths}. {why} These objects cannot be used as they are: every read of those "
    "Variables raises 'Array has been deleted'. Put values back into them, e.g. "
    "`nnx.update(model, state)` with a State restored from a checkpoint or copied "
    "before the call (`backup = jax.tree.map(jnp.copy, nnx.state(model))`), or "
    "build the objects again. To keep the caller's objects usable when a step can "
    "fail at run time, do not donate them (drop donate_argnums/donate_argnames)."
)
DELETED_NOW = (
    "Their buffers were donated to this call of nnx.jit({fn}) (donate_argnums/"
    "donate_argnames), and XLA had consumed them when the call failed at run "
    "time with the error above, so the old values are gone and no new ones were "
    "produced."
)
DELETED_EARLIER = (
    "They were deleted earlier, when {what}; this call could not read them."
)
DELETED_ELSEWHERE = (
    "They were deleted before this call (donated to another compiled function "
    "that failed, or `.delete()`d)."
)
CAPTURED_READ = (
    "{transform}({fn}) reads objects that were not passed to it as arguments:\n"
    "{lines}\n"
    "Inside {transform} their arrays would be compiled in as constants: after the "
    "objects change (training, nnx.update, a restored checkpoint) the compiled "
    "function would keep computing with the old values, with no warning. Pass the "
    "object as an argument, e.g. `predict = {transform}(lambda {name}, x: "
    "{full}(x))` called as `predict({name}, x)`. To compile the current values in "
    "on purpose, close over a State instead: `graphdef, state = nnx.split({name})` "
    "outside and `nnx.merge(graphdef, state)` inside."
)
STATIC_MUTATED = (
    "nnx.jit({fn}): the static attribute {where} (a {type}) was changed in place "
    "since the function was compiled. Static attributes are part of the compiled "
    "function's cache key and are compared as they were when it was built, so the "
    "compiled function would silently keep using the old setting. Assign a new "
    "value instead of mutating the old one, with an immutable type (a frozen "
    "dataclass, a tuple, a NamedTuple): `obj.{name} = dataclasses.replace(obj."
    "{name}, ...)`; or, if it is data that changes while training, hold it in a "
    "Variable: `obj.{name} = nnx.Variable(value)`."
)
