"""LocalCluster's start-up shape (issue 12 item 5, B7): one warmed process forks the workers, a light
name server, worker handles that behave like ``subprocess.Popen``, a fast and complete stop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import Pyro4
import pytest

from conftest import children
import launch_helpers
from launch_helpers import child_env
import remote_tasks
from pyro_compute import Pool, kernels, tasks
from pyro_compute.cluster import ForkedWorker, LocalCluster
from pyro_compute.errors import ClusterError

T = 60  # seconds for any one result: a 2-core machine shared with other test runs


def _mapped(pid: int, part: str) -> bool:
    """Whether process ``pid`` has a file whose path contains ``part`` mapped (a loaded library)."""
    return any(part in m.path for m in psutil.Process(pid).memory_maps(grouped=True))


def _fork_server(cluster: LocalCluster) -> psutil.Process:
    """The one process every ForkedWorker of ``cluster`` came from."""
    forked = [w for w in cluster.workers if isinstance(w, ForkedWorker)]
    assert len(forked) >= 2
    parents = {psutil.Process(w.pid).ppid() for w in forked}
    assert len(parents) == 1, "every worker comes from the same fork server"
    server = psutil.Process(parents.pop())
    assert server.ppid() == os.getpid() and "pyro_compute.worker" in " ".join(server.cmdline())
    return server


def _pi_hits_on(uri: str, key: bytes | None) -> int:
    """Run the pi_hits kernel on the worker at ``uri`` itself (not through a pool's choice)."""
    with Pyro4.Proxy(uri) as proxy:
        proxy._pyroHmacKey = key
        proxy._pyroTimeout = T
        return int(proxy.pi_hits(10_001, 7))


def test_numba_loads_only_in_the_workers_that_run_a_kernel() -> None:
    with LocalCluster(2) as c, Pool(cluster=c) as pool:
        server = _fork_server(c)
        assert pool.submit(tasks.noop).result(timeout=T) is None
        for pid in (server.pid, *(w.pid for w in c.workers)):
            assert not _mapped(pid, "llvmlite"), "no kernel ran, so no process loaded Numba"
        uris = list(c.registered().values())
        expected = kernels.pi_hits(10_001, np.uint64(7))
        assert [_pi_hits_on(uri, c.settings.hmac_bytes) for uri in uris] == [expected] * 2
        assert all(_mapped(w.pid, "llvmlite") for w in c.workers), "each worker loaded the kernels"
        assert not _mapped(server.pid, "llvmlite")
        info = pool.submit(tasks.noop)  # the workers still serve tasks after loading
        assert info.result(timeout=T) is None


def test_warm_kernels_are_loaded_once_and_shared_by_the_forked_workers() -> None:
    with LocalCluster(2, warm_kernels=True) as c:
        server = _fork_server(c)
        assert _mapped(server.pid, "llvmlite"), "the fork server warmed the kernels before forking"
        expected = kernels.pi_hits(10_001, np.uint64(7))
        for uri in c.registered().values():
            assert _pi_hits_on(uri, c.settings.hmac_bytes) == expected
        for w in c.workers:
            mem = psutil.Process(w.pid).memory_full_info()
            # A separately started worker holds ~70 MiB of its own (USS); a forked one shares most.
            assert mem.uss < 0.5 * mem.rss, (w, mem)


def test_workers_register_with_their_kernels_before_loading_numba(cluster: LocalCluster) -> None:
    server = _fork_server(cluster)
    assert not _mapped(server.pid, "llvmlite"), "the default fork server does not load Numba"
    key = cluster.settings.hmac_bytes
    with Pyro4.locateNS(*cluster.settings.ns_address, hmac_key=key) as ns:
        metadata = ns.list(prefix="pyro_compute.evaluator.", return_metadata=True)
    assert metadata and all("kernels:pi_hits,integrate" in meta for _, meta in metadata.values())


def test_the_fork_server_skips_the_package_init_yet_tasks_get_the_whole_package() -> None:
    with LocalCluster(2, allow_modules=["remote_tasks", "launch_helpers"], env=child_env()) as c, \
            Pool(cluster=c) as pool:
        assert pool.submit(remote_tasks.loaded, "pyro_compute.pool").result(timeout=T) is False
        assert pool.submit(remote_tasks.loaded, "tqdm").result(timeout=T) is False
        # The first attribute the light package lacks runs the real __init__ in the worker.
        assert pool.submit(launch_helpers.package_attribute, "Pool").result(timeout=T) == "type"
        assert pool.submit(launch_helpers.package_attribute, "__version__").result(timeout=T) == "str"


def test_the_name_server_loads_neither_numpy_nor_numba(cluster: LocalCluster) -> None:
    assert cluster.nameserver is not None
    for library in ("numpy", "numba", "llvmlite"):
        assert not _mapped(cluster.nameserver.pid, library), library


def test_a_forked_worker_handle_behaves_like_popen() -> None:
    with LocalCluster(2, allow_modules=["remote_tasks"], env=child_env()) as c, Pool(cluster=c) as pool:
        first, second = c.workers
        assert isinstance(first, ForkedWorker) and first.poll() is None and first.returncode is None
        with pytest.raises(subprocess.TimeoutExpired):
            first.wait(timeout=0.1)
        first.kill()
        assert first.wait(timeout=T) == -signal.SIGKILL == first.returncode
        second.terminate()  # drains and unregisters: a clean exit
        assert second.wait(timeout=T) == 0
        time.sleep(1.0)  # a worker that died stays dead: LocalCluster's workers are not restarted
        assert [w.poll() for w in c.workers] == [-signal.SIGKILL, 0]
        more = c.start_worker()  # later workers are separate processes, as before
        assert pool.submit(remote_tasks.pid).result(timeout=T) == more.pid
        first.send_signal(signal.SIGTERM)  # to a worker that is gone: nothing happens
    assert more.poll() is not None


def test_close_stops_every_process_quickly() -> None:
    before = {p.pid for p in children()}
    c = LocalCluster(2)
    started = [p for p in children() if p.pid not in before]
    assert len(started) == 4, started  # name server, fork server, two workers
    t = time.monotonic()
    c.close()
    assert time.monotonic() - t < 10  # ~0.15 s on a quiet machine; generous for a loaded one
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    c.close()  # idempotent


def test_workers_that_cannot_start_fail_the_cluster_at_once_with_their_reason() -> None:
    before = {p.pid for p in children()}
    t = time.monotonic()
    with pytest.raises(ClusterError, match="cannot listen on 192.0.2.7"):
        LocalCluster(2, env={"PYRO_COMPUTE_HOST": "192.0.2.7"})  # TEST-NET: no address of ours
    assert time.monotonic() - t < 30  # the error, not the 60 s start-up timeout
    assert {p.pid for p in children()} == before


WARM = """
import sys
import numba
import numpy as np
from pyro_compute import kernels
kernels.warm_up()
assert "scipy.linalg" not in sys.modules, "the BLAS probe was skipped"

@numba.njit
def user_code(a, b):
    return np.dot(a, b), np.correlate(a, b)[0], np.linalg.det(np.eye(2) * a[0])

print(user_code(np.arange(1.0, 4.0), np.ones(3)))
"""


def test_warm_up_skips_scipy_yet_njit_code_with_blas_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True, timeout=300,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(6.0, 6.0, 1.0)"


LAZY = """
import sys, threading
import numpy as np
from pyro_compute import kernels, worker
assert "numba" not in sys.modules, "importing the worker does not import Numba"
firsts = []  # four threads make the first call at once: one loads, the others wait for it
threads = [threading.Thread(target=lambda: firsts.append(kernels.pi_hits(1001, np.uint64(9)))) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert "numba" in sys.modules and kernels.loaded() and "scipy.linalg" not in sys.modules
print(firsts == [kernels.pi_hits(1001, np.uint64(9))] * 4, firsts[0] > 700, type(kernels.pi_hits).__name__)
"""


def test_the_kernels_import_numba_on_their_first_call() -> None:
    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "CPUDispatcher"]


LIGHT = """
import os, sys, threading
import pyro_compute.bootstrap as bootstrap  # imported normally here, then replaced by the light package
root = os.path.dirname(bootstrap.__file__)
for name in [m for m in sys.modules if m == "pyro_compute" or m.startswith("pyro_compute.")]:
    del sys.modules[name]
package = bootstrap.light_package(root)
import pyro_compute
assert pyro_compute is package and "pyro_compute.pool" not in sys.modules and pyro_compute.__version__
from pyro_compute import config  # a submodule: the __init__ still has not run
assert "pyro_compute.pool" not in sys.modules
names = []  # eight threads ask for a name of the __init__ at once: each gets it, none sees half a package
threads = [threading.Thread(target=lambda: names.append(pyro_compute.Pool.__name__)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
try:
    pyro_compute.no_such_name
except AttributeError as e:
    print(names == ["Pool"] * 8, "no_such_name" in str(e), pyro_compute.__all__ is not None)
"""


def test_the_light_package_completes_itself_once_for_every_thread() -> None:
    out = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=120,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
