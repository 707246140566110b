"""nnxlike: eager, mutable PyTorch-style neural networks over JAX.

The public surface mirrors flax.nnx, so ``import nnxlike as nnx`` runs code written
for it. Everything is re-exported here as ``Name as Name`` from private modules.
"""

from nnxlike import _containers  # noqa: F401  (installs List/Dict conversion)
from nnxlike import _optimizer as optimizer
from nnxlike import checkpoint as checkpoint
from nnxlike import compat as compat
from nnxlike import extract as extract
from nnxlike import filterlib as filterlib
from nnxlike import graph as graph
from nnxlike import graphlib as graphlib
from nnxlike import interop as interop
from nnxlike import metrics as metrics
from nnxlike import spmd as spmd
from nnxlike import statelib as statelib
from nnxlike import traversals as traversals
from nnxlike import variablelib as variablelib
from nnxlike._capture import capture as capture
from nnxlike._config import set_graph_mode as set_graph_mode
from nnxlike._config import set_graph_updates as set_graph_updates
from nnxlike._containers import Dict as Dict
from nnxlike._containers import List as List
from nnxlike._containers import Sequential as Sequential
from nnxlike._contexts import MergeContext as MergeContext
from nnxlike._contexts import SplitContext as SplitContext
from nnxlike._contexts import UpdateContext as UpdateContext
from nnxlike._contexts import current_update_context as current_update_context
from nnxlike._contexts import merge_context as merge_context
from nnxlike._contexts import split_context as split_context
from nnxlike._contexts import update_context as update_context
from nnxlike._display import display as display
from nnxlike._errors import FilterWarning as FilterWarning
from nnxlike._errors import NnxError as NnxError
from nnxlike._errors import ShardingError as ShardingError
from nnxlike._errors import StaleStateWarning as StaleStateWarning
from nnxlike._errors import StructureError as StructureError
from nnxlike._errors import TraceContextError as TraceContextError
from nnxlike._errors import ViewWarning as ViewWarning
from nnxlike._extract import NodeStates as NodeStates
from nnxlike._extract import from_tree as from_tree
from nnxlike._extract import to_tree as to_tree
from nnxlike._filters import All as All
from nnxlike._filters import Any as Any
from nnxlike._filters import Everything as Everything
from nnxlike._filters import Not as Not
from nnxlike._filters import Nothing as Nothing
from nnxlike._filters import OfType as OfType
from nnxlike._filters import PathContains as PathContains
from nnxlike._filters import WithTag as WithTag
from nnxlike._graph import GraphDef as GraphDef
from nnxlike._graph import PureState as PureState
from nnxlike._graph import call as call
from nnxlike._graph import clone as clone
from nnxlike._graph import find_duplicates as find_duplicates
from nnxlike._graph import graphdef as graphdef
from nnxlike._graph import iter_graph as iter_graph
from nnxlike._graph import map_graph as map
from nnxlike._graph import merge as merge
from nnxlike._graph import pop as pop
from nnxlike._graph import recursive_map as recursive_map
from nnxlike._graph import set_metadata as set_metadata
from nnxlike._graph import split as split
from nnxlike._graph import state as state
from nnxlike._graph import update as update
from nnxlike._graph import variables as variables
from nnxlike._module import Module as Module
from nnxlike._module import iter_children as iter_children
from nnxlike._module import iter_module_children as iter_module_children
from nnxlike._module import iter_modules as iter_modules
from nnxlike._object import Data as Data
from nnxlike._object import Object as Pytree
from nnxlike._object import PlainObject as Object
from nnxlike._object import Static as Static
from nnxlike._object import check_pytree as check_pytree
from nnxlike._object import data as data
from nnxlike._object import dataclass as dataclass
from nnxlike._object import has_data as has_data
from nnxlike._object import is_data as is_data
from nnxlike._object import register_data_type as register_data_type
from nnxlike._object import static as static
from nnxlike._optimizer import ModelAndOptimizer as ModelAndOptimizer
from nnxlike._optimizer import OptArray as OptArray
from nnxlike._optimizer import Optimizer as Optimizer
from nnxlike._optimizer import OptVariable as OptVariable
from nnxlike._rngs import Rngs as Rngs
from nnxlike._rngs import RngStream as RngStream
from nnxlike._rngs import SplitBackups as SplitBackups
from nnxlike._rngs import backup_keys as backup_keys
from nnxlike._rngs import fork_rngs as fork_rngs
from nnxlike._rngs import reseed as reseed
from nnxlike._rngs import restore_rngs as restore_rngs
from nnxlike._rngs import split_rngs as split_rngs
from nnxlike._rngs import with_rngs as with_rngs
from nnxlike._state import FlatState as FlatState
from nnxlike._state import State as State
from nnxlike._state import filter_state as filter_state
from nnxlike._state import from_flat_state as from_flat_state
from nnxlike._state import map_state as map_state
from nnxlike._state import merge_state as merge_state
from nnxlike._state import replace_by_pure_dict as replace_by_pure_dict
from nnxlike._state import restore_int_paths as restore_int_paths
from nnxlike._state import split_state as split_state
from nnxlike._state import to_flat_state as to_flat_state
from nnxlike._state import to_pure_dict as to_pure_dict
from nnxlike._summary import summary as summary
from nnxlike._summary import tabulate as tabulate
from nnxlike._train_state import TrainState as TrainState
from nnxlike._transforms.autodiff import DiffState as DiffState
from nnxlike._transforms.autodiff import grad as grad
from nnxlike._transforms.autodiff import value_and_grad as value_and_grad
from nnxlike._transforms.control import cond as cond
from nnxlike._transforms.control import eval_shape as eval_shape
from nnxlike._transforms.control import fori_loop as fori_loop
from nnxlike._transforms.control import remat as remat
from nnxlike._transforms.control import switch as switch
from nnxlike._transforms.control import while_loop as while_loop
from nnxlike._transforms.custom_vjp import custom_vjp as custom_vjp
from nnxlike._transforms.iteration import Carry as Carry
from nnxlike._transforms.iteration import StateAxes as StateAxes
from nnxlike._transforms.iteration import prefix as prefix
from nnxlike._transforms.iteration import vmap as vmap
from nnxlike._transforms.jit import cached_partial as cached_partial
from nnxlike._transforms.jit import jit as jit
from nnxlike._transforms.jit import jit_partial as jit_partial
from nnxlike._transforms.linearize import jvp as jvp
from nnxlike._transforms.linearize import vjp as vjp
from nnxlike._transforms.misc import StateSharding as StateSharding
from nnxlike._transforms.misc import checkify as checkify
from nnxlike._transforms.misc import make_jaxpr as make_jaxpr
from nnxlike._transforms.misc import pmap as pmap
from nnxlike._transforms.misc import transform_metadata as transform_metadata
from nnxlike._transforms.scan import scan as scan
from nnxlike._transforms.shard_map import shard_map as shard_map
from nnxlike._variable_names import register_variable_name as register_variable_name
from nnxlike._variable_names import variable_name_from_type as variable_name_from_type
from nnxlike._variable_names import variable_type_from_name as variable_type_from_name
from nnxlike._variables import A as A
from nnxlike._variables import BatchStat as BatchStat
from nnxlike._variables import Cache as Cache
from nnxlike._variables import Intermediate as Intermediate
from nnxlike._variables import LostWriteWarning as LostWriteWarning
from nnxlike._variables import M as M
from nnxlike._variables import OptState as OptState
from nnxlike._variables import Param as Param
from nnxlike._variables import Perturbation as Perturbation
from nnxlike._variables import RngCount as RngCount
from nnxlike._variables import RngKey as RngKey
from nnxlike._variables import RngState as RngState
from nnxlike._variables import Variable as Variable
from nnxlike._variables import VariableMetadata as VariableMetadata
from nnxlike._variables import VariableState as VariableState
from nnxlike._variables import use_eager_sharding as use_eager_sharding
from nnxlike._variables import using_eager_sharding as using_eager_sharding
from nnxlike._variables import var_defaults as var_defaults
from nnxlike._version import __version__ as __version__
from nnxlike._views import vars_as as vars_as
from nnxlike._views import view as view
from nnxlike._views import view_info as view_info
from nnxlike._views import with_attributes as with_attributes
from nnxlike._views import with_vars as with_vars
from nnxlike.graphlib import GraphState as GraphState
from nnxlike.graphlib import as_pure as as_pure
from nnxlike.graphlib import flatten as flatten
from nnxlike.graphlib import pure as pure
from nnxlike.graphlib import unflatten as unflatten
from nnxlike.graphlib import unpack as unpack
from nnxlike.interop.torch import load_torch_state_dict as load_torch_state_dict
from nnxlike.interop.torch import to_torch_state_dict as to_torch_state_dict
from nnxlike.metrics import EMA as EMA
from nnxlike.metrics import Metric as Metric
from nnxlike.metrics import MultiMetric as MultiMetric
from nnxlike.nn import *  # noqa: F403
from nnxlike.nn import initializers as initializers
from nnxlike.spmd import PARTITION_NAME as PARTITION_NAME
from nnxlike.spmd import abstract_with_sharding as abstract_with_sharding
from nnxlike.spmd import as_abstract as as_abstract
from nnxlike.spmd import get_abstract_model as get_abstract_model
from nnxlike.spmd import get_logical_axis_rules as get_logical_axis_rules
from nnxlike.spmd import get_named_sharding as get_named_sharding
from nnxlike.spmd import get_partition_spec as get_partition_spec
from nnxlike.spmd import logical_axis_rules as logical_axis_rules
from nnxlike.spmd import with_metadata as with_metadata
from nnxlike.spmd import with_partitioning as with_partitioning

_FLAX_SUBMODULES = frozenset(
    {"deprecations", "helpers", "module", "object", "pytreelib", "rnglib"}
    | {"tracers", "training", "transforms", "visualization"}
)


def __getattr__(name: str):
    # flax's module paths (nnx.rnglib, nnx.training, ...) load on first use: they
    # import from this package, so it cannot import them while it initialises.
    if name in _FLAX_SUBMODULES:
        import importlib

        return importlib.import_module(f"nnxlike.{name}")
    # Only for names that do not exist: PyTorch names get a pointer to ours.
    from nnxlike._errors import torch_name_hint

    hint = None if name.startswith("__") else torch_name_hint(name)
    raise AttributeError(hint or f"module 'nnxlike' has no attribute {name!r}")
