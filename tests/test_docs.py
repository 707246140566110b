"""The documentation site builds without warnings and its pages load in a browser.

``mkdocs build --strict`` turns every warning (a broken link, a docstring griffe
cannot parse, a missing page in the nav) into a failure. The tutorial pages are
rendered from the notebooks the tutorial tests executed (``tutorial_runs`` in
conftest.py), so no tutorial runs twice. When ``chromium`` is on PATH, one built
page is loaded headless and its rendered DOM checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import background
import pytest
from notebooks import shared_runs

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


def _skip_without_docs_packages() -> None:
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(
            f"documentation packages not installed ({', '.join(missing)}): "
            "pip install -e '.[docs]'"
        )


def _mkdocs_env(**extra: str) -> dict[str, str]:
    env = {**background.environ(), **extra}
    env.pop("NO_MKDOCS_2_WARNING", None)  # what a user has: nothing silenced
    return env


@dataclass(frozen=True)
class Site:
    folder: Path
    output: str  # everything mkdocs printed


@background.job("built")
def _build_site(tmp_path_factory) -> Site:
    _skip_without_docs_packages()
    notebooks = shared_runs(tmp_path_factory).all()  # each tutorial run once
    out = tmp_path_factory.mktemp("site")
    env = _mkdocs_env(
        NNXLIKE_DOCS_EXECUTE="true", NNXLIKE_DOCS_NOTEBOOKS=str(notebooks)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return Site(out, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tutorial_runs) -> Site:
    """The site, built in the background (tests/background.py) from the same
    tutorial runs as tests/test_tutorials.py."""
    return background.result("built", tmp_path_factory)


@pytest.fixture(scope="module")
def site(built) -> Path:
    return built.folder


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
        "kaggle/index.html",
    ]:
        assert (site / page).is_file(), page


def test_build_prints_nothing_to_read_past(built):
    """Only mkdocs' INFO lines: no warning, no banner (mkdocs-material is pinned)."""
    lines = [line for line in built.output.splitlines() if line.strip()]
    assert lines, "mkdocs printed nothing at all"
    unexpected = [line for line in lines if not line.startswith("INFO")]
    assert not unexpected, "\n".join(unexpected[:20])
    assert "end of life" not in built.output


def _local_paths() -> list[str]:
    """What would give away the machine the site was built on (/tmp alone is not
    one: docs/checkpoints.md shows /tmp/orbax as an example)."""
    return [str(ROOT), sys.prefix, "/work/", "/root/", "/home/"]


def test_no_page_shows_a_local_path(site):
    markers = _local_paths() + ["site-packages", "pytest-of-", "nnxlike-docs-"]
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 15
    for page in pages:
        text = page.read_text(encoding="utf-8")
        found = [m for m in markers if m in text]
        assert not found, f"{page.relative_to(site)} shows {found}"
        assert "TqdmWarning" not in text, page


def test_tutorial_pages_offer_the_kaggle_notebook(site):
    notebook = json.loads(
        (site / "tutorials" / "titanic" / "titanic.ipynb").read_text()
    )
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "print(install_nnxlike())" in "".join(code[0]["source"])
    assert all(not c.get("outputs") for c in code)  # to be run, not a record
    html = (site / "tutorials" / "titanic" / "index.html").read_text(encoding="utf-8")
    assert '<a href="titanic.ipynb" download>' in html
    assert '<a href="../../kaggle/">running it on Kaggle</a>' in html


@background.job("build_without_titanic_data")
def _build_without_titanic_data(tmp_path_factory):
    """``mkdocs build`` with no Titanic data to be found (a background job:
    tests/background.py); its folder and the finished process."""
    _skip_without_docs_packages()
    tmp_path = tmp_path_factory.mktemp("no_titanic")
    (tmp_path / "empty").mkdir()
    env = _mkdocs_env(
        NNXLIKE_DOCS_EXECUTE="true",
        NNXLIKE_TITANIC_DIR=str(tmp_path / "empty"),
        NNXLIKE_CACHE_DIR=str(tmp_path / "cache"),
        NNXLIKE_TITANIC_URL="http://127.0.0.1:9",  # no network: refused at once
    )
    env.pop("NNXLIKE_DOCS_NOTEBOOKS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    return tmp_path, proc


@pytest.fixture(scope="module")
def build_without_titanic_data(tmp_path_factory):
    return background.result("build_without_titanic_data", tmp_path_factory)


def test_build_without_titanic_data_stops_at_once_with_the_loaders_message(
    build_without_titanic_data,
):
    tmp_path, proc = build_without_titanic_data
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "needs Kaggle's Titanic data" in output
    assert "Titanic train.csv not found" in output
    assert "NNXLIKE_TITANIC_DIR" in output  # how to get the data
    assert "NNXLIKE_DOCS_EXECUTE=false mkdocs build" in output  # or do without
    assert "Traceback" not in output
    assert not (tmp_path / "site" / "tutorials").exists()  # nothing was built


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


@background.job("chromium_dom")
def _load_in_chromium(tmp_path_factory) -> subprocess.CompletedProcess:
    """The built Titanic page in headless Chromium, its DOM dumped (a background
    job: tests/background.py)."""
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "chromium is not on PATH; to enable this check: apt-get install chromium"
        )
    site = background.result("built", tmp_path_factory).folder
    tmp_path = tmp_path_factory.mktemp("chromium")
    page = site / "tutorials" / "titanic" / "index.html"
    return subprocess.run(
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
        cwd=tmp_path,
        env=background.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def chromium_dom(site, tmp_path_factory) -> subprocess.CompletedProcess:
    return background.result("chromium_dom", tmp_path_factory)


def test_page_loads_in_headless_chromium(chromium_dom):
    proc = chromium_dom
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    assert title and "nnxlike" in title.group(1), dom[:2000]
    assert "From PyTorch to nnxlike: Titanic survival" in dom
    assert "TitanicMLP" in dom
