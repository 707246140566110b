"""flax's ``nnx.object`` module: another name of ``nnx.pytreelib``.

>>> import nnxlike as nnx
>>> nnx.object.Pytree is nnx.pytreelib.Pytree
True
"""

from nnxlike.pytreelib import *  # noqa: F403
from nnxlike.pytreelib import __all__ as __all__  # noqa: F401
