"""Shared by the multi-process tests: N Python processes on localhost, one JAX runtime.

Each process stands in for a host: it calls ``jax.distributed.initialize`` with a
coordinator on ``127.0.0.1`` (a free port chosen per launch), CPU collectives over
gloo, and ``LOCAL_DEVICES`` CPU devices of its own, so ``jax.devices()`` lists the
devices of every process and ``jax.local_devices()`` only its own. A worker script
(``tests/multiprocess_worker.py``) calls ``worker_main``, which prints one
``TAG {json}`` line of measured facts per case; the test calls ``launch`` and
asserts on each process's facts.

``launch`` never hangs: when a process fails, the others (which would wait
forever in a collective) are killed at once; when the deadline passes, all are.
Each process runs in its own process group, and the whole group is killed, so
threads or children it started go too. The failure message holds every
process's exit status and the tail of its output. Importing this module or a
worker has no side effects (pytest imports both for doctests).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import background

LOCAL_DEVICES = 2
TAG = "MULTIPROCESS"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    >>> 1024 <= free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_main(argv: list[str], cases: dict[str, Callable], tag: str = TAG) -> int:
    """Join the JAX runtime, then run each case named in ``argv``; print its facts.

    ``argv`` is ``PORT NUM_PROCESSES PROCESS_ID CASE [CASE ...]``. With one process
    ``jax.distributed.initialize`` is not called (a plain single-host run).
    """
    usage = (
        f"usage: worker PORT NUM_PROCESSES PROCESS_ID CASE ..., cases: {sorted(cases)}"
    )
    if len(argv) < 4 or any(c not in cases for c in argv[3:]):
        print(usage)
        return 2
    port, num_processes, process_id = argv[0], int(argv[1]), int(argv[2])
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    local_devices = int(os.environ.get("NNXLIKE_MP_LOCAL_DEVICES", LOCAL_DEVICES))
    jax.config.update("jax_num_cpu_devices", local_devices)
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=60,
        )
    assert jax.process_count() == num_processes, jax.process_count()
    assert jax.local_device_count() == local_devices, jax.local_devices()
    for case in argv[3:]:
        try:
            facts = cases[case]()
        except BaseException:
            # Exit now: the atexit shutdown of jax.distributed would wait for the
            # other processes, which may be waiting for this one in a collective.
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        record = {"case": case, "process": jax.process_index(), **facts}
        print(f"{tag} " + json.dumps(record, default=list), flush=True)
    return 0


@dataclass
class ProcessResult:
    """What one process did: exit status, output, and its facts by case."""

    process_id: int
    returncode: int | None
    stdout: str
    stderr: str
    facts: dict[str, dict] = field(default_factory=dict)

    def tail(self, chars: int = 3000) -> str:
        return (
            f"--- process {self.process_id}: exit status {self.returncode}\n"
            f"stdout:\n{self.stdout[-chars:]}\nstderr:\n{self.stderr[-chars:]}"
        )


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def launch(
    worker: Path,
    cases: list[str],
    num_processes: int,
    *,
    timeout: float = 150.0,
    env: dict[str, str] | None = None,
    check: bool = True,
    tag: str = TAG,
) -> list[ProcessResult]:
    """Run ``worker`` as ``num_processes`` processes on ``cases``; return their results.

    With ``check`` (the default) every process must exit 0 and report every case,
    else ``AssertionError`` with every process's output. ``check=False`` returns
    what happened (for runs that are meant to die). Either way, a process that
    has not finished by ``timeout`` seconds, or that is still running after
    another one failed, is killed with its process group.
    """
    port = free_port()
    env = dict(background.environ(), JAX_PLATFORMS="cpu", **(env or {}))
    env.pop("XLA_FLAGS", None)  # the worker sets its device count itself
    with tempfile.TemporaryDirectory(prefix="nnxlike-mp-") as logs:
        procs, files = [], []
        try:
            for i in range(num_processes):
                out = open(os.path.join(logs, f"{i}.out"), "w+")
                err = open(os.path.join(logs, f"{i}.err"), "w+")
                files.append((out, err))
                args = [str(port), str(num_processes), str(i), *cases]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(worker), *args],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,  # its own group: killable as one
                    )
                )
            deadline = time.monotonic() + timeout
            timed_out = False
            while True:
                codes = [p.poll() for p in procs]
                if all(c is not None for c in codes) or any(c for c in codes):
                    break  # all done, or one failed: the rest would wait forever
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                _kill_group(p)
        results = []
        for i, (p, (out, err)) in enumerate(zip(procs, files)):
            out.seek(0)
            err.seek(0)
            result = ProcessResult(i, p.returncode, out.read(), err.read())
            out.close()
            err.close()
            for line in result.stdout.splitlines():
                if line.startswith(tag + " "):
                    record = json.loads(line[len(tag) + 1 :])
                    result.facts[record.pop("case")] = record
            results.append(result)
    if timed_out and check:
        raise AssertionError(
            f"{worker.name} {cases} on {num_processes} processes did not finish in "
            f"{timeout} s; all were killed.\n" + "\n".join(r.tail() for r in results)
        )
    if check:
        bad = [r for r in results if r.returncode != 0 or set(r.facts) != set(cases)]
        if bad:
            raise AssertionError(
                f"{worker.name} {cases} on {num_processes} processes failed.\n"
                + "\n".join(r.tail() for r in results)
            )
    return results
