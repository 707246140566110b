"""Run every tutorial as a program, top to bottom, and check what it reports.

Tutorials end with their own assertions; here each runs in a subprocess (so its
plots, progress bars and warnings stay out of this process) with outputs sent
to a temporary folder, and its key printed lines and files are checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
TIMEOUT_S = 600
# Tutorials whose last cell prints this after its final assertions.
ENDS_WITH_ALL_CHECKS = {"jax_in_15_minutes", "state_outside_objects", "under_the_hood"}
ENDS_WITH_ALL_CHECKS |= {"titanic"}
ENDS_WITH_ALL_CHECKS |= {"sharding"}


def _tutorials() -> list[Path]:
    return [
        p
        for p in sorted(TUTORIALS.glob("*.py"))
        if "\n# %%" in p.read_text(encoding="utf-8")
    ]


def _titanic_dir() -> Path | None:
    """A local folder holding train.csv and test.csv; tests never download."""
    candidates = [
        os.environ.get("NNXLIKE_TITANIC_DIR"),
        ROOT.parent / "shared" / "data" / "titanic",
        "/kaggle/input/titanic",
    ]
    for c in candidates:
        if c and (Path(c) / "train.csv").is_file() and (Path(c) / "test.csv").is_file():
            return Path(c)
    return None


def _run(path: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NNXLIKE_TUTORIAL_OUT=str(out), MPLBACKEND="Agg")
    titanic = _titanic_dir()
    if titanic is not None:
        env["NNXLIKE_TITANIC_DIR"] = str(titanic)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{path.name} exited with {proc.returncode}\n"
        f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n"
        f"--- stderr (tail) ---\n{proc.stderr[-4000:]}"
    )
    return proc


def test_tutorials_are_found():
    names = {p.stem for p in _tutorials()}
    assert {"titanic", "jax_in_15_minutes", "state_outside_objects"} <= names
    assert "under_the_hood" in names
    assert "export_notebooks" not in names


@pytest.mark.parametrize(
    "name", [p.stem for p in _tutorials() if p.stem != "titanic"], ids=str
)
def test_tutorial_runs(name, tmp_path):
    proc = _run(TUTORIALS / f"{name}.py", tmp_path)
    if name in ENDS_WITH_ALL_CHECKS:
        assert "all checks passed" in proc.stdout
    if name == "jax_in_15_minutes":
        assert re.search(r"speed-up from jit: [\d.]+x", proc.stdout)
    if name == "state_outside_objects":
        assert (tmp_path / "linear_regression_momentum.png").stat().st_size > 0
        assert proc.stdout.count("w=2.99") + proc.stdout.count("w=3.00") == 3
    if name == "under_the_hood":
        assert "<shared #2>" in proc.stdout  # the GraphDef printout


def test_titanic_tutorial(tmp_path):
    if _titanic_dir() is None:
        pytest.skip(
            "Titanic data not available: set NNXLIKE_TITANIC_DIR to a folder with "
            "Kaggle's train.csv and test.csv (or put them in ../shared/data/titanic)"
        )
    proc = _run(TUTORIALS / "titanic.py", tmp_path)
    assert "all checks passed" in proc.stdout
    match = re.search(r"^eval accuracy: (0\.\d+)", proc.stdout, re.MULTILINE)
    assert match, proc.stdout[-2000:]
    assert float(match.group(1)) >= 0.78
    assert re.search(r"without jit: +\d+ us per step", proc.stdout)
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "PassengerId,Survived"
    assert len(lines) == 419
    assert lines[1].startswith("892,")
    assert (tmp_path / "titanic_training.png").stat().st_size > 0


def test_export_notebooks(tmp_path):
    if importlib.util.find_spec("jupytext") is None:
        pytest.skip("jupytext is not installed (pip install jupytext)")
    proc = subprocess.run(
        [
            sys.executable,
            str(TUTORIALS / "export_notebooks.py"),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.stem for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.stem for p in _tutorials())
    notebook = json.loads((tmp_path / "titanic.ipynb").read_text())
    kinds = {cell["cell_type"] for cell in notebook["cells"]}
    assert kinds == {"markdown", "code"}
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
