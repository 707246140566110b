"""Each tutorial runs once per test session, as a notebook; tests share the run.

``TutorialRuns.get(name)`` runs ``tutorials/export_notebooks.py --execute`` for
one tutorial (a Jupyter kernel in a subprocess, so its plots, progress bars and
warnings stay out of the test process) the first time it is asked for, and
returns the same result every later time: the executed notebook, the folder of
files it wrote, and what it printed. ``tests/test_tutorials.py`` checks those;
``tests/test_docs.py`` builds the site from the same executed notebooks
(``NNXLIKE_DOCS_NOTEBOOKS``), so no tutorial runs twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
        os.environ.get("NNXLIKE_TITANIC_DIR"),
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
        self._done: dict[str, TutorialRun | str] = {}

    def _execute(self, name: str) -> TutorialRun | str:
        env = dict(os.environ, NNXLIKE_TUTORIAL_OUT="outputs")
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

    def get(self, name: str) -> TutorialRun:
        """The run of ``tutorials/<name>.py``; skips without the Titanic data."""
        if name == "titanic" and titanic_dir() is None:
            pytest.skip(NO_TITANIC_DATA)
        if name not in self._done:
            self._done[name] = self._execute(name)
        done = self._done[name]
        if isinstance(done, str):
            pytest.fail(done, pytrace=False)
        return done

    def all(self) -> Path:
        """Run every tutorial not run yet (two at a time); return the folder."""
        todo = [n for n in tutorial_names() if n not in self._done]
        if "titanic" in todo and titanic_dir() is None:
            pytest.skip(NO_TITANIC_DATA)
        # The longest first, so that the short ones fill the other core.
        todo.sort(key=lambda n: n != "titanic")
        with ThreadPoolExecutor(max_workers=2) as pool:
            for name, done in zip(todo, pool.map(self._execute, todo)):
                self._done[name] = done
        for name in tutorial_names():
            self.get(name)  # fails with the first failure
        return self.folder
