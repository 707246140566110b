"""Multi-process checks for ``tests/test_multiprocess.py``, one process per "host".

Usage: ``python tests/multiprocess_worker.py PORT NUM_PROCESSES PROCESS_ID CASE ...``
(``tests/multiprocess.py`` starts the processes). Cases:

- ``train``: data x tensor parallel training on a global ``("data", "model")``
  mesh over every process's devices, each process feeding only its rows of the
  batch; compared with single-device training of the same global batch (computed
  in each process on one local device), plus BatchNorm statistics, the dropout
  stream and metrics.
- ``save``: tensor-parallel training whose kernels are split across processes,
  orbax checkpoints of model and optimizer at steps 10 and 20, and a restore
  onto the same processes that continues training.
- ``kill``: starts saving step 30, then process 1 kills itself mid-save.

Scratch files go to ``$NNXLIKE_MP_DIR``. Every case prints one line of facts per
process; the test asserts on them.
"""

from __future__ import annotations

import os
import sys

from multiprocess import worker_main

STEPS = 20
DIN, DHIDDEN, DOUT = 4, 16, 3
BATCH = 16
RULES = [("embed", None), ("hidden", "model")]


def _net():
    """The tiny classifier (built after JAX is imported): Megatron-style split of
    ``up`` by columns and ``down`` by rows over ``"model"``, with BatchNorm and
    Dropout between them."""
    import jax

    import nnxlike as nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            init = nnx.initializers.lecun_normal()
            self.up = nnx.Linear(
                DIN,
                DHIDDEN,
                kernel_init=nnx.with_partitioning(init, ("embed", "hidden")),
                use_bias=False,  # BatchNorm follows: a bias would get only noise
                rngs=rngs,
            )
            self.norm = nnx.BatchNorm(DHIDDEN, rngs=rngs)
            self.drop = nnx.Dropout(0.25, rngs=rngs)
            self.down = nnx.Linear(
                DHIDDEN,
                DOUT,
                kernel_metadata={"sharding_names": ("hidden", "embed")},
                rngs=rngs,
            )

        def __call__(self, x):
            return self.down(self.drop(jax.nn.relu(self.norm(self.up(x)))))

    return Net


def _data(seed: int = 1):
    import jax
    import numpy as np

    kx, ky = jax.random.split(jax.random.key(seed))
    x = np.asarray(jax.random.normal(kx, (BATCH, DIN)))
    y = np.asarray(jax.random.randint(ky, (BATCH,), 0, DOUT))
    return x, y


def _make(mesh=None):
    """Model, optimizer and metrics; placed on ``mesh`` when one is given."""
    import contextlib

    import jax
    import optax

    import nnxlike as nnx

    ctx = contextlib.ExitStack()
    if mesh is not None:
        ctx.enter_context(jax.set_mesh(mesh))
        ctx.enter_context(nnx.logical_axis_rules(RULES))
    with ctx:
        model = _net()(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    metrics = nnx.MultiMetric(
        loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy()
    )
    return model, optimizer, metrics


def _step_fn():
    import optax

    import nnxlike as nnx

    def loss_fn(model, x, y):
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, logits

    @nnx.jit
    def step(model, optimizer, metrics, x, y):
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        optimizer.update(model, grads)
        metrics.update(loss=loss, logits=logits, labels=y)
        return loss, logits

    return step


def _local_rows(sharding, shape) -> tuple[int, int]:
    """The rows of a global batch this process's devices hold (what it loads)."""
    idx = sharding.addressable_devices_indices_map(shape).values()
    starts = [s[0].start or 0 for s in idx]
    stops = [s[0].stop if s[0].stop is not None else shape[0] for s in idx]
    return min(starts), max(stops)


def _global(sharding, data):
    """Each process passes only its rows; JAX assembles the global array."""
    import jax

    start, stop = _local_rows(sharding, data.shape)
    return jax.make_array_from_process_local_data(
        sharding, data[start:stop], data.shape
    )


def _max_diff(tree, reference) -> float:
    """Largest |a - b| between this process's shards of ``tree`` and the same
    blocks of the single-device ``reference`` (same paths)."""
    import jax
    import numpy as np

    import nnxlike as nnx

    got, want = nnx.state(tree).flat_dict(), nnx.state(reference).flat_dict()
    assert got.keys() == want.keys(), (got.keys(), want.keys())
    worst = 0.0
    for path, vs in got.items():
        ref = want[path].value
        if jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key):
            ref, arr = jax.random.key_data(ref), jax.random.key_data(vs.value)
        else:
            arr = vs.value
        ref = np.asarray(ref)
        for shard in arr.addressable_shards:
            block = np.asarray(shard.data, np.float64) - ref[shard.index]
            worst = max(worst, float(np.max(np.abs(block), initial=0.0)))
    return worst


def _local_values(array) -> list:
    """This process's shards of ``array``: device, rows and a digest of the bytes."""
    import hashlib

    import numpy as np

    return [
        {
            "device": s.device.id,
            "rows": [s.index[0].start or 0, s.index[0].stop] if s.index else [],
            "digest": hashlib.sha1(np.asarray(s.data).tobytes()).hexdigest(),
        }
        for s in array.addressable_shards
    ]


def train() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    n = jax.device_count()
    mesh = jax.make_mesh(
        (2, n // 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2
    )
    batch = NamedSharding(mesh, P("data"))
    x, y = _data()

    # Reference: one local device, the whole global batch, no mesh.
    step = _step_fn()
    ref, ref_opt, ref_metrics = _make()
    ref_losses, ref_correct = [], 0
    for _ in range(STEPS):
        loss, logits = step(ref, ref_opt, ref_metrics, jnp.asarray(x), jnp.asarray(y))
        ref_losses.append(float(loss))
        ref_correct += int(np.sum(np.argmax(np.asarray(logits), -1) == y))

    model, optimizer, metrics = _make(mesh)
    gx, gy = _global(batch, x), _global(batch, y)
    losses = [float(step(model, optimizer, metrics, gx, gy)[0]) for _ in range(STEPS)]
    computed = metrics.compute()

    # The dropout stream after training: one more mask over the global batch.
    apply = nnx.jit(lambda layer, v: layer(v))
    mask = apply(model.drop, _global(batch, np.ones((BATCH, DHIDDEN), np.float32)))
    ref_mask = np.asarray(apply(ref.drop, jnp.ones((BATCH, DHIDDEN))))
    kernel = model.up.kernel.value
    rows = _local_rows(batch, (BATCH,))
    return {
        "devices": n,
        "mesh_processes": [[int(d.process_index) for d in row] for row in mesh.devices],
        "local_rows": list(rows),
        "kernel_shape": list(kernel.shape),
        "kernel_local_shards": [list(s.data.shape) for s in kernel.addressable_shards],
        "kernel_columns": sorted(
            {
                (s.index[1].start or 0, s.index[1].stop)
                for s in kernel.addressable_shards
            }
        ),
        "kernel_fully_addressable": kernel.is_fully_addressable,
        "loss_diff": float(np.max(np.abs(np.array(losses) - ref_losses))),
        "state_diff": _max_diff(
            (model, optimizer, metrics), (ref, ref_opt, ref_metrics)
        ),
        "batch_stats_diff": _max_diff(model.norm, ref.norm),
        "metrics": {k: float(v) for k, v in computed.items()},
        "ref_metrics": {
            "loss": float(np.mean(ref_losses)),
            "accuracy": ref_correct / (STEPS * BATCH),
        },
        "first_last_loss": [losses[0], losses[-1]],
        "rng_count": int(np.asarray(model.drop.rngs.count.value.addressable_data(0))),
        "rng_key": np.asarray(
            jax.random.key_data(model.drop.rngs.key.value).addressable_data(0)
        ).tolist(),
        "mask_diff": max(
            float(np.max(np.abs(np.asarray(s.data) - ref_mask[s.index])))
            for s in mask.addressable_shards
        ),
        "mask_local": _local_values(mask),
        "replicated_local": _local_values(model.down.bias.value),
    }


def _tp_mesh():
    """``"model"`` across processes, ``"data"`` within one: each process holds only
    its half of every split kernel (and the whole batch)."""
    import jax
    from jax.sharding import AxisType

    n = jax.device_count()
    return jax.make_mesh(
        (2, n // 2), ("model", "data"), axis_types=(AxisType.Auto,) * 2
    )


def _pair(mesh=None):
    model, optimizer, _ = _make(mesh)
    return model, optimizer


def _abstract(mesh):
    import nnxlike as nnx

    return nnx.get_abstract_model(_pair, mesh, rules=RULES)


def _train_steps(model, optimizer, steps: int, mesh) -> None:
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    x, y = _data(2)
    if mesh is None:
        gx, gy = jnp.asarray(x), jnp.asarray(y)
    else:
        batch = NamedSharding(mesh, P("data"))
        gx, gy = _global(batch, x), _global(batch, y)
    step = _step_fn()
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
    for _ in range(steps):
        step(model, optimizer, metrics, gx, gy)


def _orbax_dir():
    from pathlib import Path

    return Path(os.environ["NNXLIKE_MP_DIR"]) / "orbax"


def _global_values(tree) -> dict:
    """Every array of ``tree`` gathered whole onto this process, by path (a
    collective: every process calls it)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    import nnxlike as nnx

    out = {}
    for path, vs in nnx.state(tree).flat_dict().items():
        arr = vs.value
        if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
            arr = jax.random.key_data(arr)
        out[".".join(map(str, path))] = np.asarray(
            multihost_utils.process_allgather(arr, tiled=True)
        )
    return out


def _compare(got: dict, want: dict) -> dict:
    """Which arrays differ in any bit, and the largest difference."""
    import numpy as np

    assert got.keys() == want.keys(), (got.keys(), want.keys())
    return {
        "compared": len(want),
        "differ": sorted(k for k in want if got[k].tobytes() != want[k].tobytes()),
        "max_abs_diff": max(
            float(np.max(np.abs(got[k].astype(np.float64) - want[k]), initial=0.0))
            for k in want
        ),
    }


def save() -> dict:
    import jax
    import orbax.checkpoint as ocp

    import nnxlike as nnx

    mesh = _tp_mesh()
    model, optimizer = _pair(mesh)
    facts: dict = {
        "kernel_columns": sorted(
            {
                (s.index[1].start or 0, s.index[1].stop)
                for s in model.up.kernel.value.addressable_shards
            }
        )
    }
    # nnx.checkpoint writes single-host files; it says so and points to orbax.
    for name, call in {
        "save_error": lambda: nnx.checkpoint.save(
            _orbax_dir().parent / f"x{jax.process_index()}.nnx", model
        ),
        "manager_error": lambda: nnx.checkpoint.CheckpointManager(
            _orbax_dir().parent / f"m{jax.process_index()}"
        ).save(0, (model, optimizer)),
    }.items():
        try:
            call()
        except nnx.checkpoint.CheckpointError as e:
            facts[name] = str(e)
    with ocp.CheckpointManager(_orbax_dir()) as manager:
        for done in (10, 20):
            _train_steps(model, optimizer, 10, mesh)
            manager.save(
                done, args=ocp.args.StandardSave(nnx.state((model, optimizer)))
            )
        manager.wait_until_finished()
        facts["steps"] = manager.all_steps()
        # Restore step 10 onto the same processes and train 10 more steps.
        graphdef, abstract = _abstract(mesh)
        restored = manager.restore(10, args=ocp.args.StandardRestore(abstract))
    model2, optimizer2 = nnx.merge(graphdef, restored)
    kernel = model2.up.kernel.value
    facts["restored_sharding_same"] = kernel.sharding.is_equivalent_to(
        model.up.kernel.value.sharding, kernel.ndim
    )
    _train_steps(model2, optimizer2, 10, mesh)
    want = _global_values((model, optimizer))
    facts["continued"] = _compare(_global_values((model2, optimizer2)), want)
    return facts


def kill() -> dict:
    """Resume from the latest step, train, start saving step 30; process 1 dies."""
    import signal

    import jax
    import orbax.checkpoint as ocp

    import nnxlike as nnx

    mesh = _tp_mesh()
    graphdef, abstract = _abstract(mesh)
    manager = ocp.CheckpointManager(_orbax_dir())
    latest = manager.latest_step()
    restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    model, optimizer = nnx.merge(graphdef, restored)
    _train_steps(model, optimizer, 10, mesh)
    manager.save(latest + 10, args=ocp.args.StandardSave(nnx.state((model, optimizer))))
    if jax.process_index() == 1:
        print("killing process 1 mid-save", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    manager.wait_until_finished()  # waits for a process that is gone
    return {"latest": latest}


def restore() -> dict:
    """One process: what the killed save left, and restores onto new meshes."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import AxisType, Mesh

    import nnxlike as nnx

    facts: dict = {"listing": sorted(p.name for p in _orbax_dir().iterdir())}
    one = Mesh(
        np.array(jax.devices()[:1]).reshape(1, 1),
        ("model", "data"),
        axis_types=(AxisType.Auto,) * 2,
    )
    with ocp.CheckpointManager(_orbax_dir()) as manager:
        facts["steps"] = manager.all_steps()
        facts["latest"] = manager.latest_step()
        for name, mesh in {"same_shape": _tp_mesh(), "one_device": one}.items():
            graphdef, abstract = _abstract(mesh)
            model, optimizer = nnx.merge(
                graphdef, manager.restore(10, args=ocp.args.StandardRestore(abstract))
            )
            facts[name + "_devices"] = len(model.up.kernel.value.sharding.device_set)
            _train_steps(model, optimizer, 10, mesh)
            want = nnx.merge(
                graphdef, manager.restore(20, args=ocp.args.StandardRestore(abstract))
            )
            facts[name] = _compare(
                _global_values((model, optimizer)), _global_values(want)
            )
    return facts


CASES = {"train": train, "save": save, "kill": kill, "restore": restore}

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], CASES))
