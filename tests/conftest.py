"""Shared fixtures: a clean environment and one real LocalCluster for the session."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from pyro_compute.cluster import LocalCluster

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PYRO_* or PYRO_COMPUTE_* variable from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PYRO"):
            monkeypatch.delenv(key)


def children() -> list[psutil.Process]:
    """Live child processes of this test process."""
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


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
