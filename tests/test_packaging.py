"""Release artefacts: what ``python -m build`` makes, and that the wheel works alone.

The wheel and sdist are built once per session (``nnxlike_dist`` in conftest.py).
The install test puts the wheel into a fresh venv that has nnxlike's dependencies
but neither the editable install nor the source tree, runs the README's example
from a temporary folder, and checks that nnxlike was imported from that venv.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import background
import pytest
from venvs import clean_env, fresh_venv

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, which build needs too
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _version_in_source() -> str:
    text = (ROOT / "nnxlike" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE).group(1)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def test_version_is_written_once():
    version = _version_in_source()
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "nnxlike._version.__version__"
    import nnxlike

    assert nnxlike.__version__ == version
    # No other file of the package spells a version number out.
    for path in (ROOT / "nnxlike").rglob("*.py"):
        if path.name != "_version.py":
            assert f'"{version}"' not in path.read_text(encoding="utf-8"), path
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{version}]" in changelog


def test_twine_accepts_wheel_and_sdist(nnxlike_dist):
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict"]
        + [str(nnxlike_dist.wheel), str(nnxlike_dist.sdist)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_metadata_is_complete(nnxlike_dist):
    meta = _metadata(nnxlike_dist.wheel)
    version = _version_in_source()
    assert nnxlike_dist.wheel.name == f"nnxlike-{version}-py3-none-any.whl"
    assert meta["Name"] == "nnxlike"
    assert meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert meta.get_payload().strip() == readme.strip()
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Changelog", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    extras = set(meta.get_all("Provides-Extra"))
    assert extras == set(PYPROJECT["project"]["optional-dependencies"])
    requires = meta.get_all("Requires-Dist")
    for dep in PYPROJECT["project"]["dependencies"]:
        assert dep in requires, dep


def test_wheel_holds_the_package_and_its_data_files(nnxlike_dist):
    with zipfile.ZipFile(nnxlike_dist.wheel) as z:
        names = set(z.namelist())
        dist_info = f"nnxlike-{_version_in_source()}.dist-info"
        license_text = z.read(f"{dist_info}/licenses/LICENSE")
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "nnxlike").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "nnxlike/py.typed" in source
    assert source <= names, sorted(source - names)
    assert {n.split("/")[0] for n in names} == {
        "nnxlike",
        f"nnxlike-{_version_in_source()}.dist-info",
    }
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in license_text and b"Version 2.0" in license_text


def test_sdist_rebuilds_the_wheel(nnxlike_dist):
    # build made the wheel *from* the sdist, so this lists what that needed.
    with tarfile.open(nnxlike_dist.sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        assert name in names
    assert "nnxlike/py.typed" in names and "nnxlike/_version.py" in names
    assert not any(n.startswith(("tests/", "tutorials/", "docs/")) for n in names)


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return next(b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL))


@background.job("readme_example_in_a_fresh_venv")
def _install_and_run_the_readme_example(tmp_path_factory):
    """The wheel installed in a fresh venv, then the README's example run there
    (a background job: tests/background.py); the subprocesses' results."""
    nnxlike_dist = background.result("nnxlike_dist", tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("readme_venv")
    python = fresh_venv(tmp_path)
    env = clean_env(background.environ())
    probe = "import importlib.util; print(importlib.util.find_spec('nnxlike'))"
    before = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the clone: -c puts the working folder on sys.path
    )
    # No index: every dependency must already be there (from the site view).
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", str(nnxlike_dist.wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    if install.returncode != 0:
        return tmp_path, before, install, None
    script = tmp_path / "run" / "example.py"
    script.parent.mkdir()
    script.write_text(
        _readme_example()
        + "\nimport pathlib, nnxlike\n"
        + "print('FILE', nnxlike.__file__)\n"
        + "print('VERSION', nnxlike.__version__)\n"
        + "typed = pathlib.Path(nnxlike.__file__).parent / 'py.typed'\n"
        + "print('TYPED', typed.is_file())\n"
    )
    run = subprocess.run(
        [str(python), "-I", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=script.parent,
        timeout=300,
    )
    return tmp_path, before, install, run


@pytest.fixture(scope="module")
def readme_example_in_a_fresh_venv(nnxlike_dist, tmp_path_factory):
    return background.result("readme_example_in_a_fresh_venv", tmp_path_factory)


def test_wheel_installs_in_a_fresh_venv_and_runs_the_readme_example(
    readme_example_in_a_fresh_venv,
):
    tmp_path, before, install, run = readme_example_in_a_fresh_venv
    assert before.stdout.strip() == "None", before.stdout + before.stderr
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    loss = float(lines[0])
    assert 0.0 < loss < 2.0  # one step's BCE from a random init, near log(2)
    assert "MLP" in run.stdout and "hidden" in run.stdout
    found = Path(next(ln for ln in lines if ln.startswith("FILE ")).split(" ", 1)[1])
    assert found.is_relative_to(tmp_path / "venv"), found
    assert not found.is_relative_to(ROOT)
    assert f"VERSION {_version_in_source()}" in lines
    assert "TYPED True" in lines


@pytest.mark.parametrize("extra", ["docs", "tutorials"])
def test_tutorial_imports_are_in_the_extra(extra):
    """Every module a tutorial imports comes with nnxlike or with the extra."""
    import ast
    from importlib.metadata import packages_distributions

    def name_of(req: str) -> str:
        return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")

    project = PYPROJECT["project"]
    provided = {name_of(r) for r in project["dependencies"]}
    provided |= {name_of(r) for r in project["optional-dependencies"][extra]}
    dists = packages_distributions()
    files = sorted((ROOT / "tutorials").glob("*.py"))
    if extra == "tutorials":  # running them; exporting and executing is for docs
        files = [p for p in files if p.name != "export_notebooks.py"]
    else:
        files.append(ROOT / "docs" / "hooks.py")
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "nnxlike":
                    continue
                names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                assert names & provided, f"{path.name} imports {top}, not in [{extra}]"
