"""flax's ``nnx.training.optimizer`` module: ``Optimizer`` and its Variable kinds.

>>> import nnxlike as nnx
>>> nnx.training.optimizer.OptState is nnx.OptState
True
"""

from nnxlike import ModelAndOptimizer as ModelAndOptimizer
from nnxlike import OptArray as OptArray
from nnxlike import Optimizer as Optimizer
from nnxlike import OptState as OptState
from nnxlike import OptVariable as OptVariable

__all__ = ["ModelAndOptimizer", "OptArray", "OptState", "OptVariable", "Optimizer"]
