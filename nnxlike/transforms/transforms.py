"""flax's ``nnx.transforms.transforms`` module.

>>> import nnxlike as nnx
>>> nnx.transforms.transforms.switch is nnx.switch
True
"""

from nnxlike import checkify as checkify
from nnxlike import cond as cond
from nnxlike import eval_shape as eval_shape
from nnxlike import make_jaxpr as make_jaxpr
from nnxlike import switch as switch

__all__ = ["checkify", "cond", "eval_shape", "make_jaxpr", "switch"]
