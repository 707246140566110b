"""Metrics (``Average``, ``Accuracy``, ``Welford``, ``MultiMetric``) and ``EMA``.

Design note: a metric is an ``Object`` whose running totals live in ``MetricState``
Variables under flax.nnx's attribute names (``total``/``count``, ``count``/``mean``/
``m2``), so ``update`` only writes Variable values: a metric passed to ``nnx.jit`` is
updated in place and the compiled step is reused, because every total keeps one
shape and dtype (float32 sums, int32 counts). Configuration (``argname``,
``threshold``) is static. ``update(**kwargs)`` takes keyword arguments and ignores
the ones it does not use, so ``MultiMetric`` can hand the whole batch to every
metric; ``mask=`` (an array, or a dict of arrays by metric name) leaves elements
out, as in flax.nnx. Differences from flax.nnx: a mask that broadcasts against
the values counts the broadcast elements (flax counts the mask's own elements);
``Accuracy`` accepts binary logits of the labels' shape (or ``(..., 1)``) without a
threshold, comparing at 0.0 (flax treats ``(..., 1)`` logits as one class, so every
prediction is class 0).

``EMA`` is not a metric but lives here for the same reason: it is a running
statistic of a model's Variables, held as copies (same kind, same metadata) under
``ema.params`` at the model's paths; ``ema.apply_to(model)`` is a model whose
tracked Variables *are* those copies.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnxlike import _errors, _graph
from nnxlike._filters import Filter, to_predicate
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import RngState, Variable

__all__ = [
    "EMA",
    "Accuracy",
    "Average",
    "Metric",
    "MetricState",
    "MultiMetric",
    "Statistics",
    "Welford",
]


class MetricState(Variable):
    """The running totals of a ``Metric`` (sums, counts, means)."""


def _zeros(dtype: Any) -> jax.Array:
    return jnp.zeros((), dtype)


def _kwarg(metric: Metric, argname: str, kwargs: dict) -> Any:
    if argname not in kwargs:
        raise TypeError(
            f"{type(metric).__name__}.update: expected keyword argument {argname!r} "
            f"(got {sorted(kwargs)}). Call `metric.update({argname}=...)`, or build "
            f"the metric with the name your batch uses: "
            f"`{type(metric).__name__}(argname='loss')`."
        )
    return kwargs[argname]


class Metric(Object):
    """Base class of metrics: ``reset()``, ``update(**kwargs)``, ``compute()``.

    Subclasses keep their totals in ``MetricState`` Variables and write them with
    ``.value = ...`` (or ``[...] = ...``), so a metric works inside ``nnx.jit``.
    ``update`` should accept (and ignore) keyword arguments it does not use.

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> class Maximum(metrics.Metric):
    ...     def __init__(self):
    ...         self.max = metrics.MetricState(jnp.array(-jnp.inf))
    ...     def reset(self):
    ...         self.max.value = jnp.array(-jnp.inf)
    ...     def update(self, *, values, **_):
    ...         self.max.value = jnp.maximum(self.max.value, jnp.max(values))
    ...     def compute(self):
    ...         return self.max.value
    >>> m = Maximum()
    >>> m.update(values=jnp.array([1.0, 5.0]), labels=None)
    >>> float(m.compute())
    5.0
    >>> import nnxlike as nnx
    >>> graphdef, state = m.split()
    >>> float(nnx.merge(graphdef, state).compute())
    5.0
    """

    def reset(self) -> None:
        """Return every total to its initial value."""
        raise NotImplementedError(f"{type(self).__name__} must implement reset().")

    def update(self, **kwargs: Any) -> None:
        """Fold one batch into the totals (unused keyword arguments are ignored)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update().")

    def compute(self) -> Any:
        """The metric's value from the totals so far."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute().")

    def split(self, *filters: Filter) -> tuple:
        """``nnx.split(self, *filters)``: the metric's GraphDef and State(s)."""
        return _graph.split(self, *filters)


class Average(Metric):
    """The mean of every element passed so far (each batch weighted by its size).

    ``update(values=x)`` adds ``x.sum()`` to ``total`` and ``x.size`` to ``count``
    (a Python number counts once); with ``mask=m`` (broadcastable to ``x``) only
    the elements where ``m`` is nonzero count. ``compute()`` is ``total / count``
    (NaN before the first update).

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> avg = metrics.Average(argname="loss")
    >>> avg.update(loss=jnp.array([1.0, 2.0]))
    >>> avg.update(loss=4.0, other="ignored")
    >>> float(avg.compute()), avg.total.shape, avg.count.dtype
    (2.3333332538604736, (), dtype('int32'))
    >>> avg.update(loss=jnp.array([10.0, 0.0]), mask=jnp.array([False, True]))
    >>> float(avg.compute()), int(avg.count.value)
    (1.75, 4)
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.total = MetricState(_zeros(jnp.float32))
        self.count = MetricState(_zeros(jnp.int32))

    def reset(self) -> None:
        self.total.value = _zeros(jnp.float32)
        self.count.value = _zeros(jnp.int32)

    def update(self, mask: Any = None, **kwargs: Any) -> None:
        values = _kwarg(self, self.argname, kwargs)
        if isinstance(values, (int, float)):
            if mask is not None:
                raise ValueError(
                    f"{type(self).__name__}.update: if mask is provided, "
                    f"{self.argname} should be a jax array, got the Python "
                    f"{type(values).__name__} {values!r}. Pass "
                    f"`{self.argname}=jnp.asarray(...)` of the mask's shape."
                )
            self._add(jnp.asarray(values, jnp.float32), 1)
            return
        values = jnp.asarray(values)
        if mask is None:
            self._add(jnp.sum(values, dtype=jnp.float32), values.size)
            return
        mask = jnp.asarray(mask)
        try:
            mask = jnp.broadcast_to(mask, values.shape)
        except ValueError:
            raise ValueError(
                f"{type(self).__name__}.update: mask of shape {mask.shape} does not "
                f"broadcast to {self.argname} of shape {values.shape}."
            ) from None
        keep = mask.astype(values.dtype)
        self._add(
            jnp.sum(values * keep, dtype=jnp.float32),
            jnp.sum(mask != 0, dtype=jnp.int32),
        )

    def _add(self, total: jax.Array, count: Any) -> None:
        self.total.value = self.total.value + total
        self.count.value = self.count.value + jnp.asarray(count, jnp.int32)

    def compute(self) -> jax.Array:
        return self.total.value / self.count.value


_BINARY_DIMS = (
    "For binary classification, expected logits.ndim==labels.ndim, got {} and {}"
)
_MULTI_DIMS = (
    "For multi-class classification, expected logits.ndim==labels.ndim+1, got {} and {}"
)


class Accuracy(Average):
    """The fraction of correct predictions, for class logits or binary logits.

    ``update(logits=..., labels=..., mask=None)`` accepts:

    - **multi-class** (``threshold=None``): ``logits`` of shape
      ``(..., num_classes)`` and integer ``labels`` of shape ``(...)``; the
      prediction is ``argmax`` over the last axis;
    - **binary**: ``logits`` of the labels' shape (or ``(..., 1)``); the
      prediction is ``logits >= threshold`` and a label is positive when ``> 0``
      (0/1 or bool labels). Without a threshold, binary logits compare at 0.0.

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> acc = metrics.Accuracy()
    >>> acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
    >>> float(acc.compute())
    0.5
    >>> binary = metrics.Accuracy(threshold=0.5)
    >>> binary.update(logits=jnp.array([0.7, 0.2, 0.5]), labels=jnp.array([1, 0, 0]))
    >>> round(float(binary.compute()), 4)
    0.6667
    """

    def __init__(self, threshold: float | None = None, *args: Any, **kwargs: Any):
        if threshold is not None and not isinstance(threshold, float):
            raise TypeError(
                f"Accuracy: expected threshold to be a float, got "
                f"{type(threshold)}. Pass e.g. `Accuracy(threshold=0.5)`, or no "
                "threshold for multi-class logits."
            )
        self.threshold = threshold
        super().__init__(*args, **kwargs)

    def update(  # type: ignore[override]
        self, *, logits: Any, labels: Any, mask: Any = None, **_: Any
    ) -> None:
        logits = jnp.asarray(logits)
        labels = jnp.asarray(labels)
        ls, ys = tuple(logits.shape), tuple(labels.shape)
        same = ls == ys or (ls[-1:] == (1,) and ls[:-1] == ys)
        binary = self.threshold is not None or same
        if binary and not same:
            raise ValueError(
                _BINARY_DIMS.format(logits.ndim, labels.ndim)
                + f" (logits of shape {ls}, labels of shape {ys}). Pass logits of "
                "the labels' shape, or no threshold for multi-class logits of shape "
                f"{(*ys, 'num_classes')}."
            )
        if not binary and (len(ls) != len(ys) + 1 or ls[:-1] != ys):
            raise ValueError(
                _MULTI_DIMS.format(logits.ndim, labels.ndim)
                + f" (logits of shape {ls}, labels of shape {ys}). Expected logits "
                f"of shape {(*ys, 'num_classes')}, or binary logits of shape {ys} "
                "(with `Accuracy(threshold=...)`)."
            )
        if labels.dtype != jnp.bool_ and not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"Expected labels.dtype==jnp.int32, got {labels.dtype}. Accuracy "
                "needs class indices (or 0/1 labels for binary accuracy): pass "
                "`labels.astype(jnp.int32)`."
            )
        if binary:
            if ls != ys:
                logits = logits[..., 0]
            threshold = 0.0 if self.threshold is None else self.threshold
            correct = (logits >= threshold) == (labels > 0)
        else:
            correct = jnp.argmax(logits, axis=-1) == labels
        super().update(values=correct, mask=mask)


class Statistics(NamedTuple):
    """What ``Welford.compute()`` returns (a pytree, so it can leave ``nnx.jit``)."""

    mean: jax.Array
    standard_error_of_mean: jax.Array
    standard_deviation: jax.Array


class Welford(Metric):
    """Running mean, standard deviation and standard error of the mean.

    Batches are merged with Chan et al.'s parallel form of Welford's algorithm
    (numerically stable, one pass). ``standard_deviation`` is the population
    one (``np.std(x)``, ``ddof=0``); ``standard_error_of_mean`` is
    ``standard_deviation / sqrt(count)``. A Python number counts once.

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> w = metrics.Welford()
    >>> w.update(values=jnp.array([1.0, 2.0]))
    >>> w.update(values=jnp.array([3.0, 4.0]))
    >>> stats = w.compute()
    >>> float(stats.mean), round(float(stats.standard_deviation), 4)
    (2.5, 1.118)
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.count = MetricState(_zeros(jnp.int32))
        self.mean = MetricState(_zeros(jnp.float32))
        self.m2 = MetricState(_zeros(jnp.float32))

    def reset(self) -> None:
        self.count.value = _zeros(jnp.int32)
        self.mean.value = _zeros(jnp.float32)
        self.m2.value = _zeros(jnp.float32)

    def update(self, **kwargs: Any) -> None:
        values = jnp.asarray(_kwarg(self, self.argname, kwargs), jnp.float32)
        n = values.size
        if n == 0:
            return
        # Counts enter the arithmetic as float32: their product overflows int32.
        old_n = self.count.value.astype(jnp.float32)
        new_n = old_n + n
        batch_mean = jnp.mean(values)
        batch_m2 = jnp.var(values) * n
        delta = batch_mean - self.mean.value
        self.mean.value = self.mean.value + delta * (n / new_n)
        self.m2.value = self.m2.value + batch_m2 + delta * delta * (old_n * n / new_n)
        self.count.value = self.count.value + jnp.asarray(n, jnp.int32)

    def compute(self) -> Statistics:
        count = self.count.value.astype(jnp.float32)
        std = jnp.sqrt(self.m2.value / count)
        return Statistics(
            mean=self.mean.value,
            standard_error_of_mean=std / jnp.sqrt(count),
            standard_deviation=std,
        )


class MultiMetric(Metric):
    """Several named metrics updated from one batch; ``compute()`` gives a dict.

    ``update(**batch)`` hands every keyword argument to every metric (each takes
    what it needs); ``mask=`` is an array for all metrics or a dict
    ``{metric_name: mask}``, and a metric with no mask is not given a ``mask``
    argument (so custom metrics without one work). The metrics are attributes
    (``metrics.loss``).

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> mm = metrics.MultiMetric(
    ...     accuracy=metrics.Accuracy(), loss=metrics.Average(argname="loss")
    ... )
    >>> mm.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]), loss=0.5)
    >>> {k: float(v) for k, v in mm.compute().items()}
    {'accuracy': 1.0, 'loss': 0.5}
    """

    def __init__(self, **metrics: Metric):
        if not metrics:
            raise TypeError(
                "MultiMetric needs at least one metric: "
                "`MultiMetric(loss=metrics.Average(argname='loss'))`."
            )
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"MultiMetric: {name}= must be a Metric, got "
                    f"{type(metric).__name__}."
                )
            if hasattr(type(self), name) or name == "_metric_names":
                raise ValueError(
                    f"MultiMetric: the name {name!r} is taken by a MultiMetric "
                    "attribute or method; pick another name for this metric."
                )
        self._metric_names = tuple(metrics)
        for name, metric in metrics.items():
            setattr(self, name, metric)

    def reset(self) -> None:
        for name in self._metric_names:
            getattr(self, name).reset()

    def update(self, **updates: Any) -> None:
        mask = updates.pop("mask", None)
        if isinstance(mask, dict):
            unknown = sorted(set(mask) - set(self._metric_names))
            if unknown:
                raise ValueError(
                    f"MultiMetric.update: mask has entries for {unknown}, which are "
                    f"not metrics here; the metrics are {list(self._metric_names)}."
                )
        for name in self._metric_names:
            m = mask.get(name) if isinstance(mask, dict) else mask
            extra = {} if m is None else {"mask": m}
            getattr(self, name).update(**updates, **extra)

    def compute(self) -> dict[str, Any]:
        return {name: getattr(self, name).compute() for name in self._metric_names}


# -- EMA -------------------------------------------------------------------------


def _replace_variables(root: Any, swap: dict[int, Variable]) -> None:
    """Put ``swap[id(v)]`` in place of every Variable ``v`` held in ``root``'s graph."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen or not isinstance(node, Object):
            continue
        seen.add(id(node))
        for key, child in list(node._nnx_children()):
            if isinstance(child, Variable):
                if id(child) in swap:
                    if isinstance(key, str) and not hasattr(node, "__getitem__"):
                        setattr(node, key, swap[id(child)])
                    else:
                        node[key] = swap[id(child)]
            else:
                stack.append(child)


def _kind_and_value(v: Any) -> tuple[type, Any]:
    """A live Variable's or a State leaf's kind and value."""
    if isinstance(v, Variable):
        return type(v), v._raw_value
    return v.type, v.value


def _is_averageable(kind: type, value: Any) -> bool:
    return (
        not issubclass(kind, RngState)
        and hasattr(value, "dtype")
        and jnp.issubdtype(value.dtype, jnp.inexact)
    )


class EMA(Object):
    """An exponential moving average of a model's Variables.

    ``EMA(model, decay, only=filter)`` copies the Variables matching ``only``
    (same kind, same metadata) into ``ema.params``, at the model's paths.
    ``update(model)`` folds the model's current values in:
    ``average = decay * average + (1 - decay) * value``. ``apply_to(model)``
    returns a new model of the same structure whose tracked Variables are the
    averages themselves, so it follows every later ``update``; ``copy_to(model)``
    writes the averages into ``model`` in place. The default ``only=...`` tracks
    every floating-point Variable (RNG keys and counters, integer counters are
    left out: they cannot be averaged); a filter that selects one of those raises.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> ema = nnx.EMA(model, decay=0.5)
    >>> ema_model = ema.apply_to(model)
    >>> ema_model.bias is ema.params.bias, type(ema.params.bias).__name__
    (True, 'Param')
    >>> model.bias.value = jnp.array([2.0])
    >>> ema.update(model)
    >>> ema.params.bias.value.tolist(), ema_model.bias.value.tolist()
    ([1.0], [1.0])
    """

    def __init__(
        self,
        params: Any,
        decay: float,
        *,
        only: Filter = ...,
        graph: bool | None = None,
    ):
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}.")
        self.decay = decay
        # Static (part of the GraphDef), so it must be hashable.
        self.filter = tuple(only) if isinstance(only, list) else only
        self.graph = graph
        flat = self._tracked(params, "__init__")
        if not flat:
            raise ValueError(
                f"EMA: no Variable of the {type(params).__name__} matches "
                f"only={only!r}; nothing to average. Pass the filter of the "
                "Variables to track, e.g. `EMA(model, decay, only=nnx.Param)`."
            )
        if () in flat:
            raise TypeError(
                "EMA: expected a Module (or another object graph), got a single "
                f"{type(params).__name__}."
            )
        copies = {
            p: type(v)(jnp.copy(v._raw_value), **v.get_metadata())
            for p, v in flat.items()
        }
        self.params = _nest(copies)

    def _tracked(self, node: Any, where: str) -> dict[tuple, Any]:
        """``{path: Variable or VariableState}`` of ``node`` selected by the filter."""
        if isinstance(node, State):
            flat = {p: v for p, v in node.flat_dict().items()}
        else:
            flat = _graph.variables(node).flat_dict()
        pred = to_predicate(self.filter)
        out = {}
        for path, v in flat.items():
            if not pred(path, v):
                continue
            kind, value = _kind_and_value(v)
            if _is_averageable(kind, value):
                out[path] = v
            elif self.filter is not ...:
                raise TypeError(
                    f"EMA.{where}: {_errors.path_str(path)!r} is a "
                    f"{kind.__name__} of dtype "
                    f"{getattr(value, 'dtype', type(value).__name__)}, which "
                    f"cannot be averaged, but only={self.filter!r} selects it. Use a "
                    "filter that selects floating-point Variables only, e.g. "
                    "`only=nnx.Param`."
                )
        return out

    def _pairs(self, model: Any, where: str) -> list[tuple[tuple, Variable, Any]]:
        current = self._tracked(model, where)
        shadow = _graph.variables(self.params).flat_dict()
        if current.keys() != shadow.keys():
            missing = sorted(_errors.path_str(p) for p in shadow.keys() - current)
            extra = sorted(_errors.path_str(p) for p in current.keys() - shadow)
            raise _errors.StructureError(
                f"EMA.{where}: the Variables selected by only={self.filter!r} do "
                f"not match the averages. Missing in the model: {missing[:10]}; not "
                f"averaged: {extra[:10]}. Pass the model the EMA was built from."
            )
        return [(p, var, current[p]) for p, var in shadow.items()]

    def update(self, updates: Any) -> None:
        """Fold the values of ``updates`` (a model or a State) into the averages."""
        d = self.decay
        for path, var, leaf in self._pairs(updates, "update"):
            avg, new = var.value, leaf.value
            if jnp.shape(new) != jnp.shape(avg):
                raise _errors.StructureError(
                    f"EMA.update: {_errors.path_str(path)!r} has shape "
                    f"{jnp.shape(new)} but its average has shape {jnp.shape(avg)}."
                )
            var.value = (d * avg + (1.0 - d) * new).astype(avg.dtype)

    def apply_to(self, model: Any) -> Any:
        """A new model like ``model`` whose tracked Variables are the averages.

        Untracked state (Variables outside ``only``) is copied from ``model``.
        """
        pairs = self._pairs(model, "apply_to")
        copy = _graph.clone(model)
        in_copy = _graph.variables(copy).flat_dict()
        _replace_variables(copy, {id(in_copy[p]): var for p, var, _ in pairs})
        return copy

    def copy_to(self, model: Any) -> None:
        """Write the averages into ``model``'s Variables in place."""
        pairs = self._pairs(model, "copy_to")
        paths = [p for p, _, _ in pairs]
        values = [var.value for _, var, _ in pairs]
        _graph.update(model, State.from_flat(paths, values))


def _nest(flat: dict) -> dict:
    root: dict = {}
    for path, leaf in flat.items():
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return root
