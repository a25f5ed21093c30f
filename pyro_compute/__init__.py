"""pyro_compute: Monte Carlo and other embarrassingly parallel work spread over Pyro4 workers."""
from concurrent.futures import CancelledError, TimeoutError, as_completed, wait

from .broadcast import Broadcast
from .cluster import LocalCluster
from .config import Settings
from .errors import (BrokenPoolError, ClusterError, ComputeError, ConfigError, KernelError,
                     RemoteError, RemoteTraceback, WorkerUnavailableError)
from .montecarlo import PiEstimate, estimate_pi
from .pool import Pool

__version__ = "0.1.0"

__all__ = [
    "Pool", "LocalCluster", "Broadcast", "Settings", "estimate_pi", "PiEstimate",
    "as_completed", "wait", "CancelledError", "TimeoutError",
    "ComputeError", "ConfigError", "WorkerUnavailableError", "BrokenPoolError", "ClusterError",
    "KernelError", "RemoteError", "RemoteTraceback",
]
