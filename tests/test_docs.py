"""The documentation site builds without warnings and its pages load in a browser.

``mkdocs build --strict`` turns every warning (a broken link, a docstring griffe
cannot parse, a missing page in the nav) into a failure. When ``chromium`` is on
PATH, one built page is loaded headless and its rendered DOM checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_PLUGINS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
DOCS_PLUGINS += ("mkdocs_jupyter",)


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PLUGINS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(
            f"documentation packages not installed ({', '.join(missing)}): "
            "pip install mkdocs-material 'mkdocstrings[python]' mkdocs-jupyter jupytext"
        )
    out = tmp_path_factory.mktemp("site")
    # Tutorials are executed by the build (their outputs are part of the pages);
    # their files (plots, submission.csv) go to a temporary folder.
    env = {
        **os.environ,
        "NNXLIKE_DOCS_EXECUTE": "true",
        "NNXLIKE_TUTORIAL_OUT": str(tmp_path_factory.mktemp("tutorial_out")),
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return out


def test_site_builds_with_every_page(site):
    for page in [
        "index.html",
        "concepts/index.html",
        "pytorch_cheatsheet/index.html",
        "differences/index.html",
        "performance/index.html",
        "errors/index.html",
        "design/index.html",
        "api/index.html",
        "tutorials/titanic/index.html",
        "tutorials/jax_in_15_minutes/index.html",
        "tutorials/state_outside_objects/index.html",
        "tutorials/under_the_hood/index.html",
        "tutorials/randomness_dropout_batchnorm/index.html",
        "tutorials/sharding/index.html",
        "checkpoints/index.html",
        "pytorch_weights/index.html",
    ]:
        assert (site / page).is_file(), page


def test_api_page_renders_docstrings_and_doctests(site):
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("Module", "Linear", "Optimizer", "TrainState", "jit", "split"):
        assert f'id="nnxlike.{name}"' in html, name
    # Doctests are rendered as code, not run together into paragraphs.
    assert '<span class="gp">&gt;&gt;&gt; </span>' in html


def test_tutorial_page_renders_markdown_and_code_cells(site):
    html = (site / "tutorials" / "titanic" / "index.html").read_text(encoding="utf-8")
    assert "From PyTorch to nnxlike: Titanic survival" in html
    assert "class TitanicMLP" in html or "TitanicMLP" in re.sub(r"<[^>]+>", "", html)


def test_tutorial_pages_show_their_outputs(site):
    text = re.sub(r"<[^>]+>", "", _page(site, "tutorials/titanic/index.html"))
    match = re.search(r"eval accuracy: (0\.\d+) \(best epoch", text)
    assert match, "the Titanic page lacks the executed training output"
    assert float(match.group(1)) >= 0.78
    assert "data:image/png;base64," in _page(site, "tutorials/titanic/index.html")
    for name in ("jax_in_15_minutes", "state_outside_objects", "sharding"):
        assert "all checks passed" in _page(site, f"tutorials/{name}/index.html"), name


def _page(site: Path, page: str) -> str:
    return (site / page).read_text(encoding="utf-8")


def test_getting_started_example_runs():
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    example = next(b for b in blocks if "class MLP" in b)
    namespace: dict = {}
    exec(compile(example, "docs/index.md", "exec"), namespace)
    assert float(namespace["loss"]) < 1e-3
    assert namespace["model"].hidden.kernel.shape == (3, 32)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_loads_in_headless_chromium(site, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium)")
    page = site / "tutorials" / "titanic" / "index.html"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    assert title and "nnxlike" in title.group(1), dom[:2000]
    assert "From PyTorch to nnxlike: Titanic survival" in dom
    assert "TitanicMLP" in dom
