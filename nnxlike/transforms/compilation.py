"""flax's ``nnx.transforms.compilation`` module.

>>> import nnxlike as nnx
>>> nnx.transforms.compilation.shard_map is nnx.shard_map
True
"""

from nnxlike import StateSharding as StateSharding
from nnxlike import jit as jit
from nnxlike import jit_partial as jit_partial
from nnxlike import shard_map as shard_map

__all__ = ["StateSharding", "jit", "jit_partial", "shard_map"]
