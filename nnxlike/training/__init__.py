"""flax's ``nnx.training`` package: ``optimizer`` and ``metrics``.

>>> import nnxlike as nnx
>>> nnx.training.optimizer.Optimizer is nnx.Optimizer
True
>>> nnx.training.metrics.Average is nnx.metrics.Average
True
"""

from nnxlike.training import metrics as metrics
from nnxlike.training import optimizer as optimizer
