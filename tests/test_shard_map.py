"""nnx.shard_map: training on 8 simulated devices (in a subprocess), write-back, errors.

Errors run here on a 1-device mesh; the multi-device cases run in
``tests/shard_map_worker.py`` and are compared with single-device training.
"""

from __future__ import annotations

import os
from pathlib import Path

import background
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from multidevice import run_worker

import nnxlike as nnx

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "shard_map_worker.py"


@background.job("shard_map_facts")
def _run_worker(tmp_path_factory) -> dict:
    """The 8-device worker's facts (a background job: tests/background.py)."""
    return run_worker(WORKER, ["dp", "writeback"], "SHMAP")


@pytest.fixture(scope="module")
def shard_map_facts(tmp_path_factory) -> dict:
    return background.result("shard_map_facts", tmp_path_factory)


@pytest.mark.parametrize("run", ["vma_False", "vma_True"])
def test_data_parallel_batchnorm_training_matches_one_device(shard_map_facts, run):
    dp = shard_map_facts["dp"]
    facts = dp[run]
    np.testing.assert_allclose(facts["losses"], dp["ref_losses"], rtol=1e-5)
    assert facts["params"]["allclose"], facts["params"]
    assert facts["batch_stats"]["allclose"], facts["batch_stats"]
    assert facts["opt_state"]["allclose"], facts["opt_state"]
    assert facts["stats_moved"] and facts["step"] == 3


def test_per_device_batchnorm_statistics_would_differ(shard_map_facts):
    # The control: the comparison above does detect per-shard statistics.
    assert not shard_map_facts["dp"]["local_bn"]["batch_stats"]["allclose"]


def test_changes_are_written_back(shard_map_facts):
    wb = shard_map_facts["writeback"]
    assert wb["count"] == 3  # one eager call, two under nnx.jit
    # Sharded P("data"): each device added its x + axis_index, 3 times.
    assert wb["per_device"] == [6.0 * i for i in range(8)]
    assert wb["y"] == [2.0 * i for i in range(8)]
    assert wb["seen"] == 16.0  # a new attribute, created inside
    assert wb["new_kernel_shape"] == [3, 1] and wb["new_kernel_equal"]
    assert wb["y2_shape"] == [8, 3]
    assert wb["returned_is_caller"]


# -- in-process, one device ---------------------------------------------------------


def _mesh():
    return jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))


def test_counter_write_back_on_one_device():
    c = Counter()

    @nnx.shard_map(mesh=_mesh(), in_specs=P(), out_specs=P())
    def tick(c):
        c.count.value += 1

    tick(c)
    nnx.jit(tick)(c)
    assert int(c.count.value) == 2


def _call(in_specs, *args):
    return nnx.shard_map(
        lambda *a: None, mesh=_mesh(), in_specs=in_specs, out_specs=P()
    )(*args)


def test_error_object_spec_is_not_a_partition_spec():
    with pytest.raises(TypeError) as err:
        _call((0, P()), Counter(), jnp.ones(2))
    msg = str(err.value)
    assert "in_specs[0] is 0 for argument 0, a Counter" in msg
    assert "nnx.StateAxes({nnx.BatchStat: P(), ...: P()})" in msg
    with pytest.raises(ValueError) as err:
        _call((P(), [()]), jnp.ones(2), [Counter()])
    msg = str(err.value)
    assert "in_specs[1] = [()] does not match the structure" in msg
    assert "[<Counter object>]" in msg
    with pytest.raises(TypeError, match=r"in_specs\[1\] gives None for a Counter"):
        _call((P(), [None]), jnp.ones(2), [Counter()])


def test_error_variable_matching_no_filter_names_its_path():
    spec = nnx.StateAxes({nnx.Param: P()})
    with pytest.raises(nnx.StructureError) as err:
        _call((spec,), Counter())
    msg = str(err.value)
    assert "'count' (Variable) matches none of the StateAxes filters" in msg
    assert "`...: P()`" in msg


def test_error_state_axes_value_and_spec_rank():
    with pytest.raises(TypeError, match="maps filter 'Param' to 0"):
        _call((nnx.StateAxes({nnx.Param: 0, ...: P()}),), Counter())
    with pytest.raises(ValueError) as err:
        _call((P(None, "data"),), nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    msg = str(err.value)
    assert "Param at 'bias' has shape (3,)" in msg and "`P(None,)`" in msg


def test_error_arguments_and_specs_disagree():
    with pytest.raises(ValueError, match="in_specs has 1 entries but the function got"):
        _call((P(),), jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError, match="StateAxes is for objects"):
        _call((nnx.StateAxes({...: P()}),), jnp.ones(2))
    with pytest.raises(TypeError, match="keyword argument"):
        nnx.shard_map(lambda x: x, mesh=_mesh(), in_specs=P(), out_specs=P())(x=1)


def test_worker_import_has_no_side_effects():
    before = os.environ.get("XLA_FLAGS")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_shard_map_worker_probe", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert os.environ.get("XLA_FLAGS") == before
    assert module.main(["nope"]) == 2


# -- per-Variable specs: StateSharding and nnx.prefix results (flax's forms) --------


def _tp_reference(m, x):
    """The same forward pass through plain jax.shard_map on the raw arrays."""
    f = jax.shard_map(
        lambda k, b, x: x @ k + b[None],
        mesh=_mesh(),
        in_specs=(P(None, "data"), P(), P()),
        out_specs=P(None, "data"),
    )
    return f(m.kernel[...], m.bias[...], x)


@pytest.mark.parametrize("form", ["state_sharding", "state", "graph", "tree"])
def test_per_variable_specs_match_plain_shard_map(form):
    m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    specs = {nnx.PathContains("kernel"): P(None, "data"), ...: P()}
    graph = form != "tree"
    if form == "state_sharding":
        spec = nnx.StateSharding(specs)
    elif form == "state":
        spec = nnx.StateSharding(nnx.State({"kernel": P(None, "data"), "bias": P()}))
    else:
        spec = nnx.prefix(m, specs, graph=graph)
    x = jnp.ones((2, 3))

    @nnx.shard_map(
        mesh=_mesh(),
        in_specs=(spec, P()),
        out_specs=P(None, "data"),
        graph=graph,
        graph_updates=form.startswith("state"),
    )
    def forward(m, x):
        return m(x)

    np.testing.assert_allclose(forward(m, x), _tp_reference(m, x), rtol=1e-6)
    if form.startswith("state"):  # written back with the spec's placement
        assert m.kernel.sharding.spec == P(None, "data")


def test_per_variable_spec_must_give_a_partition_spec():
    m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    spec = nnx.StateSharding({...: 0})
    f = nnx.shard_map(lambda m: None, mesh=_mesh(), in_specs=(spec,), out_specs=P())
    with pytest.raises(TypeError, match="StateSharding gives 0 for the Param at"):
        f(m)
