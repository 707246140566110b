"""MkDocs hook: publish the tutorials (``../tutorials/*.py``) as pages with outputs.

The tutorials are programs kept next to the package and run by the test suite;
this hook adds each one (a ``.py`` file with ``# %%`` cells) to the site under
``tutorials/``, where mkdocs-jupyter renders it (it never executes anything
itself: ``execute: false`` in ``mkdocs.yml``).

``NNXLIKE_DOCS_EXECUTE`` (default ``true``) decides what a page shows:

- ``true``: each tutorial is run once as a notebook by
  ``tutorials/export_notebooks.py --execute`` (a Jupyter kernel, in a temporary
  folder, so pages name files relative to it), and the page renders that
  executed notebook with its outputs. Where ``NNXLIKE_DOCS_NOTEBOOKS`` names a
  folder already holding ``<name>.ipynb`` executed that way (the test suite runs
  every tutorial once and shares the result), those are used instead.
- ``false``: the pages show the code without outputs (a quick preview:
  ``NNXLIKE_DOCS_EXECUTE=false mkdocs serve``).

Before anything is executed, the Titanic data is looked for (and downloaded if
need be) with the tutorial's own loader; if that fails the build stops at once
with the loader's message instead of failing in the middle.

Each tutorial page links to its Kaggle-ready notebook (the exported one, whose
first cell installs nnxlike), written next to the page.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"

# The notebooks this build rendered from: {stem: executed .ipynb} (empty when
# not executing), and the temporary folder to remove after the build.
_state: dict = {"notebooks": {}, "tmp": None}


def _export_notebooks():
    """``tutorials/export_notebooks.py`` as a module (it is not in a package)."""
    spec = importlib.util.spec_from_file_location(
        "_nnxlike_export_notebooks", TUTORIALS / "export_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executing() -> bool:
    value = os.environ.get("NNXLIKE_DOCS_EXECUTE", "true").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise PluginError(
            f"NNXLIKE_DOCS_EXECUTE={value!r}: expected true or false "
            "(false renders the tutorials without running them)."
        )
    return value in ("true", "1", "yes")


def _check_titanic_data() -> None:
    """Stop the build at once when the Titanic tutorial could not get its data."""
    from nnxlike.datasets import TitanicDataNotFoundError, load_titanic

    try:
        for split in ("train", "test"):
            load_titanic(split)
    except TitanicDataNotFoundError as e:
        raise PluginError(
            f"The site runs the Titanic tutorial, which needs Kaggle's Titanic "
            f"data.\n{e}\nOr build the pages without running the tutorials: "
            "NNXLIKE_DOCS_EXECUTE=false mkdocs build"
        ) from None


def on_config(config):
    _state["notebooks"] = {}
    _state["tmp"] = None
    if not _executing():
        return config
    paths = _export_notebooks().tutorial_paths(TUTORIALS)
    given = os.environ.get("NNXLIKE_DOCS_NOTEBOOKS")
    if given:
        folder = Path(given)
        missing = [p.stem for p in paths if not (folder / f"{p.stem}.ipynb").is_file()]
        if missing:
            raise PluginError(
                f"NNXLIKE_DOCS_NOTEBOOKS={given}: no executed notebook for {missing}; "
                "make them with `python tutorials/export_notebooks.py --execute "
                f"--out {given}`, or unset the variable to run them now."
            )
    else:
        if any(p.stem == "titanic" for p in paths):
            _check_titanic_data()
        tmp = Path(tempfile.mkdtemp(prefix="nnxlike-docs-"))
        _state["tmp"] = tmp
        folder = tmp / "tutorials"
        try:
            _export_notebooks().execute(paths, folder)
        except Exception as e:  # nbclient's CellExecutionError names cell and error
            raise PluginError(f"running the tutorials failed:\n{e}") from None
    _state["notebooks"] = {p.stem: folder / f"{p.stem}.ipynb" for p in paths}
    return config


@event_priority(100)  # run before the mkdocs-jupyter plugin sees the files
def on_files(files, config):
    for path in _export_notebooks().tutorial_paths(TUTORIALS):
        files.append(
            File(
                f"tutorials/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


@event_priority(100)  # before mkdocs-jupyter reads the page's source path
def on_pre_page(page, config, files):
    # Same page (URL, title, nav entry), rendered from the executed notebook:
    # mkdocs-jupyter reads whatever abs_src_path names (an .ipynb keeps outputs).
    name = page.file.src_uri.removeprefix("tutorials/").removesuffix(".py")
    executed = _state["notebooks"].get(name)
    if page.file.src_uri.startswith("tutorials/") and executed is not None:
        page.file.abs_src_path = str(executed)
    return page


def on_page_content(html, page, config, files):
    src = page.file.src_uri
    if not (src.startswith("tutorials/") and src.endswith(".py")):
        return html
    name = Path(src).stem
    kaggle = get_relative_url("kaggle/", page.url)
    return (
        f'<p class="nnxlike-notebook"><a href="{name}.ipynb" download>'
        "Download this tutorial as a notebook</a>: its first cell installs nnxlike "
        f'where it is missing (<a href="{kaggle}">running it on Kaggle</a>).</p>\n'
        + html
    )


def on_post_build(config):
    # Next to each tutorial page, <name>.ipynb (the link above): the exported
    # notebook with the install cell and no outputs, replacing the copy of the
    # executed one that mkdocs-jupyter's include_source put there.
    site = Path(config["site_dir"])
    module = _export_notebooks()
    for path in module.tutorial_paths(TUTORIALS):
        page = site / "tutorials" / path.stem
        if page.is_dir():
            module.export([path], page)
    if _state["tmp"] is not None:
        shutil.rmtree(_state["tmp"], ignore_errors=True)
        _state["tmp"] = None
