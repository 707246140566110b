"""Slow fixtures that mostly wait on other processes, started early in one thread.

A few fixtures spend their time in subprocesses: the tutorial notebooks and the
docs build, the wheel build, the simulated Kaggle run, the multi-process and
8-device JAX runs, the checkpoint savers killed with -9. The test process keeps
about one core busy, so on a 2-core machine they can run beside the other tests.
A fixture opts in with ``@background.job("name")`` on a function of
``tmp_path_factory`` and calls ``background.result("name", tmp_path_factory)``;
conftest.py then

- moves every test module that uses such a fixture (by name, through any chain
  of fixtures) to the end of the run, keeping the order within it; and
- at the first test, starts the jobs that the selected tests use, one after
  another in the order they were declared, in one background thread. That
  thread and the processes it starts run niced (``NICE``; on Linux the nice
  value is per thread and inherited), so the tests in this process keep their
  core and the jobs take what is left.

``result`` waits for a started job and returns its value (or raises what it
raised, a skip included); a job that was not started (the test runs alone, or
the session ended early) runs in the calling thread, as a plain fixture would.
Each job runs at most once per session.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

NICE = 10  # the jobs' priority: below the tests', which wait for nothing else
_JOBS: dict[str, Callable[[Any], Any]] = {}
_lock = threading.Lock()
_queue: list[str] = []  # waiting for the background thread
_started: dict[str, threading.Event] = {}  # set once the result is in
_results: dict[str, tuple[bool, Any]] = {}  # name -> (ok, value or exception)
_thread: threading.Thread | None = None
_environ: dict[str, str] = {}  # os.environ when the jobs started
_times: dict[str, list[float]] = {}  # name -> [start, end, waited for it]
_ran_behind: set[str] = set()  # the jobs the background thread ran


def job(name: str) -> Callable:
    """Declare ``fn(tmp_path_factory)`` as the background job ``name``.

    ``name`` is the name of the fixture that calls ``result(name, ...)``, so that
    conftest.py can tell which selected tests need it.
    """

    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        assert _JOBS.setdefault(name, fn) is fn, f"two jobs named {name!r}"
        return fn

    return register


def names() -> list[str]:
    """The declared jobs, in declaration order."""
    return list(_JOBS)


def _run(name: str, factory: Any) -> None:
    start = time.monotonic()
    try:
        outcome = (True, _JOBS[name](factory))
    except BaseException as e:  # noqa: BLE001 - handed to the fixture, skips too
        outcome = (False, e)
    with _lock:
        _times[name] = [start, time.monotonic(), 0.0]
        _results[name] = outcome
        _started[name].set()


def report() -> list[str]:
    """One line per job run: how long it took and how long a test waited."""
    where = {True: "background", False: "in a test"}
    return [
        f"{name}: {end - start:.1f} s ({where[name in _ran_behind]}), "
        f"tests waited {waited:.1f} s"
        for name, (start, end, waited) in _times.items()
    ]


def _claim(name: str) -> bool:
    """Mark ``name`` started (with ``_lock`` held); False if it already was."""
    if name in _started:
        return False
    if name in _queue:
        _queue.remove(name)
    _started[name] = threading.Event()
    return True


def environ() -> dict[str, str]:
    """A copy of the environment for a job's subprocesses.

    Outside the main thread, the environment as it was when the jobs started: a
    test may be changing the live one meanwhile (``monkeypatch.setenv``).
    """
    if threading.current_thread() is not threading.main_thread() and _environ:
        return dict(_environ)
    return dict(os.environ)


def start(wanted: set[str], factory: Any) -> None:
    """Run the jobs in ``wanted`` one by one, in declaration order, in a thread."""
    global _thread
    with _lock:
        _environ.update(os.environ)
        todo = [n for n in _JOBS if n in wanted and n not in _started]
        _queue.extend(n for n in todo if n not in _queue)

    def work() -> None:
        try:  # this thread and what it starts (per thread on Linux)
            os.nice(NICE)
        except (AttributeError, OSError):
            pass
        while True:
            with _lock:
                if not _queue:
                    return
                name = _queue.pop(0)
                if not _claim(name):
                    continue
                _ran_behind.add(name)
            _run(name, factory)

    if todo and (_thread is None or not _thread.is_alive()):
        _thread = threading.Thread(target=work, name="test-background", daemon=True)
        _thread.start()


def stop() -> None:
    """Drop the jobs not started yet; wait for the one running (session end)."""
    with _lock:
        _queue.clear()
    if _thread is not None:
        _thread.join()


def result(name: str, factory: Any) -> Any:
    """The value of job ``name``: waited for if started, else computed now (a
    queued job the thread has not reached yet is taken out of its queue)."""
    with _lock:
        mine = _claim(name)
        event = _started[name]
    if mine:
        _run(name, factory)
    else:
        waited = time.monotonic()
        event.wait()
        _times[name][2] += time.monotonic() - waited
    ok, value = _results[name]
    if not ok:
        raise value
    return value
