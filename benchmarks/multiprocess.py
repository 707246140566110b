"""Steps per second of one nnx.jit train step on 1, 2 and 4 processes (localhost).

Usage: ``python benchmarks/multiprocess.py [--steps 200]``. The same global batch
(256 rows) and MLP (64 -> 256 -> 10, Adam) are trained data-parallel over every
device of every process; each process has 2 CPU devices and joins the others
through ``jax.distributed.initialize`` with gloo collectives on 127.0.0.1 (the
harness of ``tests/multiprocess.py``). After warm-up steps (compilation), the
timed steps run back to back; process 0 reports steps per second. On one
machine extra processes add only communication: the figure is the cost of the
multi-process runtime, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from multiprocess import launch, worker_main  # noqa: E402

BATCH, DIN, DHIDDEN, DOUT = 256, 64, 256, 10
WARMUP = 5


def bench() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    steps = int(os.environ.get("NNXLIKE_BENCH_STEPS", "200"))
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    batch = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, DIN)).astype(np.float32)
    y = rng.integers(0, DOUT, size=(BATCH,)).astype(np.int32)
    rows = BATCH // jax.process_count()
    start = jax.process_index() * rows
    gx = jax.make_array_from_process_local_data(batch, x[start : start + rows])
    gy = jax.make_array_from_process_local_data(batch, y[start : start + rows])

    model = nnx.Sequential(
        nnx.Linear(DIN, DHIDDEN, rngs=nnx.Rngs(0)),
        jax.nn.relu,
        nnx.Linear(DHIDDEN, DOUT, rngs=nnx.Rngs(1)),
    )
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(WARMUP):
        loss = jax.block_until_ready(step(model, optimizer, gx, gy))
    t0 = time.perf_counter()
    for _ in range(steps):
        # Wait for each step, as a loop that logs the loss does: with many steps
        # in flight, the CPU gloo collectives of the processes can deadlock.
        loss = jax.block_until_ready(step(model, optimizer, gx, gy))
    seconds = time.perf_counter() - t0
    return {
        "devices": jax.device_count(),
        "steps": steps,
        "steps_per_s": steps / seconds,
        "loss": float(jnp.asarray(loss.addressable_data(0))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    env = {"NNXLIKE_BENCH_STEPS": str(args.steps)}
    print(f"global batch {BATCH}, MLP {DIN}-{DHIDDEN}-{DOUT}, {args.steps} steps")
    for n in args.processes:
        results = launch(Path(__file__), ["bench"], n, env=env, timeout=300)
        f = results[0].facts["bench"]
        print(
            f"{n} process(es) x 2 CPU devices ({f['devices']} devices): "
            f"{f['steps_per_s']:.0f} steps/s (loss {f['loss']:.4f})",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[4] == "bench":  # a process launched above
        sys.exit(worker_main(sys.argv[1:], {"bench": bench}))
    main()
