"""flax's ``nnx.training.metrics`` module: the metrics of ``nnx.metrics``.

>>> import nnxlike as nnx
>>> nnx.training.metrics.Accuracy is nnx.metrics.Accuracy
True
"""

from nnxlike.metrics import Accuracy as Accuracy
from nnxlike.metrics import Average as Average
from nnxlike.metrics import Metric as Metric
from nnxlike.metrics import MetricState as MetricState
from nnxlike.metrics import MultiMetric as MultiMetric
from nnxlike.metrics import Statistics as Statistics
from nnxlike.metrics import Welford as Welford

__all__ = [
    "Accuracy",
    "Average",
    "Metric",
    "MetricState",
    "MultiMetric",
    "Statistics",
    "Welford",
]
