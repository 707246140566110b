"""Issue 12, points 5-12: checkpoints, weight files and the Titanic loader under attack.

Every test here failed before its fix. The attack runs in CI size: fuzzed
checkpoints (byte flips, truncations, re-hashed header edits, length fields,
nesting depth, huge counts), fuzzed safetensors and .npz files, a kill -9 loop,
concurrent savers, a full disk, FIFOs, a zip bomb and a hostile HTTP server on
127.0.0.1. Each case must give the library's own error or the right values,
never a silent wrong result. Arrays are NumPy throughout (no jit compiles).
RELIABILITY.md records the counts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zipfile
from pathlib import Path

import background
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import nnxlike as nnx
from nnxlike import _atomic
from nnxlike import _checkpoint_file as cf
from nnxlike import checkpoint as ckpt
from nnxlike.interop import torch as it

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261201


def _tree() -> dict:
    """A small tree of every leaf kind a checkpoint records (NumPy, no JAX)."""
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((2, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
        "n": np.arange(-2, 2, dtype=np.int32),
        "flag": np.array([True, False]),
        "s": np.float32(1.5),
        "step": 7,
        "lr": 0.25,
        "nested": {"list": [np.arange(3, dtype=np.int8), np.ones(2, np.uint16)]},
    }


def _target() -> dict:
    """A restore target of the same structure (NumPy leaves come back as NumPy)."""
    return {
        "w": np.zeros((2, 3), np.float32),
        "b": np.zeros(3, ml_dtypes.bfloat16),
        "n": np.zeros(4, np.int32),
        "flag": np.zeros(2, bool),
        "s": np.float32(0),
        "step": 0,
        "lr": 0.0,
        "nested": {"list": [np.zeros(3, np.int8), np.zeros(2, np.uint16)]},
    }


def _flat(tree, prefix=()) -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, k)))
        return out
    if isinstance(tree, list):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flat(v, (*prefix, i)))
        return out
    return {prefix: tree}


def _same(a, b) -> bool:
    """Bit-exact equality of two leaves (arrays or numbers, same type family)."""
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return type(a) is type(b) and a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_tree(got, want) -> bool:
    g, w = _flat(got), _flat(want)
    return g.keys() == w.keys() and all(_same(g[k], w[k]) for k in w)


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def _temporaries(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n)


# -- 5. concurrent savers -----------------------------------------------------------


def test_concurrent_savers_exactly_one_wins(tmp_path):
    """Threads race to create one file with overwrite=False: one wins, the file is
    whole and is the winner's, every loser hears FileExistsError."""
    big = 1 << 18
    for round_ in range(6):
        path = tmp_path / f"race{round_}.nnx"
        barrier = threading.Barrier(6)
        results: dict[int, object] = {}

        def saver(i: int, path=path, barrier=barrier, results=results) -> None:
            tree = {"who": i, "x": np.full(big, i, np.int32)}
            barrier.wait()
            try:
                ckpt.save(path, tree)
                results[i] = "ok"
            except FileExistsError as e:
                results[i] = e

        threads = [threading.Thread(target=saver, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, r in results.items() if r == "ok"]
        assert len(winners) == 1, results
        for i, r in results.items():
            if i not in winners:
                assert "already exists" in str(r) and str(path) in str(r)
        data = ckpt.restore(path)
        assert data["who"] == winners[0]
        assert bool((np.asarray(data["x"]) == winners[0]).all())
        assert _temporaries(tmp_path) == []


def test_a_file_created_during_the_save_is_kept(tmp_path, monkeypatch):
    """The race made deterministic: another saver's file appears after the early
    check, while this save writes. Before the fix os.replace silently replaced it."""
    path = tmp_path / "a.nnx"
    other = tmp_path / "other.nnx"
    ckpt.save(other, {"who": 2})
    real_write = cf._write

    def write_then_race(f, leaves):
        real_write(f, leaves)
        os.link(other, path)  # the other saver finishes first

    monkeypatch.setattr(cf, "_write", write_then_race)
    with pytest.raises(FileExistsError, match="another save created it"):
        ckpt.save(path, {"who": 1})
    monkeypatch.undo()
    assert ckpt.restore(path)["who"] == 2
    assert _temporaries(tmp_path) == []


def test_exclusive_save_without_hard_links(tmp_path, monkeypatch):
    """Where link(2) is unsupported, O_EXCL reserves the name: still one winner."""

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_atomic.os, "link", no_link)
    path = tmp_path / "a.nnx"
    ckpt.save(path, {"v": 1})
    assert ckpt.restore(path)["v"] == 1
    real_write = cf._write

    def write_then_race(f, leaves):
        real_write(f, leaves)
        path.write_bytes(b"the other saver")

    path.unlink()
    monkeypatch.setattr(cf, "_write", write_then_race)
    with pytest.raises(FileExistsError):
        ckpt.save(path, {"v": 2})
    assert path.read_bytes() == b"the other saver"
    assert _temporaries(tmp_path) == []


# -- 6. temporaries of killed saves, and a full disk ---------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_stale_temporaries_are_removed_before_writing_and_full_disk_says_so(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.nnx"
    ckpt.save(path, _tree())
    before = path.read_bytes()
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f".model.nnx.tmp-{host}-{dead}-0123abcd"
    stale.write_bytes(b"x" * 1000)  # what a kill -9 leaves
    alive = tmp_path / f".model.nnx.tmp-{host}-{os.getpid()}-0123abcd"
    alive.write_bytes(b"in flight")
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullDisk(f, 100) if "x" in mode else f

    monkeypatch.setattr(_atomic, "open", full_open, raising=False)
    with pytest.raises(OSError) as info:
        ckpt.save(path, {"w": np.ones(1000, np.float32)}, overwrite=True)
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "No space left on device" in msg and "disk or quota is full" in msg
    assert str(path) in msg and "unchanged" in msg
    assert not stale.exists()  # cleaned first, although the save then failed
    assert alive.exists()  # a live writer's file is never touched
    assert path.read_bytes() == before
    assert _temporaries(tmp_path) == [alive.name]
    assert _same_tree(ckpt.restore(path, _target()), _tree())
    # The manager also cleans before it writes.
    manager = ckpt.CheckpointManager(tmp_path / "m")
    stale2 = tmp_path / "m" / f".step_00000003.nnx.tmp-{host}-{dead}-0123abcd"
    stale2.write_bytes(b"partial")
    with pytest.raises(OSError, match="disk or quota is full"):
        manager.save(3, {"w": np.ones(1000, np.float32)})
    assert os.listdir(tmp_path / "m") == []


_SAVER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from nnxlike import checkpoint

    root, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    n = 1 << 20  # 4 MB per save: a kill often lands inside one
    for race in range(5):  # 4 processes save one new file at the same moment
        path = os.path.join(root, f"race{race}.nnx")
        start = time.time() + 0.2
        pids = []
        for who in range(4):
            pid = os.fork()
            if pid == 0:
                x = np.full(n, who, np.float32)
                time.sleep(max(0.0, start - time.time()))
                try:
                    checkpoint.save(path, {"who": who, "x": x})
                except FileExistsError as e:
                    os._exit(3 if "already exists" in str(e) else 4)
                os._exit(0)
            pids.append(pid)
        codes = [os.WEXITSTATUS(os.waitpid(pid, 0)[1]) for pid in pids]
        print("race", race, *codes, flush=True)
    for t in range(trials):
        path = os.path.join(root, f"t{t}", "ckpt.nnx")
        checkpoint.save(path, {"i": 0, "x": np.zeros(n, np.float32)})
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child saves forever and reports each completed save
            os.close(r)
            i = 1
            while True:
                x = np.full(n, i, np.float32)
                checkpoint.save(path, {"i": i, "x": x}, overwrite=True)
                os.write(w, f"{i}\\n".encode())
                i += 1
        os.close(w)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        done = os.read(r, 1 << 20).decode().split()
        os.close(r)
        last = int(done[-1]) if done else 0
        print(f"kill {t} {last} {os.WTERMSIG(status)}", flush=True)
    """
)


KILL_TRIALS = 20


@background.job("saver_processes")
def _run_savers(tmp_path_factory):
    """The savers' subprocess (a background job: tests/background.py)."""
    tmp_path = tmp_path_factory.mktemp("savers")
    env = dict(background.environ(), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _SAVER, str(tmp_path), str(KILL_TRIALS), str(SEED)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return tmp_path, out


@pytest.fixture(scope="module")
def saver_processes(tmp_path_factory):
    return background.result("saver_processes", tmp_path_factory)


def test_process_races_and_kill_9_loop(saver_processes):
    """Forked processes: 5 races of 4 savers (exactly one wins each), then 20
    trials of a saver killed at a random moment."""
    trials = KILL_TRIALS
    tmp_path, out = saver_processes
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    races = [row[2:] for row in rows if row[0] == "race"]
    assert len(races) == 5
    for r, codes in enumerate(races):  # real processes: exactly one wins
        assert sorted(codes) == ["0", "3", "3", "3"], codes
        data = ckpt.restore(tmp_path / f"race{r}.nnx")
        assert codes[data["who"]] == "0"
        assert bool((np.asarray(data["x"]) == data["who"]).all())
    lines = [row[1:] for row in rows if row[0] == "kill"]
    assert len(lines) == trials
    left_over = 0
    for t, last, sig in lines:
        assert int(sig) == signal.SIGKILL
        folder = tmp_path / f"t{t}"
        left_over += len(_temporaries(folder))
        data = ckpt.restore(
            folder / "ckpt.nnx", {"i": 0, "x": np.zeros(1 << 20, np.float32)}
        )
        # The last save reported finished, or the next if the kill came between
        # its rename and its report; the array is that save's, bit for bit.
        assert data["i"] in (int(last), int(last) + 1)
        assert data["x"].tobytes() == np.full(1 << 20, data["i"], np.float32).tobytes()
        ckpt.save(folder / "ckpt.nnx", {"i": -1}, overwrite=True)  # the next save
        assert _temporaries(folder) == []
        assert ckpt.restore(folder / "ckpt.nnx") == {"i": -1}
    print(f"kill -9 loop: {trials} trials, {left_over} temporaries left by kills")


# -- 7. manager steps ---------------------------------------------------------------


def test_manager_steps_are_integers_and_odd_names_are_named(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    assert manager.save(2, {"v": 2})
    for bad in (2.5, 2.0, np.float32(2), True, np.bool_(True), "2", None):
        with pytest.raises(TypeError, match="step must be an integer"):
            manager.save(bad, {"v": -1})
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        manager.save(-1, {"v": -1})
    with pytest.raises(TypeError, match="never rounded"):
        manager.restore(2.5)
    assert ckpt.restore(manager.path(2)) == {"v": 2}  # step 2 was not overwritten
    assert manager.save(np.int64(4), {"v": 4})
    assert manager.save(jnp.asarray(6, jnp.int32), {"v": 6})
    assert manager.all_steps() == [2, 4, 6]
    (tmp_path / "step_5.nnx").write_bytes(b"hand-made")
    assert manager.all_steps() == [2, 4, 6]  # ignored, documented
    with pytest.raises(ckpt.CheckpointNotFoundError) as info:
        manager.restore(5)
    msg = str(info.value)
    assert "saved steps: [2, 4, 6]" in msg
    assert "step_5.nnx (not this manager's name for step 5" in msg
    assert "step_00000005.nnx" in msg and "rename it" in msg
    keep = ckpt.CheckpointManager(tmp_path, max_to_keep=1)
    keep.save(8, {"v": 8})
    assert keep.all_steps() == [8] and (tmp_path / "step_5.nnx").exists()


# -- 8. update and replace_by_pure_dict check shapes and dtypes --------------------


def test_update_refuses_other_shapes_and_dtype_kinds():
    model = nnx.Linear(2, 5, rngs=nnx.Rngs(0))
    before = np.asarray(model.kernel.value).copy()
    small = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError) as info:  # StructureError
        nnx.update(model, small)
    msg = str(info.value)
    assert "update: the new value for 'kernel' has shape (2, 3)" in msg
    assert "holds shape (2, 5) (float32)" in msg and "nnx.Param(new_value)" in msg
    assert np.asarray(model.kernel.value).tobytes() == before.tobytes()
    # Bias first matching, kernel refused: nothing at all is written.
    bias_ok = {"bias": np.ones(5, np.float32), "kernel": np.ones((3, 5), np.float32)}
    with pytest.raises(ValueError, match=r"'kernel' has shape \(3, 5\)"):
        nnx.update(model, bias_ok)
    assert not bool((np.asarray(model.bias.value) == 1).all())
    with pytest.raises(
        ValueError, match=r"dtype int32 \(integer\).*float32 \(floating\)"
    ):
        nnx.update(model, {"bias": np.ones(5, np.int32)})
    nnx.update(model, {"bias": np.full(5, 2, ml_dtypes.bfloat16)})  # precision: fine
    assert model.bias.value.dtype == ml_dtypes.bfloat16
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 5, rngs=nnx.Rngs(0)))
    nnx.update(abstract, nnx.state(model))  # abstract targets take arrays
    assert isinstance(abstract.kernel.value, jax.Array)
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"'kernel' has shape \(2, 3\)"):
        nnx.update(abstract, small)
    stacked = nnx.Linear(2, 5, rngs=nnx.Rngs(0))  # leading axes: stacking by hand
    nnx.update(stacked, jax.tree.map(lambda x: np.stack([x] * 4), nnx.state(model)))
    assert stacked.kernel.value.shape == (4, 2, 5)
    with pytest.raises(ValueError, match=r"'kernel' has shape \(4, 5, 2\)"):
        nnx.update(stacked, {"kernel": np.zeros((4, 5, 2), np.float32)})
    holder = nnx.Variable(None)
    box = nnx.Dict(v=holder)
    nnx.update(box, {"v": np.ones(3)})  # nothing held: anything goes
    assert holder.value.shape == (3,)


def test_replace_by_pure_dict_refuses_other_shapes_and_dtypes():
    state = nnx.state(nnx.Linear(2, 5, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError, match=r"replace_by_pure_dict: .*'bias' has shape \(3,\)"
    ):
        state.replace_by_pure_dict({"bias": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"'kernel' has dtype bool"):
        state.replace_by_pure_dict({"kernel": np.zeros((2, 5), bool)})
    state.replace_by_pure_dict({"bias": np.full(5, 3, np.float32)})
    assert float(state["bias"].value.sum()) == 15.0


# -- 9. 0-d arrays through safetensors --------------------------------------------


class _Scaled(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.asarray(2.5, jnp.float32))
        self.bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))


def test_scalars_round_trip_through_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    it.save_safetensors(path, {"s": np.float32(3), "n": np.zeros((), np.int64)})
    back = it.load_safetensors(path)
    assert back["s"].shape == () and back["s"] == 3 and back["n"].shape == ()
    model = _Scaled()
    sd = it.to_torch_state_dict(model)
    assert sd["scale"].shape == () and sd["bn.num_batches_tracked"].shape == ()
    it.save_safetensors(path, sd)
    twin = _Scaled()
    twin.scale.value = jnp.asarray(0.0, jnp.float32)
    assert it.load_torch_state_dict(twin, path) == ([], [])
    assert float(twin.scale.value) == 2.5 and twin.scale.value.shape == ()


# -- 10. crafted files: targeted cases --------------------------------------------


def _pack(header: bytes, data: bytes) -> bytes:
    pre = cf.PREAMBLE.pack(
        cf.MAGIC,
        cf.VERSION,
        0,
        cf.PREAMBLE.size + len(data),
        len(header),
        hashlib.sha256(header).digest(),
    )
    return pre + data + header


def _split_file(blob: bytes) -> tuple[dict, bytes]:
    _, _, _, h_off, h_len, _ = cf.PREAMBLE.unpack(blob[: cf.PREAMBLE.size])
    return json.loads(blob[h_off : h_off + h_len]), blob[cf.PREAMBLE.size : h_off]


@pytest.fixture(scope="module")
def base_blob(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("base") / "base.nnx"
    ckpt.save(path, _tree())
    return path.read_bytes()


def _restore_both(path: Path):
    """restore(path) and restore(path, target): (pure, targeted) or the error."""
    out = []
    for target in (None, _target()):
        try:
            out.append(ckpt.restore(path, target))
        except ckpt.CheckpointError as e:
            assert str(path) in str(e)
            out.append(e)
    return out


def test_crafted_checkpoint_headers_give_the_librarys_error(tmp_path, base_blob):
    meta, data = _split_file(base_blob)
    recs = meta["leaves"]

    def craft(name: str, header: bytes, data_: bytes = data) -> Path:
        p = tmp_path / f"{name}.nnx"
        p.write_bytes(_pack(header, data_))
        return p

    cases = {
        "deep": b'{"format": "nnxlike.checkpoint", "leaves": '
        + b"[" * 100000
        + b"]" * 100000
        + b"}",
        "bigint": json.dumps({**meta, "version": 1})
        .encode()
        .replace(b'"version": 1', b'"version": ' + b"9" * 5000),
        "dup": json.dumps({**meta, "leaves": recs + [recs[0]]}).encode(),
        "root_and_more": json.dumps(
            {**meta, "leaves": [{**recs[0], "path": []}, *recs[1:]]}
        ).encode(),
        "prefix": json.dumps(
            {**meta, "leaves": [{**recs[0], "path": ["nested"]}, *recs[1:]]}
        ).encode(),
        "ndim": json.dumps(
            {
                **meta,
                "leaves": [
                    *recs,
                    {
                        **recs[0],
                        "shape": [1] * 65,
                        "nbytes": 4,
                        "offset": len(data) + 64,
                    },
                ],
            }
        ).encode(),
        "zero_huge": json.dumps(
            {
                **meta,
                "leaves": [
                    *recs,
                    {
                        **recs[0],
                        "path": ["z"],
                        "shape": [0, 2**62, 2**62],
                        "nbytes": 0,
                        "offset": len(data) + 64,
                    },
                ],
            }
        ).encode(),
        "longdouble": json.dumps(
            {**meta, "leaves": [{**recs[0], "dtype": "float128"}, *recs[1:]]}
        ).encode(),
        "not_dicts": json.dumps({**meta, "leaves": [1, 2, 3]}).encode(),
        "key_not_dict": json.dumps(
            {**meta, "leaves": [{**recs[0], "key": "threefry"}, *recs[1:]]}
        ).encode(),
    }
    for name, header in cases.items():
        path = craft(name, header)
        for got in _restore_both(path):
            assert isinstance(got, ckpt.CorruptCheckpointError), (name, got)
    # Record-count amplification stops at the cap, before any array is made.
    many = [
        {
            "path": [f"e{i}"],
            "kind": None,
            "dtype": "float32",
            "shape": [0],
            "offset": 64,
            "nbytes": 0,
            "sha256": hashlib.sha256(b"").hexdigest(),
        }
        for i in range(2001)
    ]
    path = craft("many", json.dumps({**meta, "leaves": many}).encode(), b"")
    old = cf.MAX_RECORDS
    cf.MAX_RECORDS = 2000
    try:
        with pytest.raises(ckpt.CorruptCheckpointError, match="2001 records"):
            ckpt.restore(path)
    finally:
        cf.MAX_RECORDS = old
    # A header larger than MAX_HEADER_BYTES is refused from the preamble alone.
    blob = bytearray(base_blob)
    struct.pack_into("<Q", blob, 24, cf.MAX_HEADER_BYTES + 1)
    (tmp_path / "h.nnx").write_bytes(bytes(blob))
    with pytest.raises(ckpt.CorruptCheckpointError, match="MAX_HEADER_BYTES"):
        ckpt.restore(tmp_path / "h.nnx")


def test_64_bit_values_come_back_exact_without_a_target(tmp_path):
    """JAX without x64 would wrap 3e9 to -1294967296 and round 1 + 1e-12 to 1."""
    tree = {"i": np.array([3_000_000_000, -(2**40)]), "u": np.array([2**40], np.uint64)}
    tree["f"] = np.array([1 + 1e-12, 1e300])
    ckpt.save(tmp_path / "a.nnx", tree)
    out = ckpt.restore(tmp_path / "a.nnx")
    assert all(_same(out[k], v) for k, v in tree.items())


def test_longdouble_is_refused_at_save(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"'x'.*longdouble.*float64"):
        ckpt.save(tmp_path / "a.nnx", {"x": np.zeros(2, np.longdouble)})
    assert os.listdir(tmp_path) == []


def _never_blocks(fn, what: str, *args) -> BaseException:
    """Run ``fn(*args)`` in a thread; a call still blocked after 20 s is a hang."""
    box: list = []

    def run():
        try:
            fn(*args)
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"{what} blocked on a FIFO"
    return box[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_named_like_data_files_are_refused(tmp_path):
    fifos = []
    for name in ("ckpt.nnx", "w.safetensors", "w.npz"):
        os.mkfifo(tmp_path / name)
        fifos.append(tmp_path / name)
    try:
        e = _never_blocks(ckpt.restore, "restore", tmp_path / "ckpt.nnx")
        assert isinstance(e, ckpt.CorruptCheckpointError) and "FIFO" in str(e)
        e = _never_blocks(it.load_safetensors, "load_safetensors", fifos[1])
        assert isinstance(e, it.SafetensorsError) and "FIFO" in str(e)
        e = _never_blocks(
            nnx.load_torch_state_dict,
            "load .npz",
            nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
            fifos[2],
        )
        assert isinstance(e, it.TorchStateDictError) and "FIFO" in str(e)
    finally:
        for fifo in fifos:  # unblock a reader that got stuck anyway
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass


def test_npz_zip_bomb_costs_no_memory(tmp_path):
    """64 MiB of zeros deflate to ~64 KB; a model that does not want them must not
    pay for them, and a zip directory that lies about sizes is refused."""
    path = tmp_path / "bomb.npz"
    n = 16 * 2**20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("weight.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (n,)}
            )
            zeros = bytes(2**20)
            for _ in range(n * 4 // len(zeros)):
                f.write(zeros)
    assert path.stat().st_size < 2**20
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))  # torch "weight" is (2, 2)
    tracemalloc.start()
    try:
        with pytest.raises(
            it.TorchStateDictError, match=r"'weight'.*expected torch shape \(2, 2\)"
        ):
            nnx.load_torch_state_dict(model, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    # A directory entry that declares fewer bytes than its .npy header implies.
    blob = bytearray(path.read_bytes())
    cd = blob.rindex(b"PK\x01\x02")
    size_at = cd + 24  # uncompressed size field of the central directory record
    if struct.unpack_from("<I", blob, size_at)[0] == 0xFFFFFFFF:
        pytest.skip("zip64 sizes")
    struct.pack_into("<I", blob, size_at, 1000)
    (tmp_path / "lie.npz").write_bytes(bytes(blob))
    with pytest.raises(it.TorchStateDictError, match="lie.npz"):
        nnx.load_torch_state_dict(model, tmp_path / "lie.npz")


# -- 10. the attack in CI size: fuzzed checkpoints --------------------------------

_HOSTILE = [-1, 0, 1, 2**31, 2**63, 2**64, -(2**63), 1e308, float("inf")]
_HOSTILE += [float("nan"), "", "x" * 500, "float128", "object", "<f4", "V8", "int64"]
_HOSTILE += ["bfloat16", "int32", None, True, [], {}, [1, 2], [[1]], {"a": 1}]
_HOSTILE += ["0" * 64, [0, 2**62, 2**62], [1] * 70, [3, 2], [6], [2, 3]]
_FIELDS = ["path", "kind", "dtype", "shape", "offset", "nbytes", "sha256"]
_FIELDS += ["python", "key"]


def _decode_checkpoint(blob: bytes) -> dict:
    """An independent reading of what a checkpoint file says (no nnxlike code)."""
    _, _, _, h_off, h_len, _ = cf.PREAMBLE.unpack(blob[: cf.PREAMBLE.size])
    out: dict = {}
    for rec in json.loads(blob[h_off : h_off + h_len])["leaves"]:
        raw = blob[rec["offset"] : rec["offset"] + rec["nbytes"]]
        assert hashlib.sha256(raw).hexdigest() == rec["sha256"]
        dtype = np.dtype(getattr(ml_dtypes, rec["dtype"], rec["dtype"]))
        value = np.frombuffer(raw, dtype).reshape(rec["shape"])
        if "python" in rec:
            value = {"int": int, "float": float, "bool": bool, "complex": complex}[
                rec["python"]
            ](value[()])
        out[tuple(rec["path"])] = value
    return out


def _checkpoint_variants(blob: bytes, rng: np.random.Generator):
    meta, data = _split_file(blob)
    n = len(blob)
    for _ in range(120):  # accidental damage: 1 to 3 flipped bytes anywhere
        b = bytearray(blob)
        for i in rng.choice(n, size=rng.integers(1, 4), replace=False):
            b[i] ^= int(rng.integers(1, 256))
        yield "byte flip", bytes(b)
    for cut in rng.choice(n, size=40, replace=False):
        yield "truncation", blob[:cut]
    for _ in range(10):
        yield "appended bytes", blob + rng.bytes(int(rng.integers(1, 100)))
    fields = {"version": (8, "<I"), "reserved": (12, "<I"), "offset": (16, "<Q")}
    fields["length"] = (24, "<Q")
    for _ in range(30):  # length fields of the preamble, not re-hashed
        name = list(fields)[rng.integers(len(fields))]
        at, fmt = fields[name]
        limit = 2**32 if fmt == "<I" else 2**64
        values = [0, 1, limit - 1, n, n - 1, n + 1, 2**31, int(rng.integers(2**31))]
        value = values[rng.integers(len(values))] % limit
        b = bytearray(blob)
        struct.pack_into(fmt, b, at, value)
        yield "preamble length field", bytes(b)
    for _ in range(120):  # crafted: header edits, re-hashed so they pass the checksum
        m = json.loads(json.dumps(meta))
        recs = m["leaves"]
        how = rng.integers(6)
        if how <= 2:
            rec = recs[rng.integers(len(recs))]
            rec[_FIELDS[rng.integers(len(_FIELDS))]] = _HOSTILE[
                rng.integers(len(_HOSTILE))
            ]
        elif how == 3:
            i = rng.integers(len(recs))
            recs.insert(int(rng.integers(len(recs))), json.loads(json.dumps(recs[i])))
        elif how == 4:
            del recs[rng.integers(len(recs))]
        else:
            m[["format", "version", "leaves"][rng.integers(3)]] = _HOSTILE[
                rng.integers(len(_HOSTILE))
            ]
        yield "header field edit (re-hashed)", _pack(json.dumps(m).encode(), data)
    # Same-size reinterpretations: a consistent file that says other things.
    for dtype, shape in [("int32", [2, 3]), ("uint32", [6]), ("float32", [3, 2])]:
        m = json.loads(json.dumps(meta))
        m["leaves"][0].update(dtype=dtype, shape=shape)
        yield "header field edit (re-hashed)", _pack(json.dumps(m).encode(), data)
    for depth in (10, 100, 1000, 10_000, 100_000, 300_000, 50, 500, 5000, 50_000):
        nest = "[" * depth + "]" * depth
        where = ["path", "shape", "leaves"][depth % 3]
        m = json.dumps({**meta, "leaves": [{**meta["leaves"][0], where: 0}]})
        m = m.replace('"' + where + '": 0', '"' + where + '": ' + nest)
        yield "nesting depth", _pack(m.encode(), data)
    rec0 = meta["leaves"][0]
    huge = [
        {**rec0, "shape": [2**40, 2**40], "nbytes": 4 * 2**80},
        {**rec0, "shape": [0, 2**62, 2**62, 2**62]},
        {**rec0, "shape": [1] * 65},
        {**rec0, "path": ["k"] * 1001},
        {**rec0, "nbytes": 2**70},
        {**rec0, "offset": 2**70},
        {**rec0, "shape": [2**64]},
        {**rec0, "key": {"impl": "x", "dtype": "key", "shape": [2**64]}},
    ]
    for rec in huge:
        m = {**meta, "leaves": [rec, *meta["leaves"][1:]]}
        yield "huge counts", _pack(json.dumps(m).encode(), data)
    empty = {**rec0, "shape": [0], "nbytes": 0, "sha256": hashlib.sha256().hexdigest()}
    many = [{**empty, "path": [f"e{i}"], "offset": 64} for i in range(3000)]
    yield "huge counts", _pack(json.dumps({**meta, "leaves": many}).encode(), b"")
    yield (
        "huge counts",
        _pack(json.dumps({**meta, "leaves": [*many[:2], *many[:2]]}).encode(), b""),
    )


def test_fuzzed_checkpoints_never_give_silent_wrong_values(tmp_path, base_blob):
    rng = np.random.default_rng(SEED)
    counts: dict = {}
    path = tmp_path / "fuzz.nnx"
    original = _tree()
    old = cf.MAX_RECORDS
    cf.MAX_RECORDS = 2000  # the cap, scaled down so the amplification case is quick
    try:
        for kind, blob in _checkpoint_variants(base_blob, rng):
            path.write_bytes(blob)
            pure, targeted = _restore_both(path)
            outcome = "error" if isinstance(targeted, Exception) else "right values"
            if not isinstance(targeted, Exception):
                assert _same_tree(targeted, original), kind
            if not isinstance(pure, Exception):
                want = _decode_checkpoint(blob)
                got = _flat(pure)
                assert got.keys() == want.keys(), kind
                for k, v in want.items():
                    g = (
                        got[k]
                        if isinstance(got[k], (int, float))
                        else np.asarray(got[k])
                    )
                    assert _same(g, v), (kind, k)
                if outcome == "error":
                    outcome = "pure: file's values; target: error"
            c = counts.setdefault(kind, {})
            c[outcome] = c.get(outcome, 0) + 1
    finally:
        cf.MAX_RECORDS = old
    total = sum(sum(c.values()) for c in counts.values())
    assert total >= 300
    for kind in ("byte flip", "truncation", "appended bytes", "nesting depth"):
        assert set(counts[kind]) == {"error"}, (kind, counts[kind])
    print(f"checkpoint fuzz: {total} variants: {json.dumps(counts)}")


# -- 10. the attack in CI size: fuzzed safetensors and .npz --------------------------

_ST_DTYPES = {"BOOL": np.bool_, "U8": "<u1", "I8": "<i1", "U16": "<u2", "I16": "<i2"}
_ST_DTYPES.update({"U32": "<u4", "I32": "<i4", "U64": "<u8", "I64": "<i8"})
_ST_DTYPES.update({"F16": "<f2", "F32": "<f4", "F64": "<f8"})
_ST_DTYPES.update({"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn})
_ST_DTYPES["F8_E5M2"] = ml_dtypes.float8_e5m2


def _st_tensors() -> dict:
    rng = np.random.default_rng(1)
    return {
        "w": rng.standard_normal((2, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
        "s": np.float32(4.0),
        "n": np.arange(4, dtype=np.int64),
        "flag": np.array([True, False]),
        "e": np.zeros((0, 3), np.float32),
    }


def _decode_safetensors(blob: bytes) -> dict:
    """An independent reading, as the format's reference implementation reads."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    buf = blob[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(buf[begin:end], dtype).reshape(info["shape"])
    return out


def _safetensors_variants(blob: bytes, rng: np.random.Generator):
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]

    def repack(h: bytes, d: bytes = data) -> bytes:
        return len(h).to_bytes(8, "little") + h + d

    for _ in range(60):
        b = bytearray(blob)
        b[int(rng.integers(8, 8 + n))] ^= int(rng.integers(1, 256))
        yield "header byte flip", bytes(b)
    for _ in range(20):
        b = bytearray(blob)
        b[int(rng.integers(8 + n, len(blob)))] ^= int(rng.integers(1, 256))
        yield "data byte flip", bytes(b)
    for cut in rng.choice(len(blob), size=30, replace=False):
        yield "truncation", blob[:cut]
    for _ in range(20):
        values = [0, 1, 7, n - 1, n + 1, 2**63, 2**64 - 1, len(blob)]
        value = values[rng.integers(len(values))]
        yield "length field", value.to_bytes(8, "little") + blob[8:]
    names = [k for k in header if k != "__metadata__"]
    for _ in range(50):
        h = json.loads(json.dumps(header))
        info = h[names[rng.integers(len(names))]]
        field = ["dtype", "shape", "data_offsets"][rng.integers(3)]
        info[field] = _HOSTILE[rng.integers(len(_HOSTILE))]
        yield "header field edit", repack(json.dumps(h).encode())
    h = json.dumps(header)
    yield (
        "duplicate name",
        repack(h.replace('{"', '{"w": ' + json.dumps(header["w"]) + ', "', 1).encode()),
    )
    yield (
        "metadata not str",
        repack(json.dumps({**header, "__metadata__": {"a": 1}}).encode()),
    )
    flag = header["flag"]["data_offsets"][0]
    b = bytearray(blob)
    b[8 + n + flag] = 7
    yield "BOOL byte not 0/1", bytes(b)
    for depth in (10, 100, 1000, 10_000, 100_000, 20, 200, 2000, 20_000, 200_000):
        nest = "[" * depth + "]" * depth
        yield "nesting depth", repack(('{"w": ' + nest + "}").encode())
    zero = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    many = {f"t{i}": zero for i in range(3000)}
    yield "huge counts", repack(json.dumps(many).encode(), b"")
    for shape in ([0, 2**62, 2**62], [1] * 65, [2**64], [2**40, 2**40]):
        h = {"z": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}
        yield "huge counts", repack(json.dumps(h).encode(), b"")


def test_fuzzed_safetensors_never_give_silent_wrong_values(tmp_path, monkeypatch):
    from nnxlike.interop import _safetensors as st

    base = tmp_path / "base.safetensors"
    it.save_safetensors(base, _st_tensors(), metadata={"format": "np"})
    blob = base.read_bytes()
    monkeypatch.setattr(st, "MAX_TENSORS", 2000)
    rng = np.random.default_rng(SEED + 1)
    counts: dict = {}
    path = tmp_path / "fuzz.safetensors"
    for kind, variant in _safetensors_variants(blob, rng):
        path.write_bytes(variant)
        try:
            got = it.load_safetensors(path)
        except it.SafetensorsError as e:
            assert str(path) in str(e)
            outcome = "error"
        else:
            want = _decode_safetensors(variant)
            assert got.keys() == want.keys(), kind
            assert all(_same(got[k], want[k]) for k in want), kind
            same = got.keys() == _st_tensors().keys() and all(
                _same(got[k], v) for k, v in _st_tensors().items()
            )
            outcome = "original values" if same else "the file's values (no checksum)"
        c = counts.setdefault(kind, {})
        c[outcome] = c.get(outcome, 0) + 1
    for kind in ("truncation", "nesting depth", "duplicate name", "BOOL byte not 0/1"):
        assert set(counts[kind]) == {"error"}, (kind, counts[kind])
    total = sum(sum(c.values()) for c in counts.values())
    print(f"safetensors fuzz: {total} variants: {json.dumps(counts)}")
    assert total >= 150


def _npz_variants(blob: bytes, rng: np.random.Generator):
    for _ in range(40):
        b = bytearray(blob)
        b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
        yield "byte flip", bytes(b)
    for cut in rng.choice(len(blob), size=12, replace=False):
        yield "truncation", blob[:cut]
    cd = blob.index(b"PK\x01\x02")
    for value in (0, 1, 10, 2**31, 2**32 - 2):
        b = bytearray(blob)
        struct.pack_into("<I", b, cd + 24, value)  # declared uncompressed size
        yield "declared size edit", bytes(b)
    at = blob.find(b"'shape': (")
    for digit in b"90371" if at >= 0 else b"":  # a stored (not deflated) .npy
        b = bytearray(blob)
        b[at + len(b"'shape': (")] = digit
        yield "npy header edit", bytes(b)


def test_fuzzed_npz_never_gives_silent_wrong_values(tmp_path):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    sd = it.to_torch_state_dict(model)
    counts: dict = {}
    rng = np.random.default_rng(SEED + 2)
    for save in (np.savez, np.savez_compressed):
        base = tmp_path / "base.npz"
        save(base, **sd)
        blob = base.read_bytes()
        path = tmp_path / "fuzz.npz"
        for kind, variant in _npz_variants(blob, rng):
            path.write_bytes(variant)
            twin = nnx.Linear(3, 2, rngs=nnx.Rngs(5))
            before = it.to_torch_state_dict(twin)
            try:
                nnx.load_torch_state_dict(twin, path)
            except it.TorchStateDictError as e:
                assert str(path) in str(e) or "does not fit" in str(e)
                after = it.to_torch_state_dict(twin)
                assert all(_same(after[k], before[k]) for k in before)  # untouched
                outcome = "error"
            else:
                after = it.to_torch_state_dict(twin)
                assert all(_same(after[k], sd[k]) for k in sd), kind
                outcome = "right values"
            c = counts.setdefault(kind, {})
            c[outcome] = c.get(outcome, 0) + 1
    total = sum(sum(c.values()) for c in counts.values())
    print(f"npz fuzz: {total} variants: {json.dumps(counts)}")
    assert total >= 100


# -- 11. the Titanic loader verifies what it reads ---------------------------------

SHARED = ROOT.parent / "shared" / "data" / "titanic"
if os.environ.get("NNXLIKE_TITANIC_DIR"):
    SHARED = Path(os.environ["NNXLIKE_TITANIC_DIR"])
needs_titanic = pytest.mark.skipif(
    not (SHARED / "train.csv").is_file(), reason="Titanic train.csv not available"
)


@pytest.fixture
def titanic_env(tmp_path, monkeypatch) -> Path:
    from nnxlike.datasets import titanic as titanic_mod

    for var in ("NNXLIKE_TITANIC_DIR", "NNXLIKE_TITANIC_URL", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NNXLIKE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(titanic_mod, "KAGGLE_DIR", tmp_path / "kaggle")
    with socket.socket() as s:  # nothing listens there: no download can happen
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(titanic_mod, "TITANIC_URL", f"http://127.0.0.1:{port}/x")
    return tmp_path / "cache" / "titanic"


def _edits(raw: bytes) -> dict[str, bytes]:
    lines = raw.split(b"\n")
    row = lines[1].split(b",")  # 1,0,3,"Braund, Mr. Owen Harris",male,22,...
    aged = b",".join(row[:6] + [b"23"] + row[7:])
    flipped = b",".join(row[:1] + [b"1"] + row[2:])
    return {
        "edited Age": b"\n".join([lines[0], aged, *lines[2:]]),
        "flipped label": b"\n".join([lines[0], flipped, *lines[2:]]),
        "cut row": b"\n".join([lines[0], *lines[2:]]),
        "duplicated rows": b"\n".join([*lines[:-1], *lines[1:20], lines[-1]]),
        "binary garbage": bytes(range(256)) * 40,
    }


@needs_titanic
def test_titanic_files_are_verified_on_every_read(tmp_path, titanic_env, monkeypatch):
    from nnxlike.datasets import (
        TitanicChecksumError,
        TitanicFormatError,
        load_titanic,
    )
    from nnxlike.datasets import titanic as titanic_mod

    raw = (SHARED / "train.csv").read_bytes()
    good = load_titanic("train", data_dir=SHARED, download=False)
    assert len(good) == 891
    places = {
        "cache": titanic_env,
        "Kaggle folder": titanic_mod.KAGGLE_DIR,
        "NNXLIKE_TITANIC_DIR": tmp_path / "env",
        "data_dir": tmp_path / "arg",
    }
    for label, folder in places.items():
        for what, body in _edits(raw).items():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "train.csv").write_bytes(body)
            kwargs = {"data_dir": folder} if label == "data_dir" else {}
            if label == "NNXLIKE_TITANIC_DIR":
                monkeypatch.setenv("NNXLIKE_TITANIC_DIR", str(folder))
            with pytest.raises(TitanicChecksumError) as info:
                load_titanic("train", download=False, **kwargs)
            msg = str(info.value)
            assert str(folder / "train.csv") in msg, (label, what)
            assert hashlib.sha256(body).hexdigest() in msg and "verify=False" in msg
        (folder / "train.csv").unlink()
        monkeypatch.delenv("NNXLIKE_TITANIC_DIR", raising=False)
    # Kaggle's own CRLF file is accepted wherever it is.
    titanic_mod.KAGGLE_DIR.mkdir(exist_ok=True)
    (titanic_mod.KAGGLE_DIR / "train.csv").write_bytes(raw.replace(b"\n", b"\r\n"))
    crlf = load_titanic("train", download=False)
    assert all(np.array_equal(crlf[c], good[c]) for c in ("Survived", "Fare"))
    # verify=False reads an edited copy on purpose; garbage names its path.
    (tmp_path / "arg" / "train.csv").write_bytes(_edits(raw)["edited Age"])
    edited = load_titanic("train", data_dir=tmp_path / "arg", verify=False)
    assert edited["Age"][0] == 23.0 and good["Age"][0] == 22.0
    (tmp_path / "arg" / "train.csv").write_bytes(_edits(raw)["binary garbage"])
    with pytest.raises(TitanicFormatError, match=r"arg/train.csv is not a UTF-8"):
        load_titanic("train", data_dir=tmp_path / "arg", verify=False)


# -- 12. a hostile HTTP server: deadline and size cap -------------------------------


class _Hostile(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HostileHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        mode = self.server.mode
        stop = self.server.stop
        sock = self.request
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            if mode == "drip headers":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 61194\r\n\r\n":
                    if stop.wait(0.3):
                        return
                    sock.sendall(bytes([byte]))
                return
            if mode == "drip body":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 61194\r\n\r\n")
                while not stop.wait(0.3):  # one byte every 0.3 s, forever
                    sock.sendall(b"1")
                return
            if mode == "huge":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            else:  # "endless": no length, closes never
                sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            block = b"0" * 65536
            for _ in range(1 << 14):  # 1 GiB at most
                if stop.is_set():
                    return
                sock.sendall(block)
        except OSError:
            return  # the client hung up: what we want


@pytest.fixture
def hostile():
    server = _Hostile(("127.0.0.1", 0), _HostileHandler)
    server.mode, server.stop = "endless", threading.Event()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}
    )
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/mirror"
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_hostile_server_cannot_hang_or_flood_the_download(hostile, titanic_env):
    from nnxlike.datasets import (
        TitanicChecksumError,
        TitanicDataNotFoundError,
        load_titanic,
    )

    server, url = hostile
    for mode in ("drip body", "drip headers"):
        server.mode = mode
        box: list = []

        def fetch(box=box):
            try:
                load_titanic("train", url=url, timeout=5.0, deadline=1.0)
            except Exception as e:  # noqa: BLE001 - inspected below
                box.append(e)

        t = threading.Thread(target=fetch, daemon=True)
        t.start()
        t.join(30)  # the deadline is 1 s; 30 s means it hangs
        assert not t.is_alive(), f"{mode}: the download ignored its deadline"
        (err,) = box
        assert isinstance(err, TitanicDataNotFoundError), (mode, err)
        msg = str(err)
        assert "within its 1 s deadline" in msg and f"{url}/train.csv" in msg
    for mode, match in (
        ("huge", "announces 1073741824 bytes"),
        ("endless", "sent more"),
    ):
        server.mode = mode
        tracemalloc.start()
        try:
            with pytest.raises(TitanicChecksumError, match=match):
                load_titanic("train", url=url, timeout=5.0, deadline=30.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, (mode, peak)
    assert not titanic_env.exists() or list(titanic_env.iterdir()) == []
