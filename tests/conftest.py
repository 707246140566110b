"""Test configuration: strict JAX semantics and the location of shared data."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

_TITANIC_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "titanic"
)
if _TITANIC_DIR.is_dir():
    os.environ.setdefault("NNXLIKE_TITANIC_DIR", str(_TITANIC_DIR))

# Fixture generators import torch (not a dependency); never collect them.
collect_ignore_glob = ["fixtures/*"]


# Release checks (tests/test_packaging.py, tests/test_kaggle.py): one wheel and
# sdist per session; tutorials (tests/test_tutorials.py, tests/test_docs.py): each
# runs once per session as a notebook, and every test reads that one run.
@pytest.fixture(scope="session")
def nnxlike_dist(tmp_path_factory):
    import importlib.util

    from venvs import build_dist

    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed: pip install -e '.[test]'")
    return build_dist(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def tutorial_runs(tmp_path_factory):
    from notebooks import TutorialRuns

    return TutorialRuns(tmp_path_factory.mktemp("tutorials_run") / "tutorials")
