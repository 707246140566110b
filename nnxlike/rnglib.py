"""flax's ``nnx.rnglib`` module: ``Rngs``, streams and the RNG helpers.

A thin door for code that imports flax's module path; every name is the one
exported at the top level of nnxlike.

>>> import nnxlike as nnx
>>> nnx.rnglib.Rngs is nnx.Rngs
True
"""

from nnxlike import RngCount as RngCount
from nnxlike import RngKey as RngKey
from nnxlike import Rngs as Rngs
from nnxlike import RngState as RngState
from nnxlike import RngStream as RngStream
from nnxlike import SplitBackups as SplitBackups
from nnxlike import backup_keys as backup_keys
from nnxlike import fork_rngs as fork_rngs
from nnxlike import reseed as reseed
from nnxlike import restore_rngs as restore_rngs
from nnxlike import split_rngs as split_rngs
from nnxlike import with_rngs as with_rngs

__all__ = [
    "RngCount",
    "RngKey",
    "RngState",
    "RngStream",
    "Rngs",
    "SplitBackups",
    "backup_keys",
    "fork_rngs",
    "reseed",
    "restore_rngs",
    "split_rngs",
    "with_rngs",
]
