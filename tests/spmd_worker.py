"""Multi-device checks for ``tests/test_spmd.py``, run in a subprocess.

Usage: ``python tests/spmd_worker.py CASE [CASE ...]`` with cases ``dp``
(data-parallel), ``tp`` (tensor-parallel) and ``placement``. Each case prints one
line ``SPMD {json}`` of measured facts (shardings, shard shapes, differences from
single-device training); the test asserts on them. ``main`` sets up 8 simulated
CPU devices before it imports JAX, so importing this module (as pytest's
``--doctest-modules`` does) has no side effects.
"""

from __future__ import annotations

import sys

from multidevice import DEVICES, worker_main

STEPS = 5


def _models():
    """The tiny MLPs (classes are built after JAX is imported)."""
    import jax

    import nnxlike as nnx

    class PlainMLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    class ShardedMLP(PlainMLP):
        """Megatron-style: l1 split by columns, l2 by rows over "model".

        l1 is annotated with mesh axis names through ``with_partitioning``; l2
        with logical names through ``kernel_metadata`` (mapped by rules).
        """

        def __init__(self, rngs):
            init = nnx.initializers.lecun_normal()
            zeros = nnx.initializers.zeros
            self.l1 = nnx.Linear(
                4,
                16,
                kernel_init=nnx.with_partitioning(init, (None, "model")),
                bias_init=nnx.with_partitioning(zeros, ("model",)),
                rngs=rngs,
            )
            self.l2 = nnx.Linear(
                16,
                2,
                kernel_metadata={"sharding_names": ("hidden", "out")},
                bias_metadata={"sharding_names": ("out",)},
                rngs=rngs,
            )

    return PlainMLP, ShardedMLP


RULES = [("hidden", "model"), ("out", None)]


def _data():
    import jax

    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = jax.random.normal(jax.random.key(2), (16, 2))
    return x, y


def _train(model, optimizer, x, y, **jit_kwargs) -> list:
    import jax.numpy as jnp

    import nnxlike as nnx

    def loss_fn(m, x, y):
        return jnp.mean((m(x) - y) ** 2)

    def step(m, o, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
        o.update(m, grads)
        return loss

    step = nnx.jit(step, **jit_kwargs)
    return [float(step(model, optimizer, x, y)) for _ in range(STEPS)]


_REFERENCE: list = []


def _reference():
    """Single-device training of the unannotated MLP (shared by dp and tp: the
    annotated one without a mesh starts from the same numbers)."""
    import optax

    import nnxlike as nnx

    if not _REFERENCE:
        PlainMLP, _ = _models()
        ref = PlainMLP(nnx.Rngs(0))
        ref_opt = nnx.Optimizer(ref, optax.adam(1e-2))
        losses = _train(ref, ref_opt, *_data())
        _REFERENCE.append((ref, ref_opt, losses))
    return _REFERENCE[0]


def _diff(a, b) -> dict:
    """Largest differences between the arrays of two States (same paths)."""
    import numpy as np

    fa, fb = a.flat_dict(), b.flat_dict()
    assert fa.keys() == fb.keys()
    abs_diff, close = 0.0, True
    for k in fa:
        x, y = np.asarray(fa[k].value), np.asarray(fb[k].value)
        abs_diff = max(abs_diff, float(np.max(np.abs(x - y))))
        close = close and bool(np.allclose(x, y, rtol=1e-5, atol=1e-6))
    return {"max_abs_diff": abs_diff, "allclose": close}


def _layout(state) -> dict:
    """Per path: spec (padded to the rank), number of shards, shard shapes."""
    out = {}
    for path, vs in state.flat_dict().items():
        x = vs.value
        spec = list(getattr(x.sharding, "spec", ()))
        spec += [None] * (x.ndim - len(spec))
        out["/".join(map(str, path))] = {
            "spec": [list(s) if isinstance(s, tuple) else s for s in spec],
            "n_shards": len(x.addressable_shards),
            "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
            "devices": len(x.sharding.device_set),
        }
    return out


def case_dp() -> dict:
    """8-way data parallel: batch over "data", params replicated via in_shardings."""
    import jax
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    PlainMLP, _ = _models()
    x, y = _data()
    ref, ref_opt, ref_losses = _reference()

    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
    model = PlainMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    batch = NamedSharding(mesh, P("data"))
    in_shardings = (
        nnx.get_named_sharding(model, mesh),
        nnx.get_named_sharding(optimizer, mesh),
        batch,
        batch,
    )
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    losses = _train(model, optimizer, xs, ys, in_shardings=in_shardings)
    replicated = NamedSharding(mesh, P())
    return {
        "losses": losses,
        "ref_losses": ref_losses,
        "params": _diff(nnx.state(model), nnx.state(ref)),
        "opt_state": _diff(nnx.state(optimizer), nnx.state(ref_opt)),
        "param_layout": _layout(nnx.state(model, nnx.Param)),
        "opt_layout": _layout(nnx.state(optimizer, nnx.OptState)),
        "all_replicated": all(
            vs.value.sharding.is_equivalent_to(replicated, vs.value.ndim)
            for s in (nnx.state(model), nnx.state(optimizer))
            for vs in s.flat_dict().values()
        ),
        "x_layout": {
            "n_shards": len(xs.addressable_shards),
            "shard_shapes": sorted({s.data.shape for s in xs.addressable_shards}),
        },
    }


def case_tp() -> dict:
    """2x4 mesh: batch over "data", Megatron-style MLP over "model"."""
    import jax
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    PlainMLP, ShardedMLP = _models()
    x, y = _data()
    ref, ref_opt, ref_losses = _reference()
    # No mesh: the annotations are recorded, not applied.
    unplaced = ShardedMLP(nnx.Rngs(0))
    ref_layout = _layout(nnx.state(unplaced))
    same_init = _diff(nnx.state(unplaced), nnx.state(PlainMLP(nnx.Rngs(0))))

    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
        model = ShardedMLP(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(1e-2))
        expected = nnx.get_named_sharding(model, mesh)
        expected_opt = nnx.get_named_sharding(optimizer, mesh)
    created = _layout(nnx.state(model))
    created_opt = _layout(nnx.state(optimizer, nnx.OptState))
    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    losses = _train(model, optimizer, xs, ys)

    def equivalent(state, shardings) -> bool:
        want = shardings.flat_dict()
        return all(
            vs.value.sharding.is_equivalent_to(want[p].value, vs.value.ndim)
            for p, vs in state.flat_dict().items()
        )

    return {
        "losses": losses,
        "ref_losses": ref_losses,
        "ref_layout": ref_layout,
        "same_init": same_init,
        "params": _diff(nnx.state(model), nnx.state(ref)),
        "opt_state": _diff(nnx.state(optimizer), nnx.state(ref_opt)),
        "created_layout": created,
        "created_opt_layout": created_opt,
        "param_layout": _layout(nnx.state(model)),
        "opt_layout": _layout(nnx.state(optimizer, nnx.OptState)),
        "params_as_annotated": equivalent(nnx.state(model), expected),
        "opt_as_annotated": equivalent(nnx.state(optimizer), expected_opt),
    }


def case_placement() -> dict:
    """Creation inside nnx.jit, Explicit axes, mesh=, optimizer after device_put,
    abstract models."""
    import jax
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxlike as nnx

    PlainMLP, ShardedMLP = _models()
    out: dict = {}
    auto = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    explicit = jax.make_mesh(
        (2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2
    )

    # Created inside a trace: with_sharding_constraint (Auto) or reshard (Explicit).
    for name, mesh in (("auto", auto), ("explicit", explicit)):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
            eager = ShardedMLP(nnx.Rngs(0))
            jitted = nnx.jit(lambda: ShardedMLP(nnx.Rngs(0)))()
        out[f"eager_{name}"] = _layout(nnx.state(eager))
        out[f"jit_{name}"] = _layout(nnx.state(jitted))

    # An explicit mesh= in with_partitioning works without jax.set_mesh.
    init = nnx.with_partitioning(nnx.initializers.ones, ("model", None), mesh=auto)
    layer = nnx.Linear(8, 3, kernel_init=init, rngs=nnx.Rngs(0))
    out["mesh_kwarg"] = _layout(nnx.state(layer, nnx.Param))

    # An unannotated model sharded by hand: the optimizer's moments follow it.
    model = PlainMLP(nnx.Rngs(0))
    by_hand = jax.tree.map(
        lambda a: NamedSharding(auto, P("model", None) if a.ndim == 2 else P()),
        nnx.state(model),
    )
    nnx.update(model, jax.device_put(nnx.state(model), by_hand))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    out["by_hand_params"] = _layout(nnx.state(model))
    out["by_hand_opt"] = _layout(nnx.state(optimizer, nnx.OptState))

    # Abstract model: shardings without memory, then materialize into them.
    with nnx.logical_axis_rules(RULES):
        graphdef, abstract = nnx.get_abstract_model(
            lambda: ShardedMLP(nnx.Rngs(0)), auto
        )
    out["abstract"] = {
        "/".join(map(str, p)): [
            type(vs.value).__name__,
            list(vs.value.shape),
            str(vs.value.sharding.spec),
        ]
        for p, vs in abstract.flat_dict().items()
    }
    concrete = jax.device_put(
        nnx.state(ShardedMLP(nnx.Rngs(0))),
        jax.tree.map(lambda a: a.sharding, abstract),
    )
    restored = nnx.merge(graphdef, concrete)
    out["restored"] = _layout(nnx.state(restored))
    return out


CASES = {"dp": case_dp, "tp": case_tp, "placement": case_placement}


def main(argv: list[str]) -> int:
    return worker_main(argv, CASES, "SPMD")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
