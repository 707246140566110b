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


OPTIMIZER_UPDATE_NEEDS_MODEL = (
    "Optimizer.update takes the model and the gradients: write "
    "`optimizer.update(model, grads)` (flax.nnx 0.11 changed this from "
    "`optimizer.update(grads)`). To keep `optimizer.update(grads)`, build "
    "`nnx.ModelAndOptimizer(model, tx)`, which holds the model."
)

OPTIMIZER_HAS_NO_MODEL = (
    "{cls} has no attribute 'model': since flax.nnx 0.11 an Optimizer does not "
    "hold the model. Pass it to `optimizer.update(model, grads)`, or build "
    "`nnx.ModelAndOptimizer(model, tx)` to keep `optimizer.model`."
)

VARIABLE_INPLACE = (
    "In-place `{op}` on a {cls} would rebind the name to a plain array and lose "
    "the Variable. Write through the Variable instead: `var[...] {op} x` "
    "(or `var.value = var.value {binop} x`)."
)

TRACE_CONTEXT = (
    "Cannot mutate {cls}{where} from a different trace level. "
    "Cannot write {cls}{where} from inside a JAX transform it was not passed to: "
    "the object was captured by closure, so the new value would be a tracer that "
    "leaks out of the transform and the write would be lost. Pass the object as an "
    "argument instead: define `step(model, x)` with `@nnx.jit` and call "
    "`step(model, x)` rather than closing over `model`."
)

OBJECT_TRACE_CONTEXT = (
    "Cannot mutate '{cls}' from different trace level: it was created outside "
    "the JAX transform now tracing ({transform}) and captured by closure, so the "
    "change would happen once while tracing, not on every call (and a traced "
    "value would leak out). Pass the object as an argument of an nnx transform "
    "(`@nnx.jit` on `step(model, x)`), or change it outside the transform."
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

LOST_WRITE = (
    "Lost write: {path} changed inside {transform}, but the function did not "
    "return the object holding it: plain JAX transforms pass copies of their "
    "arguments, so the change is lost when the function returns. Return the "
    "object (e.g. "
    "`return loss, model`) and use the returned one, or use the nnx transform "
    "(nnx.jit, nnx.grad, nnx.vmap, nnx.scan, ...), which writes every change "
    "back to the caller's objects."
)
CUSTOM_VJP_DIFFSTATE = (
    "custom_vjp({name}): `nondiff_argnums` cannot contain `DiffState` objects "
    "when `graph=False` or `graph_updates=False`: there bwd returns cotangents of "
    "the arguments' own types, so a part of an object cannot be selected. "
    "Consider the following options:\n\n"
    "1. Remove `DiffState` objects from `nondiff_argnums` and return zeros for "
    "the part you do not differentiate.\n"
    "2. Enable graph mode and graph updates:\n\n"
    "  nnx.custom_vjp(..., graph=True, graph_updates=True)\n\n"
    "3. Use nnx.compat.custom_vjp instead."
)
CUSTOM_VJP_INT_NONDIFF_NODE = (
    "custom_vjp({name}): Passing integers to nondiff_argnums for graph nodes "
    "arguments in custom_vjp is not supported: argument {argnum} holds a {type}. "
    "jax.custom_vjp hands non-differentiable arguments to bwd unchanged, so the "
    "object's state could not be traced. Mark part of it differentiable instead, "
    "`nondiff_argnums=(nnx.DiffState({argnum}, nnx.Param),)`, or pass the object "
    "in a differentiable position and return a zero cotangent for it."
)
CUSTOM_VJP_DUPLICATE = (
    "Duplicate {type}\nfound at paths:\n\n  - {first}\n  - {second}\n\n"
    "nnx.custom_vjp with graph=False or graph_updates=False does not support "
    "Variable aliasing (duplicate inputs, duplicate outputs, or input Variables "
    "returned as outputs) in custom_vjp({name}): each Variable would get two "
    "cotangents. Consider the following options:\n\n"
    "1. Remove the duplicate Variables.\n"
    "2. Create new Variables via nnx.clone() and use those instead.\n"
    "3. Enable graph mode and graph updates:\n\n"
    "  nnx.custom_vjp(..., graph=True, graph_updates=True)"
)
CUSTOM_VJP_PERTURBED_NONDIFF = (
    "custom_vjp({name}): an enclosing transform differentiates {paths}, which "
    "this custom_vjp does not (nondiff_argnums {filters} leaves them out), so their "
    "gradient would be lost. Widen the DiffState filter to include them, or "
    "differentiate the enclosing transform with the same filter: "
    "`nnx.grad(f, argnums=nnx.DiffState(0, same_filter))`."
)
CUSTOM_VJP_BWD_ARITY = (
    "custom_vjp({name}): bwd returned {got} cotangent(s) but the function has "
    "{want} differentiable argument(s) (those not listed as ints in "
    "nondiff_argnums). Return one per argument, as a tuple: `return (m_g, x_g)`."
)
CUSTOM_VJP_BWD_STRUCTURE = (
    "custom_vjp({name}): bwd's cotangent for argument {argnum} should be {want}, "
    "got {got}. Return an nnx.State per object (for example the one bwd received "
    "in `g`, with new values), an array per array, None for zero."
)
CUSTOM_VJP_BWD_UNKNOWN_PATH = (
    "custom_vjp({name}): bwd returned a cotangent at {path} for argument "
    "{argnum}, which is not one of its differentiated Variables ({known}). "
    "Remove it from the State (`del m_g[...]`), or widen the DiffState filter in "
    "nondiff_argnums."
)
STRUCTURE_WITHOUT_GRAPH_UPDATES = (
    "nnx.{fn} with graph=False or graph_updates=False writes back Variable values "
    "only, but the function changed the structure of its arguments ({what}); the "
    "change would be lost. Return the new object, or pass graph=True and "
    "graph_updates=True (the defaults) to nnx.{fn}."
)
SHARED_IN_TREE_MODE = (
    "Duplicate {type}\nfound at paths:\n\n  - {first}\n  - {second}\n\n"
    "nnx.{fn} in tree mode (graph=False) does not support shared references: "
    "a pytree cannot hold one object twice. Consider the following options:\n\n"
    "1. Remove the duplicates and guarantee a tree structure.\n"
    "2. Enable graph mode by passing graph=True to {fn} e.g.\n\n"
    "  nnx.{fn}(..., graph=True)\n\n"
    "3. Use nnx.compat.{fn} instead e.g.\n\n"
    "  nnx.compat.{fn}(...)"
)
OUTER_MERGE_WITHOUT_SPLIT = (
    "merge_context({tag!r}, inner=False): the GraphDef names objects from outside "
    "the transform, but this update_context did no outer split, so they cannot be "
    "updated and the changes made inside would be lost. Split the inputs with "
    "`nnx.split_context({tag!r})` inside the same `nnx.update_context({tag!r})` "
    "that holds this merge."
)
NO_UPDATE_CONTEXT = (
    "No update context found for tag {tag!r}. split_context/merge_context with a "
    "tag take part in an update context of the same tag: wrap the four steps in "
    "`with nnx.update_context({tag!r}): ...` (or decorate the function with "
    "`@nnx.update_context({tag!r})`), or drop the tag for plain shared splits."
)
PREFIX_MAPPING_IN_TREE_MODE = (
    "`{name}` cannot contain `{type}` objects when `graph=False` or "
    "`graph_updates=False` (found at {path}). Consider the following options:\n\n"
    "1. Remove `{type}` objects from `{name}`.\n"
    "2. Enable graph mode and graph updates: nnx.{fn}(..., graph=True, "
    "graph_updates=True)\n"
    "3. Use nnx.compat.{fn}(...) instead."
)
GRAPH_NODE_AS_PREFIX = (
    "Found graph node of type {type} at path {path} in `{name}` for nnx.{fn}. "
    "Graph nodes are not allowed as prefixes when graph=True. Consider the "
    "following options:\n\n"
    "1. Remove graph nodes from `{name}` (give a prefix per argument, or an "
    "int argnum).\n"
    "2. Enable tree mode: nnx.{fn}(..., graph=False)\n"
    "3. If you used nnx.prefix to create the prefix, pass graph=True to it."
)
VARIABLE_ALIASING = (
    "Duplicate {var}\nfound at paths:\n\n  - {first}\n  - {second}\n\n"
    "nnx.{fn} with graph_updates=False does not support Variable aliasing "
    "(duplicate inputs, duplicate outputs, or input Variables returned as "
    "outputs): only values are written back, so the two places would part. "
    "Consider the following options:\n\n"
    "1. Remove the duplicate Variables.\n"
    "2. Create new Variables via nnx.clone() and use those instead.\n"
    "3. Enable graph mode and graph updates by passing graph=True and "
    "graph_updates=True to {fn}:\n\n  nnx.{fn}(..., graph=True, graph_updates=True)"
    "\n\n4. Use nnx.compat.{fn} (sets graph and graph_updates to True):\n\n"
    "  nnx.compat.{fn}(...)"
)
INCONSISTENT_ALIASING = (
    "nnx.{fn}: Inconsistent aliasing detected. The following nodes have different "
    "prefixes:\n{nodes}\nOne Variable reached through two places cannot be mapped "
    "two ways. Give it one axis in both places, or pass a copy (nnx.clone) for "
    "one of them."
)
CAPTURED_RETURN = (
    "nnx.{fn}: {phrase} {var} at {path} of the output: the function returned "
    "an object it did not get as an argument (it was captured from the enclosing "
    "scope), so it cannot be {fn}-ed or written back. Pass the object in as an "
    "argument, or return a new object (nnx.clone inside the function)."
)
PREFIX_VARIABLE = (
    "Found Variable of type {type} at path {path} in `{name}` for nnx.{fn}. "
    "Variables prefixes are not supported. Pass a prefix for the entire Variable "
    "instead of passing a Variable with a prefix for its value, e.g. "
    "`nnx.prefix(obj, {{nnx.Param: 0, ...: None}})` or a plain int."
)
PREFIX_STATE_AXES = (
    "`{name}` cannot contain `{type}` objects when `graph=False` or "
    "`graph_updates=False` (nnx.{fn}). Consider the following options:\n\n"
    "1. Compute per-Variable axes with nnx.prefix(obj, {{filter: axis, ...}}, "
    "graph=...) and pass that instead.\n"
    "2. Enable graph mode and graph updates by passing graph=True and "
    "graph_updates=True to {fn} e.g.\n\n  nnx.{fn}(..., graph=True, "
    "graph_updates=True)\n\n3. Use nnx.compat.{fn} instead e.g.\n\n"
    "  nnx.compat.{fn}(...)"
)
PREFIX_GRAPH_NODE = (
    "Found graph node of type {type} at path {path} in `{name}` for nnx.{fn}. "
    "Graph nodes are not allowed as prefixes when graph=True. Consider the "
    "following options:\n\n1. Remove graph nodes from `{name}` (give an int, "
    "None or an nnx.StateAxes).\n2. Enable tree mode by passing graph=False to "
    "{fn} e.g.\n\n  nnx.{fn}(..., graph=False)\n\n3. If you are using nnx.prefix "
    "to create the prefix, pass graph=True:\n\n  prefix = nnx.prefix(..., "
    "graph=True)"
)
UNHASHABLE_STATIC = (
    "{where}: static attribute of type {type} is not hashable, so it cannot be "
    "part of a GraphDef (the compilation cache key). Make it hashable (a tuple "
    "instead of a list, a frozen dataclass), or if it is data, wrap it in a "
    "Variable: `nnx.Variable(value)`."
)

UNMATCHED_FILTER = (
    "Non-exhaustive filters, got a non-empty remainder: "
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

# nnx.scan (flax's key phrases first: tests match them).
SCAN_CARRY_IDENTITY = (
    "{phrase}: the carry returned holds a new {type} at carry{where} instead of "
    "the one passed in (nnx.scan). Change the carried objects in place and return "
    "those same objects (`return model, y`), not new ones."
)
SCAN_CARRY_STRUCTURE = (
    "nnx.scan: the carry returned has the structure {got}, but the carry passed "
    "in has {expected}; the carry must keep its structure in every iteration "
    "(the same containers and objects, arrays of the same shapes)."
)
SCAN_ALIASING = (
    "nnx.scan does not support Variable aliasing between inputs and outputs: the "
    "output at out{where} is (or holds) a {type} that was passed in as an "
    "argument. Return its value (`v[...]`), or pass the object through the carry "
    "(`in_axes=(nnx.Carry, ...)`, `out_axes=(nnx.Carry, ...)`)."
)
SCAN_NEW_STATE_AXIS = (
    "nnx.scan: the function created {what} at {where}, whose axis is {axis!r}; "
    "only state with an int axis can be created inside a scan (it is stacked, one "
    "slice per iteration). Create it before the scan, or give it an int axis "
    "(e.g. `nnx.StateAxes({{nnx.Intermediate: 0, ...: nnx.Carry}})`)."
)
SCAN_CARRY_REMOVED = (
    "nnx.scan: the function removed the carried {type} at {where}; state with "
    "axis nnx.Carry or None is carried from one iteration to the next and must "
    "exist in every iteration. Keep the attribute (set it to a new value instead)."
)

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
_STATIC_DATA_FIX = (
    " Static attributes are part of the structure and cannot hold arrays, "
    "Variables or Modules: assign `self.{name} = nnx.data(...)`, or remove the "
    "arrays from the value."
)
DATA_IN_STATIC_WRAPPER = (
    "Found data in value of type '{type}' annotated with nnx.static(...) when "
    "setting attribute '{name}' of Pytree type '{cls}'." + _STATIC_DATA_FIX
)
DATA_ON_STATIC_ATTRIBUTE = (
    "Found data on value of type '{type}' assigned to static attribute '{name}' "
    "of Pytree type '{cls}' (marked nnx.static(...) earlier)." + _STATIC_DATA_FIX
)
DATA_IN_STATIC_FIELD = (
    "Found unexpected data on value of type '{type}' in static attribute "
    "'{name}' of Pytree type '{cls}' (declared static on the class)." + _STATIC_DATA_FIX
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
GRAD_SELECTS_NOTHING = (
    "grad({fn}): the differentiated argument(s) select no Variable, so the "
    "gradient would be empty and nothing would be trained:\n{lines}\n"
    "Differentiate with respect to a filter that matches: a Variable kind "
    "(`nnx.DiffState({argnum}, nnx.Param)`), a path component that exists "
    "(`nnx.DiffState({argnum}, 'kernel')`), or `argnums={argnum}` for the "
    "argument's Params."
)


class FilterWarning(UserWarning):
    """A path-string filter matched no path at all: most likely a typo."""


class StaleStateWarning(UserWarning):
    """``nnx.update(model, state)`` where the State holds ``model``'s own Variables.

    ``nnx.state``/``nnx.split`` return the model's live Variables (as flax.nnx,
    and as PyTorch's ``state_dict`` aliases the parameters), so such a State
    follows every later write and updating from it restores nothing. Keep
    values for later with a copy: ``best = nnx.clone(nnx.state(model))``.

    >>> import warnings
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> best = nnx.state(model)  # live: not a copy
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     nnx.update(model, best)
    >>> [w.category.__name__ for w in caught]
    ['StaleStateWarning']
    >>> nnx.update(model, nnx.clone(best))  # a copy: restores, no warning
    """


STALE_STATE = (
    "nnx.update({what}): every leaf of the State is {what}'s own Variable "
    "({n} of them, e.g. {first}), so this writes nothing: nnx.state/nnx.split "
    "return the live Variables (as flax.nnx does, and as PyTorch's state_dict "
    "aliases the parameters), and such a State follows every later change to "
    "the model; it cannot restore earlier values. To keep values for later, "
    "take a copy: `best = nnx.clone(nnx.state(model))`, then "
    "`nnx.update(model, best)`. If the State was changed in place on purpose "
    "(its changes are already in the model), drop the update call. (See "
    "docs/errors.md#stale_state; silence with `warnings.filterwarnings("
    "'ignore', category=nnx.StaleStateWarning)`.)"
)


UNMATCHED_PATH_FILTER = (
    "{op}: the filter {filter!r} matches no path of {what}: no Variable has "
    "{how}. Probably a typo; the paths are: {paths}. (Filters that can "
    "legitimately match nothing, such as a Variable kind, e.g. nnx.BatchStat on a "
    "model without BatchNorm, never warn. To silence this one: "
    "`warnings.filterwarnings('ignore', category=nnx.FilterWarning)`.)"
)


def unmatched_path_strings(filters: tuple, paths: list, tags: tuple | set = ()) -> list:
    """The string filters (also inside tuples and lists) that match no path.

    A plain string matches a path with a component equal to it, a string with
    ``/`` or ``*`` is a glob over the ``/``-joined path (as ``nnx.filterlib``).

    >>> unmatched_path_strings(("kernal", ("bias", "x/*")), [("kernel",), ("bias",)])
    ['kernal', 'x/*']
    """
    import fnmatch

    out: list = []

    def visit(f: object) -> None:
        if isinstance(f, (tuple, list)):
            for g in f:
                visit(g)
        elif isinstance(f, str):
            if "/" in f or "*" in f:
                hit = any(fnmatch.fnmatchcase("/".join(map(str, p)), f) for p in paths)
            else:
                hit = f in tags or any(f in p for p in paths)
            if not hit and f not in out:
                out.append(f)

    for f in filters:
        visit(f)
    return out


def warn_unmatched_path_filters(
    op: str,
    what: str,
    filters: tuple,
    paths: list,
    stacklevel: int = 3,
    tags: tuple | set = (),
) -> None:
    """Warn (``FilterWarning``) for each string filter that matches no path
    (nor an RNG stream ``tag``)."""
    import warnings

    for f in unmatched_path_strings(filters, paths, tags):
        glob = "/" in f or "*" in f
        how = (
            f"a /-joined path matching the glob {f!r}"
            if glob
            else f"a path component equal to {f!r}"
        )
        rendered = [path_str(p) for p in paths[:12]]
        shown = ", ".join(rendered) + (
            f", ... ({len(paths) - 12} more)" if len(paths) > 12 else ""
        )
        warnings.warn(
            UNMATCHED_PATH_FILTER.format(
                op=op, filter=f, what=what, how=how, paths=shown or "(none)"
            ),
            FilterWarning,
            stacklevel=stacklevel,
        )


# PyTorch names users reach for, and what to write instead (nnx.__getattr__).
_CONV = (
    "nnx.Conv(in_features, out_features, kernel_size={k}, rngs=rngs); inputs are "
    "channels-last, {shape}, not channels-first"
)
TORCH_NAMES = {
    "Conv1d": _CONV.format(k="(3,)", shape="(N, W, C)"),
    "Conv2d": _CONV.format(k="(3, 3)", shape="(N, H, W, C)"),
    "Conv3d": _CONV.format(k="(3, 3, 3)", shape="(N, D, H, W, C)"),
    "ConvTranspose2d": "nnx.ConvTranspose(in_features, out_features, "
    "kernel_size=(3, 3), rngs=rngs) on channels-last (N, H, W, C) inputs",
    "LSTM": "nnx.RNN(nnx.LSTMCell(in_features, hidden_features, rngs=rngs)); "
    "`carry, out = rnn(x, return_carry=True)` returns the carry first",
    "GRU": "nnx.RNN(nnx.GRUCell(in_features, hidden_features, rngs=rngs))",
    "BatchNorm1d": "nnx.BatchNorm(num_features, rngs=rngs) (normalises the last "
    "axis; call model.train()/model.eval() as in PyTorch)",
    "BatchNorm2d": "nnx.BatchNorm(num_features, rngs=rngs) on channels-last "
    "(N, H, W, C) inputs (it normalises the last axis)",
    "BatchNorm3d": "nnx.BatchNorm(num_features, rngs=rngs) on channels-last inputs",
    "InstanceNorm2d": "nnx.InstanceNorm(num_features, rngs=rngs)",
    "Dropout2d": "nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs) on "
    "(N, H, W, C) inputs",
    "MaxPool2d": "nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2)), a function "
    "(use it in nnx.Sequential as `lambda x: nnx.max_pool(x, (2, 2), (2, 2))`)",
    "AvgPool2d": "nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2)), a function",
    "AdaptiveAvgPool2d": "`x.mean(axis=(1, 2))` for output size 1 on (N, H, W, C)",
    "Flatten": "`x.reshape(x.shape[0], -1)` (in nnx.Sequential: "
    "`lambda x: x.reshape(x.shape[0], -1)`)",
    "Embedding": "nnx.Embed(num_embeddings, features, rngs=rngs)",
    "MultiheadAttention": "nnx.MultiHeadAttention(num_heads, in_features, "
    "rngs=rngs, decode=False)",
    "ModuleList": "nnx.List([...]) (a plain list attribute becomes one, too)",
    "ModuleDict": "nnx.Dict({...}) (a plain dict attribute becomes one, too)",
    "Parameter": "nnx.Param(value)",
    "Identity": "`lambda x: x` (in nnx.Sequential)",
    "ReLU": "nnx.relu, a function (nnx.Sequential takes functions as layers)",
    "GELU": "nnx.gelu, a function",
    "Sigmoid": "nnx.sigmoid, a function",
    "Tanh": "nnx.tanh, a function",
    "Softmax": "nnx.softmax, a function (`nnx.softmax(x, axis=-1)`)",
    "LeakyReLU": "nnx.leaky_relu, a function",
    "CrossEntropyLoss": "optax.softmax_cross_entropy_with_integer_labels(logits, "
    "labels).mean()",
    "BCEWithLogitsLoss": "optax.sigmoid_binary_cross_entropy(logits, labels).mean()",
    "MSELoss": "((pred - target) ** 2).mean(), or optax.l2_loss",
    "Adam": "nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)",
    "AdamW": "nnx.Optimizer(model, optax.adamw(learning_rate), wrt=nnx.Param)",
    "SGD": "nnx.Optimizer(model, optax.sgd(learning_rate), wrt=nnx.Param)",
    "no_grad": "nothing: only what nnx.grad differentiates gets gradients "
    "(use jax.lax.stop_gradient(x) inside a loss)",
}


def torch_name_hint(name: str, where: str = "nnxlike") -> str | None:
    """The AttributeError message for a PyTorch name, or None.

    >>> torch_name_hint("Conv2d").split(": ")[0]
    "module 'nnxlike' has no attribute 'Conv2d' (a PyTorch name)"
    """
    fix = TORCH_NAMES.get(name)
    if fix is None:
        return None
    return (
        f"module {where!r} has no attribute {name!r} (a PyTorch name): nnxlike "
        f"follows flax.nnx. Use {fix}. See docs/pytorch_cheatsheet.md."
    )


# PyTorch Module methods and what they are here (Module.__getattr__).
TORCH_MODULE_ATTRS = {
    "parameters": "nnx.state(model, nnx.Param) (a State of the parameters; "
    "jax.tree.leaves(...) for a list of arrays), and nnx.Optimizer(model, tx, "
    "wrt=nnx.Param) trains them",
    "named_parameters": "nnx.state(model, nnx.Param).flat_state() "
    "(path, Variable pairs) or nnx.iter_graph(model)",
    "buffers": "nnx.state(model, nnx.BatchStat)",
    "named_buffers": "nnx.state(model, nnx.BatchStat)",
    "state_dict": "nnx.state(model) (`.to_pure_dict()` for nested dicts of arrays), "
    "or nnx.to_torch_state_dict(model) for PyTorch names and layouts",
    "load_state_dict": "nnx.update(model, state), or "
    "nnx.load_torch_state_dict(model, state_dict) for PyTorch weights",
    "modules": "model.iter_modules() (yields (path, module))",
    "named_modules": "model.iter_modules() (yields (path, module))",
    "children": "nnx.iter_module_children(model) (yields (name, module))",
    "named_children": "nnx.iter_module_children(model) (yields (name, module))",
    "zero_grad": "nothing: nnx.grad returns fresh gradients on every call",
    "forward": "calling the module: model(x) runs its __call__",
    "to": "jax.device_put: `nnx.update(model, jax.device_put(nnx.state(model), "
    "device))` (arrays start on JAX's default device)",
    "cuda": "nothing on a GPU machine (JAX puts arrays on the GPU by default)",
    "cpu": "`nnx.update(model, jax.device_put(nnx.state(model), "
    "jax.devices('cpu')[0]))`",
    "requires_grad_": "choosing what to differentiate: nnx.grad(f, "
    "argnums=nnx.DiffState(0, filter)) or nnx.Optimizer(model, tx, wrt=filter)",
    "register_buffer": "assigning a Variable: `self.name = nnx.BatchStat(value)`",
    "register_parameter": "assigning a Variable: `self.name = nnx.Param(value)`",
    "apply": "`for path, m in model.iter_modules(): ...`",
    "half": "casting the state: `nnx.update(model, jax.tree.map(lambda x: "
    "x.astype(jnp.float16), nnx.state(model)))`",
}

MODULE_FORWARD_ONLY = (
    "{cls} defines forward() but no __call__: an nnx Module (as in flax.nnx) is "
    "called through __call__, so `model(x)` cannot run forward(). Rename "
    "`def forward(self, ...)` to `def __call__(self, ...)`, or add "
    "`__call__ = forward` to the class."
)

VARIABLE_CALLED = (
    "{cls} is a Variable (it holds {what}), not a method. "
    "{hint}Read its value with `v.value` or `v[...]`."
)
OPTIMIZER_STEP_CALLED = (
    "`optimizer.step` is the step counter, not a method (PyTorch's "
    "optimizer.step()): apply the gradients with `optimizer.update(model, grads)`. "
)

# -- views (issue 10) ---------------------------------------------------------------

ATTRIBUTES_NOT_FOUND = (
    "{where}: Could not find at least one instance of the following attributes: "
    "{names} on the selected Modules. Check the spelling (and the filters), or "
    "pass raise_if_not_found=False to skip attributes no Module has."
)
VIEW_UNUSED_KEYS = (
    "Unused keys found in nnx.view: {keys}. No selected Module's set_view takes "
    "them; `print(nnx.view_info(model))` lists what each one takes.{hint} Pass "
    "raise_if_not_found=False to ignore them."
)


class ViewWarning(UserWarning):
    """``nnx.view`` left a Module's attribute unchanged that the user may expect set."""


VIEW_ATTRIBUTE_WITHOUT_SET_VIEW = (
    "nnx.view: {cls} at {path} has attribute(s) {names} but no set_view method, so "
    "the view left them unchanged (only Modules with set_view take view "
    "settings, as in flax.nnx), while other Modules took them. Give {cls} a "
    "`def set_view(self, ...)`, use `nnx.with_attributes(model, {kwargs})` to set "
    "plain attributes, or pass `only=` to select the Modules on purpose."
)
WITH_VARS_DUPLICATES = (
    "Found duplicate at paths:{groups}\nnnx.with_vars copies each selected "
    "Variable; a Variable reachable by two paths would be copied once and untied "
    "from every other graph that holds it. Pass allow_duplicates=True if that is "
    "intended, or narrow `only=`."
)
