"""Metrics (``Average``, ``Accuracy``, ``Welford``, ``MultiMetric``) and ``EMA``.

Design note: a metric is an ``Object`` whose running totals live in ``MetricState``
Variables, so ``update`` only writes Variable values: a metric passed to
``nnx.jit`` is updated in place and the compiled step is reused, because every
total keeps one shape and dtype (float32 sums, int32 counts; never Python numbers
that change between calls). Configuration (``argname``, ``threshold``) is static.
``update(**kwargs)`` takes keyword arguments and ignores the ones it does not use,
so ``MultiMetric`` can hand the whole batch to every metric.

``EMA`` is not a metric but lives here for the same reason: it is a running
statistic of the parameters, held as ``EMAParam`` Variables that mirror the
model's paths (``nnx.state(ema.params)`` reads like ``nnx.state(model, nnx.Param)``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnxlike import _errors, _graph
from nnxlike._filters import Filter
from nnxlike._object import Object
from nnxlike._state import State
from nnxlike._variables import Param, Variable

__all__ = [
    "EMA",
    "Accuracy",
    "Average",
    "EMAParam",
    "Metric",
    "MetricState",
    "MultiMetric",
    "Statistics",
    "Welford",
]


class MetricState(Variable):
    """The running totals of a ``Metric`` (sums, counts, means)."""


class EMAParam(Variable):
    """The exponential moving average of one parameter, held by ``EMA``."""


def _zeros(dtype: Any) -> jax.Array:
    return jnp.zeros((), dtype)


def _kwarg(metric: Metric, argname: str, kwargs: dict) -> Any:
    if argname not in kwargs:
        raise TypeError(
            f"{type(metric).__name__}.update: missing keyword argument {argname!r} "
            f"(got {sorted(kwargs)}). Call `metric.update({argname}=...)`, or build "
            f"the metric with the name your batch uses: "
            f"`{type(metric).__name__}(argname='loss')`."
        )
    return kwargs[argname]


class Metric(Object):
    """Base class of metrics: ``reset()``, ``update(**kwargs)``, ``compute()``.

    Subclasses keep their totals in ``MetricState`` Variables and write them with
    ``.value = ...``, so a metric works inside ``nnx.jit``. ``update`` must accept
    (and ignore) keyword arguments it does not use.

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


class Average(Metric):
    """The mean of every element passed so far (each batch weighted by its size).

    ``update(values=x)`` adds ``x.sum()`` to ``total`` and ``x.size`` to ``count``
    (a Python number counts once); ``compute()`` is ``total / count`` (NaN before
    the first update).

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> avg = metrics.Average(argname="loss")
    >>> avg.update(loss=jnp.array([1.0, 2.0]))
    >>> avg.update(loss=4.0, other="ignored")
    >>> float(avg.compute()), avg.total.shape, avg.count.dtype
    (2.3333332538604736, (), dtype('int32'))
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.total = MetricState(_zeros(jnp.float32))
        self.count = MetricState(_zeros(jnp.int32))

    def reset(self) -> None:
        self.total.value = _zeros(jnp.float32)
        self.count.value = _zeros(jnp.int32)

    def update(self, **kwargs: Any) -> None:
        values = jnp.asarray(_kwarg(self, self.argname, kwargs))
        self._add(jnp.sum(values, dtype=jnp.float32), values.size)

    def _add(self, total: jax.Array, count: Any) -> None:
        self.total.value = self.total.value + total
        self.count.value = self.count.value + jnp.asarray(count, jnp.int32)

    def compute(self) -> jax.Array:
        return self.total.value / self.count.value


class Accuracy(Average):
    """The fraction of correct predictions, for class logits or binary logits.

    ``update(logits=..., labels=...)`` accepts:

    - **multi-class**: ``logits`` of shape ``(..., num_classes)`` with
      ``num_classes > 1`` and integer ``labels`` of shape ``(...)``; the
      prediction is ``argmax`` over the last axis;
    - **binary**: ``logits`` of the same shape as ``labels`` (e.g. ``(n,)``), or
      of shape ``(..., 1)`` with ``labels`` of shape ``(...)``; the prediction is
      ``logits > threshold`` and ``labels`` are 0/1 (or bool). ``threshold``
      defaults to ``0.0``, right for logits; pass ``0.5`` for probabilities.

    ``threshold`` is used for binary inputs only.

    >>> import jax.numpy as jnp
    >>> from nnxlike import metrics
    >>> acc = metrics.Accuracy()
    >>> acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
    >>> float(acc.compute())
    0.5
    >>> binary = metrics.Accuracy()
    >>> binary.update(logits=jnp.array([2.0, -1.0, 0.5]), labels=jnp.array([1, 0, 0]))
    >>> round(float(binary.compute()), 4)
    0.6667
    """

    def __init__(self, threshold: float | None = None):
        super().__init__()
        self.threshold = None if threshold is None else float(threshold)

    def update(self, *, logits: Any, labels: Any, **kwargs: Any) -> None:  # type: ignore[override]
        logits = jnp.asarray(logits)
        labels = jnp.asarray(labels)
        ls, ys = tuple(logits.shape), tuple(labels.shape)
        if ls == ys or (ls[-1:] == (1,) and ls[:-1] == ys):
            if ls != ys:
                logits = logits[..., 0]
            threshold = 0.0 if self.threshold is None else self.threshold
            correct = (logits > threshold) == labels.astype(bool)
        elif len(ls) == len(ys) + 1 and ls[:-1] == ys:
            if not jnp.issubdtype(labels.dtype, jnp.integer):
                raise TypeError(
                    f"Accuracy.update: multi-class logits of shape {ls} need integer "
                    f"class labels, got labels of dtype {labels.dtype}. Pass "
                    "`labels.astype(jnp.int32)`, or logits of the labels' shape for "
                    "binary accuracy."
                )
            correct = jnp.argmax(logits, axis=-1) == labels
        else:
            raise ValueError(
                f"Accuracy.update: logits of shape {ls} do not fit labels of shape "
                f"{ys}. Expected logits of shape {(*ys, 'num_classes')} with integer "
                f"labels (multi-class), or logits of shape {ys} or {(*ys, 1)} with "
                "0/1 labels (binary)."
            )
        self._add(jnp.sum(correct, dtype=jnp.float32), correct.size)


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
    ``standard_deviation / sqrt(count)``.

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
        batch_m2 = jnp.sum(jnp.square(values - batch_mean))
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

    Each metric takes the keyword arguments it needs from ``update(**batch)`` and
    ignores the others. The metrics are attributes (``metrics.loss``).

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

    def update(self, **batch: Any) -> None:
        for name in self._metric_names:
            getattr(self, name).update(**batch)

    def compute(self) -> dict[str, Any]:
        return {name: getattr(self, name).compute() for name in self._metric_names}


def _nest(flat: dict) -> dict:
    root: dict = {}
    for path, leaf in flat.items():
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return root


class EMA(Object):
    """An exponential moving average of a model's parameters.

    ``update(model)`` folds the model's current ``wrt`` Variables into the
    averages in place: ``average = decay * average + (1 - decay) * value``. The
    averages start as a copy of the parameters and are held as ``EMAParam``
    Variables (with the parameters' metadata) under ``ema.params``, at the same
    paths as in the model. Evaluate with them via ``ema.averaged(model)`` (a new
    model, the original untouched) or ``ema.copy_to(model)`` (in place).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> from nnxlike import metrics
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> ema = metrics.EMA(model, decay=0.5)
    >>> {k: v.shape for k, v in nnx.state(ema.params).to_pure_dict().items()}
    {'kernel': (2, 1), 'bias': (1,)}
    >>> model.bias.value = jnp.array([2.0])
    >>> ema.update(model)
    >>> ema.params["bias"].value.tolist(), ema.averaged(model).bias.value.tolist()
    ([1.0], [1.0])
    """

    def __init__(self, model: Any, decay: float = 0.999, *, wrt: Filter = Param):
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}.")
        flat = _graph.state(model, wrt).flat_dict()
        if not flat:
            raise ValueError(
                f"EMA: no Variable of the {type(model).__name__} matches wrt={wrt!r}; "
                "nothing to average. Pass the filter of the parameters, e.g. "
                "`EMA(model, wrt=nnx.Param)`."
            )
        if () in flat:
            raise TypeError(
                "EMA: expected a Module (or another object graph), got a single "
                f"{type(model).__name__}."
            )
        self.decay = decay
        # Static (part of the GraphDef), so it must be hashable.
        self.wrt = tuple(wrt) if isinstance(wrt, list) else wrt
        self.params = _nest(
            {p: EMAParam(v.value, **v.get_metadata()) for p, v in flat.items()}
        )

    def _pairs(self, model: Any, where: str) -> list[tuple[tuple, EMAParam, Any]]:
        current = _graph.state(model, self.wrt).flat_dict()
        shadow = _graph.variables(self.params).flat_dict()
        if current.keys() != shadow.keys():
            missing = sorted(_errors.path_str(p) for p in shadow.keys() - current)
            extra = sorted(_errors.path_str(p) for p in current.keys() - shadow)
            raise _errors.StructureError(
                f"EMA.{where}: the model's Variables selected by wrt={self.wrt!r} do "
                f"not match the averages. Missing in the model: {missing[:10]}; not "
                f"averaged: {extra[:10]}. Pass the model the EMA was built from."
            )
        return [(p, var, current[p]) for p, var in shadow.items()]

    def update(self, model: Any) -> None:
        """Fold the current parameters of ``model`` into the averages, in place."""
        d = self.decay
        for path, var, leaf in self._pairs(model, "update"):
            avg = var.value
            if jnp.shape(leaf.value) != jnp.shape(avg):
                raise _errors.StructureError(
                    f"EMA.update: {_errors.path_str(path)!r} has shape "
                    f"{jnp.shape(leaf.value)} but its average has shape "
                    f"{jnp.shape(avg)}."
                )
            var.value = (d * avg + (1.0 - d) * leaf.value).astype(avg.dtype)

    def copy_to(self, model: Any) -> None:
        """Write the averages into ``model``'s Variables in place."""
        pairs = self._pairs(model, "copy_to")
        paths = [p for p, _, _ in pairs]
        values = [var.value for _, var, _ in pairs]
        _graph.update(model, State.from_flat(paths, values))

    def averaged(self, model: Any) -> Any:
        """A copy of ``model`` (``nnx.clone``) holding the averages."""
        copy = _graph.clone(model)
        self.copy_to(copy)
        return copy
