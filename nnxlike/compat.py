"""``nnx.compat``: the graph functions and transforms with graph semantics forced.

flax.nnx 0.12 lets a file switch to tree mode (``nnx.set_graph_mode(False)``);
code that needs shared references or structural write-back then calls
``nnx.compat.jit`` (and friends), which pass ``graph=True`` (and
``graph_updates=True`` for transforms) whatever the switches say.

>>> import nnxlike as nnx
>>> m = nnx.Module()
>>> m.a = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
>>> m.b = m.a  # a shared reference: fine in graph mode
>>> with nnx.set_graph_mode(False):
...     graphdef, state = nnx.compat.split(m)
>>> list(state.to_pure_dict())
['a']
"""

from __future__ import annotations

import functools

from nnxlike import _graph, _module, _rngs, _views
from nnxlike import spmd as _spmd
from nnxlike._transforms import autodiff, control, iteration, linearize
from nnxlike._transforms import custom_vjp as _custom_vjp
from nnxlike._transforms import jit as _jit
from nnxlike._transforms import misc as _misc
from nnxlike._transforms import scan as _scan
from nnxlike._transforms import shard_map as _shard_map

_GRAPH = {"graph": True}
_BOTH = {"graph": True, "graph_updates": True}

split = functools.partial(_graph.split, **_GRAPH)
state = functools.partial(_graph.state, **_GRAPH)
clone = functools.partial(_graph.clone, **_GRAPH)
graphdef = functools.partial(_graph.graphdef, **_GRAPH)
iter_graph = functools.partial(_graph.iter_graph, **_GRAPH)
map = functools.partial(_graph.map_graph, **_GRAPH)  # noqa: A001 - flax's name
recursive_map = functools.partial(_graph.recursive_map, **_GRAPH)
iter_modules = functools.partial(_module.iter_modules, **_GRAPH)
iter_children = functools.partial(_module.iter_children, **_GRAPH)
view = functools.partial(_views.view, **_GRAPH)
view_info = functools.partial(_views.view_info, **_GRAPH)
split_rngs = functools.partial(_rngs.split_rngs, **_BOTH)
fork_rngs = functools.partial(_rngs.fork_rngs, **_BOTH)
reseed = _rngs.reseed
get_abstract_model = functools.partial(_spmd.get_abstract_model, **_GRAPH)

jit = functools.partial(_jit.jit, **_BOTH)
shard_map = functools.partial(_shard_map.shard_map, **_BOTH)
grad = functools.partial(autodiff.grad, **_BOTH)
value_and_grad = functools.partial(autodiff.value_and_grad, **_BOTH)
custom_vjp = functools.partial(_custom_vjp.custom_vjp, **_BOTH)
vjp = functools.partial(linearize.vjp, **_BOTH)
jvp = functools.partial(linearize.jvp, **_BOTH)
remat = functools.partial(control.remat, **_BOTH)
vmap = functools.partial(iteration.vmap, **_BOTH)
pmap = functools.partial(_misc.pmap, **_BOTH)
scan = functools.partial(_scan.scan, **_BOTH)
while_loop = functools.partial(control.while_loop, **_BOTH)
fori_loop = functools.partial(control.fori_loop, **_BOTH)
eval_shape = functools.partial(control.eval_shape, **_BOTH)
cached_partial = _jit.cached_partial
cond = functools.partial(control.cond, **_BOTH)
switch = functools.partial(control.switch, **_BOTH)
