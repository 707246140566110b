"""Public filter utilities (``nnx.filterlib``), as in flax.nnx."""

from nnxlike._filters import All as All
from nnxlike._filters import Any as Any
from nnxlike._filters import Everything as Everything
from nnxlike._filters import Filter as Filter
from nnxlike._filters import Not as Not
from nnxlike._filters import Nothing as Nothing
from nnxlike._filters import OfType as OfType
from nnxlike._filters import PathContains as PathContains
from nnxlike._filters import PathIn as PathIn
from nnxlike._filters import WithTag as WithTag
from nnxlike._filters import filters_to_predicates as filters_to_predicates
from nnxlike._filters import to_predicate as to_predicate
