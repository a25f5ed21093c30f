"""Shared fixtures: a clean environment, one real LocalCluster for the session, and leak checks.

Under CI (``CI=true``, as CI sets it) a skipped test fails instead: the real-part tests (network
namespaces, TLS, notebooks) must run there, and a skip would hide that they did not. Tests that
legitimately cannot run in CI go in ``ALLOWED_SKIPS`` with the reason.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from pyro_compute.cluster import LocalCluster

TESTS = Path(__file__).parent
POOL_THREADS = ("pool-", "dispatch-", "feeder-")  # names of the threads a Pool starts
LEAK_GRACE = 5.0  # seconds a stopping thread or process has to go away after its test

# node id prefix -> why it may skip even in CI. Keep this empty unless a test truly cannot run.
ALLOWED_SKIPS: dict[str, str] = {}


def in_ci() -> bool:
    """True when the CI environment variable says so (GitHub, GitLab and most others set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI, turn a skip (not an xfail) into a failure unless the test is allow-listed."""
    outcome: Any = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if any(item.nodeid.startswith(prefix) for prefix in ALLOWED_SKIPS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which counts as a failure: {reason}\n"
                       "Install what the test needs in .ci/run, or add it to ALLOWED_SKIPS in "
                       "tests/conftest.py with the reason it cannot run in CI.")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Under CI, a module that skips itself at import (importorskip) fails to collect instead."""
    outcome: Any = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not any(collector.nodeid.startswith(p) for p in ALLOWED_SKIPS):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped itself under CI=true: {reason}"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PYRO_* or PYRO_COMPUTE_* variable from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PYRO"):
            monkeypatch.delenv(key)


def children() -> list[psutil.Process]:
    """Live child processes of this test process."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def describe(p: psutil.Process) -> str:
    """PID and command line of a process, for a leak report."""
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def pool_threads() -> set[threading.Thread]:
    """Live threads a Pool started (by their name prefix)."""
    return {t for t in threading.enumerate() if t.name.startswith(POOL_THREADS) and t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After every test: no child process and no pool thread it started is left behind.

    What existed before the test (the session cluster, a module's pool) is not the test's doing;
    what the test started gets LEAK_GRACE seconds to go away.
    """
    processes_before = {p.pid for p in children()}
    threads_before = pool_threads()
    yield
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        processes = [p for p in children() if p.pid not in processes_before]
        threads = pool_threads() - threads_before
        if not (processes or threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not processes, "the test left child processes behind: " + ", ".join(map(describe, processes))
    assert not threads, f"the test left pool threads behind: {sorted(t.name for t in threads)}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A name server and two workers that may also run functions from tests/remote_tasks.py."""
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    c = LocalCluster(2, allow_modules=["remote_tasks"], env=env)
    try:
        yield c
    finally:
        started = time.monotonic()
        c.close()
        assert time.monotonic() - started < 15, "cluster shutdown was slow"
        assert not children(), f"leaked processes: {children()}"
