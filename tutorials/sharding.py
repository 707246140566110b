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
# # From one device to a mesh
#
# PyTorch spreads a model over devices with wrappers (`DistributedDataParallel`,
# `FullyShardedDataParallel`, tensor-parallel plans) and a process per GPU. JAX
# works the other way round: you write the program for **one** device, say how
# each array is laid out over a **mesh** of devices, and `jax.jit` compiles one
# program that runs on all of them, inserting the communication (all-reduces,
# all-gathers) itself. nnxlike adds only the bookkeeping:
#
# 1. **annotate** Variables with `sharding_names` (one name per array axis);
# 2. **create** the model under `jax.set_mesh(mesh)`: each annotated Variable is
#    placed on the mesh as it is created, never gathered on one device first;
# 3. **train** with the same `nnx.jit` step as on one device.
#
# This notebook runs on 8 simulated CPU devices (the `XLA_FLAGS` line below), so it
# works on a laptop; on a machine with several GPUs or TPU cores it uses the real
# ones. We check at every step that the sharded training computes the same numbers
# as single-device training.

# %%
import os
import sys

# `python tutorials/sharding.py --processes 2` runs this file as 2 processes on
# this machine, standing in for 2 hosts (see the last section). Only a script
# reads its command line: in a notebook, argv belongs to the kernel.
if __name__ == "__main__" and "__file__" in globals() and "--processes" in sys.argv:
    import argparse
    import socket
    import subprocess
    import time

    parser = argparse.ArgumentParser(description="Run this tutorial as N processes.")
    parser.add_argument("--processes", type=int, choices=[1, 2, 4, 8], default=1)
    count = parser.parse_args().processes
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    children = [
        subprocess.Popen(
            [sys.executable, __file__],
            env=dict(
                os.environ,
                NNXLIKE_COORDINATOR=coordinator,
                NNXLIKE_NUM_PROCESSES=str(count),
                NNXLIKE_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(count)
    ]
    # One failure would leave the others waiting for it forever: stop them all.
    while any(c.poll() is None for c in children):
        if any(c.poll() for c in children):
            for c in children:
                c.kill()
        time.sleep(0.1)
    for i, child in enumerate(children):
        print(f"===== process {i} (exit status {child.returncode}) =====")
        lines = child.stdout.read().splitlines()
        print("\n".join(ln for ln in lines if "connected peer ranks" not in ln))
    sys.exit(max((c.returncode for c in children), key=abs))

# Must come before JAX starts: 8 CPU devices on a machine that has only one, or
# 8 / N each when launched as N processes. (It only concerns the CPU platform;
# real GPUs/TPUs are used when present.)
num_processes = int(os.environ.get("NNXLIKE_NUM_PROCESSES", "1"))
os.environ.setdefault(
    "XLA_FLAGS", f"--xla_force_host_platform_device_count={8 // num_processes}"
)
import jax

if os.environ.get("NNXLIKE_MULTIHOST") == "1":  # a real cluster: see the last section
    jax.distributed.initialize()
elif num_processes > 1:  # the local stand-in for hosts
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["NNXLIKE_COORDINATOR"],
        num_processes=num_processes,
        process_id=int(os.environ["NNXLIKE_PROCESS_ID"]),
    )

import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import nnxlike as nnx

n = jax.device_count()
print(f"{n} devices: {jax.devices()[:4]}{' ...' if n > 4 else ''}")

# %% [markdown]
# ## 1. A mesh
#
# A mesh arranges the devices in a grid with named axes. We use a 2-D one:
# `"data"` for splitting the batch and `"model"` for splitting weight matrices.
# With 8 devices that is 2 × 4.
#
# `axis_types=AxisType.Auto` lets the compiler decide the layout of everything we
# do not annotate (the classic "GSPMD" style, what this tutorial uses). The
# default of `jax.make_mesh` is `Explicit`: layouts become part of each array's
# type, and an ambiguous operation (a matmul over a sharded dimension) is an
# error until you say where the result goes. nnxlike places Variables correctly
# on both kinds of mesh.

# %%
model_axis = 4 if n % 4 == 0 else 2 if n % 2 == 0 else 1
mesh = jax.make_mesh(
    (n // model_axis, model_axis), ("data", "model"), axis_types=(AxisType.Auto,) * 2
)
print(mesh)

# %% [markdown]
# ## 2. Annotate
#
# An annotation is Variable metadata `sharding_names`: one entry per array axis,
# naming the mesh axis that splits it, or `None` for "not split". Three ways to
# give it:
#
# - wrap an initializer: `nnx.with_partitioning(init, (None, "model"))`;
# - pass metadata to a layer: `kernel_metadata={"sharding_names": ...}`;
# - on a Variable directly: `nnx.Param(x, sharding_names=(...))`.
#
# Names may also be **logical** (`"embed"`, `"hidden"`) and mapped to mesh axes
# by rules, so a model's code does not hard-wire one parallelism plan. The MLP
# below is Megatron-style tensor parallel: the first kernel is split by columns,
# the second by rows, so the hidden activations stay split over `"model"` and one
# all-reduce joins the partial outputs.

# %%
RULES = [("batch", "data"), ("embed", None), ("hidden", "model")]


class MLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            din,
            dhidden,
            kernel_init=nnx.with_partitioning(init, ("embed", "hidden")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("hidden",)),
            rngs=rngs,
        )
        self.down = nnx.Linear(
            dhidden,
            dout,
            kernel_metadata={"sharding_names": ("hidden", "embed")},
            rngs=rngs,
        )

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


DIN, DHIDDEN, DOUT = 16, 64, 4

# Without a mesh the annotation is only recorded: the model runs on one device.
single = MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0))
print("metadata:", single.up.kernel.sharding_names)
print("placed on:", single.up.kernel.value.sharding)

specs = nnx.get_partition_spec(single, rules=RULES)
for path, vs in specs.flat_dict().items():
    print(f"{'.'.join(path):12s} {vs.value}")
assert specs.up.kernel.value == P(None, "model")
assert specs.down.kernel.value == P("model", None)
assert specs.down.bias.value == P()  # unannotated: replicated

# %% [markdown]
# ## 3. Create under the mesh
#
# Inside `jax.set_mesh(mesh)` (and the rules), each annotated Variable is put on
# the devices as it is created: the full kernel never exists on one device. The
# optimizer's Adam moments mirror the parameters, inherit their annotation and are
# placed the same way.

# %%
with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    model = MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))

kernel = model.up.kernel.value
print("sharding:", kernel.sharding)
print(
    "global shape:",
    kernel.shape,
    "| shard shape:",
    kernel.addressable_shards[0].data.shape,
)


def show_layout(name: str, x: jax.Array) -> None:
    """Which block of ``x`` each device holds."""
    print(name, tuple(x.shape), x.sharding.spec)
    for shard in x.addressable_shards[:8]:
        block = ", ".join(
            f"{s.start or 0}:{s.stop or d}" for s, d in zip(shard.index, x.shape)
        )
        print(f"  device {shard.device.id}: [{block}]")


show_layout("up.kernel", kernel)
show_layout("adam mu of up.kernel", optimizer.opt_state[0].mu["up"]["kernel"].value)

assert kernel.addressable_shards[0].data.shape == (DIN, DHIDDEN // model_axis)
mu = optimizer.opt_state[0].mu["up"]["kernel"].value
assert mu.sharding.is_equivalent_to(kernel.sharding, 2)

# %% [markdown]
# `jax.debug.visualize_array_sharding(kernel)` draws the same picture as a table
# when the `rich` package is installed.
#
# Building a big model "on paper" first is often useful, to check the plan or to
# restore a checkpoint straight into the sharded layout:
# `nnx.get_abstract_model` returns the GraphDef and a State of
# `jax.ShapeDtypeStruct`s, each with its `NamedSharding`, without allocating
# anything.

# %%
graphdef, abstract = nnx.get_abstract_model(
    lambda: MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0)), mesh, rules=RULES
)
for path, vs in abstract.flat_dict().items():
    print(f"{'.'.join(path):12s} {vs.value.shape} {vs.value.sharding.spec}")
assert isinstance(abstract.up.kernel.value, jax.ShapeDtypeStruct)
assert abstract.up.kernel.value.sharding.spec == P(None, "model")

# %% [markdown]
# ## 4. Data parallel
#
# The simplest plan: every device holds the whole model and a slice of the
# batch; the compiler averages the gradients across devices. We take a 1-D mesh
# and the same MLP built without a mesh, and give `nnx.jit` the layouts:
# `nnx.get_named_sharding` turns each object into a State of `NamedSharding`s
# (rules mapping every logical name to `None`: all weights replicated), and the
# batch is split over `"data"`.

# %%
x = jax.random.normal(jax.random.key(1), (8 * n, DIN))
y = jax.random.normal(jax.random.key(2), (8 * n, DOUT))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def train(model, optimizer, x, y, steps=20, **jit_kwargs):
    step = nnx.jit(train_step, **jit_kwargs)
    return [float(step(model, optimizer, x, y)) for _ in range(steps)]


# The reference: one device, no mesh.
ref = MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0))
ref_opt = nnx.Optimizer(ref, optax.adam(1e-2))
ref_losses = train(ref, ref_opt, x, y)

dp_mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
dp_model = MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0))
dp_opt = nnx.Optimizer(dp_model, optax.adam(1e-2))
batch = NamedSharding(dp_mesh, P("data"))
replicate = [("embed", None), ("hidden", None)]
dp_losses = train(
    dp_model,
    dp_opt,
    jax.device_put(x, batch),
    jax.device_put(y, batch),
    in_shardings=(
        nnx.get_named_sharding(dp_model, dp_mesh, rules=replicate),
        nnx.get_named_sharding(dp_opt, dp_mesh, rules=replicate),
        batch,
        batch,
    ),
)
print(f"loss: {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f} (one device)")
print(f"loss: {dp_losses[0]:.4f} -> {dp_losses[-1]:.4f} (data parallel, {n} devices)")
show_layout("dp up.kernel", dp_model.up.kernel.value)
np.testing.assert_allclose(dp_losses, ref_losses, rtol=1e-4)
np.testing.assert_allclose(
    dp_model.up.kernel.value, ref.up.kernel.value, rtol=1e-4, atol=1e-5
)

# %% [markdown]
# ## 5. Tensor parallel (and data parallel) on the 2-D mesh
#
# The model from section 3 is already split over `"model"`; the batch goes over
# `"data"`. The train step is the same function: no annotation inside it. The
# compiler propagates the layouts, and the updated weights and Adam moments come
# back split exactly as they were created.

# %%
batch2 = NamedSharding(mesh, P("data"))
tp_losses = train(
    model, optimizer, jax.device_put(x, batch2), jax.device_put(y, batch2)
)
print(f"loss: {tp_losses[0]:.4f} -> {tp_losses[-1]:.4f} (data x tensor parallel)")
np.testing.assert_allclose(tp_losses, ref_losses, rtol=1e-4)
for path, vs in nnx.state(model).flat_dict().items():
    np.testing.assert_allclose(
        vs.value, nnx.state(ref).flat_dict()[path].value, rtol=1e-4, atol=1e-5
    )

want = nnx.get_named_sharding(optimizer, mesh, rules=RULES).flat_dict()
for path, vs in nnx.state(optimizer, nnx.OptState).flat_dict().items():
    assert vs.value.sharding.is_equivalent_to(want[path].value, vs.value.ndim), path
show_layout("down.kernel after training", model.down.kernel.value)

# %% [markdown]
# To pin the layouts instead of trusting propagation, pass the same States to
# `nnx.jit(train_step, in_shardings=(nnx.get_named_sharding(model, mesh), ...))`:
# nnxlike constrains the arrays on the way in and the updated Variables on the
# way out.
#
# Creating the model **inside** `nnx.jit` works too: the Variables are then
# constrained while traced, and the compiled initializer writes each shard
# directly on its device (useful when even the initialization of one full layer
# would not fit on one device).

# %%
with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    jitted = nnx.jit(lambda: MLP(DIN, DHIDDEN, DOUT, rngs=nnx.Rngs(0)))()
assert jitted.up.kernel.value.sharding.is_equivalent_to(
    NamedSharding(mesh, P(None, "model")), 2
)
np.testing.assert_array_equal(jitted.up.kernel.value, single.up.kernel.value)

# %% [markdown]
# ## 6. Errors name the Variable and the fix
#
# A name that is neither a mesh axis nor covered by a rule, an annotation of the
# wrong length, or a size the mesh cannot split evenly is reported with the
# Variable's path:

# %%
try:
    nnx.get_named_sharding(single, mesh)  # forgot the rules
except nnx.ShardingError as e:
    print(e)
    assert "Param at path 'up.kernel'" in str(e)

# %% [markdown]
# ## 7. Many hosts
#
# On a TPU pod or a multi-node GPU cluster, **every host runs this same
# program**. The only addition is one call before anything else touches JAX:
#
# ```python
# import jax
# jax.distributed.initialize()  # auto-detected on Cloud TPU, SLURM, Open MPI,
#                               # Kubernetes; else pass coordinator_address,
#                               # num_processes, process_id
# ```
#
# (the first cell does it when `NNXLIKE_MULTIHOST=1`). After it,
# `jax.devices()` lists the devices of *all* hosts, so `jax.make_mesh` builds
# one global mesh, `jax.set_mesh(mesh)` + the annotated model places each
# shard on the host that owns it, and `nnx.jit` compiles one SPMD program that
# every host runs in lock step. What changes:
#
# - **data**: each host loads only its part of the global batch and
#   `jax.make_array_from_process_local_data(sharding, local_batch)` assembles
#   the global array (on one host, local = global: the call below runs as is);
# - **printing and files**: read values that are replicated (the loss), or
#   gather first (`jax.experimental.multihost_utils.process_allgather`); write
#   from `jax.process_index() == 0` only; checkpoint with orbax, from every host
#   (see the page "Many hosts");
# - `x.addressable_shards` lists only this host's shards.
#
# Try it on one machine: `python tutorials/sharding.py --processes 2` runs this
# file as 2 processes of 4 CPU devices each, talking over localhost (the first
# cell launches them and gives each `jax.distributed.initialize` its
# coordinator address and rank). Every check above passes in both processes, and
# each prints what it holds: below, its rows of the batch and its blocks of the
# kernel.

# %%
print(
    f"process {jax.process_index()} of {jax.process_count()}, "
    f"{jax.local_device_count()} local devices"
)
per_host = x.shape[0] // jax.process_count()
start = jax.process_index() * per_host
local_batch = np.asarray(x)[start : start + per_host]
global_x = jax.make_array_from_process_local_data(batch2, local_batch)
assert global_x.shape == x.shape and global_x.sharding == batch2
show_layout(f"process {jax.process_index()}: its rows of the batch", global_x)
show_layout(f"process {jax.process_index()}: its blocks of up.kernel", kernel)

# %%
assert n >= 1 and len(kernel.addressable_shards) == jax.local_device_count()
assert tp_losses[-1] < tp_losses[0]
print("all checks passed")
