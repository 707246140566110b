"""flax.nnx's ``variablelib`` module: the Variable kinds and their helpers.

A thin public door onto ``nnxlike._variables`` (``nnx.variablelib.VarDefaults``,
``nnx.variablelib.is_array_ref``), so code that imports flax's module path runs.

>>> import nnxlike as nnx
>>> nnx.variablelib.Param is nnx.Param
True
"""

from nnxlike._variable_names import register_variable_name as register_variable_name
from nnxlike._variable_names import variable_name_from_type as variable_name_from_type
from nnxlike._variable_names import variable_type_from_name as variable_type_from_name
from nnxlike._variables import A as A
from nnxlike._variables import BatchStat as BatchStat
from nnxlike._variables import Cache as Cache
from nnxlike._variables import HijaxVariable as HijaxVariable
from nnxlike._variables import Intermediate as Intermediate
from nnxlike._variables import Param as Param
from nnxlike._variables import Perturbation as Perturbation
from nnxlike._variables import VarDefaults as VarDefaults
from nnxlike._variables import VarDefaultsContext as VarDefaultsContext
from nnxlike._variables import Variable as Variable
from nnxlike._variables import VariableMetadata as VariableMetadata
from nnxlike._variables import VariableState as VariableState
from nnxlike._variables import is_array_ref as is_array_ref
from nnxlike._variables import use_eager_sharding as use_eager_sharding
from nnxlike._variables import using_eager_sharding as using_eager_sharding
from nnxlike._variables import var_defaults as var_defaults
