"""flax's ``nnx.transforms`` package: the lifted JAX transforms by family.

Doors onto the transforms nnxlike exports at its top level (``nnx.jit``, ...).

>>> import nnxlike as nnx
>>> nnx.transforms.compilation.jit is nnx.jit
True
"""

from nnxlike.transforms import autodiff as autodiff
from nnxlike.transforms import compilation as compilation
from nnxlike.transforms import iteration as iteration
from nnxlike.transforms import transforms as transforms
