# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Under the hood: objects, GraphDef and State
#
# nnxlike lets you hold ordinary mutable Python objects while JAX only works
# with pure functions of arrays. Every boundary between the two is crossed the
# same way:
#
# ```
# objects --split--> (GraphDef, State) --JAX--> new State --merge/update--> objects
# ```
#
# This tutorial opens up each piece on a model that **shares a layer** between
# two blocks (as tied embeddings do), because sharing is where a naive
# "convert the model to a pytree" approach goes wrong:
#
# 1. what `nnx.split` produces, and how to read a `GraphDef` and a `State`;
# 2. how `nnx.merge` rebuilds objects, sharing included;
# 3. what `nnx.jit` does at each call;
# 4. the text displays (treescope) used throughout.

# %%
import time

import jax
import jax.numpy as jnp
import treescope

import nnxlike as nnx


class Block(nnx.Module):
    def __init__(self, shared: nnx.Linear, *, rngs: nnx.Rngs):
        self.shared = shared  # the same Linear object in both blocks
        self.own = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return self.own(nnx.relu(self.shared(x)))


class Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        shared = nnx.Linear(4, 4, rngs=rngs)
        self.first = Block(shared, rngs=rngs)
        self.second = Block(shared, rngs=rngs)
        self.calls = nnx.Variable(jnp.array(0))  # a counter, not a parameter

    def __call__(self, x):
        self.calls.value += 1
        return self.second(self.first(x))


net = Net(rngs=nnx.Rngs(0))
assert net.first.shared is net.second.shared
x = jnp.ones((2, 4))

# %% [markdown]
# ## 1. `split`: a GraphDef and a State
#
# `nnx.split(net)` walks the object graph once, depth first, in attribute
# definition order, and returns
#
# - a **GraphDef**: the static structure: node types, attribute names, static
#   attributes (sizes, flags, dtypes), and which nodes are the same object. A
#   node seen a second time is recorded as a reference to its first index
#   (`<shared #2>` below), not expanded again;
# - a **State**: one entry per distinct Variable, keyed by the path where the
#   walk first met it. Its leaves are the model's own Variables (live, as in
#   flax.nnx and like PyTorch's `state_dict()`): a State follows later writes
#   to the model, and `nnx.clone(state)` takes a copy to keep. It is a JAX
#   pytree: `jax.tree.map`, `jax.jit`, optax and checkpointing libraries all
#   accept it.

# %%
graphdef, state = nnx.split(net)
print(graphdef)

# %% [markdown]
# The shared `Linear` appears once under `first` (index `#2`) and as
# `<shared #2>` under `second`. The GraphDef also knows the paths of the
# Variables, in the order of the State's leaves:

# %%
for path in graphdef.paths:
    print(".".join(map(str, path)))
assert ("second", "shared", "kernel") not in graphdef.paths  # stored once
assert len(graphdef.paths) == 7  # 3 Linear layers x (kernel, bias) + calls

# %% [markdown]
# A GraphDef holds no arrays. It is hashable and two models built the same way
# have equal GraphDefs, whatever their weights; that is what makes it a good
# key for caching compiled functions. A different size makes a different
# GraphDef.

# %%
other = Net(rngs=nnx.Rngs(1))
print("equal GraphDefs for different weights:", nnx.graphdef(other) == graphdef)
assert nnx.graphdef(other) == graphdef
assert hash(nnx.graphdef(other)) == hash(graphdef)
assert nnx.graphdef(nnx.Linear(4, 5, rngs=nnx.Rngs(0))) != nnx.graphdef(
    nnx.Linear(4, 4, rngs=nnx.Rngs(0))
)

# %% [markdown]
# Reading a State: it is a nested mapping (attribute access and `[...]` both
# work) whose leaves are `VariableState`s, which remember the Variable kind
# (`Param`, `Variable`, `BatchStat`, ...) and its metadata next to the array.

# %%
print(state)
leaf = state["first"]["shared"]["kernel"]
print(type(leaf).__name__, "of kind", leaf.type.__name__, "shape", leaf.value.shape)
assert leaf.type is nnx.Param
assert state.first.shared.kernel is net.first.shared.kernel  # the live Variable
assert "shared" not in state["second"]

# %% [markdown]
# Three ways to look at a State as plain data:

# %%
flat = state.flat_state()  # [(path, VariableState), ...], like a state_dict
print([".".join(map(str, p)) for p in flat.paths][:3], "...")
pure = state.to_pure_dict()  # nested dicts of arrays, what optax sees
print(jax.tree.map(jnp.shape, pure))
doubled = jax.tree.map(lambda a: 2 * a, state)  # a State is a pytree
assert jnp.allclose(doubled.first.own.kernel.value, 2 * net.first.own.kernel.value)
assert len(jax.tree.leaves(state)) == 7

# %% [markdown]
# Filters split the State further: `nnx.split(net, nnx.Param, ...)` puts the
# parameters in one State and everything else (`...` means "the rest") in a
# second one. This is how gradients are taken with respect to `Param`s only.

# %%
graphdef2, params, rest = nnx.split(net, nnx.Param, ...)
print("params:", len(params.flat_state()), "| rest:", rest.flat_state().paths)
assert graphdef2 == graphdef
assert rest.flat_state().paths == (("calls",),)

# %% [markdown]
# ## 2. `merge`: new objects, same structure
#
# `nnx.merge(graphdef, state)` builds a **new** object graph from the GraphDef
# and the State. The GraphDef's references are followed, so the shared layer is
# shared in the copy too: a plain pytree has no notion of "the same object in
# two places" and would give each block its own copy of the layer after a
# round trip. As in flax.nnx, the new objects hold the State's own Variables;
# `copy=True` gives them new Variables (`nnx.clone(net)` does both at once).

# %%
copy = nnx.merge(graphdef, state, copy=True)
print("copy is net:", copy is net)
print("sharing kept in the copy:", copy.first.shared is copy.second.shared)
assert copy is not net and copy.first is not net.first
assert copy.first.shared is copy.second.shared
assert copy.first.shared.kernel is not net.first.shared.kernel  # new Variables
assert nnx.merge(graphdef, state).first.shared.kernel is net.first.shared.kernel
assert jnp.array_equal(copy(x), net(x))  # same values, same function

# %% [markdown]
# `nnx.update(net, state)` goes the other way: it writes a State's values into
# the **existing** Variables, keeping every object's identity. It is
# `load_state_dict`.

# %%
kernel = net.first.shared.kernel
params = nnx.clone(params)  # a copy to restore from: `params` was live
zeros = jax.tree.map(jnp.zeros_like, nnx.state(net, nnx.Param))
nnx.update(net, zeros)
assert net.first.shared.kernel is kernel  # same Variable, new value
assert float(jnp.abs(net.second.shared.kernel.value).sum()) == 0.0  # seen by both
nnx.update(net, params)  # restore the original weights
assert jnp.array_equal(net.first.shared.kernel.value, params.first.shared.kernel.value)

# %% [markdown]
# ## 3. What `nnx.jit` does at each call
#
# `nnx.jit(f)` compiles one pure function of arrays with `jax.jit`. Around it:
#
# - **first call** (slow path): split the arguments into a GraphDef and the
#   list of their Variables; trace `f` on *merged copies* of the objects (the
#   copies hold JAX tracers instead of arrays); compile; remember the
#   flattened structure for these argument objects;
# - **every later call** (fast path): read the arrays out of the remembered
#   Variables, call the compiled function, store the returned arrays back into
#   the same Variables. No graph walk. The cache is valid as long as no object
#   that jit has seen changed its *structure* (an attribute assigned or
#   deleted, an item appended to an `nnx.List`); a global structure version
#   counter makes that check O(1). Writing a Variable's value does not count
#   as a structural change.
#
# Let us count traces over a sequence of calls, and look at what the traced
# function sees.

# %%
trace_log = []


@nnx.jit
def forward(net, x):
    trace_log.append(
        {
            "is the caller's object": id(net) == caller_id,
            "sharing kept": net.first.shared is net.second.shared,
            "kernel is a tracer": isinstance(
                net.first.shared.kernel.value, jax.core.Tracer
            ),
        }
    )
    return net(x)


# An id, not the object: nnx.jit refuses a function that reads an object it was
# not given (its arrays would be compiled in as constants).
caller_id = id(net)
calls_before = int(net.calls.value)
kernel = net.first.shared.kernel

forward(net, x)  # 1. first call: trace and compile
forward(net, x)  # 2. same objects, same shapes: fast path, no trace
forward(net, jnp.ones((8, 4)))  # 3. new input shape: trace again
forward(Net(rngs=nnx.Rngs(2)), x)  # 4. new object, same GraphDef: reused
n_before_edit = len(trace_log)
net.first.extra = nnx.Param(jnp.zeros(()))  # 5. structural change ...
forward(net, x)  # ... new GraphDef: trace again
del net.first.extra  # 6. back to the original structure: cached program
forward(net, x)

print("traces:", len(trace_log), "| calls counted by net:", int(net.calls.value))
print("inside the first trace:", trace_log[0])
assert n_before_edit == 2  # calls 1 and 3
assert len(trace_log) == 3  # plus call 5
assert trace_log[0] == {
    "is the caller's object": False,  # a merged copy ...
    "sharing kept": True,  # ... with the same sharing ...
    "kernel is a tracer": True,  # ... holding tracers, not arrays
}
assert int(net.calls.value) == calls_before + 5  # written back every time
assert net.first.shared.kernel is kernel  # write-back keeps identity
assert net.first.shared is net.second.shared

# %% [markdown]
# The compiled program itself only sees arrays: the Variables' values as a flat
# list of inputs (here 7, then `x`), and it returns a new array for each
# Variable, followed by the outputs. `forward.lower(...)` shows its signature:

# %%
lowered = forward.lower(net, x).as_text()
signature = next(line for line in lowered.splitlines() if "@main" in line)
print(signature.strip()[:300], "...")
assert signature.count("%arg") == 8

# %% [markdown]
# The fast path is why a training step called thousands of times costs little
# more than the compiled computation itself. A rough comparison: one full
# `nnx.split` (the graph walk the fast path skips) against a whole jitted call.
# On a model this small the two are close; the walk grows with the number of
# Variables, the fast path does not (see the Performance page).


# %%
def per_call(fn, n=300):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


t_call = per_call(lambda: forward(net, x))
t_split = per_call(lambda: nnx.split(net)[1].first.own.kernel.value)
print(f"jitted call: {t_call * 1e6:.0f} us; one nnx.split: {t_split * 1e6:.0f} us")

# %% [markdown]
# Modules are JAX pytrees too (as in flax.nnx 0.12), so plain `jax.jit`
# accepts them, but it hands the function *copies*: a write to a copy that the
# function does not return would be lost. nnxlike reports it, naming the path
# and the fix, as a `nnx.LostWriteWarning` during the first call.

# %%
import warnings

counter = nnx.Variable(jnp.array(0))


@jax.jit
def count_calls(counter, x):
    counter.value = counter.value + 1  # a write to a copy ...
    return x  # ... which is not returned


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    count_calls(counter, x)
message = str(caught[0].message)
print(message[:160], "...")
assert caught[0].category is nnx.LostWriteWarning and "nnx.jit" in message
assert int(counter.value) == 0  # the write was indeed lost: use nnx.jit

# %% [markdown]
# ## 4. Text displays
#
# Printing a Module, a State or a GraphDef renders it with
# [treescope](https://treescope.readthedocs.io) as text. The first line counts
# parameters and bytes per Variable kind; a shared object is expanded once and
# then shown as a reference. In a notebook, `nnx.display(obj)` shows the same
# as an interactive, foldable tree (and prints the text elsewhere).

# %%
text = treescope.render_to_text(net, ignore_exceptions=True)
print(text)
assert text.splitlines()[0].startswith("Net(")
assert "Param: 60" in text.splitlines()[0]  # 3 x (4x4 + 4)
assert "<shared Linear" in text
assert repr(net) == text

# %%
nnx.display(params)
state_text = treescope.render_to_text(params, ignore_exceptions=True)
assert state_text.startswith("State(") and "Param: 60" in state_text

# %% [markdown]
# ## Recap
#
# | operation | returns | identity |
# | --- | --- | --- |
# | `nnx.split(obj, *filters)` | GraphDef + State(s) | States share the arrays |
# | `nnx.merge(graphdef, *states)` | new objects | new objects, sharing kept |
# | `nnx.update(obj, state)` | nothing | same objects, new values |
# | `nnx.jit(f)(obj, ...)` | `f`'s outputs | same objects, new values |
#
# Final checks on identity preservation:

# %%
assert net.first.shared is net.second.shared
assert nnx.merge(*nnx.split(net)).first.shared is not net.first.shared
copy2 = nnx.merge(*nnx.split(net))
assert copy2.first.shared is copy2.second.shared
assert nnx.clone(net).second.shared is not net.second.shared
print("all checks passed")
