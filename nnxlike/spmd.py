"""Sharding over a JAX device mesh: annotations on Variables; JAX does the SPMD.

Design note: nnxlike adds no parallel runtime. ``jax.jit`` partitions the
computation; this module only records and applies *where each array lives*.

- The annotation is Variable metadata ``sharding_names``: one entry per array
  axis, each a mesh axis name, a logical name, a tuple of names, or None (not
  sharded). ``with_partitioning`` wraps an initializer so the Variable a layer
  builds carries it; ``nnx.Param(x, sharding_names=...)`` and the layers'
  ``kernel_metadata=``/``bias_metadata=`` do the same. The metadata key is
  ``sharding_names`` only: ``.sharding`` is not an alias, because on arrays
  ``.sharding`` is the concrete ``jax.sharding.Sharding``.
- Logical names map to mesh axes through rules (``logical_axis_rules`` or a
  ``rules=`` argument), pairs ``(logical, mesh_axes)`` in order of precedence:
  the first rule whose mesh axes are still unused in that array wins, None
  replicates (flax linen's semantics).
- A Variable created with ``sharding_names`` while a mesh is known
  (``jax.set_mesh(mesh)``, or ``mesh=`` in ``with_partitioning``) is placed at
  once: ``jax.device_put`` outside a trace, ``with_sharding_constraint`` inside
  one (``jax.sharding.reshard`` on a mesh of Explicit axes). The check sits in
  ``Variable.__init__`` behind one dict lookup; ``merge`` and the transforms
  rebuild Variables without ``__init__`` and never pay for it. Without a mesh the
  annotation is only recorded, so the same model runs on one device.
- ``get_partition_spec`` / ``get_named_sharding`` / ``get_abstract_model`` turn the
  annotations into the trees ``nnx.jit(in_shardings=...)``, ``jax.device_put``
  and checkpoint restores take.

- ``nnx.vmap``/``nnx.scan`` keep ``sharding_names`` in step with the arrays they
  stack: a new axis gets the name given as ``transform_metadata={PARTITION_NAME:
  name}`` (else None), and an axis mapped into the transform is removed inside it
  and put back after (``_transforms/iteration.py``).

Deliberately not done: activations are not sharded automatically (use
``jax.lax.with_sharding_constraint`` in ``__call__``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from nnxlike import _errors, _graph, _variables
from nnxlike._transforms.control import eval_shape
from nnxlike._variables import PARTITION_NAME as PARTITION_NAME
from nnxlike._variables import Variable, VariableMetadata
from nnxlike._variables import normalize_sharding_names as _normalize_names
from nnxlike.deprecations import deprecated

# Key of ``transform_metadata`` (``nnx.vmap``/``nnx.scan``): the sharding name of
# the axis the transform adds to the Variables it stacks.

ShardingNames = Sequence[str | tuple[str, ...] | None]
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar(
    "nnxlike_logical_axis_rules", default=()
)


# -- annotations -----------------------------------------------------------------


def with_partitioning(
    initializer: Callable[..., Any],
    sharding_names: ShardingNames | None = None,
    mesh: jax.sharding.Mesh | None = None,
    **metadata: Any,
) -> Callable[..., VariableMetadata]:
    """Wrap ``initializer`` so the Variable built from its result is annotated.

    ``sharding=`` (flax.nnx's keyword) is accepted for ``sharding_names``.

    The returned initializer gives a ``VariableMetadata``; the layer's ``Param``
    takes its value and the metadata ``sharding_names`` (plus ``mesh`` when given,
    and any other keyword). Created under ``jax.set_mesh(mesh)`` (or with
    ``mesh=``), the Param is placed on the mesh as annotated; without a mesh
    the annotation is only recorded. Prefer ``jax.set_mesh`` to ``mesh=``: a
    Mesh in the metadata holds devices, which cannot be pickled.

    >>> import jax
    >>> import nnxlike as nnx
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    >>> layer = nnx.Linear(4, 8, kernel_init=init, rngs=nnx.Rngs(0))
    >>> layer.kernel.sharding_names, layer.kernel.shape
    ((None, 'model'), (4, 8))
    >>> nnx.get_partition_spec(layer).kernel.value
    P(None, 'model')
    """
    if "sharding" in metadata:  # flax.nnx 0.12 names the argument `sharding`
        if sharding_names is not None:
            raise TypeError(
                "with_partitioning: give sharding_names or sharding, not both."
            )
        sharding_names = metadata.pop("sharding")
    if sharding_names is None:
        raise TypeError(
            "with_partitioning: missing the sharding names, e.g. "
            "`nnx.with_partitioning(init, (None, 'model'))`."
        )
    names = _normalize_names(sharding_names, "with_partitioning")
    extra = dict(metadata, sharding_names=names)
    if mesh is not None:
        extra["mesh"] = mesh
    return with_metadata(initializer, **extra)


def with_metadata(
    initializer: Callable[..., Any], **metadata: Any
) -> Callable[..., VariableMetadata]:
    """Wrap ``initializer`` so the Variable built from its result carries ``metadata``.

    >>> import nnxlike as nnx
    >>> init = nnx.with_metadata(nnx.initializers.zeros, note="frozen")
    >>> nnx.Linear(2, 3, bias_init=init, rngs=nnx.Rngs(0)).bias.note
    'frozen'
    """

    @functools.wraps(initializer)
    def init(*args: Any, **kwargs: Any) -> VariableMetadata:
        return VariableMetadata(initializer(*args, **kwargs), metadata)

    return init


# -- logical axis rules ------------------------------------------------------------


def _normalize_rules(rules: Any) -> tuple:
    if rules is None:
        return ()
    out = []
    for rule in rules:
        ok = isinstance(rule, (tuple, list)) and len(rule) == 2
        if ok:
            name, target = rule
            if isinstance(target, list):
                target = tuple(target)
            ok = isinstance(name, str) and (
                target is None
                or isinstance(target, str)
                or (
                    isinstance(target, tuple)
                    and all(isinstance(a, str) for a in target)
                )
            )
        if not ok:
            raise TypeError(
                f"logical axis rules: each rule is a pair (logical_name, mesh_axes) "
                f"where mesh_axes is a mesh axis name, a tuple of them or None; got "
                f"{rule!r}. Example: `[('batch', 'data'), ('hidden', 'model'), "
                f"('embed', None)]`."
            )
        out.append((name, target))
    return tuple(out)


def _compose_rules(local: Any, context: tuple, where: str) -> tuple:
    """A Variable's own ``sharding_rules`` combined with the rules in effect.

    Both apply (flax.nnx's ``composite_rules``): a logical name defined in only
    one of them uses that one's rules; a name defined in both must map to the
    same mesh axes, else the annotation is ambiguous and this raises.
    """
    local = _normalize_rules(local)
    if not local or not context:
        return local or context
    mine: dict = {}
    for name, target in local:
        mine.setdefault(name, []).append(target)
    theirs: dict = {}
    for name, target in context:
        theirs.setdefault(name, []).append(target)
    for name in mine.keys() & theirs.keys():
        if mine[name] != theirs[name]:
            raise _errors.ShardingError(
                f"{where}: the logical name {name!r} maps to {tuple(mine[name])} in "
                f"the Variable's sharding_rules but to {tuple(theirs[name])} in the "
                f"logical_axis_rules in effect; give it one mapping (drop it from "
                f"one of the two)."
            )
    return local + tuple(r for r in context if r[0] not in mine)


@contextlib.contextmanager
def logical_axis_rules(rules: Rules) -> Iterator[tuple]:
    """Map logical axis names to mesh axes inside the ``with`` block.

    Rules are ``(logical_name, mesh_axes)`` pairs in order of precedence; for
    each array the first rule for a name whose mesh axes are still unused wins,
    and ``None`` means "not sharded". Names without a rule must be mesh axes.
    The rules apply to Variables created in the block and to
    ``get_partition_spec``/``get_named_sharding`` called in it.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> w = nnx.Param(jnp.ones((4, 8)), sharding_names=("embed", "hidden"))
    >>> with nnx.logical_axis_rules([("embed", None), ("hidden", "model")]):
    ...     nnx.get_partition_spec(w).value  # a Variable holding the spec
    P(None, 'model')
    """
    token = _RULES.set(_normalize_rules(rules))
    try:
        yield _RULES.get()
    finally:
        _RULES.reset(token)


def get_logical_axis_rules() -> tuple:
    """The rules set by the innermost ``logical_axis_rules`` block (or ``()``)."""
    return _RULES.get()


# -- names -> PartitionSpec --------------------------------------------------------


def _as_axes(target: Any) -> tuple:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _resolve(
    names: tuple, shape: tuple, *, rules: tuple, mesh: Any, where: str
) -> PartitionSpec:
    """The PartitionSpec of mesh axes for ``names`` (checked against ``mesh``).

    Fewer names than axes leave the trailing axes unsharded, as a
    ``PartitionSpec`` does; more names than axes are an error.
    """
    if len(names) < len(shape):
        names = (*names, *(None,) * (len(shape) - len(names)))
    if len(names) != len(shape):
        example = tuple(names[: len(shape)]) + (None,) * (len(shape) - len(names))
        raise _errors.ShardingError(
            _errors.SHARDING_RANK.format(
                where=where,
                names=names,
                n=len(names),
                shape=tuple(shape),
                rank=len(shape),
                example=example,
            )
        )
    mesh_axes = tuple(mesh.axis_names) if mesh is not None else None
    used: set = set()
    spec = []
    for dim, entry in enumerate(names):
        axes: tuple = ()
        for name in _as_axes(entry):
            candidates = [t for n, t in rules if n == name]
            if candidates:
                for target in candidates:
                    t = _as_axes(target)
                    if not used.intersection(t):
                        for axis in t:
                            if mesh_axes is not None and axis not in mesh_axes:
                                raise _errors.ShardingError(
                                    _errors.SHARDING_BAD_RULE_TARGET.format(
                                        where=where,
                                        name=name,
                                        target=target,
                                        dim=dim,
                                        axis=axis,
                                        mesh_axes=mesh_axes,
                                    )
                                )
                        break
                else:
                    t = ()  # every candidate's axes already used: replicate
            else:
                if mesh_axes is not None and name not in mesh_axes:
                    raise _errors.ShardingError(
                        _errors.SHARDING_UNKNOWN_NAME.format(
                            where=where,
                            name=name,
                            dim=dim,
                            names=names,
                            mesh_axes=mesh_axes,
                            rules=rules or "(none set)",
                            suggest=mesh_axes[-1] if mesh_axes else None,
                        )
                    )
                if name in used:
                    raise _errors.ShardingError(
                        _errors.SHARDING_DUPLICATE_AXIS.format(
                            where=where, axis=name, names=names
                        )
                    )
                t = (name,)
            used.update(t)
            axes += t
        if mesh is not None and axes:
            devices = math.prod(mesh.shape[a] for a in axes)
            if shape[dim] % devices:
                raise _errors.ShardingError(
                    _errors.SHARDING_INDIVISIBLE.format(
                        where=where,
                        dim=dim,
                        shape=tuple(shape),
                        size=shape[dim],
                        axes=axes,
                        devices=devices,
                    )
                )
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _shape_of(value: Any) -> tuple | None:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return ()
    return None


def _all_explicit(mesh: Any) -> bool:
    types = tuple(getattr(mesh, "axis_types", ()) or ())
    return bool(types) and all(t == AxisType.Explicit for t in types)


def shard_value(value: Any, metadata: dict, cls: type = Variable) -> Any:
    """Place ``value`` as ``metadata['sharding_names']`` says, if a mesh is known.

    Called by ``Variable.__init__`` for annotated Variables (it normalizes the
    annotation in ``metadata`` to a tuple). The mesh is ``metadata['mesh']`` or the
    one set with ``jax.set_mesh``; with none, ``value`` is returned unchanged.
    ``eager_sharding=False`` metadata opts a Variable out.
    """
    names = metadata.get("sharding_names")
    if names is None:
        sharding = metadata.get("out_sharding")
        if sharding is None or metadata.get("eager_sharding", True) is False:
            return value
        return _place_on(value, sharding, cls)
    # Lists become tuples: the metadata is part of the (hashable) GraphDef.
    names = metadata["sharding_names"] = _normalize_names(
        names, f"{cls.__name__}(sharding_names=...)"
    )
    if metadata.get("eager_sharding", True) is False:
        return value
    mesh = metadata.get("mesh")
    context = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if context.empty:
        return value
    shape = _shape_of(value)
    if shape is None:
        return value
    where = f"creating {cls.__name__} of shape {shape} (not yet attached to a model)"
    _check_axis_types(context, where)
    rules = _compose_rules(metadata.get("sharding_rules"), _RULES.get(), where)
    spec = _resolve(names, shape, rules=rules, mesh=context, where=where)
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(
            value.shape, value.dtype, sharding=NamedSharding(context, spec)
        )
    if not isinstance(value, jax.core.Tracer):
        concrete = mesh
        if concrete is None:
            try:
                concrete = jax.sharding.get_mesh()
            except ValueError:  # a concrete value inside jit: constrain it below
                concrete = None
        if concrete is not None and not concrete.empty:
            return jax.device_put(value, NamedSharding(concrete, spec))
    target = spec if mesh is None else NamedSharding(mesh, spec)
    if _all_explicit(context):
        return jax.sharding.reshard(value, target)
    return jax.lax.with_sharding_constraint(value, target)


def _check_axis_types(mesh: Any, where: str) -> None:
    types = set(getattr(mesh, "axis_types", ()) or ())
    if AxisType.Explicit in types and len(types) > 1:
        raise _errors.ShardingError(
            f"{where}: Mesh must have all axes as Explicit or all axes as Auto. "
            f"Got mixed axis types: {mesh.axis_types} (axes {mesh.axis_names}), "
            "so it is unclear whether to reshard or to constrain the value. Make "
            "the mesh with one kind: `jax.make_mesh(shape, names, "
            "axis_types=(AxisType.Explicit,) * len(names))`."
        )


def _place_on(value: Any, sharding: Any, cls: type) -> Any:
    """``value`` placed on a concrete ``out_sharding`` (a ``Sharding`` or a
    ``jax.sharding.Format``): put there outside a trace, constrained inside."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
    if not isinstance(value, jax.core.Tracer):
        return jax.device_put(value, sharding)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None:
        _check_axis_types(mesh, f"creating {cls.__name__}")
        if _all_explicit(mesh):
            return jax.sharding.reshard(value, sharding)
    return jax.lax.with_sharding_constraint(value, sharding)


# -- trees of shardings --------------------------------------------------------------


def _path_str(keypath: tuple) -> str:
    parts: list = []
    for k in keypath:
        if isinstance(k, jtu.DictKey):
            parts.append(k.key)
        elif isinstance(k, jtu.SequenceKey):
            parts.append(k.idx)
        elif isinstance(k, jtu.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    return _errors.path_str(tuple(parts))


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _map_specs(tree: Any, rules: Any, mesh: Any, make: Callable) -> Any:
    """Map every Variable/VariableState/array leaf of ``tree`` to ``make(spec)``."""
    if _graph.is_graph_node(tree) and not isinstance(tree, Variable):
        tree = _graph.state(tree)
    if rules is None:
        rules = _RULES.get()
    else:
        rules = _normalize_rules(rules)

    def one(keypath: tuple, x: Any) -> Any:
        if isinstance(x, Variable):
            kind, value, meta = type(x).__name__, x._raw_value, x._metadata
        else:
            kind, value, meta = type(x).__name__, x, {}
        names = meta.get("sharding_names")
        shape = _shape_of(value)
        if names is None or shape is None:
            spec = PartitionSpec()
        else:
            where = f"{kind} at path {_path_str(keypath)!r}"
            own_rules = _compose_rules(meta.get("sharding_rules"), rules, where)
            names = _normalize_names(names, where)
            spec = _resolve(names, shape, rules=own_rules, mesh=mesh, where=where)
        out = make(spec)
        return x.replace(out) if isinstance(x, Variable) else out

    return jtu.tree_map_with_path(one, tree, is_leaf=_is_variable)


def get_partition_spec(tree: Any, rules: Rules | None = None) -> Any:
    """The ``PartitionSpec`` of every Variable, in the shape of ``tree``.

    ``tree`` is a model (or any object graph: its ``nnx.state`` is used), a
    ``State``, or a pytree holding Variables, VariableStates or arrays. In a State
    each VariableState keeps its kind and metadata and gets the spec as value.
    Variables without ``sharding_names`` (and raw arrays) get ``PartitionSpec()``
    (replicated). Logical names are mapped with ``rules`` (default: the
    ``logical_axis_rules`` in effect); names are not checked against a mesh here
    (``get_named_sharding`` does that).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(4, 8, kernel_metadata={"sharding_names": ("embed", "mlp")},
    ...                    rngs=nnx.Rngs(0))
    >>> specs = nnx.get_partition_spec(model, rules=[("embed", None), ("mlp", "model")])
    >>> specs.kernel.value, specs.bias.value
    (P(None, 'model'), P())
    """
    return _map_specs(tree, rules, None, lambda spec: spec)


def get_named_sharding(
    tree: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None
) -> Any:
    """Like ``get_partition_spec`` but with ``NamedSharding(mesh, spec)`` leaves.

    Every name is checked against ``mesh`` (after the rules), and each sharded
    axis must divide evenly; errors name the Variable's path and the fix. The
    result fits ``nnx.jit(in_shardings=...)`` for an object argument and
    ``jax.device_put(nnx.state(model), shardings)``.

    >>> import jax
    >>> import nnxlike as nnx
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    >>> model = nnx.Linear(4, 8, kernel_init=init, rngs=nnx.Rngs(0))
    >>> shardings = nnx.get_named_sharding(model, mesh)
    >>> shardings.kernel.value.spec, shardings.bias.value.spec
    (P(None, 'model'), P())
    """
    return _map_specs(tree, rules, mesh, lambda spec: NamedSharding(mesh, spec))


def get_abstract_model(
    init_fn: Callable[[], Any],
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    graph: bool | None = None,
) -> tuple[Any, Any]:
    """``(graphdef, abstract_state)`` of the model ``init_fn()`` builds, on ``mesh``.

    ``init_fn`` runs abstractly (``nnx.eval_shape``) under ``jax.set_mesh(mesh)``,
    so no parameter memory is allocated; each leaf of the State is a
    ``jax.ShapeDtypeStruct`` carrying its ``NamedSharding``: the target to restore
    a checkpoint into, or to size a model before building it.

    >>> import jax
    >>> import nnxlike as nnx
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    >>> graphdef, abstract = nnx.get_abstract_model(
    ...     lambda: nnx.Linear(1024, 4096, kernel_init=init, rngs=nnx.Rngs(0)), mesh)
    >>> kernel = abstract.kernel.value
    >>> type(kernel).__name__, kernel.shape, kernel.sharding.spec
    ('ShapeDtypeStruct', (1024, 4096), P(None, 'model'))
    """
    rules_ctx = (
        logical_axis_rules(rules) if rules is not None else contextlib.nullcontext()
    )
    with jax.set_mesh(mesh), rules_ctx:
        abstract = eval_shape(init_fn, graph=graph)
        graphdef, state = _graph.split(abstract, graph=graph)
        shardings = get_named_sharding(state, mesh)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state,
        shardings,
    )
    return graphdef, state


def as_abstract(tree: Any, graph: bool | None = None) -> Any:
    """Give the abstract Variables of ``tree`` the sharding their annotation says.

    ``nnx.eval_shape`` returns Variables holding ``jax.ShapeDtypeStruct`` values,
    which carry no sharding when built on a mesh of Auto axes. For each such
    Variable with ``sharding_names`` metadata and no sharding yet, this returns a
    copy holding ``ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh,
    spec))``; the mesh is the Variable's ``mesh`` metadata, else the one set with
    ``jax.set_mesh``. Other Variables are kept as they are; ``tree`` is not
    modified.

    >>> import jax
    >>> import nnxlike as nnx
    >>> mesh = jax.make_mesh((1,), ("model",), (jax.sharding.AxisType.Auto,))
    >>> with jax.set_mesh(mesh):
    ...     abstract = nnx.eval_shape(lambda: nnx.Linear(
    ...         4, 8, kernel_metadata={"sharding_names": (None, "model")},
    ...         rngs=nnx.Rngs(0)))
    ...     abstract = nnx.as_abstract(abstract)
    >>> abstract.kernel.value.sharding.spec, abstract.bias.value.sharding
    (P(None, 'model'), None)
    """
    rules = _RULES.get()

    def one(path: tuple, x: Any) -> Any:
        if not isinstance(x, Variable):
            return x
        value = x.get_raw_value()
        if (
            not hasattr(value, "shape")
            or not hasattr(value, "dtype")
            or getattr(value, "sharding", None) is not None
            or x._metadata.get("sharding_names") is None
        ):
            return x
        where = f"as_abstract: {type(x).__name__} at path {_errors.path_str(path)!r}"
        mesh = x._metadata.get("mesh")
        if mesh is None:
            mesh = jax.sharding.get_abstract_mesh()
            if mesh.empty:
                raise _errors.ShardingError(
                    f"{where} has sharding_names but no mesh is known: it has no "
                    f"`mesh` metadata and no mesh is set. Call it under "
                    f"`with jax.set_mesh(mesh): ...` (or give the Variable mesh=)."
                )
        names = _normalize_names(x._metadata["sharding_names"], where)
        own_rules = _compose_rules(x._metadata.get("sharding_rules"), rules, where)
        spec = _resolve(
            names, tuple(value.shape), rules=own_rules, mesh=mesh, where=where
        )
        sharding = NamedSharding(mesh, spec)
        return x.replace(
            jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        )

    return _graph.map_graph(one, tree, graph=graph)


# -- axis bookkeeping for transforms that stack Variables -------------------------


#: flax's deprecated name for :func:`as_abstract` (warns, then calls it).
abstract_with_sharding = deprecated(as_abstract)


def _axis_entries(transform_metadata: Any) -> tuple[Any, dict]:
    meta = dict(transform_metadata)
    name = meta.pop(PARTITION_NAME, None)
    return name, meta


def _tuple_metadata(x: Variable) -> dict[str, tuple]:
    return {k: v for k, v in x._metadata.items() if isinstance(v, tuple) and v}


def add_axis(tree: Any, index: int, transform_metadata: Any) -> Any:
    """Record a new axis ``index`` on every Variable of ``tree`` (in place).

    flax.nnx's ``nnx.spmd.add_axis``, for code that stacks Variables itself:
    ``sharding_names`` gets ``transform_metadata[nnx.PARTITION_NAME]`` (else
    None) inserted at ``index``, every other key of ``transform_metadata``
    whose Variable metadata is a tuple gets its entry inserted, then
    ``Variable.add_axis(index, name)`` runs (the ``on_add_axis`` hooks).
    ``nnx.vmap``/``nnx.scan`` do the same for the Variables they stack.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> p = nnx.Param(jnp.ones((3, 4)), sharding_names=("a", "b"), tag=("x", "y"))
    >>> _ = nnx.spmd.add_axis([p], 0, {nnx.PARTITION_NAME: "layers", "tag": "t"})
    >>> p.sharding_names, p.tag
    (('layers', 'a', 'b'), ('t', 'x', 'y'))
    >>> _ = nnx.spmd.remove_axis([p], 0, {nnx.PARTITION_NAME: "layers", "tag": "t"})
    >>> p.sharding_names, p.tag
    (('a', 'b'), ('x', 'y'))
    """
    name, others = _axis_entries(transform_metadata)

    def insert(fields: tuple, value: Any) -> tuple:
        out = list(fields)
        out.extend([None] * (index - len(out)))
        out.insert(index, value)
        return tuple(out)

    for x in jtu.tree_leaves(tree, is_leaf=_is_variable):
        if not isinstance(x, Variable):
            continue
        tuples = _tuple_metadata(x)
        updates = {k: insert(tuples[k], v) for k, v in others.items() if k in tuples}
        if "sharding_names" in tuples:
            updates["sharding_names"] = insert(tuples["sharding_names"], name)
        if updates:
            x.set_metadata(**updates)
        x.add_axis(index, name)
    return tree


def remove_axis(tree: Any, index: int, transform_metadata: Any) -> Any:
    """Undo ``add_axis``: remove entry ``index`` from the same metadata, checking
    it is the one ``transform_metadata`` names, then run
    ``Variable.remove_axis(index, name)`` (the ``on_remove_axis`` hooks)."""
    name, others = _axis_entries(transform_metadata)

    def remove(key: str, fields: tuple, value: Any) -> tuple:
        out = list(fields)
        removed = out.pop(index)
        if removed != value:
            raise ValueError(
                f"nnx.spmd.remove_axis: expected to remove {value!r} at index "
                f"{index} from the {key} metadata {fields!r}, but found "
                f"{removed!r}. Give the transform_metadata the axis was added with."
            )
        return tuple(out)

    for x in jtu.tree_leaves(tree, is_leaf=_is_variable):
        if not isinstance(x, Variable):
            continue
        tuples = _tuple_metadata(x)
        updates = {k: remove(k, tuples[k], v) for k, v in others.items() if k in tuples}
        if "sharding_names" in tuples:
            updates["sharding_names"] = remove(
                "sharding_names", tuples["sharding_names"], name
            )
        if updates:
            x.set_metadata(**updates)
        x.remove_axis(index, name)
    return tree


_variables.register_placement(shard_value)
