"""flax's ``nnx.extract`` module: to_tree/from_tree and the prefix helpers.

A thin door onto ``nnxlike._extract`` for code written against flax's custom
lifted transforms (``nnx.extract.to_tree``, ``NodeStates``, ``TreeState``,
``clear_non_graph_nodes``, ``broadcast_prefix``, ``check_consistent_aliasing``).

>>> import nnxlike as nnx
>>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> tree = nnx.extract.to_tree({"a": m, "b": m})
>>> out = nnx.extract.from_tree(tree)
>>> out["a"] is out["b"]
True
"""

from nnxlike._extract import MISSING as MISSING
from nnxlike._extract import NodeStates as NodeStates
from nnxlike._extract import PrefixMapping as PrefixMapping
from nnxlike._extract import TreeState as TreeState
from nnxlike._extract import __all__ as __all__
from nnxlike._extract import broadcast_prefix as broadcast_prefix
from nnxlike._extract import check_consistent_aliasing as check_consistent_aliasing
from nnxlike._extract import clear_non_graph_nodes as clear_non_graph_nodes
from nnxlike._extract import default_split_fn as default_split_fn
from nnxlike._extract import from_tree as from_tree
from nnxlike._extract import is_tree_node as is_tree_node
from nnxlike._extract import merge_tree_node as merge_tree_node
from nnxlike._extract import to_tree as to_tree
from nnxlike._extract import tree_prefix as tree_prefix
