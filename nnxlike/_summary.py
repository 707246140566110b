"""``tabulate``/``summary``: a table of a model's calls, shapes and Variables.

Design note: as flax.nnx's ``tabulate``, the model is cloned (the caller's RNG
counters and statistics are untouched) and run once with every public method
(and ``__call__``) of its Module classes wrapped for the duration of the run. A
wrapped call splits its object and arguments, runs the original method through
one ``jax.jit`` (lowered first when FLOPs are asked for, so each body is traced
once: the compiled call reuses that trace) and records a row: the object's path
(plus the method name when it is not ``__call__``), its type, inputs and outputs
as ``dtype[shape]``, and per Variable kind the object's own Variables and the
totals under it. A call repeated with the same inputs on the same object gives
one row. The table is drawn with ``rich`` (imported on first use).
"""

from __future__ import annotations

import functools
import inspect
import io
import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike import _graph
from nnxlike._module import Module
from nnxlike._object import Object
from nnxlike._rngs import RngStream
from nnxlike._variables import RngState, Variable


class CallInfo(NamedTuple):
    """One recorded call: a row of the table (``row_filter`` receives these)."""

    call_order: int
    object_id: int
    type: type
    path: tuple
    inputs_repr: str
    outputs: Any
    flops: int | None
    vjp_flops: int | None


class _Info(NamedTuple):
    path: tuple
    stats: dict  # kind -> [size, bytes], this node and everything under it
    groups: dict  # kind -> {attribute name: Variable}, this node's own


def filter_rng_streams(row: CallInfo) -> bool:
    """The default ``row_filter``: leave out calls on ``RngStream`` objects."""
    return not issubclass(row.type, RngStream)


def _kind(v: Variable) -> type:
    return RngState if isinstance(v, RngState) else type(v)


def _size_bytes(value: Any) -> tuple[int, int]:
    if not hasattr(value, "shape"):
        return 0, 0
    size = int(np.prod(np.shape(value), dtype=np.int64))
    itemsize = getattr(getattr(value, "dtype", None), "itemsize", 0)
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        itemsize = jax.random.key_data(value).dtype.itemsize * (
            int(np.prod(jax.random.key_data(value).shape[len(np.shape(value)) :]))
        )
    return size, size * itemsize


def _collect(root: Any) -> tuple[dict[int, _Info], set[type]]:
    """Per graph node (by id): its first path, totals by kind, own Variables."""
    infos: dict[int, _Info] = {}
    seen_vars: set[int] = set()
    types: set[type] = set()

    def visit(node: Any, path: tuple) -> None:
        info = _Info(path, {}, {})
        infos[id(node)] = info
        if isinstance(node, Module):
            types.add(type(node))
            # A static attribute, so copies merged inside a trace keep it.
            node._tabulate_id = id(node)
        for key, child in node._nnx_children():
            if isinstance(child, Variable):
                if id(child) in seen_vars:
                    continue
                seen_vars.add(id(child))
                kind = _kind(child)
                size, nbytes = _size_bytes(child._raw_value)
                acc = info.stats.setdefault(kind, [0, 0])
                acc[0] += size
                acc[1] += nbytes
                info.groups.setdefault(kind, {})[key] = child
            elif isinstance(child, Object) and id(child) not in infos:
                visit(child, (*path, key))
                for kind, (size, nbytes) in infos[id(child)].stats.items():
                    acc = info.stats.setdefault(kind, [0, 0])
                    acc[0] += size
                    acc[1] += nbytes

    visit(root, ())
    return infos, types


# -- text of values -------------------------------------------------------------


def _array_text(x: Any) -> str:
    return f"[dim]{jnp.result_type(x)}[/dim][{','.join(map(str, np.shape(x)))}]"


def _leaf_text(x: Any) -> str:
    if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        return _array_text(x)
    if isinstance(x, Variable):
        return _array_text(x._raw_value)
    if isinstance(x, Object):
        return f"{type(x).__name__}(...)"
    if isinstance(x, type):
        return f"type[{x.__name__}]"
    return "None" if x is None else repr(x).replace("'", "")


def _lines(x: Any, indent: int = 0) -> list[str]:
    """A YAML-like block: ``key: value`` for mappings, ``- item`` for sequences."""
    pad = " " * indent
    if isinstance(x, Mapping) and x:
        out = []
        for k, v in x.items():
            if isinstance(v, (Mapping, list, tuple)) and v:
                out.append(f"{pad}{k}:")
                out.extend(_lines(v, indent + 2))
            else:
                out.append(f"{pad}{k}: {_inline(v)}")
        return out
    if isinstance(x, (list, tuple)) and x and not hasattr(x, "_fields"):
        out = []
        for v in x:
            if isinstance(v, (Mapping, list, tuple)) and v:
                sub = _lines(v, indent + 2)
                out.append(f"{pad}- {sub[0].lstrip()}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_inline(v)}")
        return out
    if hasattr(x, "_fields"):  # a NamedTuple: its fields by name
        return _lines(dict(zip(x._fields, x)), indent)
    return [pad + _inline(x)]


def _inline(x: Any) -> str:
    if isinstance(x, Mapping) and not x:
        return "{}"
    if isinstance(x, (list, tuple)) and not x:
        return "[]"
    return _leaf_text(x)


def _block(x: Any) -> str:
    if x is None or (hasattr(x, "__len__") and not hasattr(x, "shape") and not x):
        return ""
    return "\n".join(_lines(x))


def _inputs_text(args: tuple, kwargs: dict) -> str:
    text = ""
    if args:
        text = _block(args[0]) if len(args) == 1 and not kwargs else _block(args)
        if kwargs:
            text += "\n"
    if kwargs:
        text += _block(kwargs)
    return text


def _bytes_text(n: int) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n > scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} B"


def _stat_text(stat: Any) -> str:
    size, nbytes = stat
    return f"{size:,} [dim]({_bytes_text(nbytes)})[/dim]"


def _flops(lowered: Any) -> int:
    cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
    if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else None
    return 0 if not cost or "flops" not in cost else int(cost["flops"])


# -- recording calls --------------------------------------------------------------


def _methods(types: set[type]) -> dict[tuple[type, str], Callable]:
    out = {}
    for cls in types:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name == "__call__" or not name.startswith("_"):
                out[(cls, name)] = fn
    return out


class _Recorder:
    def __init__(self, infos: dict, compute_flops: bool, compute_vjp_flops: bool):
        self.infos = infos
        self.compute_flops = compute_flops
        self.compute_vjp_flops = compute_vjp_flops
        self.counter = itertools.count()
        self.rows: list[CallInfo] = []
        self.seen: set = set()

    def wrap(self, fn: Callable) -> Callable:
        name = fn.__name__

        # static_argnums: the GraphDef of (object, args, kwargs) with this call's
        # number, so a call never reuses another call's trace (each body runs,
        # and records its nested calls, exactly once).
        @functools.partial(jax.jit, static_argnums=0)
        def run(key, state):
            (obj, *args), kwargs = _graph.merge(key[0], state, copy=True)
            return fn(obj, *args, **kwargs)

        @functools.wraps(fn)
        def wrapper(obj, *args, **kwargs):
            info = self.infos.get(getattr(obj, "_tabulate_id", None))
            if info is None:  # an object of this class outside the model
                return fn(obj, *args, **kwargs)
            order = next(self.counter)
            inputs = _inputs_text(args, kwargs)
            graphdef, state = _graph.split(((obj, *args), kwargs))
            key = (graphdef, order)
            flops = None
            if self.compute_flops:
                lowered = run.lower(key, state)
                flops = _flops(lowered)
            outputs = run(key, state)
            ident = (inputs, obj._tabulate_id)
            if ident not in self.seen:
                self.seen.add(ident)
                vjp = (
                    self._vjp_flops(fn, graphdef, state)
                    if self.compute_vjp_flops
                    else None
                )
                path = info.path if name == "__call__" else (*info.path, name)
                shapes = jax.tree.map(
                    lambda x: (
                        jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
                        if hasattr(x, "shape")
                        else x
                    ),
                    outputs,
                )
                self.rows.append(
                    CallInfo(
                        order,
                        obj._tabulate_id,
                        type(obj),
                        path,
                        inputs,
                        shapes,
                        flops,
                        vjp,
                    )
                )
            return outputs

        return wrapper

    @staticmethod
    def _vjp_flops(fn: Callable, graphdef: Any, state: Any) -> int:
        def pure(state):
            (obj, *args), kwargs = _graph.merge(graphdef, state, copy=True)
            return fn(obj, *args, **kwargs)

        def do_vjp(state):
            primals, f_vjp = jax.vjp(pure, state)
            return f_vjp(primals)

        return _flops(jax.jit(do_vjp).lower(state))


def tabulate(
    obj: Any,
    *input_args: Any,
    depth: int | None = None,
    method: str = "__call__",
    row_filter: Callable[[CallInfo], bool] = filter_rng_streams,
    table_kwargs: Mapping[str, Any] = MappingProxyType({}),
    column_kwargs: Mapping[str, Any] = MappingProxyType({}),
    console_kwargs: Mapping[str, Any] = MappingProxyType({}),
    compute_flops: bool = False,
    compute_vjp_flops: bool = False,
    **input_kwargs: Any,
) -> str:
    """A table of ``obj.method(*input_args, **input_kwargs)``: calls and Variables.

    One row per call of a Module method (``__call__`` and public methods), in
    call order: path, type, inputs, outputs, optional ``flops``/``vjp_flops``
    (XLA's cost analysis of the call forward and of its VJP), then one column per
    Variable kind with the object's own Variables and the totals under it; the
    footer holds the totals of the model and the caption their sum. ``depth``
    keeps rows whose path is at most that long. The model is cloned first, so
    the caller's RNG counters and statistics do not move. Keyword arguments
    ``table_kwargs``, ``column_kwargs`` and ``console_kwargs`` reach
    ``rich.table.Table``, ``Table.add_column`` and ``rich.console.Console``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    >>> table = nnx.tabulate(model, jnp.ones((3, 4)),
    ...                      console_kwargs={"width": 100, "force_terminal": False})
    >>> print("\\n".join(line.rstrip() for line in table.splitlines()[1:12]))
    ┏━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┓
    ┃ path     ┃ type       ┃ inputs       ┃ outputs      ┃ Param                ┃
    ┡━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━┩
    │          │ Sequential │ float32[3,4] │ float32[3,2] │ 58 (232 B)           │
    ├──────────┼────────────┼──────────────┼──────────────┼──────────────────────┤
    │ layers/0 │ Linear     │ float32[3,4] │ float32[3,8] │ kernel: float32[4,8] │
    │          │            │              │              │ bias: float32[8]     │
    │          │            │              │              │                      │
    │          │            │              │              │ 40 (160 B)           │
    ├──────────┼────────────┼──────────────┼──────────────┼──────────────────────┤
    │ layers/2 │ Linear     │ float32[3,8] │ float32[3,2] │ kernel: float32[8,2] │
    >>> "Total Parameters: 58 (232 B)" in table
    True
    """
    try:
        import rich.console
        import rich.table
        import rich.text
    except ImportError as error:  # pragma: no cover - rich ships with the extras
        raise ImportError(
            "nnx.tabulate draws its table with `rich`: `pip install rich`."
        ) from error
    options = {"force_terminal": True, "force_jupyter": False, **console_kwargs}
    obj = _graph.clone(obj)
    infos, types = _collect(obj)
    kinds = sorted(
        {_kind(v) for v in _graph.variables(obj).flat_state().leaves},
        key=lambda t: t.__name__,
    )
    if not hasattr(type(obj), method):
        raise AttributeError(
            f"tabulate: {type(obj).__name__} has no method {method!r}; pass "
            "`method='name'` of one of its methods."
        )
    recorder = _Recorder(infos, compute_flops, compute_vjp_flops)
    originals = _methods(types | {type(obj)})
    own = {key: key[1] in key[0].__dict__ for key in originals}
    for (cls, name), fn in originals.items():
        setattr(cls, name, recorder.wrap(fn))
    try:
        getattr(obj, method)(*input_args, **input_kwargs)
    finally:
        for (cls, name), fn in originals.items():
            if own[(cls, name)]:
                setattr(cls, name, fn)
            else:
                delattr(cls, name)
    rows = sorted(recorder.rows, key=lambda r: r.call_order)
    rows = [
        r for r in rows if (depth is None or len(r.path) <= depth) and row_filter(r)
    ]

    table = rich.table.Table(
        show_header=True,
        show_lines=True,
        show_footer=True,
        title=f"{type(obj).__name__} Summary",
        **table_kwargs,
    )
    columns = ["path", "type", "inputs", "outputs"]
    columns += ["flops"] * compute_flops + ["vjp_flops"] * compute_vjp_flops
    for name in [*columns, *(k.__name__ for k in kinds)]:
        table.add_column(name, **column_kwargs)
    for row in rows:
        info = infos[row.object_id]
        cells = ["/".join(map(str, row.path)), row.type.__name__, row.inputs_repr]
        cells.append(_block(row.outputs))
        if compute_flops:
            cells.append(str(row.flops))
        if compute_vjp_flops:
            cells.append(str(row.vjp_flops))
        for kind in kinds:
            own = {}
            for attr, var in info.groups.get(kind, {}).items():
                value = var._raw_value
                text = _array_text(value) if hasattr(value, "shape") else ""
                meta = var.get_metadata(exclude_required=True)
                if meta:
                    own[attr] = {"value": text, **{k: _Raw(v) for k, v in meta.items()}}
                elif text:
                    own[attr] = text
            cell = _block(own) + "\n\n" if own else ""
            if kind in info.stats and info.stats[kind][0]:
                cell += f"[bold]{_stat_text(info.stats[kind])}[/bold]"
            cells.append(cell)
        table.add_row(*cells)

    offset = len(columns) - 1
    table.columns[offset].footer = rich.text.Text.from_markup("Total", justify="right")
    root = infos[id(obj)]
    for i, kind in enumerate(kinds):
        table.columns[offset + 1 + i].footer = _stat_text(root.stats.get(kind, (0, 0)))
    total = [
        sum(s[0] for s in root.stats.values()),
        sum(s[1] for s in root.stats.values()),
    ]
    table.caption_style = "bold"
    table.caption = f"\nTotal Parameters: {_stat_text(total)}"
    out = io.StringIO()
    rich.console.Console(file=out, **options).print(table)
    return out.getvalue()


class _Raw:
    """A metadata value shown by its ``repr`` (no quotes added)."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


summary = tabulate
