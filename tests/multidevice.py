"""Shared by the multi-device tests: workers on 8 simulated CPU devices.

A worker script (``tests/*_worker.py``) runs in a subprocess so that XLA can be
told, before JAX is imported, to simulate several CPU devices. Its ``main`` calls
``worker_main``, which prints one ``TAG {json}`` line of measured facts per case;
the test calls ``run_worker`` and asserts on the parsed facts. Importing this
module or a worker has no side effects (pytest imports both for doctests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import background

DEVICES = 8
ROOT = Path(__file__).resolve().parents[1]
_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"


def worker_main(argv: list[str], cases: dict[str, Callable], tag: str) -> int:
    """Set up the devices, then run each case named in ``argv`` and print its facts."""
    unknown = [c for c in argv if c not in cases]
    if not argv or unknown:
        print(f"usage: worker CASE [CASE ...], cases: {sorted(cases)}")
        return 2
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == DEVICES, jax.devices()
    for case in argv:
        facts = cases[case]()
        print(f"{tag} " + json.dumps({"case": case, **facts}, default=list), flush=True)
    return 0


def run_worker(worker: Path, cases: list[str], tag: str) -> dict[str, dict]:
    """Run ``worker`` on ``cases`` in a subprocess; return ``{case: facts}``."""
    env = dict(background.environ(), JAX_PLATFORMS="cpu", XLA_FLAGS=_FLAG)
    proc = subprocess.run(
        [sys.executable, str(worker), *cases],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    facts = {}
    for line in proc.stdout.splitlines():
        if line.startswith(tag + " "):
            record = json.loads(line[len(tag) + 1 :])
            facts[record.pop("case")] = record
    assert set(facts) == set(cases), proc.stdout[-2000:]
    return facts
