"""The exported notebooks on Kaggle: the install cell, and Titanic top to bottom.

Kaggle is simulated: a fresh venv without nnxlike (tests/venvs.py), an input
folder holding the wheel (as an attached dataset) and the competition data, and
a working folder for the outputs; ``NNXLIKE_KAGGLE_INPUT`` and
``NNXLIKE_KAGGLE_WORKING`` point the notebook at them instead of ``/kaggle/...``.
pip gets no index, so the wheel is the only way nnxlike can come in, and the
loader gets an address that refuses connections, so the data must be found.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import background
import pytest
from notebooks import titanic_dir
from venvs import clean_env, fresh_venv

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "tutorials" / "export_notebooks.py"
RUNNER = """\
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}})
try:
    client.execute(cwd=sys.argv[3])
finally:
    nbformat.write(notebook, sys.argv[2])
"""


def _install_cell() -> str:
    text = EXPORT.read_text(encoding="utf-8")
    namespace: dict = {}
    start = text.index("INSTALL_CELL = ")
    exec(text[start : text.index('"""\n', start + 20) + 4], namespace)
    return namespace["INSTALL_CELL"]


def _kaggle_env(tmp_path: Path) -> dict[str, str]:
    env = clean_env(background.environ())
    for name in ("NNXLIKE_TITANIC_DIR", "NNXLIKE_TUTORIAL_OUT", "MPLBACKEND"):
        env.pop(name, None)
    env.update(
        NNXLIKE_KAGGLE_INPUT=str(tmp_path / "kaggle" / "input"),
        NNXLIKE_KAGGLE_WORKING=str(tmp_path / "kaggle" / "working"),
        NNXLIKE_CACHE_DIR=str(tmp_path / "cache"),  # empty: not the user's cache
        NNXLIKE_TITANIC_URL="http://127.0.0.1:9",  # refused at once: no download
        NNXLIKE_TUTORIAL_FAST="1",
        # The kernel nbclient starts is this venv's python.
        JUPYTER_PATH=str(tmp_path / "jupyter"),
    )
    (tmp_path / "kaggle" / "input").mkdir(parents=True, exist_ok=True)
    (tmp_path / "kaggle" / "working").mkdir(parents=True, exist_ok=True)
    return env


def _run_cell(python: Path, code: str, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_install_cell_does_nothing_where_nnxlike_is_installed(tmp_path):
    import nnxlike

    proc = _run_cell(Path(sys.executable), _install_cell(), os.environ, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"nnxlike {nnxlike.__version__} is already installed: nothing to do."
    )


def test_install_cell_says_what_to_attach_when_there_is_nothing(tmp_path):
    python = fresh_venv(tmp_path)
    env = _kaggle_env(tmp_path)
    proc = _run_cell(python, _install_cell(), env, tmp_path / "kaggle" / "working")
    assert proc.returncode != 0
    message = proc.stderr
    assert "RuntimeError: nnxlike is not installed, no nnxlike-*.whl is attached" in (
        message
    )
    assert str(tmp_path / "kaggle" / "input") in message
    assert "python -m build --wheel" in message and "'Add Input'" in message
    assert "docs/kaggle.md" in message


@background.job("install_from_the_index")
def _install_from_the_index(tmp_path_factory):
    """The install cell in a fresh venv with a package index holding the wheel
    (a background job: tests/background.py)."""
    nnxlike_dist = background.result("nnxlike_dist", tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("kaggle_index")
    python = fresh_venv(tmp_path)
    env = _kaggle_env(tmp_path)
    index = tmp_path / "index"  # a local stand-in for the package index
    index.mkdir()
    shutil.copy2(nnxlike_dist.wheel, index)
    env["PIP_FIND_LINKS"] = str(index)
    code = _install_cell() + "\nimport nnxlike; print('FILE', nnxlike.__file__)"
    return tmp_path, _run_cell(python, code, env, tmp_path / "kaggle" / "working")


@pytest.fixture(scope="module")
def install_from_the_index(nnxlike_dist, tmp_path_factory):
    return background.result("install_from_the_index", tmp_path_factory)


def test_install_cell_uses_the_package_index_without_a_wheel(install_from_the_index):
    tmp_path, proc = install_from_the_index
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "Installed nnxlike from the package index (pip install nnxlike)."
    )
    assert Path(lines[1].split(" ", 1)[1]).is_relative_to(tmp_path / "venv")


@dataclass(frozen=True)
class KaggleRun:
    tmp_path: Path  # the simulated machine: venv, kaggle/input, kaggle/working
    wheel: Path  # the wheel attached as a dataset
    data: Path  # the competition data it was given
    probe: subprocess.CompletedProcess  # `import nnxlike` before the notebook
    proc: subprocess.CompletedProcess  # the notebook, top to bottom


@background.job("kaggle_titanic_run")
def _run_titanic_on_kaggle(tmp_path_factory) -> KaggleRun:
    """The exported Titanic notebook on simulated Kaggle (a background job, see
    tests/background.py: it is a few subprocesses, slow and mostly waiting)."""
    data = titanic_dir()
    if data is None:
        pytest.skip("Titanic data not available: set NNXLIKE_TITANIC_DIR")
    nnxlike_dist = background.result("nnxlike_dist", tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("kaggle_titanic")
    python = fresh_venv(tmp_path)
    env = _kaggle_env(tmp_path)
    inputs = Path(env["NNXLIKE_KAGGLE_INPUT"])
    working = Path(env["NNXLIKE_KAGGLE_WORKING"])
    (inputs / "titanic").mkdir()
    for name in ("train.csv", "test.csv"):
        shutil.copy2(data / name, inputs / "titanic" / name)
    (inputs / "nnxlike-wheel").mkdir()
    shutil.copy2(nnxlike_dist.wheel, inputs / "nnxlike-wheel")
    kernel = tmp_path / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f"]
                + ["{connection_file}"],
                "display_name": "Python 3 (simulated Kaggle)",
                "language": "python",
            }
        )
    )
    probe = _run_cell(python, "import nnxlike", env, working)

    exported = tmp_path / "exported"
    subprocess.run(
        [sys.executable, str(EXPORT), "--out", str(exported), "titanic"],
        cwd=tmp_path,
        env=background.environ(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    notebook = json.loads((exported / "titanic.ipynb").read_text())
    notebook["cells"].append(  # where did nnxlike come from?
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "where-from",
            "metadata": {},
            "outputs": [],
            "source": "import nnxlike\nprint('NNXLIKE_FILE', nnxlike.__file__)",
        }
    )
    (exported / "titanic.ipynb").write_text(json.dumps(notebook))
    proc = subprocess.run(
        [str(python), "-c", RUNNER, str(exported / "titanic.ipynb")]
        + [str(tmp_path / "executed.ipynb"), str(working)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    wheel = inputs / "nnxlike-wheel" / nnxlike_dist.wheel.name
    return KaggleRun(tmp_path, wheel, data, probe, proc)


@pytest.fixture(scope="module")
def kaggle_titanic_run(nnxlike_dist, tmp_path_factory) -> KaggleRun:
    return background.result("kaggle_titanic_run", tmp_path_factory)


def test_titanic_notebook_runs_on_simulated_kaggle(kaggle_titanic_run):
    run = kaggle_titanic_run
    tmp_path, proc = run.tmp_path, run.proc
    working = tmp_path / "kaggle" / "working"
    assert "No module named 'nnxlike'" in run.probe.stderr  # really not installed
    assert proc.returncode == 0, proc.stderr[-6000:]
    cells = json.loads((tmp_path / "executed.ipynb").read_text())["cells"]
    printed = [
        "".join(o.get("text", ""))
        for cell in cells
        if cell["cell_type"] == "code"
        for o in cell["outputs"]
        if o["output_type"] == "stream" and o["name"] == "stdout"
    ]
    assert printed[0] == f"Installed nnxlike from the attached wheel {run.wheel}.\n"
    text = "".join(printed)
    assert "all checks passed" in text
    assert "of 40)" in text  # NNXLIKE_TUTORIAL_FAST: a short run
    where = text.split("NNXLIKE_FILE ", 1)[1].strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where

    # The submission Kaggle would take from /kaggle/working.
    with open(working / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(run.data / "test.csv", newline="", encoding="utf-8-sig") as f:
        test_ids = [row["PassengerId"] for row in csv.DictReader(f)]
    assert rows[0] == ["PassengerId", "Survived"]
    assert [r[0] for r in rows[1:]] == test_ids
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    assert len({r[1] for r in rows[1:]}) == 2  # predicts both outcomes
    assert (working / "titanic_training.png").stat().st_size > 0
