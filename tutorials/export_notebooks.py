"""Convert every tutorial (jupytext percent-format ``.py``) into a ``.ipynb`` notebook.

Notebooks are build artifacts (for Kaggle or Colab), not committed: by default
they go to ``tutorials/outputs/notebooks/``, which git ignores. Each exported
notebook starts with an install cell (:data:`INSTALL_CELL`): where nnxlike is not
importable it installs the wheel attached to the notebook (any
``nnxlike-*.whl`` under ``/kaggle/input``), else ``pip install nnxlike`` from the
package index, and says which it did, or what to attach. ``docs/kaggle.md``
walks through running one on Kaggle.

Usage::

    python tutorials/export_notebooks.py                # all tutorials
    python tutorials/export_notebooks.py titanic        # only tutorials/titanic.py
    python tutorials/export_notebooks.py --out /tmp/nb  # somewhere else
    python tutorials/export_notebooks.py --execute --out /tmp/run titanic

``--execute`` runs the tutorials as notebooks instead (a Jupyter kernel, cell by
cell, in the ``--out`` folder; their files go to ``<out>/outputs`` unless
``NNXLIKE_TUTORIAL_OUT`` says otherwise) and writes them with their outputs,
without the install cell. The documentation site and the test suite use it, so
that each tutorial runs once and its pages show what it printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

INSTALL_MARKDOWN = """\
**Running this notebook outside a clone of nnxlike** (Kaggle, Colab, a fresh
Jupyter): the next cell makes `nnxlike` importable. On Kaggle, attach the nnxlike
wheel as a dataset (*Add Input*, `nnxlike-<version>-py3-none-any.whl`); the cell
installs it, or else runs `pip install nnxlike`, and prints which it did. It does
nothing where nnxlike is already installed."""

# Plain Python (no IPython magics), so that it also runs as a script. The
# NNXLIKE_KAGGLE_INPUT variable exists for the test suite's simulated Kaggle.
INSTALL_CELL = """\
import glob, importlib, importlib.util, os, re, subprocess, sys


def install_nnxlike(inputs=os.environ.get("NNXLIKE_KAGGLE_INPUT", "/kaggle/input")):
    \"\"\"Make nnxlike importable: an attached wheel, else the package index.\"\"\"
    if importlib.util.find_spec("nnxlike") is not None:
        from importlib.metadata import version

        return f"nnxlike {version('nnxlike')} is already installed: nothing to do."
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    found = [
        path
        for depth in range(1, 5)
        for path in glob.glob(os.path.join(inputs, *["*"] * depth, "nnxlike-*.whl"))
    ]
    if found:  # several versions attached: take the newest
        key = lambda p: [int(n) for n in re.findall(r"\\d+", p.split("-")[-4])]
        wheel = max(found, key=lambda p: key(os.path.basename(p)))
        run = subprocess.run(pip + [wheel], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(
                f"pip could not install the attached wheel {wheel}:\\n"
                f"{run.stdout[-1500:]}{run.stderr[-1500:]}\\n"
                "If pip failed to download a dependency, turn on Internet in the "
                "notebook's settings (Kaggle: Settings > Internet) and run again."
            )
        importlib.invalidate_caches()
        return f"Installed nnxlike from the attached wheel {wheel}."
    run = subprocess.run(pip + ["nnxlike"], capture_output=True, text=True)
    if run.returncode == 0:
        importlib.invalidate_caches()
        return "Installed nnxlike from the package index (pip install nnxlike)."
    raise RuntimeError(
        f"nnxlike is not installed, no nnxlike-*.whl is attached under {inputs}, "
        "and `pip install nnxlike` failed:\\n"
        f"{run.stderr.strip()[-800:]}\\n"
        "Attach the wheel: build it in a clone of nnxlike with "
        "`python -m pip install build && python -m build --wheel` (it appears in "
        "dist/), upload it as a Kaggle dataset, add that dataset to this notebook "
        "with 'Add Input', and run this cell again. Step by step: docs/kaggle.md."
    )


print(install_nnxlike())"""


def tutorial_paths(folder: Path = HERE) -> list[Path]:
    """The tutorials: ``.py`` files of ``folder`` holding ``# %%`` cells."""
    return [
        p
        for p in sorted(folder.glob("*.py"))
        if p.resolve() != Path(__file__).resolve()
        and "\n# %%" in p.read_text(encoding="utf-8")
    ]


def _jupytext():
    try:
        import jupytext
    except ImportError:
        sys.exit(
            "export_notebooks: jupytext is not installed. "
            "Install it with `pip install jupytext` (or `pip install -e '.[docs]'`)."
        )
    return jupytext


def read_notebook(path: Path, *, install_cell: bool = False):
    """The tutorial at ``path`` as a notebook, with the install cell if asked."""
    jupytext = _jupytext()
    from nbformat.v4 import new_code_cell, new_markdown_cell

    notebook = jupytext.read(path, fmt="py:percent")
    notebook.metadata.setdefault(
        "kernelspec",
        {"display_name": "Python 3", "language": "python", "name": "python3"},
    )
    if install_cell:
        # After the title cell, so that the notebook still opens with its title.
        first = 1 if notebook.cells and notebook.cells[0].cell_type == "markdown" else 0
        notebook.cells[first:first] = [
            new_markdown_cell(INSTALL_MARKDOWN),
            new_code_cell(INSTALL_CELL),
        ]
    return notebook


def export(paths: list[Path], out: Path) -> list[Path]:
    """Write ``<out>/<name>.ipynb`` for each tutorial path; return the new paths."""
    jupytext = _jupytext()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        target = out / (path.stem + ".ipynb")
        jupytext.write(read_notebook(path, install_cell=True), target, fmt="ipynb")
        written.append(target)
    return written


def execute(paths: list[Path], out: Path, *, timeout: int = 900) -> list[Path]:
    """Run each tutorial as a notebook; write it with outputs to ``<out>/<name>.ipynb``.

    The kernel is this Python (``sys.executable``), started in ``<out>/<name>/``
    with ``NNXLIKE_TUTORIAL_OUT=outputs`` unless set, so that the tutorial's files
    land in ``<out>/<name>/outputs/`` and what it prints names them relative to
    its run folder, never by a local absolute path. A failing cell stops the run
    with nbclient's ``CellExecutionError`` (which names the cell and the error).
    """
    import nbformat
    from nbclient import NotebookClient

    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("NNXLIKE_TUTORIAL_OUT", "outputs")
    # Figures inline, as in Jupyter, whatever MPLBACKEND the caller has (CI: Agg).
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    written = []
    for path in paths:
        notebook = read_notebook(path)
        workdir = out / path.stem
        workdir.mkdir(exist_ok=True)
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
            # The kernel's own log (ipykernel 7 warns about its unencrypted
            # local TCP sockets at every start); cells' warnings still show.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        client.execute(env=env, cwd=str(workdir))
        target = out / (path.stem + ".ipynb")
        nbformat.write(notebook, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="tutorial names (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "outputs" / "notebooks",
        help="folder for the .ipynb files (default: tutorials/outputs/notebooks)",
    )
    parser.add_argument(
        "--execute",
        action="store_true",
        help="run them as notebooks in --out and write them with their outputs",
    )
    args = parser.parse_args(argv)
    paths = tutorial_paths()
    if args.names:
        by_name = {p.stem: p for p in paths}
        unknown = [n for n in args.names if n.removesuffix(".py") not in by_name]
        if unknown:
            parser.error(f"unknown tutorial(s) {unknown}; known: {sorted(by_name)}")
        paths = [by_name[n.removesuffix(".py")] for n in args.names]
    for target in (execute if args.execute else export)(paths, args.out):
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
