"""flax's ``nnx.transforms.iteration`` module.

>>> import nnxlike as nnx
>>> nnx.transforms.iteration.while_loop is nnx.while_loop
True
"""

from nnxlike import Carry as Carry
from nnxlike import StateAxes as StateAxes
from nnxlike import fori_loop as fori_loop
from nnxlike import pmap as pmap
from nnxlike import scan as scan
from nnxlike import transform_metadata as transform_metadata
from nnxlike import vmap as vmap
from nnxlike import while_loop as while_loop

__all__ = [
    "Carry",
    "StateAxes",
    "fori_loop",
    "pmap",
    "scan",
    "transform_metadata",
    "vmap",
    "while_loop",
]
