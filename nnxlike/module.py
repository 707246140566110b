"""flax's ``nnx.module`` module: ``Module`` and the functions that walk Modules.

A thin door for code that imports flax's module path; every name is the one
exported at the top level of nnxlike.

>>> import nnxlike as nnx
>>> nnx.module.Module is nnx.Module, nnx.module.iter_modules is nnx.iter_modules
(True, True)
"""

from nnxlike import A as A
from nnxlike import M as M
from nnxlike import Module as Module
from nnxlike import capture as capture
from nnxlike import iter_children as iter_children
from nnxlike import iter_module_children as iter_module_children
from nnxlike import iter_modules as iter_modules
from nnxlike import view as view
from nnxlike import view_info as view_info
from nnxlike import with_attributes as with_attributes

__all__ = [
    "A",
    "M",
    "Module",
    "capture",
    "iter_children",
    "iter_module_children",
    "iter_modules",
    "view",
    "view_info",
    "with_attributes",
]
