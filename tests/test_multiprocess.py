"""Training and checkpoints on JAX's multi-process runtime (processes as hosts).

Each configuration is launched once (``tests/multiprocess.py``) and many facts
are asserted from it, since gloo startup and compilation dominate:

- 2 processes x 2 CPU devices: ``train`` on a ``("data", "model")`` mesh (data
  across processes), then ``save`` (tensor-parallel kernels split across
  processes, orbax checkpoints at steps 10 and 20), then ``kill`` (process 1
  dies while step 30 is being saved);
- 1 process x 4 devices: ``restore`` what the killed run left, onto a mesh of the
  same shape and onto one device;
- 4 processes x 2 devices: ``train`` with the tensor-parallel axis spanning
  processes.

References are single-device training of the same global batch, computed in
each worker on one local device.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import background
import pytest
from multiprocess import launch

WORKER = Path(__file__).resolve().parent / "multiprocess_worker.py"
TOL = 1e-6  # as the 8-device tests: float32 sums in another order


# The runs are background jobs (tests/background.py): they start with the session
# and use the core that the other tests leave idle.
@background.job("two")
def _run_two(tmp_path_factory):
    """The 2-process run; it ends with process 1 killing itself mid-save."""
    scratch = tmp_path_factory.mktemp("multiprocess")
    results = launch(
        WORKER,
        ["train", "save", "kill"],
        2,
        env={"NNXLIKE_MP_DIR": str(scratch)},
        check=False,
    )
    return scratch, results


def _with_facts(two):
    for r in two:
        assert {"train", "save"} <= set(r.facts), r.tail()
    return two


@background.job("restored")
def _run_restore(tmp_path_factory):
    """One process restoring what the killed 2-process run left."""
    scratch, two = background.result("two", tmp_path_factory)
    _with_facts(two)
    (result,) = launch(
        WORKER,
        ["restore"],
        1,
        env={"NNXLIKE_MP_DIR": str(scratch), "NNXLIKE_MP_LOCAL_DEVICES": "4"},
    )
    return result.facts["restore"]


@background.job("four")
def _run_four(tmp_path_factory):
    return launch(WORKER, ["train"], 4)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return background.result("two", tmp_path_factory)[1]


@pytest.fixture(scope="module")
def two_facts(two):
    return _with_facts(two)


@pytest.fixture(scope="module")
def restored(two_facts, tmp_path_factory):
    return background.result("restored", tmp_path_factory)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return background.result("four", tmp_path_factory)


# -- the harness ---------------------------------------------------------------------


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_crash_fails_with_every_output_and_stops_the_others(tmp_path):
    worker = _script(
        tmp_path,
        """
        import sys, time
        if sys.argv[3] == "1":
            print("boom from process 1", flush=True)
            sys.exit(3)
        time.sleep(600)  # would wait forever for process 1
        """,
    )
    with pytest.raises(AssertionError) as info:
        launch(worker, ["case"], 2, timeout=120)
    message = str(info.value)
    assert "on 2 processes failed" in message
    assert "boom from process 1" in message
    assert "process 1: exit status 3" in message
    assert f"process 0: exit status {-signal.SIGKILL}" in message


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its reaper counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@background.job("hang_killed")
def _run_a_hang(tmp_path_factory):
    """Two workers that hang, launched with a 3 s deadline (a background job:
    tests/background.py: it mostly waits). What ``launch`` raised, and for each
    worker's child whether it was gone within 10 s."""
    tmp_path = tmp_path_factory.mktemp("hang")
    worker = _script(
        tmp_path,
        f"""
        import pathlib, subprocess, sys, time
        # A child in the same process group, which must die with its parent.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pid_file = pathlib.Path({str(tmp_path)!r}, "child" + sys.argv[3])
        pid_file.write_text(str(child.pid))
        print("waiting", flush=True)
        time.sleep(600)
        """,
    )
    try:
        launch(worker, ["case"], 2, timeout=3.0)
    except AssertionError as e:
        raised = e
    else:
        raised = None
    gone = {}
    for i in range(2):
        pid_file = tmp_path / f"child{i}"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone[pid] = _gone(pid)
    return raised, gone


@pytest.fixture(scope="module")
def hang_killed(tmp_path_factory):
    return background.result("hang_killed", tmp_path_factory)


def test_a_hang_is_killed_with_its_process_group(hang_killed):
    raised, gone = hang_killed
    assert isinstance(raised, AssertionError), raised
    assert re.search(r"did not finish in 3\.0 s", str(raised)), str(raised)
    assert str(raised).count("waiting") == 2
    assert str(raised).count(f"exit status {-signal.SIGKILL}") == 2
    assert len(gone) == 2 and all(gone.values()), gone


# -- training across processes ---------------------------------------------------------


def _check_training(facts: list[dict]) -> None:
    """What every process of a ``train`` run must have measured."""
    for f in facts:
        # Parameters, Adam moments, BatchNorm statistics, the RNG counter and the
        # metric totals equal single-device training of the same global batch.
        assert f["loss_diff"] < TOL, f
        assert f["state_diff"] < TOL, f
        assert f["batch_stats_diff"] < TOL, f
        assert f["first_last_loss"][1] < f["first_last_loss"][0]
        # Metrics are over the global batch, the same on every process.
        assert f["metrics"]["loss"] == pytest.approx(f["ref_metrics"]["loss"], abs=TOL)
        assert f["metrics"]["accuracy"] == pytest.approx(
            f["ref_metrics"]["accuracy"], abs=TOL
        )
        assert f["metrics"] == facts[0]["metrics"]
        # The dropout stream: one key and counter everywhere (replicated); the
        # mask over the global batch is the single-device mask.
        assert f["rng_key"] == facts[0]["rng_key"]
        assert f["rng_count"] == 21  # 20 steps + the mask below
        assert f["mask_diff"] == 0.0
        # Replicated parameters are bit-identical on every device of every process.
        digests = {s["digest"] for g in facts for s in g["replicated_local"]}
        assert len(digests) == 1
        assert not f["kernel_fully_addressable"]
    # Different rows of the batch draw different dropout masks.
    by_rows = {}
    for f in facts:
        for s in f["mask_local"]:
            by_rows.setdefault(tuple(s["rows"]), set()).add(s["digest"])
    assert sorted(by_rows) == [(0, 8), (8, 16)]
    assert all(len(d) == 1 for d in by_rows.values())  # same rows, same mask
    assert by_rows[(0, 8)] != by_rows[(8, 16)]


def test_data_and_tensor_parallel_training_on_2_processes(two_facts):
    facts = [r.facts["train"] for r in two_facts]
    assert [f["process"] for f in facts] == [0, 1]
    for f in facts:
        assert f["devices"] == 4
        # "data" across processes: each process feeds only its half of the batch.
        assert f["mesh_processes"] == [[0, 0], [1, 1]]
        # "model" within a process: it holds both column halves of `up.kernel`.
        assert f["kernel_shape"] == [4, 16]
        assert f["kernel_local_shards"] == [[4, 8], [4, 8]]
        assert f["kernel_columns"] == [[0, 8], [8, 16]]
    assert [f["local_rows"] for f in facts] == [[0, 8], [8, 16]]
    _check_training(facts)


def test_tensor_parallel_axis_across_4_processes(four):
    facts = [r.facts["train"] for r in four]
    for f in facts:
        assert f["devices"] == 8
        assert f["mesh_processes"] == [[0, 0, 1, 1], [2, 2, 3, 3]]
        assert f["kernel_local_shards"] == [[4, 4], [4, 4]]
    # Processes 0 and 1 split each kernel between them (and share the rows).
    assert [f["kernel_columns"] for f in facts] == [
        [[0, 4], [4, 8]],
        [[8, 12], [12, 16]],
        [[0, 4], [4, 8]],
        [[8, 12], [12, 16]],
    ]
    assert [f["local_rows"] for f in facts] == [[0, 8], [0, 8], [8, 16], [8, 16]]
    _check_training(facts)


# -- checkpoints ---------------------------------------------------------------------


def test_nnx_checkpoint_refuses_multi_process_arrays_and_points_to_orbax(two_facts):
    for r in two_facts:
        f = r.facts["save"]
        for key, where in [
            ("save_error", "'up.kernel'"),
            ("manager_error", "'[0].up.kernel'"),
        ]:
            message = f[key]
            assert (
                f"save: the array at {where} spans the devices of 2 processes"
                in message
            )
            assert "CheckpointManager write single-host files" in message
            assert "ocp.CheckpointManager(directory).save(step" in message
            assert "docs/distributed.md" in message


def test_orbax_checkpoint_of_tensor_parallel_shards_resumes_bit_identically(two_facts):
    facts = [r.facts["save"] for r in two_facts]
    # Each process holds only its half of the kernel: the save is truly sharded.
    assert [f["kernel_columns"] for f in facts] == [[[0, 8]], [[8, 16]]]
    for f in facts:
        assert f["steps"] == [10, 20]
        assert f["restored_sharding_same"]
        # Restored at step 10 and trained 10 steps: every bit of the model and
        # the optimizer equals the uninterrupted run at step 20.
        assert f["continued"]["compared"] == 21
        assert f["continued"]["differ"] == []


def test_a_kill_mid_save_leaves_the_previous_checkpoint(two_facts, restored):
    p0, p1 = two_facts
    assert "killing process 1 mid-save" in p1.stdout
    assert p1.returncode == -signal.SIGKILL
    assert p0.returncode != 0  # stopped, not left waiting for process 1
    assert "kill" not in p0.facts
    # Step 30 never became a checkpoint; step 20 is the latest.
    assert "30" not in restored["listing"]
    assert restored["steps"] == [10, 20] and restored["latest"] == 20


def test_restore_onto_one_process(restored):
    # Same mesh shape on one process: training continues bit-identically.
    assert restored["same_shape_devices"] == 4
    assert restored["same_shape"]["compared"] == 21
    assert restored["same_shape"]["differ"] == []
    # One device (the shards gathered at restore): the same numbers up to float
    # rounding of reductions in another order.
    assert restored["one_device_devices"] == 1
    assert restored["one_device"]["max_abs_diff"] < TOL


# -- the tutorial, as 2 processes ------------------------------------------------------


@background.job("sharding_tutorial_on_2_processes")
def _run_sharding_tutorial(tmp_path_factory) -> tuple[int, str]:
    """``python tutorials/sharding.py --processes 2``: exit status and output."""
    script = Path(__file__).resolve().parents[1] / "tutorials" / "sharding.py"
    env = {k: v for k, v in background.environ().items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(
        [sys.executable, str(script), "--processes", "2"],
        cwd=script.parents[1],
        env=dict(env, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the launcher and its 2 children: one group
    )
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        message = "the tutorial did not finish in 300 s:\n" + out[-5000:]
        raise AssertionError(message) from None
    return proc.returncode, out


@pytest.fixture(scope="module")
def sharding_tutorial_on_2_processes(tmp_path_factory):
    return background.result("sharding_tutorial_on_2_processes", tmp_path_factory)


def test_sharding_tutorial_runs_as_2_processes(sharding_tutorial_on_2_processes):
    """Every check of the tutorial passes in each process."""
    returncode, out = sharding_tutorial_on_2_processes
    assert returncode == 0, out[-5000:]
    assert "===== process 0 (exit status 0) =====" in out
    assert "===== process 1 (exit status 0) =====" in out
    assert out.count("all checks passed") == 2
    assert "process 0 of 2, 4 local devices" in out
    # Each process holds its half of the batch rows, on its own 4 devices.
    rows0 = out.split("process 0: its rows of the batch (64, 16)")[1].split("\n")[1:5]
    rows1 = out.split("process 1: its rows of the batch (64, 16)")[1].split("\n")[1:5]
    assert all(r.endswith("[0:32, 0:16]") for r in rows0), rows0
    assert all(r.endswith("[32:64, 0:16]") for r in rows1), rows1
