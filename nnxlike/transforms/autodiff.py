"""flax's ``nnx.transforms.autodiff`` module.

>>> import nnxlike as nnx
>>> nnx.transforms.autodiff.vjp is nnx.vjp
True
"""

from nnxlike import DiffState as DiffState
from nnxlike import custom_vjp as custom_vjp
from nnxlike import grad as grad
from nnxlike import jvp as jvp
from nnxlike import remat as remat
from nnxlike import value_and_grad as value_and_grad
from nnxlike import vjp as vjp

__all__ = ["DiffState", "custom_vjp", "grad", "jvp", "remat", "value_and_grad", "vjp"]
