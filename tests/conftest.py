"""Test configuration: strict JAX semantics and the location of shared data."""

from __future__ import annotations

import os
from pathlib import Path

import background
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
# runs once per session as a notebook, and every test reads that one run. The
# wheel, and the docs build that runs every tutorial, are background jobs
# (tests/background.py): started at the first test, beside the other tests.
@background.job("nnxlike_dist")
def _build_dist(factory):
    import importlib.util

    from venvs import build_dist

    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed: pip install -e '.[test]'")
    return build_dist(factory.mktemp("dist"))


@pytest.fixture(scope="session")
def nnxlike_dist(tmp_path_factory):
    return background.result("nnxlike_dist", tmp_path_factory)


@pytest.fixture(scope="session")
def tutorial_runs(tmp_path_factory):
    from notebooks import shared_runs

    return shared_runs(tmp_path_factory)  # the docs build's job runs them all


def _background_jobs_used(item) -> set[str]:
    return set(background.names()) & set(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(session, config, items):
    """Test modules that use a background job, or the tutorial runs (which the
    docs build's job makes), run last, each in its own order, so that the jobs
    have had the other tests' time to finish; they come in the order in which
    the background thread finishes their jobs."""
    order = {name: i for i, name in enumerate(background.names())}
    ready_at: dict = {}  # module -> when its last job is done, in job order
    for item in items:
        used = _background_jobs_used(item)
        if "tutorial_runs" in getattr(item, "fixturenames", ()):
            used.add("built")
        if used:
            last = max(order[name] for name in used)
            ready_at[item.path] = max(ready_at.get(item.path, -1), last)
    items[:] = [i for i in items if i.path not in ready_at] + sorted(
        (i for i in items if i.path in ready_at), key=lambda i: ready_at[i.path]
    )


@pytest.fixture(scope="session", autouse=True)
def _background_jobs(request, tmp_path_factory):
    wanted = set()
    for item in request.session.items:
        wanted |= _background_jobs_used(item)
    tmp_path_factory.getbasetemp()  # made here, not raced for by two threads
    background.start(wanted, tmp_path_factory)
    yield
    background.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With --durations or -v: what each background job took."""
    lines = background.report()
    if lines and (config.option.durations is not None or config.option.verbose > 0):
        terminalreporter.section("background jobs (tests/background.py)")
        for line in lines:
            terminalreporter.write_line(line)
