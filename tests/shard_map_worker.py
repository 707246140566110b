"""Multi-device checks for ``tests/test_shard_map.py``, run in a subprocess.

Usage: ``python tests/shard_map_worker.py CASE [CASE ...]`` with cases ``dp``
(data-parallel training with cross-device BatchNorm) and ``writeback``. Each case
prints one line ``SHMAP {json}`` of measured facts; the test asserts on them.
``main`` sets up 8 simulated CPU devices before it imports JAX, so importing this
module (as pytest's ``--doctest-modules`` does) has no side effects.
"""

from __future__ import annotations

import sys

from multidevice import DEVICES, worker_main

STEPS = 3


def _mesh():
    import jax
    from jax.sharding import AxisType

    return jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))


def _diff(a, b) -> dict:
    import numpy as np

    fa, fb = a.flat_dict(), b.flat_dict()
    assert fa.keys() == fb.keys(), (fa.keys(), fb.keys())
    worst, close = 0.0, True
    for k in fa:
        x, y = np.asarray(fa[k].value), np.asarray(fb[k].value)
        worst = max(worst, float(np.max(np.abs(x - y))))
        close = close and bool(np.allclose(x, y, rtol=1e-5, atol=1e-6))
    return {"max_abs_diff": worst, "allclose": close}


def case_dp() -> dict:
    """8-way data parallel under nnx.shard_map vs single-device full batch."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    class Net(nnx.Module):
        def __init__(self, axis_name, rngs):
            # No bias before BatchNorm: its gradient is only round-off, which
            # Adam would blow up to +-lr, differently on one and eight devices.
            self.l1 = nnx.Linear(4, 16, use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(16, axis_name=axis_name, rngs=rngs)
            self.l2 = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.bn(self.l1(x))))

    x = jax.random.normal(jax.random.key(1), (16, 4)) * 3.0 + 1.0
    y = jax.random.normal(jax.random.key(2), (16, 2))

    def loss_fn(m, x, y):
        return jnp.mean((m(x) - y) ** 2)

    # Reference: one device, the full batch.
    ref = Net(None, nnx.Rngs(0))
    ref_opt = nnx.Optimizer(ref, optax.adam(1e-2))

    @nnx.jit
    def ref_step(m, o, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
        o.update(m, grads)
        return loss

    ref_losses = [float(ref_step(ref, ref_opt, x, y)) for _ in range(STEPS)]

    out: dict = {"ref_losses": ref_losses}
    mesh = _mesh()
    # The last run is a control: BatchNorm without axis_name normalizes each
    # shard with its own statistics, which must not match the reference.
    for key, axis_name, check_vma in (
        ("vma_False", "data", False),
        ("vma_True", "data", True),
        ("local_bn", None, False),
    ):
        model = Net(axis_name, nnx.Rngs(0))
        opt = nnx.Optimizer(model, optax.adam(1e-2))

        def step(m, o, x, y, check_vma=check_vma):
            if check_vma:
                # Params are invariant: the transpose of their implicit pvary
                # psums the gradient, so differentiate the global mean loss.
                def global_loss(m, x, y):
                    return jax.lax.pmean(loss_fn(m, x, y), "data")

                loss, grads = nnx.value_and_grad(global_loss)(m, x, y)
            else:
                loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
                grads = jax.lax.pmean(grads, "data")
                loss = jax.lax.pmean(loss, "data")
            o.update(m, grads)
            return loss

        sharded = nnx.shard_map(
            step,
            mesh=mesh,
            in_specs=(
                nnx.StateAxes({nnx.BatchStat: P(), ...: P()}),
                P(),
                P("data"),
                P("data"),
            ),
            out_specs=P(),
            check_vma=check_vma,
        )
        train = nnx.jit(sharded)
        losses = [float(train(model, opt, x, y)) for _ in range(STEPS)]
        out[key] = {
            "losses": losses,
            "params": _diff(nnx.state(model, nnx.Param), nnx.state(ref, nnx.Param)),
            "batch_stats": _diff(
                nnx.state(model, nnx.BatchStat), nnx.state(ref, nnx.BatchStat)
            ),
            "opt_state": _diff(nnx.state(opt), nnx.state(ref_opt)),
            "stats_moved": bool(jnp.any(model.bn.mean.value != 0)),
            "step": int(opt.step.value),
        }
    return out


def case_writeback() -> dict:
    """Counters, per-device state, new attributes and returned objects."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    mesh = _mesh()

    class Counter(nnx.Module):
        def __init__(self):
            self.count = nnx.Variable(jnp.zeros((), jnp.int32))
            self.per_device = nnx.Variable(jnp.zeros((DEVICES,)))

    def tick(c, x):
        c.count.value += 1
        c.per_device.value += x.sum() + jax.lax.axis_index("data")
        return x * 2

    counter = Counter()
    spec = nnx.StateAxes({nnx.PathContains("per_device"): P("data"), ...: P()})
    eager = nnx.shard_map(
        tick, mesh=mesh, in_specs=(spec, P("data")), out_specs=P("data")
    )
    x = jnp.arange(DEVICES, dtype=jnp.float32)
    y = eager(counter, x)  # eager shard_map
    jitted = nnx.jit(eager)
    jitted(counter, x)
    jitted(counter, x)
    out = {
        "count": int(counter.count.value),
        "per_device": np.asarray(counter.per_device.value).tolist(),
        "y": np.asarray(y).tolist(),
    }

    # Structure changes inside: a new attribute on an argument and a new object
    # returned (the second trace takes the learned out specs).
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

    def grow(m, x):
        m.seen = nnx.BatchStat(jax.lax.psum(x.sum(), "data"))
        return nnx.Linear(3, 1, rngs=nnx.Rngs(1)), m(x)

    grown = nnx.shard_map(
        grow, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P("data"))
    )
    new, y2 = grown(model, jnp.ones((DEVICES, 2)))
    out["seen"] = float(model.seen.value)
    out["new_kernel_shape"] = list(new.kernel.shape)
    out["new_kernel_equal"] = bool(
        np.allclose(new.kernel.value, nnx.Linear(3, 1, rngs=nnx.Rngs(1)).kernel.value)
    )
    out["y2_shape"] = list(y2.shape)
    # Returning an argument gives back the caller's object.
    same = nnx.shard_map(
        lambda m: m, mesh=mesh, in_specs=(P(),), out_specs=P(), check_vma=False
    )(model)
    out["returned_is_caller"] = same is model
    return out


CASES = {"dp": case_dp, "writeback": case_writeback}


def main(argv: list[str]) -> int:
    return worker_main(argv, CASES, "SHMAP")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
