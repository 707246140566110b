"""flax's ``nnx.visualization`` module: ``display``.

A thin door for code that imports flax's module path; every name is the one
exported at the top level of nnxlike.

>>> import nnxlike as nnx
>>> nnx.visualization.display is nnx.display
True
"""

from nnxlike import display as display

__all__ = ["display"]
