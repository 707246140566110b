"""Release checks' helpers: build nnxlike's wheel and sdist, make a fresh venv.

The wheel is built once per session (``nnxlike_dist`` in conftest.py) from a
copy of the source files, so no ``build/`` or ``*.egg-info`` lands in the tree.

A fresh venv sees the test venv's packages (jax, pip, nbclient, ...) through a
folder of symlinks added by a ``.pth`` file, so nothing is downloaded, but not
nnxlike: its editable install (``__editable__*``, ``nnxlike*``) is left out of
that folder. ``python -m venv --system-site-packages`` would not do: from a venv
it exposes the base interpreter's packages, not the test venv's.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import background

ROOT = Path(__file__).resolve().parents[1]
# What an sdist of nnxlike holds (MANIFEST.in); the build starts from these.
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in")


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


def build_dist(work: Path) -> Dist:
    """``python -m build`` (sdist, then the wheel from the sdist) into ``work/dist``."""
    src = work / "src"
    src.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "nnxlike", src / "nnxlike", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(src)],
        cwd=work,
        env=background.environ(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return Dist(wheel=wheels[0], sdist=sdists[0])


def _site_view(dest: Path) -> Path:
    """A folder of symlinks to this venv's site-packages entries, nnxlike's left out."""
    dest.mkdir(parents=True)
    folders = {Path(p) for p in site.getsitepackages()} | {
        Path(sysconfig.get_paths()["purelib"])
    }
    for folder in sorted(folders):
        for entry in sorted(folder.iterdir()):
            name = entry.name.lower()
            if name.startswith(("nnxlike", "__editable__", "_nnxlike")):
                continue
            if name.endswith(".pth") and "nnxlike" in entry.read_text(errors="replace"):
                continue
            if not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    return dest


def fresh_venv(where: Path) -> Path:
    """A new venv at ``where/venv`` without nnxlike; return its python."""
    venv = where / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        cwd=where,
        env=background.environ(),
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [str(python), "-c", code],
        cwd=where,
        env=background.environ(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    view = _site_view(where / "site-view")
    # addsitedir (not a plain path line) so that the view's own .pth files run.
    Path(purelib, "_test_site_view.pth").write_text(
        f"import site; site.addsitedir({str(view)!r})\n"
    )
    return python


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without what would let the source tree or the network in."""
    env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    # pip: no configuration file (it may name extra indexes), no index at all.
    env["PIP_CONFIG_FILE"] = "/dev/null"
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env
