"""Sharding annotations, logical rules, placement under a mesh (nnxlike.spmd).

This process has one CPU device: annotation, rules, errors and placement on a
1-device mesh run here (an ``AbstractMesh`` stands in for bigger meshes where
only names and sizes matter). Training on 8 simulated devices runs in a
subprocess (``tests/spmd_worker.py``), compared with single-device training.
"""

from __future__ import annotations

import os
from pathlib import Path

import background
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.layout import Format, Layout
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from multidevice import run_worker

import nnxlike as nnx

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "spmd_worker.py"
RULES = [("batch", "data"), ("hidden", "model"), ("embed", None)]


def _mesh1(*names: str, auto: bool = False) -> jax.sharding.Mesh:
    """A 1-device mesh; jax.make_mesh's default axis type is Explicit."""
    types = (AxisType.Auto if auto else AxisType.Explicit,) * len(names)
    return jax.make_mesh((1,) * len(names), names, axis_types=types)


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.l1 = nnx.Linear(
            4,
            8,
            kernel_init=nnx.with_partitioning(init, ("embed", "hidden")),
            rngs=rngs,
        )
        self.l2 = nnx.Linear(
            8, 2, kernel_metadata={"sharding_names": ("hidden", None)}, rngs=rngs
        )
        self.count = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


# -- annotations -------------------------------------------------------------------


def test_with_partitioning_annotates_the_param():
    init = nnx.with_partitioning(nnx.initializers.ones, ["data", None], note="n")
    boxed = init(jax.random.key(0), (2, 3), jnp.float32)
    assert isinstance(boxed, nnx.VariableMetadata)
    assert boxed.metadata == {"note": "n", "sharding_names": ("data", None)}
    layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    assert layer.kernel.sharding_names == ("data", None)  # a tuple: hashable
    assert layer.kernel.note == "n"
    np.testing.assert_array_equal(layer.kernel.value, np.ones((2, 3)))
    assert "sharding_names" not in layer.bias.get_metadata()
    # Keywords given to the Variable win over the wrapped metadata.
    p = nnx.Param(boxed, note="mine")
    assert p.note == "mine" and p.sharding_names == ("data", None)


def test_variable_annotation_is_normalized_and_survives_split_merge():
    v = nnx.Param(jnp.ones((2, 3)), sharding_names=["a", ("b", "c")])
    assert v.sharding_names == ("a", ("b", "c"))
    w = nnx.Param(jnp.ones((2, 3)), sharding_names=("a", ["b", "c"]))
    assert w.sharding_names == ("a", ("b", "c"))
    hash(nnx.graphdef(w))
    model = MLP(rngs=nnx.Rngs(0))
    copy = nnx.merge(*nnx.split(model))
    assert copy.l1.kernel.sharding_names == ("embed", "hidden")
    assert copy.l2.kernel.sharding_names == ("hidden", None)
    with pytest.raises(TypeError, match=r"sharding_names=\(None, 'model'\)"):
        nnx.Param(jnp.ones(2), sharding_names="model")
    with pytest.raises(TypeError, match="each entry of sharding_names"):
        nnx.with_partitioning(nnx.initializers.ones, (1, None))


@pytest.mark.parametrize(
    "make, names",
    [
        (
            lambda md: nnx.LinearGeneral(
                (2, 3), 4, axis=(-2, -1), kernel_metadata=md, rngs=nnx.Rngs(0)
            ),
            (None, None, "model"),
        ),
        (
            lambda md: nnx.Einsum(
                "ab,bc->ac", (3, 4), (4,), kernel_metadata=md, rngs=nnx.Rngs(0)
            ),
            (None, "model"),
        ),
        (
            lambda md: nnx.Conv(3, 4, (3, 3), kernel_metadata=md, rngs=nnx.Rngs(0)),
            (None, None, None, "model"),
        ),
        (
            lambda md: nnx.ConvTranspose(
                3, 4, (3,), kernel_metadata=md, rngs=nnx.Rngs(0)
            ),
            (None, None, "model"),
        ),
    ],
    ids=["LinearGeneral", "Einsum", "Conv", "ConvTranspose"],
)
def test_layers_take_kernel_and_bias_metadata(make, names):
    layer = make({"sharding_names": names})
    assert layer.kernel.sharding_names == names
    assert layer.kernel.ndim == len(names)
    assert "sharding_names" not in layer.bias.get_metadata()


def test_embed_and_bias_metadata_and_linear_general_with_partitioning():
    emb = nnx.Embed(
        10, 4, embedding_metadata={"sharding_names": ("vocab", None)}, rngs=nnx.Rngs(0)
    )
    assert emb.embedding.sharding_names == ("vocab", None)
    lin = nnx.Linear(
        2, 4, bias_metadata={"sharding_names": ("model",)}, rngs=nnx.Rngs(0)
    )
    assert lin.bias.sharding_names == ("model",)
    # LinearGeneral reshapes the initializer's 2-D result: the metadata survives.
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "m"))
    lg = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), kernel_init=init, rngs=nnx.Rngs(0))
    assert lg.kernel.shape == (2, 3, 4) and lg.kernel.sharding_names == (
        None,
        None,
        "m",
    )


# -- partition specs and rules --------------------------------------------------------


def test_get_partition_spec_of_a_model_state_and_pytrees():
    model = MLP(rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(model, rules=RULES)
    assert isinstance(specs, nnx.State)
    assert specs.l1.kernel.value == P(None, "model")
    assert specs.l1.kernel.type is nnx.Param
    assert specs.l1.kernel.sharding_names == ("embed", "hidden")  # metadata kept
    assert specs.l1.bias.value == P()
    assert specs.l2.kernel.value == P("model", None)
    assert specs.count.value == P()
    # Without rules, names pass through unchecked (no mesh to check against).
    assert nnx.get_partition_spec(nnx.state(model)).l1.kernel.value == P(
        "embed", "hidden"
    )
    # Plain pytrees: Variables and raw arrays become specs in place.
    tree = {"w": model.l1.kernel, "x": jnp.ones(3)}
    assert nnx.get_partition_spec(tree, RULES) == {"w": P(None, "model"), "x": P()}
    assert nnx.get_partition_spec(model.l2.kernel, RULES) == P("model", None)


def test_logical_axis_rules_context_nests_and_restores():
    w = nnx.Param(jnp.ones((4, 8)), sharding_names=("batch", "hidden"))
    assert nnx.get_logical_axis_rules() == ()
    with nnx.logical_axis_rules(RULES) as rules:
        assert rules == tuple(RULES)
        assert nnx.get_partition_spec(w) == P("data", "model")
        with nnx.logical_axis_rules([("hidden", None)]):
            assert nnx.get_partition_spec(w) == P("batch", None)
        assert nnx.get_partition_spec(w) == P("data", "model")
        # An explicit rules= argument wins over the context.
        assert nnx.get_partition_spec(w, rules=[("batch", None)]) == P(None, "hidden")
    assert nnx.get_logical_axis_rules() == ()


def test_rules_precedence_first_unused_axis_wins():
    rules = [("a", "model"), ("b", "model"), ("b", "data"), ("c", ("data", "model"))]
    w = nnx.Param(jnp.ones((4, 8)), sharding_names=("a", "b"))
    assert nnx.get_partition_spec(w, rules) == P("model", "data")
    # Every candidate already used: that axis is not sharded.
    assert nnx.get_partition_spec(w, [("a", "model"), ("b", "model")]) == P(
        "model", None
    )
    # A rule may map to several mesh axes; a tuple entry combines names.
    w3 = nnx.Param(jnp.ones((4, 8)), sharding_names=("c", None))
    assert nnx.get_partition_spec(w3, rules) == P(("data", "model"), None)
    with pytest.raises(TypeError, match=r"pair \(logical_name, mesh_axes\)"):
        nnx.get_partition_spec(w, [("a", 1)])


def test_get_named_sharding_checks_names_against_the_mesh():
    mesh = _mesh1("data", "model")
    model = MLP(rngs=nnx.Rngs(0))
    shardings = nnx.get_named_sharding(model, mesh, rules=RULES)
    assert shardings.l1.kernel.value == NamedSharding(mesh, P(None, "model"))
    assert shardings.count.value == NamedSharding(mesh, P())
    with pytest.raises(nnx.ShardingError) as err:
        nnx.get_named_sharding(model, mesh)  # no rules: 'embed' is not a mesh axis
    msg = str(err.value)
    assert "Param at path 'l1.kernel'" in msg
    assert "sharding name 'embed' (axis 0 of sharding_names=('embed', 'hidden'))" in msg
    assert "mesh ('data', 'model')" in msg and "(none set)" in msg
    assert "nnx.logical_axis_rules([('embed', 'model')])" in msg


def test_error_for_a_rule_to_a_missing_mesh_axis():
    w = {"layers": [nnx.Param(jnp.ones((4, 8)), sharding_names=("hidden", None))]}
    with pytest.raises(nnx.ShardingError) as err:
        nnx.get_named_sharding(w, _mesh1("data"), rules=[("hidden", "model")])
    msg = str(err.value)
    assert "Param at path 'layers[0]'" in msg
    assert "rule ('hidden', 'model') maps axis 0 to mesh axis 'model'" in msg
    assert "the mesh has only the axes ('data',)" in msg


def test_error_for_a_spec_of_the_wrong_rank_names_path_and_fix():
    model = MLP(rngs=nnx.Rngs(0))
    model.l2.bias.set_metadata(sharding_names=("hidden", None))
    with pytest.raises(nnx.ShardingError) as err:
        nnx.get_partition_spec(model, RULES)
    msg = str(err.value)
    assert "Param at path 'l2.bias'" in msg
    assert "sharding_names=('hidden', None) has 2 entries" in msg
    assert "shape (2,) (rank 1)" in msg
    assert "`sharding_names=('hidden',)`" in msg


def test_errors_for_indivisible_sizes_and_reused_mesh_axes():
    mesh = AbstractMesh((2, 4), ("data", "model"))
    w = nnx.Param(jnp.ones((4, 6)), sharding_names=("data", "model"))
    with pytest.raises(nnx.ShardingError, match=r"axis 1 of shape \(4, 6\) has size 6"):
        nnx.get_named_sharding({"w": w}, mesh)
    ok = nnx.get_named_sharding({"w": w}, mesh, rules=[("model", None)])
    assert ok["w"].spec == P("data", None)
    twice = nnx.Param(jnp.ones((4, 4)), sharding_names=("model", "model"))
    with pytest.raises(nnx.ShardingError, match="mesh axis 'model' shards two axes"):
        nnx.get_partition_spec(twice)


# -- placement under a mesh (1 device here; 8 in the subprocess) ------------------


def test_created_under_a_mesh_is_placed_outside_and_inside_jit():
    mesh = _mesh1("data", "model")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
        eager = MLP(rngs=nnx.Rngs(0))
        jitted = nnx.jit(lambda: MLP(rngs=nnx.Rngs(0)))()
    for model in (eager, jitted):
        kernel = model.l1.kernel.value
        assert isinstance(kernel.sharding, NamedSharding)
        assert kernel.sharding.spec == P(None, "model")
        assert model.l2.kernel.value.sharding.spec == P("model", None)
    np.testing.assert_array_equal(eager.l1.kernel.value, jitted.l1.kernel.value)
    # Without a mesh nothing is placed; eager_sharding=False opts out.
    plain = MLP(rngs=nnx.Rngs(0))
    assert not isinstance(plain.l1.kernel.value.sharding, NamedSharding)
    with jax.set_mesh(mesh):
        v = nnx.Param(jnp.ones(2), sharding_names=("data",), eager_sharding=False)
    assert "data" not in tuple(getattr(v.value.sharding, "spec", ()))


def test_mesh_given_to_with_partitioning_places_without_a_context():
    mesh = _mesh1("model")
    init = nnx.with_partitioning(nnx.initializers.ones, (None, "model"), mesh=mesh)
    layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    assert layer.kernel.mesh is mesh
    assert layer.kernel.value.sharding == NamedSharding(mesh, P(None, "model"))


def test_creation_errors_under_a_mesh():
    with jax.set_mesh(_mesh1("data")):
        with pytest.raises(nnx.ShardingError) as err:
            nnx.Param(jnp.ones((3,)), sharding_names=("data", None))
        assert "creating Param of shape (3,)" in str(err.value)
        assert "`sharding_names=('data',)`" in str(err.value)
        with pytest.raises(nnx.ShardingError, match="sharding name 'hidden'"):
            nnx.Linear(
                4,
                8,
                kernel_metadata={"sharding_names": (None, "hidden")},
                rngs=nnx.Rngs(0),
            )


def test_optimizer_state_is_placed_like_the_params():
    mesh = _mesh1("data", "model")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
        model = MLP(rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    mu = optimizer.opt_state[0].mu["l1"]["kernel"]
    assert mu.sharding_names == ("embed", "hidden")
    assert mu.value.sharding.spec == P(None, "model")
    specs = nnx.get_partition_spec(optimizer, RULES)
    assert specs["opt_state"][0]["nu"]["l2"]["kernel"].value == P("model", None)
    assert specs["opt_state"][0]["count"].value == P()


@pytest.mark.parametrize("auto", [True, False], ids=["Auto", "Explicit"])
def test_jit_in_shardings_from_get_named_sharding(auto):
    mesh = _mesh1("data", "model", auto=auto)
    # Explicit axes refuse a matmul over a sharded contraction (l2's "hidden"
    # rows) without an out_sharding, so there only l1's columns are sharded.
    rules = RULES if auto else [("hidden", None), ("out", "model"), *RULES]
    model = MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    batch = NamedSharding(mesh, P("data"))

    @nnx.jit(
        in_shardings=(
            nnx.get_named_sharding(model, mesh, rules),
            nnx.get_named_sharding(optimizer, mesh, rules),
            batch,
        ),
        out_shardings=NamedSharding(mesh, P()),
    )
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    loss = step(model, optimizer, jnp.ones((4, 4)))
    assert loss.sharding == NamedSharding(mesh, P())
    # On one device XLA may report a size-1 axis as replicated: compare layouts
    # (the 8-device worker checks the specs themselves).
    want = NamedSharding(mesh, P(None, "model") if auto else P(None, None))
    for x in (model.l1.kernel.value, optimizer.opt_state[0].mu["l1"]["kernel"].value):
        assert x.sharding.mesh == mesh and x.sharding.is_equivalent_to(want, 2)
    assert int(optimizer.step.value) == 1


def test_get_abstract_model_allocates_nothing():
    mesh = _mesh1("data", "model")
    graphdef, abstract = nnx.get_abstract_model(
        lambda: MLP(rngs=nnx.Rngs(0)), mesh, rules=RULES
    )
    kernel = abstract.l1.kernel.value
    assert isinstance(kernel, jax.ShapeDtypeStruct)
    assert kernel.shape == (4, 8)
    assert kernel.sharding == NamedSharding(mesh, P(None, "model"))
    assert abstract.count.value.sharding == NamedSharding(mesh, P())
    assert graphdef == nnx.graphdef(MLP(rngs=nnx.Rngs(0)))
    assert nnx.get_logical_axis_rules() == ()


def test_no_sharding_work_for_unannotated_variables_or_merge(monkeypatch):
    model = MLP(rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def fail(*args, **kwargs):
        raise AssertionError("shard_value called")

    # spmd registers its placement on the values layer; replace what it registered
    monkeypatch.setattr(nnx._variables, "_PLACEMENT", [fail])
    nnx.Param(jnp.ones(3))  # no sharding_names: never reaches the hook
    nnx.Param(jnp.ones(3), note="x")
    copy = nnx.merge(graphdef, state)  # merge rebuilds without __init__
    assert copy.l1.kernel.sharding_names == ("embed", "hidden")
    nnx.jit(lambda m: m(jnp.ones((1, 4))))(copy)
    with pytest.raises(AssertionError, match="shard_value called"):
        nnx.Param(jnp.ones(3), sharding_names=(None,))


# -- 8 simulated devices, in a subprocess ---------------------------------------------


@background.job("spmd_facts")
def _run_worker(tmp_path_factory) -> dict:
    """The 8-device worker's facts (a background job: tests/background.py)."""
    return run_worker(WORKER, ["dp", "tp", "placement"], "SPMD")


@pytest.fixture(scope="module")
def spmd_facts(tmp_path_factory) -> dict:
    return background.result("spmd_facts", tmp_path_factory)


def _specs(layout: dict) -> dict:
    return {k: v["spec"] for k, v in layout.items()}


def test_data_parallel_training_matches_one_device(spmd_facts):
    dp = spmd_facts["dp"]
    np.testing.assert_allclose(dp["losses"], dp["ref_losses"], rtol=1e-5)
    assert dp["params"]["allclose"] and dp["params"]["max_abs_diff"] < 1e-5
    assert dp["opt_state"]["allclose"]
    # The batch is split 8 ways; every parameter and Adam moment is replicated.
    assert dp["x_layout"] == {"n_shards": 8, "shard_shapes": [[2, 4]]}
    assert dp["all_replicated"]
    kernel = dp["param_layout"]["l1/kernel"]
    assert kernel["n_shards"] == 8 and kernel["shard_shapes"] == [[4, 16]]
    for key in ("opt_state/0/mu/l1/kernel", "opt_state/0/nu/l1/kernel"):
        assert dp["opt_layout"][key]["shard_shapes"] == [[4, 16]]
        assert dp["opt_layout"][key]["devices"] == 8


TP_SPECS = {
    "l1/kernel": [None, "model"],
    "l1/bias": ["model"],
    "l2/kernel": ["model", None],
    "l2/bias": [None],
}
TP_SHARDS = {"l1/kernel": [4, 4], "l1/bias": [4], "l2/kernel": [4, 2], "l2/bias": [2]}


def test_tensor_parallel_training_matches_one_device(spmd_facts):
    tp = spmd_facts["tp"]
    np.testing.assert_allclose(tp["losses"], tp["ref_losses"], rtol=1e-5)
    assert tp["params"]["allclose"] and tp["params"]["max_abs_diff"] < 1e-5
    assert tp["opt_state"]["allclose"]
    assert all(v["devices"] == 1 for v in tp["ref_layout"].values())
    assert tp["same_init"]["max_abs_diff"] == 0.0
    # Placed as annotated at creation, and still so after 5 steps.
    for layout in (tp["created_layout"], tp["param_layout"]):
        assert _specs(layout) == TP_SPECS
        for key, shape in TP_SHARDS.items():
            assert layout[key]["shard_shapes"] == [shape]
            assert layout[key]["n_shards"] == 8
    for layout in (tp["created_opt_layout"], tp["opt_layout"]):
        for moment in ("mu", "nu"):
            for key, spec in TP_SPECS.items():
                entry = layout[f"opt_state/0/{moment}/{key}"]
                assert entry["spec"] == spec, (moment, key)
                assert entry["shard_shapes"] == [TP_SHARDS[key]]
    assert tp["params_as_annotated"] and tp["opt_as_annotated"]


def test_placement_variants_on_eight_devices(spmd_facts):
    pl = spmd_facts["placement"]
    for variant in ("eager_auto", "jit_auto", "eager_explicit", "jit_explicit"):
        assert _specs(pl[variant]) == TP_SPECS, variant
        assert pl[variant]["l1/kernel"]["shard_shapes"] == [[4, 4]], variant
    assert pl["mesh_kwarg"]["kernel"]["spec"] == ["model", None]
    assert pl["mesh_kwarg"]["kernel"]["shard_shapes"] == [[2, 3]]
    # Adam moments follow parameters sharded by hand (jax.device_put).
    for key in ("l1/kernel", "l2/kernel"):
        assert pl["by_hand_params"][key]["spec"] == ["model", None]
        for moment in ("mu", "nu"):
            entry = pl["by_hand_opt"][f"opt_state/0/{moment}/{key}"]
            assert entry["spec"] == ["model", None]
            assert entry["shard_shapes"] == pl["by_hand_params"][key]["shard_shapes"]
    assert pl["abstract"]["l1/kernel"] == [
        "ShapeDtypeStruct",
        [4, 16],
        "P(None, 'model')",
    ]
    assert _specs(pl["restored"]) == TP_SPECS


def test_worker_import_has_no_side_effects():
    before = os.environ.get("XLA_FLAGS")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_spmd_worker_probe", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert os.environ.get("XLA_FLAGS") == before
    assert module.main(["nope"]) == 2


# -- as_abstract, compat.get_abstract_model, rule composition, transform_metadata ---


def test_as_abstract_adds_named_sharding_from_variable_mesh_or_context():
    mesh_a = _mesh1("a", "b", auto=True)
    mesh_c = _mesh1("c", auto=True)

    class Two(nnx.Module):
        def __init__(self):
            self.p = nnx.Param(jnp.ones((4, 6)), sharding_names=("a", "b"), mesh=mesh_a)
            self.q = nnx.Param(jnp.ones((2, 6)), sharding_names=(None, "c"))
            self.r = nnx.Param(jnp.ones((3,)))  # unannotated: left alone

    with jax.set_mesh(mesh_c):
        model = nnx.as_abstract(nnx.eval_shape(Two))
    assert model.p.value.sharding == NamedSharding(mesh_a, P("a", "b"))
    assert model.q.value.sharding.spec == P(None, "c")
    assert model.q.value.sharding.mesh.axis_names == ("c",)
    assert model.r.value.sharding is None
    assert (model.p.value.shape, model.p.value.dtype) == ((4, 6), jnp.float32)


def test_as_abstract_uses_rules_and_needs_a_mesh():
    abstract = nnx.eval_shape(
        lambda: nnx.Param(jnp.ones((4, 8)), sharding_names=("embed", "hidden"))
    )
    with pytest.raises(nnx.ShardingError, match="no mesh is known"):
        nnx.as_abstract(abstract)
    with (
        jax.set_mesh(_mesh1("data", "model", auto=True)),
        nnx.logical_axis_rules(RULES),
    ):
        out = nnx.as_abstract(abstract)
    assert out.value.sharding.spec == P(None, "model")


def test_compat_get_abstract_model_dedups_shared_variables():
    mesh = _mesh1("batch", "model", auto=True)

    class Shared(nnx.Module):
        def __init__(self):
            init = nnx.with_partitioning(
                nnx.initializers.lecun_normal(), (None, "model")
            )
            self.lin = nnx.Linear(
                8, 8, use_bias=False, kernel_init=init, rngs=nnx.Rngs(0)
            )
            self.alias = self.lin.kernel

    graphdef, state = nnx.compat.get_abstract_model(Shared, mesh)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == 1
    assert leaves[0].sharding == NamedSharding(mesh, P(None, "model"))
    assert nnx.merge(graphdef, state).alias is not None


def test_variable_rules_compose_with_context_rules():
    mesh = _mesh1("row", "col")
    with jax.set_mesh(mesh), nnx.logical_axis_rules([("c-alias", "col")]):
        w = nnx.Param(
            jnp.ones((2, 2)),
            sharding_names=("r-alias", "c-alias"),
            sharding_rules=[("r-alias", "row")],
        )
        assert nnx.get_partition_spec(w).value == P("row", "col")
        with pytest.raises(nnx.ShardingError, match="maps to"):
            nnx.Param(
                jnp.ones((2, 2)),
                sharding_names=("r-alias", "c-alias"),
                sharding_rules=[("c-alias", "row")],
            )
    assert w.value.sharding == NamedSharding(mesh, P("row", "col"))


def test_vmap_scan_transform_metadata_extra_keys_follow_the_axis():
    @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: "layers", "nickname": "nick"})
    def make(k):
        return nnx.Param(
            jnp.ones((4, 3)) * k, sharding_names=("a", None), nickname=("i", "o")
        )

    p = make(jnp.arange(5.0))
    assert p.shape == (5, 4, 3)
    assert (p.sharding_names, p.nickname) == (("layers", "a", None), ("nick", "i", "o"))
    seen = []

    @nnx.scan(
        in_axes=(nnx.Carry, 0),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers", "nickname": "nick"},
    )
    def total(c, v):
        seen.append((v.nickname, v.sharding_names))
        return c + v[...].sum()

    out = total(jnp.zeros(()), p)
    np.testing.assert_allclose(out, 12.0 * jnp.arange(5.0).sum())
    assert seen == [(("i", "o"), ("a", None))]
    assert p.nickname == ("nick", "i", "o")
    with pytest.raises(ValueError, match="look like the partition key"):
        nnx.vmap(lambda x: x, transform_metadata={"partition": "layers"})


def test_transform_metadata_decorator_moves_only_metadata():
    v = nnx.Param(jnp.zeros((2, 3)), sharding_names=("din", "dout"))

    @nnx.transform_metadata(in_axes=0, out_axes=1, partition="din")
    def f(v):
        assert v.sharding_names == ("dout",)
        v[...] += 1.0
        return nnx.Param(jnp.full((3,), 10.0), sharding_names=("dmid", "dout"))

    out = f(v)
    assert v.sharding_names == ("din", "dout")
    np.testing.assert_array_equal(v[...], np.ones((2, 3)))
    assert out.sharding_names == ("dmid", "din", "dout")
    with pytest.raises(ValueError, match="expected 'model' at axis 0"):
        nnx.transform_metadata(f, partition="model")(v)
    assert v.sharding_names == ("din", "dout")  # untouched by the refused call
    with pytest.raises(ValueError, match="also an argument"):
        nnx.transform_metadata(lambda v: v, partition="din")(v)


def test_out_sharding_as_a_sharding_object_places_the_value():
    mesh = _mesh1("data", "model", auto=True)
    ns = NamedSharding(mesh, P("data", None))
    v = nnx.Variable(jnp.ones((4, 4)), out_sharding=ns)  # no mesh context needed
    assert v.sharding.is_equivalent_to(ns, 2) and v.out_sharding == ns
    fmt = Format(Layout(major_to_minor=(1, 0)), ns)
    assert nnx.Variable(jnp.ones((4, 4)), out_sharding=fmt).sharding == ns
    lazy = nnx.Variable(jnp.ones((4, 4)), out_sharding=ns, eager_sharding=False)
    assert not isinstance(lazy.sharding, NamedSharding)


def test_mixed_axis_types_are_refused_with_flax_phrase():
    types = (AxisType.Auto, AxisType.Explicit)
    mixed = jax.make_mesh((1, 1), ("row", "col"), axis_types=types)
    with pytest.raises(ValueError, match="all axes as Explicit or all axes as Auto"):
        nnx.Variable(jnp.ones((4, 4)), out_sharding=("row", "col"), mesh=mixed)
    v = nnx.Variable(
        jnp.ones((4, 4)), out_sharding=("row", "col"), mesh=_mesh1("row", "col")
    )
    assert v.sharding.spec == P("row", "col")


def test_dropout_mask_follows_the_input_sharding_on_an_explicit_mesh():
    with jax.set_mesh(_mesh1("X", "Y")):
        x = jax.sharding.reshard(jnp.arange(8.0).reshape(2, 4), P("X", None))
        for layer in (
            nnx.Dropout(0.5, deterministic=False, rngs=nnx.Rngs(0)),
            nnx.Dropout(
                0.5, broadcast_dims=(1,), deterministic=False, rngs=nnx.Rngs(0)
            ),
        ):
            y = layer(x)
            assert jax.typeof(y).sharding.spec == P("X", None)
            kept = np.asarray(y) != 0  # kept entries are x / keep
            np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] * 2)


def test_spmd_add_remove_axis_update_metadata_and_call_the_variable_hooks():
    calls = []

    class Tracked(nnx.Param):
        def add_axis(self, axis_index, axis_name):
            calls.append(("add", axis_index, axis_name))
            super().add_axis(axis_index, axis_name)

    hook = lambda v, i, n: calls.append(("hook", i, n))  # noqa: E731
    p = Tracked(jnp.ones((2, 3)), sharding_names=("a", "b"), on_add_axis=hook)
    meta = {nnx.PARTITION_NAME: "layers"}
    nnx.spmd.add_axis({"p": p}, 1, meta)
    assert p.sharding_names == ("a", "layers", "b")
    assert calls == [("add", 1, "layers"), ("hook", 1, "layers")]
    nnx.spmd.remove_axis([p], 1, meta)
    assert p.sharding_names == ("a", "b")
    with pytest.raises(ValueError, match="expected to remove 'layers' at index 0"):
        nnx.spmd.remove_axis([p], 0, meta)


def test_abstract_with_sharding_is_as_abstract_with_a_deprecation_warning():
    mesh = jax.make_mesh((1,), ("model",), (jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(
            lambda: nnx.Linear(
                4,
                8,
                kernel_metadata={"sharding_names": (None, "model")},
                rngs=nnx.Rngs(0),
            )
        )
        with pytest.warns(DeprecationWarning, match="use as_abstract"):
            old = nnx.abstract_with_sharding(abstract)
        new = nnx.as_abstract(abstract)
    assert old.kernel.value.sharding == new.kernel.value.sharding
    assert old.kernel.value.sharding.spec == jax.sharding.PartitionSpec(None, "model")
