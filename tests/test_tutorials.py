"""Run every tutorial top to bottom, as a notebook, and check what it reports.

Tutorials end with their own assertions; each runs once per session in a Jupyter
kernel (``tutorial_runs`` in conftest.py, see tests/notebooks.py), its files sent
to a temporary folder, and the docs build renders the same executed notebooks.
Here its key printed lines and files are checked, and that it printed no warning
and no local path (what a tutorial prints ends up on its page).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from notebooks import tutorial_names

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
# Tutorials whose last cell prints this after its final assertions.
ENDS_WITH_ALL_CHECKS = {"jax_in_15_minutes", "state_outside_objects", "under_the_hood"}
ENDS_WITH_ALL_CHECKS |= {"titanic"}
ENDS_WITH_ALL_CHECKS |= {"sharding"}
LOCAL_PATH = re.compile(r"/work/|/root/|/home/|/tmp/|\.venv|site-packages")


def _tutorials() -> list[Path]:
    return [TUTORIALS / f"{name}.py" for name in tutorial_names()]


def _assert_clean(run) -> None:
    """Nothing a reader would take for a problem, nothing of this machine."""
    assert "Warning" not in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    found = LOCAL_PATH.findall(run.stdout + run.stderr)
    assert not found, f"{run.name} prints local paths {found}"


def test_tutorials_are_found():
    names = {p.stem for p in _tutorials()}
    assert {"titanic", "jax_in_15_minutes", "state_outside_objects"} <= names
    assert "under_the_hood" in names
    assert "export_notebooks" not in names


@pytest.mark.parametrize(
    "name", [p.stem for p in _tutorials() if p.stem != "titanic"], ids=str
)
def test_tutorial_runs(name, tutorial_runs):
    run = tutorial_runs.get(name)
    if name in ENDS_WITH_ALL_CHECKS:
        assert "all checks passed" in run.stdout
    if name == "jax_in_15_minutes":
        assert re.search(r"speed-up from jit: [\d.]+x", run.stdout)
    if name == "state_outside_objects":
        assert (run.files / "linear_regression_momentum.png").stat().st_size > 0
        assert run.stdout.count("w=2.99") + run.stdout.count("w=3.00") == 3
    if name == "under_the_hood":
        assert "<shared #2>" in run.stdout  # the GraphDef printout
    _assert_clean(run)


def test_titanic_tutorial(tutorial_runs):
    run = tutorial_runs.get("titanic")
    assert "all checks passed" in run.stdout
    match = re.search(r"^eval accuracy: (0\.\d+)", run.stdout, re.MULTILINE)
    assert match, run.stdout[-2000:]
    assert float(match.group(1)) >= 0.78
    assert "(best epoch" in run.stdout and "of 500)" in run.stdout  # the full run
    assert re.search(r"without jit: +\d+ us per step", run.stdout)
    lines = (run.files / "submission.csv").read_text().splitlines()
    assert lines[0] == "PassengerId,Survived"
    assert len(lines) == 419
    assert lines[1].startswith("892,")
    assert {line.split(",")[1] for line in lines[1:]} <= {"0", "1"}
    assert (run.files / "titanic_training.png").stat().st_size > 0
    # In a kernel without ipywidgets: the text report, not tqdm's widget warning.
    assert "TqdmWarning" not in run.stderr and "IProgress" not in run.stderr
    assert "files go to outputs" in run.stdout
    _assert_clean(run)


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
    # Every notebook opens with its title, then the install cell (Kaggle, Colab).
    for path in sorted(tmp_path.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert cells[0]["cell_type"] == "markdown"
        assert "".join(cells[0]["source"]).startswith("# "), path.name
        code = next(c for c in cells if c["cell_type"] == "code")
        assert "print(install_nnxlike())" in "".join(code["source"]), path.name
    # The rest is the tutorial itself, cell for cell.
    source = (TUTORIALS / "titanic.py").read_text(encoding="utf-8")
    assert source.count("\n# %%") == len(notebook["cells"]) - 2
