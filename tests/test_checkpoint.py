"""Tests for nnxlike.checkpoint: round trips, resuming, atomicity, errors, manager."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import nnxlike as nnx
from nnxlike import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


class Net(nnx.Module):
    """Param, a bfloat16 Param, BatchStats and typed RNG keys, kept tiny."""

    def __init__(self, seed: int):
        rngs = nnx.Rngs(seed, dropout=seed + 1)
        self.lin = nnx.Linear(2, 3, rngs=rngs)
        self.half = nnx.Linear(3, 2, param_dtype=jnp.bfloat16, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.rngs = rngs

    def __call__(self, x):
        h = self.bn(self.lin(x))
        return self.half(h.astype(jnp.bfloat16)).astype(jnp.float32)


def _net_and_opt(seed: int):
    model = Net(seed)
    return model, nnx.Optimizer(model, optax.adam(1e-2))


def _filled(seed: int):
    """A Net and its Adam optimizer with every leaf set to seed-dependent values.

    NumPy fills the arrays: eager JAX ops would compile one by one (slow here).
    """
    model, opt = _net_and_opt(seed)
    rng = np.random.default_rng(seed)
    for _, var in nnx.variables((model, opt)).flat_state():
        dtype = var.value.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue
        if jnp.issubdtype(dtype, jnp.floating):
            value = rng.standard_normal(var.shape).astype(dtype)
        else:
            value = rng.integers(1, 100, var.shape).astype(dtype)
        var.value = jnp.asarray(value)
    return model, opt


def _bytes(tree) -> list:
    """(path, dtype, shape, raw bytes) of every leaf: equality is bit equality."""
    out = []
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
    for path, leaf in state.flat_state():
        value = leaf.value
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        value = np.asarray(value)
        out.append((path, str(leaf.value.dtype), value.shape, value.tobytes()))
    return out


def _is_abstract(tree) -> bool:
    leaves = [v.value for _, v in nnx.state(tree).flat_state()]
    return all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)


# -- round trips -------------------------------------------------------------------


def test_round_trip_is_bit_exact_into_concrete_state_and_abstract_targets(tmp_path):
    model, opt = _filled(0)
    assert model.half.kernel.value.dtype == jnp.bfloat16
    path = tmp_path / "ckpt.nnx"
    ckpt.save(path, (model, opt, 7))

    # Into concrete objects: filled in place, the same objects come back.
    m2, o2 = _net_and_opt(5)
    assert all(a != b for a, b in zip(_bytes(m2), _bytes(model)))
    out = ckpt.restore(path, (m2, o2, 0))
    assert out[0] is m2 and out[1] is o2 and out[2] == 7 and type(out[2]) is int
    assert _bytes(m2) == _bytes(model) and _bytes(o2) == _bytes(opt)
    assert m2.rngs.default.key.value.dtype == model.rngs.default.key.value.dtype

    # Into States: new States of the same kinds.
    m6, o6 = _net_and_opt(6)
    s_model, s_opt, step = ckpt.restore(path, (nnx.state(m6), nnx.state(o6), 0))
    assert isinstance(s_model, nnx.State) and s_model.lin.kernel.type is nnx.Param
    assert _bytes(s_model) == _bytes(model) and _bytes(s_opt) == _bytes(opt)
    assert step == 7

    # Into abstract objects from eval_shape: no arrays before, real ones after.
    abstract, abstract_opt = nnx.eval_shape(lambda: _net_and_opt(9))
    assert _is_abstract(abstract) and _is_abstract(abstract_opt)
    ckpt.restore(path, (abstract, abstract_opt, 0))
    for leaf in nnx.state((abstract, abstract_opt)).leaves():
        assert isinstance(leaf.value, jax.Array)
    assert _bytes(abstract) == _bytes(model) and _bytes(abstract_opt) == _bytes(opt)


def test_dtypes_numbers_and_pytrees_round_trip_exactly(tmp_path):
    nan_payload = np.array([0x7FC1, 0xFFFF, 0x0001, 0x8000], np.uint16)

    class Pair(NamedTuple):
        a: jax.Array
        b: float

    tree = {
        "bf16_nans": jnp.asarray(nan_payload.view(ml_dtypes.bfloat16)),
        "f8": jnp.asarray([1.5, -2.0, 448.0], ml_dtypes.float8_e4m3fn),
        "int4": np.asarray([-8, 7, 0], ml_dtypes.int4),
        "c64": jnp.asarray([1 + 2j], jnp.complex64),
        "flags": np.array([True, False]),
        "empty": jnp.zeros((0, 3)),
        "np_scalar": np.float16(0.5),
        "numbers": [3, 2.5, True, 1 - 1j],
        "pair": Pair(jnp.arange(3), 4.0),
        "opt_state": optax.adam(1e-3).init({"w": jnp.ones(2)}),
        "metric": nnx.metrics.Average(),
        "static": "kept from the target",
        "nothing": None,
    }
    tree["metric"].total.value = jnp.asarray(np.float32(7.5))
    tree["metric"].count.value = jnp.asarray(np.int32(3))
    path = tmp_path / "mixed.nnx"
    ckpt.save(path, tree)
    target = jax.tree.map(
        lambda x: jnp.zeros_like(x) if isinstance(x, jax.Array) else np.zeros_like(x),
        {k: v for k, v in tree.items() if k != "metric"},  # objects are no pytrees
    )
    target["static"], target["numbers"] = "target's", [0, 0.0, False, 0j]
    target["np_scalar"], target["metric"] = np.float16(0), nnx.metrics.Average()
    out = ckpt.restore(path, target)
    assert out["metric"] is target["metric"] and float(out["metric"].compute()) == 2.5
    assert out["static"] == "target's" and out["nothing"] is None
    assert out["numbers"] == [3, 2.5, True, 1 - 1j]
    assert [type(v) for v in out["numbers"]] == [int, float, bool, complex]
    assert isinstance(out["pair"], Pair) and out["pair"].b == 4.0
    assert type(out["opt_state"]) is type(tree["opt_state"])
    for key in ("bf16_nans", "f8", "int4", "c64", "flags", "empty", "np_scalar"):
        got, want = np.asarray(out[key]), np.asarray(tree[key])
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.tobytes() == want.tobytes(), key
    assert isinstance(out["int4"], np.ndarray)  # numpy targets get numpy arrays

    # Without a target: nested plain dicts with the saved paths.
    pure = ckpt.restore(path)
    assert pure["numbers"] == {0: 3, 1: 2.5, 2: True, 3: 1 - 1j}
    assert pure["bf16_nans"].dtype == jnp.bfloat16


def test_shared_variables_are_saved_once_and_stay_shared(tmp_path):
    class Tied(nnx.Module):
        def __init__(self, seed):
            self.a = nnx.Linear(2, 3, rngs=nnx.Rngs(seed))
            self.b = nnx.Linear(2, 3, rngs=nnx.Rngs(seed + 1))
            self.b.kernel = self.a.kernel

    model = Tied(0)
    ckpt.save(tmp_path / "t.nnx", model)
    pure = ckpt.restore(tmp_path / "t.nnx")
    assert list(pure["a"]) == ["kernel", "bias"] and list(pure["b"]) == ["bias"]
    target = Tied(3)
    ckpt.restore(tmp_path / "t.nnx", target)
    assert target.b.kernel is target.a.kernel
    assert _bytes(target) == _bytes(model)


_SHARDED = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import nnxlike as nnx

    mesh = jax.make_mesh((4,), ("model",))
    cols = NamedSharding(mesh, P(None, "model"))
    path = sys.argv[1]
    model = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    nnx.checkpoint.save(path, model)
    want = np.asarray(model.kernel.value)

    def check(kernel, how):
        assert kernel.sharding.is_equivalent_to(cols, 2), (how, kernel.sharding)
        assert kernel.addressable_shards[0].data.shape == (8, 4), how
        np.testing.assert_array_equal(np.asarray(kernel), want)

    # 1. An abstract State whose leaves carry their sharding.
    abstract = nnx.state(nnx.eval_shape(lambda: nnx.Linear(8, 16, rngs=nnx.Rngs(1))))
    abstract["kernel"] = abstract["kernel"].replace(
        jax.ShapeDtypeStruct((8, 16), np.float32, sharding=cols)
    )
    check(nnx.checkpoint.restore(path, abstract).kernel.value, "abstract leaf")

    # 2. An abstract Variable that only carries sharding_names and a mesh.
    kernel = nnx.Param(
        jax.ShapeDtypeStruct((8, 16), np.float32),
        sharding_names=(None, "model"), mesh=mesh, eager_sharding=False,
    )
    assert kernel.value.sharding is None
    bias = nnx.Param(np.ones(16, np.float32))
    nnx.checkpoint.restore(path, {"kernel": kernel, "bias": bias})
    check(kernel.value, "metadata")

    # 3. A concrete target placed by hand keeps its placement.
    target = nnx.Linear(8, 16, rngs=nnx.Rngs(2))
    target.kernel.value = jax.device_put(target.kernel.value, cols)
    nnx.checkpoint.restore(path, target)
    check(target.kernel.value, "committed array")
    print("ok")
    """
)


def test_restore_places_shards_on_a_four_device_mesh(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(tmp_path / "m.nnx")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# -- resuming training -----------------------------------------------------------------


class Regressor(nnx.Module):
    def __init__(self, seed: int):
        rngs = nnx.Rngs(params=seed, dropout=seed + 100)
        self.lin1 = nnx.Linear(2, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.lin2 = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.lin2(self.drop(jax.nn.relu(self.lin1(x))))


@nnx.jit
def _train_step(model, opt, x, y):
    def loss_fn(m):
        return ((m(x) - y) ** 2).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def _batch(step: int):
    x = np.random.default_rng(step).standard_normal((8, 2)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x[:, ::-1] * 2)


def test_resuming_from_a_checkpoint_matches_training_straight_through(tmp_path):
    # Straight through: 6 steps, with a checkpoint every 3 (as a run would save).
    model = Regressor(0)
    opt = nnx.Optimizer(model, optax.adam(1e-2))
    manager = ckpt.CheckpointManager(tmp_path / "run", save_interval_steps=3)
    for step in range(6):
        _train_step(model, opt, *_batch(step))
        manager.save(step + 1, {"model": model, "opt": opt, "step": step + 1})
    assert manager.all_steps() == [3, 6]

    # Resumed from step 3, as if the run had died after it: fresh objects with
    # other seeds, so everything must come from the file (parameters, Adam moments
    # and count, the dropout stream's key and counter).
    resumed = Regressor(42)
    resumed_opt = nnx.Optimizer(resumed, optax.adam(1e-2))
    tree = {"model": resumed, "opt": resumed_opt, "step": 0}
    start = ckpt.CheckpointManager(tmp_path / "run").restore(3, target=tree)["step"]
    assert start == 3
    for step in range(start, 6):
        _train_step(resumed, resumed_opt, *_batch(step))
    assert _bytes(resumed) == _bytes(model)
    assert _bytes(resumed_opt) == _bytes(opt)


# -- atomicity -------------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from nnxlike import checkpoint

    path = sys.argv[1]
    checkpoint.save(path, {"i": 0, "x": np.zeros(8, np.float32)})
    print("saved 0", flush=True)
    big = np.empty(4_000_000, np.float32)  # 16 MB: a save takes a while
    i = 1
    while True:
        big.fill(i)
        checkpoint.save(path, {"i": i, "x": big}, overwrite=True)
        print(f"saved {i}", flush=True)
        i += 1
    """
)


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.nnx"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        completed = []
        while len(completed) < 3:  # the first checkpoint and two big ones
            line = proc.stdout.readline()
            assert line, f"the saver died early (exit code {proc.poll()})"
            completed.append(int(line.split()[1]))
        # Wait until a save is in flight (its temporary file exists), then kill.
        deadline = time.monotonic() + 60
        while not any(n.startswith(".ckpt.nnx.tmp-") for n in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "no save started within 60 s"
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    completed += [int(line.split()[1]) for line in proc.stdout.read().splitlines()]
    proc.stdout.close()

    names = os.listdir(tmp_path)
    assert "ckpt.nnx" in names
    assert all(n == "ckpt.nnx" or n.startswith(".ckpt.nnx.tmp-") for n in names)
    # The final name holds a complete checkpoint: the last save reported finished,
    # or the next one if the kill came between its rename and its report.
    data = ckpt.restore(path)
    i = data["i"]
    assert i in (completed[-1], completed[-1] + 1)
    assert data["x"].shape == (4_000_000,)
    assert bool((data["x"] == i).all())


def test_save_refuses_to_overwrite_by_default_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a.nnx"
    ckpt.save(path, {"w": jnp.ones(2)})
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        ckpt.save(path, {"w": jnp.zeros(2)})
    ckpt.save(path, {"w": jnp.zeros(2)}, overwrite=True)
    assert os.listdir(tmp_path) == ["a.nnx"]
    assert float(ckpt.restore(path)["w"].sum()) == 0.0
    # A save that fails half way (an unsavable leaf) changes nothing on disk.
    with pytest.raises(ckpt.CheckpointError, match=r"'w'.*abstract"):
        ckpt.save(path, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}, overwrite=True)
    assert os.listdir(tmp_path) == ["a.nnx"]


# -- mismatches ------------------------------------------------------------------------


class Saved(nnx.Module):
    def __init__(self, seed, out=3, dtype=jnp.float32):
        rngs = nnx.Rngs(seed)
        self.a = nnx.Linear(2, out, rngs=rngs)
        self.b = nnx.Linear(3, 2, param_dtype=dtype, rngs=rngs)
        self.c = nnx.Param(jnp.full((2,), float(seed)))


def test_mismatches_are_listed_in_one_error_and_nothing_is_restored(tmp_path):
    saved = Saved(0)
    saved.extra = nnx.BatchStat(jnp.ones(4))
    ckpt.save(tmp_path / "m.nnx", saved)
    target = Saved(1, out=4, dtype=jnp.bfloat16)
    target.new = nnx.Param(jnp.zeros(5))
    before = _bytes(target)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        ckpt.restore(tmp_path / "m.nnx", target)
    msg = str(info.value)
    assert f"the checkpoint {tmp_path / 'm.nnx'} does not match" in msg
    for line in [
        "a.kernel: shape differs: the target expects Param float32[2, 4], "
        "the checkpoint has Param float32[2, 3]",
        "a.bias: shape differs: the target expects Param float32[4], "
        "the checkpoint has Param float32[3]",
        "b.kernel: dtype differs: the target expects Param bfloat16[3, 2], "
        "the checkpoint has Param float32[3, 2]",
        "b.bias: dtype differs",
        "new: missing from the checkpoint (target: Param float32[5])",
        "extra: in the checkpoint (BatchStat float32[4]) but not in the target",
        "strict=False",
    ]:
        assert line in msg, line
    assert len(info.value.mismatches) == 6
    assert {m.problem for m in info.value.mismatches} == {
        "shape",
        "dtype",
        "missing",
        "unexpected",
    }
    assert isinstance(info.value, nnx.NnxError)
    assert _bytes(target) == before  # nothing changed

    # strict=False restores the overlap (c) and warns with the rest.
    with pytest.warns(ckpt.CheckpointMismatchWarning, match="6 path") as record:
        out = ckpt.restore(tmp_path / "m.nnx", target, strict=False)
    assert out is target
    assert len(record[0].message.mismatches) == 6
    np.testing.assert_array_equal(target.c.value, saved.c.value)
    assert target.a.kernel.shape == (2, 4) and float(target.new.value.sum()) == 0


def test_typed_key_mismatch_is_reported(tmp_path):
    ckpt.save(tmp_path / "r.nnx", nnx.Rngs(0))
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"default.key: shape"):
        ckpt.restore(tmp_path / "r.nnx", nnx.Rngs(0).split(2))


# -- damaged files ---------------------------------------------------------------------


def _header(path):
    raw = path.read_bytes()
    _, _, _, offset, length, _ = struct.unpack("<8sIIQQ32s", raw[:64])
    return json.loads(raw[offset : offset + length])


def test_truncated_and_damaged_files_raise_clear_errors(tmp_path):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    path = tmp_path / "m.nnx"
    ckpt.save(path, model)
    good = path.read_bytes()

    def damaged(data: bytes, name: str) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    target = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    before = _bytes(target)
    cut = damaged(good[:-10], "cut.nnx")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"cut\.nnx is .* truncated"):
        ckpt.restore(cut, target)
    short = damaged(good[:20], "short.nnx")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"20 bytes long, shorter"):
        ckpt.restore(short, target)
    zeros = damaged(bytes(64) + good[64:-200], "interrupted.nnx")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"save that was interrupted"):
        ckpt.restore(zeros, target)
    text = damaged(b"this is not a checkpoint at all, just text" * 3, "text.nnx")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"text\.nnx does not start"):
        ckpt.restore(text, target)

    kernel = next(r for r in _header(path)["leaves"] if r["path"] == ["kernel"])
    flipped = bytearray(good)
    flipped[kernel["offset"] + 5] ^= 0x10
    bad = damaged(bytes(flipped), "flipped.nnx")
    with pytest.raises(
        ckpt.CorruptCheckpointError,
        match=r"flipped\.nnx holds bytes for 'kernel' .* SHA-256 checksum",
    ):
        ckpt.restore(bad, target)
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # inside the JSON header
    bad = damaged(bytes(flipped), "header.nnx")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"header .* SHA-256"):
        ckpt.restore(bad, target)
    assert _bytes(target) == before  # never garbage, never half restored
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"no checkpoint at"):
        ckpt.restore(tmp_path / "nope.nnx", target)


def test_every_single_byte_flip_is_detected(tmp_path):
    path = tmp_path / "m.nnx"
    ckpt.save(path, {"w": jnp.arange(3.0), "step": 1})
    good = path.read_bytes()
    assert ckpt.restore(path)["step"] == 1
    bad = tmp_path / "bad.nnx"
    for i in range(len(good)):
        flipped = bytearray(good)
        flipped[i] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ckpt.CorruptCheckpointError):
            ckpt.restore(bad)


def _rewrite_header(path, edit) -> None:
    """Edit the JSON header of a checkpoint and re-sign it (a hostile file)."""
    raw = path.read_bytes()
    magic, version, _, offset, _, _ = struct.unpack("<8sIIQQ32s", raw[:64])
    header = json.loads(raw[offset:])
    edit(header)
    new = json.dumps(header).encode()
    digest = hashlib.sha256(new).digest()
    preamble = struct.pack("<8sIIQQ32s", magic, version, 0, offset, len(new), digest)
    path.write_bytes(preamble + raw[64:offset] + new)


def test_a_hostile_header_cannot_name_unsafe_dtypes_or_unknown_keys(tmp_path):
    path = tmp_path / "m.nnx"
    ckpt.save(path, {"w": jnp.arange(3.0), "rngs": nnx.Rngs(0)})

    def object_dtype(header):
        header["leaves"][0]["dtype"] = "object"

    _rewrite_header(path, object_dtype)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"unsafe dtype 'object'"):
        ckpt.restore(path)

    ckpt.save(path, {"w": jnp.arange(3.0), "rngs": nnx.Rngs(0)}, overwrite=True)

    def unknown_impl(header):
        header["leaves"][1]["key"]["impl"] = "nope"

    _rewrite_header(path, unknown_impl)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"'rngs.default.key'.*nope"):
        ckpt.restore(path, {"w": jnp.zeros(3), "rngs": nnx.Rngs(1)})


# -- CheckpointManager -----------------------------------------------------------------


def test_manager_interval_keep_last_n_latest_and_restore(tmp_path):
    directory = tmp_path / "ckpts"
    manager = ckpt.CheckpointManager(directory, max_to_keep=3, save_interval_steps=2)
    assert manager.latest_step() is None and manager.all_steps() == []
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"no checkpoints in"):
        manager.restore(target={"step": 0})
    saved = [manager.save(s, {"w": jnp.full(2, float(s)), "step": s}) for s in range(9)]
    assert saved == [s % 2 == 0 for s in range(9)]
    assert manager.all_steps() == [4, 6, 8] and manager.latest_step() == 8
    assert manager.save(9, {"w": jnp.full(2, 9.0), "step": 9}, force=True)
    assert manager.all_steps() == [6, 8, 9]

    # Leftovers of an interrupted save are ignored, and a new manager resumes.
    (directory / ".step_00000010.nnx.tmp-123-abcd").write_bytes(b"partial")
    again = ckpt.CheckpointManager(directory, max_to_keep=3, save_interval_steps=2)
    assert again.all_steps() == [6, 8, 9]
    out = again.restore(target={"w": jnp.zeros(2), "step": 0})
    assert out["step"] == 9 and out["w"].tolist() == [9.0, 9.0]
    assert again.restore(6, target={"w": jnp.zeros(2), "step": 0})["step"] == 6
    assert again.restore(8)["step"] == 8
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"saved steps: \[6, 8, 9\]"):
        again.restore(4, target={"w": jnp.zeros(2), "step": 0})
    with pytest.raises(ValueError, match="max_to_keep must be at least 1"):
        ckpt.CheckpointManager(directory, max_to_keep=0)


# -- orbax interoperability ------------------------------------------------------------


def test_state_round_trips_through_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model, opt = _filled(0)
    state = nnx.state((model, opt))  # typed keys, bf16, BatchStats, Adam moments

    # StandardCheckpointer takes a State as is; restore into an abstract State.
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "standard", state)
        checkpointer.wait_until_finished()
        abstract = nnx.state(nnx.eval_shape(lambda: _net_and_opt(3)))
        restored = checkpointer.restore(tmp_path / "standard", abstract)
    target = _net_and_opt(3)
    nnx.update(target, restored)
    assert _bytes(target) == _bytes((model, opt))

    # PyTreeCheckpointer with plain dicts: to_pure_dict / replace_by_pure_dict.
    params = nnx.state(model, nnx.Param)
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(tmp_path / "pytree", params.to_pure_dict())
    item = jax.tree.map(ocp.utils.to_shape_dtype_struct, params.to_pure_dict())
    pure = checkpointer.restore(
        tmp_path / "pytree",
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        ),
    )
    fresh = Net(4)
    fresh_params = nnx.state(fresh, nnx.Param)
    fresh_params.replace_by_pure_dict(pure)
    nnx.update(fresh, fresh_params)
    assert _bytes(nnx.state(fresh, nnx.Param)) == _bytes(params)


# -- the module is callable: nnx.checkpoint(f) is remat --------------------------------


def test_nnx_checkpoint_is_both_the_module_and_remat():
    assert isinstance(nnx.checkpoint, types.ModuleType)
    assert nnx.checkpoint is ckpt and nnx.checkpoint.save is ckpt.save
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((3, 2))

    def loss(m, x):
        return jnp.sum(jnp.tanh(m(x)) ** 2)

    plain = nnx.grad(loss)(model, x)
    remat = nnx.grad(nnx.checkpoint(loss))(model, x)
    np.testing.assert_allclose(remat.kernel.value, plain.kernel.value, rtol=1e-6)

    @nnx.checkpoint(static_argnums=1)
    def scaled(m, k):
        return jnp.sum(m(x)) * k

    assert float(scaled(model, 2)) == pytest.approx(2 * float(jnp.sum(model(x))))


def test_manager_removes_temporaries_of_dead_writers_only(tmp_path):
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    names = {
        "dead": f".step_00000004.nnx.tmp-{host}-{dead_pid}-0123abcd",
        "alive": f".step_00000004.nnx.tmp-{host}-{os.getpid()}-0123abcd",
        "other_host": f".step_00000004.nnx.tmp-not-{host}-{dead_pid}-0123abcd",
        "not_ours": f".notes.txt.tmp-{host}-{dead_pid}-0123abcd",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"partial")
    manager = ckpt.CheckpointManager(tmp_path)
    assert manager.save(2, {"w": jnp.ones(2)})
    left = set(os.listdir(tmp_path))
    assert names["dead"] not in left
    assert {names["alive"], names["other_host"], names["not_ours"]} <= left
    assert manager.all_steps() == [2]
