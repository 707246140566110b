"""flax's ``nnx.helpers`` module: the containers and ``TrainState``.

A thin door for code that imports flax's module path; every name is the one
exported at the top level of nnxlike.

>>> import nnxlike as nnx
>>> nnx.helpers.Sequential is nnx.Sequential
True
"""

from nnxlike import Dict as Dict
from nnxlike import List as List
from nnxlike import Sequential as Sequential
from nnxlike import TrainState as TrainState

__all__ = ["Dict", "List", "Sequential", "TrainState"]
