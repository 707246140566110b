"""flax's ``nnx.graph`` module: the same public helpers as ``nnx.graphlib``.

>>> import nnxlike as nnx
>>> nnx.graph.flatten is nnx.graphlib.flatten, nnx.graph.Key is nnx.graphlib.Key
(True, True)
"""

from nnxlike.graphlib import *  # noqa: F403
from nnxlike.graphlib import __all__ as __all__  # noqa: F401
