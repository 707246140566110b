"""Each tutorial runs once per test session, as a notebook; tests share the run.

``TutorialRuns.get(name)`` runs ``tutorials/export_notebooks.py --execute`` for
one tutorial (a Jupyter kernel in a subprocess, so its plots, progress bars and
warnings stay out of the test process) the first time it is asked for, and
returns the same result every later time: the executed notebook, the folder of
files it wrote, and what it printed. ``tests/test_tutorials.py`` checks those;
``tests/test_docs.py`` builds the site from the same executed notebooks
(``NNXLIKE_DOCS_NOTEBOOKS``), so no tutorial runs twice. ``shared_runs`` is the
session's one instance: the docs build runs ``all`` in a background thread
(tests/background.py), and a ``get`` meanwhile waits for that run of its tutorial.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import background
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
EXPORT = TUTORIALS / "export_notebooks.py"
TIMEOUT_S = 900
NO_TITANIC_DATA = (
    "Titanic data not available: set NNXLIKE_TITANIC_DIR to a folder with "
    "Kaggle's train.csv and test.csv (or put them in ../shared/data/titanic)"
)


def tutorial_names() -> list[str]:
    return [
        p.stem
        for p in sorted(TUTORIALS.glob("*.py"))
        if p.name != EXPORT.name and "\n# %%" in p.read_text(encoding="utf-8")
    ]


def titanic_dir() -> Path | None:
    """A local folder holding train.csv and test.csv; tests never download."""
    candidates = [
        background.environ().get("NNXLIKE_TITANIC_DIR"),
        ROOT.parent / "shared" / "data" / "titanic",
        "/kaggle/input/titanic",
    ]
    for c in candidates:
        if c and (Path(c) / "train.csv").is_file() and (Path(c) / "test.csv").is_file():
            return Path(c)
    return None


@dataclass(frozen=True)
class TutorialRun:
    name: str
    notebook: Path  # the executed .ipynb
    files: Path  # what the tutorial wrote (its NNXLIKE_TUTORIAL_OUT)
    stdout: str  # its printed lines and displayed results, cell after cell
    stderr: str  # what its cells wrote to stderr

    @classmethod
    def read(cls, name: str, folder: Path) -> TutorialRun:
        path = folder / f"{name}.ipynb"
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        out, err = [], []
        for cell in cells:
            for o in cell.get("outputs", []):
                if o["output_type"] == "stream":
                    (err if o["name"] == "stderr" else out).append("".join(o["text"]))
                elif "text/plain" in o.get("data", {}):
                    out.append("".join(o["data"]["text/plain"]) + "\n")
        return cls(name, path, folder / name / "outputs", "".join(out), "".join(err))


class TutorialRuns:
    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._runs: dict[str, Future] = {}  # each tutorial: run once, by one thread

    def _execute(self, name: str) -> TutorialRun | str:
        env = dict(background.environ(), NNXLIKE_TUTORIAL_OUT="outputs")
        if titanic_dir() is not None:
            env["NNXLIKE_TITANIC_DIR"] = str(titanic_dir())
        proc = subprocess.run(
            [sys.executable, str(EXPORT), "--execute", "--out", str(self.folder), name],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if proc.returncode != 0:
            return (
                f"tutorials/{name}.py failed when run as a notebook "
                f"(exit {proc.returncode}):\n{proc.stderr[-6000:]}"
            )
        return TutorialRun.read(name, self.folder)

    def _run(self, name: str) -> TutorialRun | str:
        """Run ``name`` the first time; later, and from any thread, wait for
        that one run."""
        with self._lock:
            future = self._runs.get(name)
            mine = future is None
            if mine:
                future = self._runs[name] = Future()
        if mine:
            try:
                future.set_result(self._execute(name))
            except Exception as e:  # noqa: BLE001 - raised below, in every caller
                future.set_exception(e)
        return future.result()

    def get(self, name: str) -> TutorialRun:
        """The run of ``tutorials/<name>.py``; skips without the Titanic data."""
        if name == "titanic" and titanic_dir() is None:
            pytest.skip(NO_TITANIC_DATA)
        done = self._run(name)
        if isinstance(done, str):
            pytest.fail(done, pytrace=False)
        return done

    def all(self) -> Path:
        """Run every tutorial not run yet (two at a time); return the folder."""
        if titanic_dir() is None:
            pytest.skip(NO_TITANIC_DATA)
        # The longest first, so that the short ones fill the other core.
        todo = sorted(tutorial_names(), key=lambda n: n != "titanic")
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self._run, todo))
        for name in tutorial_names():
            self.get(name)  # fails with the first failure
        return self.folder


_shared: list[TutorialRuns] = []
_shared_lock = threading.Lock()


def shared_runs(tmp_path_factory) -> TutorialRuns:
    """The session's tutorial runs, in a folder of ``tmp_path_factory``."""
    with _shared_lock:
        if not _shared:
            folder = tmp_path_factory.mktemp("tutorials_run") / "tutorials"
            _shared.append(TutorialRuns(folder))
        return _shared[0]
