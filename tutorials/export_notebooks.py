"""Convert every tutorial (jupytext percent-format ``.py``) into a ``.ipynb`` notebook.

Notebooks are build artifacts (for Kaggle or Colab), not committed: by default
they go to ``tutorials/outputs/notebooks/``, which git ignores.

Usage::

    python tutorials/export_notebooks.py                # all tutorials
    python tutorials/export_notebooks.py titanic        # only tutorials/titanic.py
    python tutorials/export_notebooks.py --out /tmp/nb  # somewhere else

On Kaggle, upload ``titanic.ipynb``, add the "Titanic - Machine Learning from
Disaster" competition data (it appears in ``/kaggle/input/titanic``, where
``load_titanic`` looks) and make ``nnxlike`` importable (``pip install`` it from
a wheel or the repository) before running it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def tutorial_paths(folder: Path = HERE) -> list[Path]:
    """The tutorials: ``.py`` files of ``folder`` holding ``# %%`` cells."""
    return [
        p
        for p in sorted(folder.glob("*.py"))
        if p.resolve() != Path(__file__).resolve()
        and "\n# %%" in p.read_text(encoding="utf-8")
    ]


def export(paths: list[Path], out: Path) -> list[Path]:
    """Write ``<out>/<name>.ipynb`` for each tutorial path; return the new paths."""
    try:
        import jupytext
    except ImportError:
        sys.exit(
            "export_notebooks: jupytext is not installed. "
            "Install it with `pip install jupytext` (or `pip install -e '.[docs]'`)."
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        notebook = jupytext.read(path, fmt="py:percent")
        notebook.metadata.setdefault(
            "kernelspec",
            {"display_name": "Python 3", "language": "python", "name": "python3"},
        )
        target = out / (path.stem + ".ipynb")
        jupytext.write(notebook, target, fmt="ipynb")
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
    args = parser.parse_args(argv)
    paths = tutorial_paths()
    if args.names:
        by_name = {p.stem: p for p in paths}
        unknown = [n for n in args.names if n.removesuffix(".py") not in by_name]
        if unknown:
            parser.error(f"unknown tutorial(s) {unknown}; known: {sorted(by_name)}")
        paths = [by_name[n.removesuffix(".py")] for n in args.names]
    for target in export(paths, args.out):
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
