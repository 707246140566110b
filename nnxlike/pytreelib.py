"""flax's ``nnx.pytreelib`` module: ``Pytree``, ``Object`` and the data/static rules.

A thin door for code that imports flax's module path; every name is the one
exported at the top level of nnxlike.

>>> import nnxlike as nnx
>>> nnx.pytreelib.Pytree is nnx.Pytree, nnx.pytreelib.data is nnx.data
(True, True)
"""

from nnxlike import Data as Data
from nnxlike import Object as Object
from nnxlike import Pytree as Pytree
from nnxlike import Static as Static
from nnxlike import check_pytree as check_pytree
from nnxlike import data as data
from nnxlike import dataclass as dataclass
from nnxlike import has_data as has_data
from nnxlike import is_data as is_data
from nnxlike import register_data_type as register_data_type
from nnxlike import static as static

__all__ = [
    "Data",
    "Object",
    "Pytree",
    "Static",
    "check_pytree",
    "data",
    "dataclass",
    "has_data",
    "is_data",
    "register_data_type",
    "static",
]
