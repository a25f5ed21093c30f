"""Turn a failed Pyro4 or socket call into one sentence that says what is wrong and what to do.

Clients, workers and the status command all meet the same few failures; each gets told apart by
Pyro4's own reason (kept in the sentence) rather than guessed from a timeout::

    message hmac mismatch / hmac key config not symmetric  ->  the secrets differ (or one side has none)
    connection refused                                      ->  nothing listens at that address
    receiving/sending: timeout, timed out                   ->  something accepted but did not answer
    no route, unreachable, name not known                   ->  the host cannot be reached or resolved
"""
from __future__ import annotations

import errno
import socket
import time
from typing import Any

import Pyro4
import Pyro4.constants
import Pyro4.errors

from .config import Settings
from .errors import WorkerUnavailableError

SECRET_ADVICE = ("give every name server, worker and client the same secret "
                 "(PYRO_COMPUTE_HMAC_KEY_FILE or PYRO_COMPUTE_HMAC_KEY)")
PROBE_TIMEOUT = 2.0  # seconds one liveness probe may take
NS_TIMEOUT = 3.0  # seconds a client waits for the name server to answer
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: Pyro4's locateNS wraps the real failure in NamingError."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def reason(exc: BaseException) -> str:
    """Pyro4's (or the OS's) own words for the failure."""
    cause = root_cause(exc)
    return str(cause) or type(cause).__name__


def kind(exc: BaseException) -> str:
    """One of ``secret``, ``no-secret``, ``refused``, ``timeout``, ``unreachable``, ``no-object``, ``other``."""
    cause = root_cause(exc)
    text = str(cause).lower()
    if "hmac mismatch" in text:
        return "secret"
    if "hmac key config not symmetric" in text:
        return "no-secret"
    timed_out = isinstance(cause, (Pyro4.errors.TimeoutError, socket.timeout, TimeoutError)) \
        or "timed out" in text or "timeout" in text
    if timed_out and "cannot connect" in text:  # no answer to connect: the host is down or filtered
        return "unreachable"
    if timed_out:
        return "timeout"
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in text:
        return "refused"
    if isinstance(cause, socket.gaierror) or getattr(cause, "errno", None) in _UNREACHABLE \
            or "no route to host" in text or "unreachable" in text or "name or service not known" in text:
        return "unreachable"
    if "unknown object" in text:
        return "no-object"
    return "other"


def explain(exc: BaseException, address: str, what: str) -> str:
    """One sentence: what failed talking to ``what`` at ``address``, Pyro4's reason, and what to do.

    Args:
        exc: the exception a Pyro4 call (or socket) raised.
        address: ``HOST:PORT`` that was called.
        what: who lives there, e.g. "the name server" or "worker pyro_compute.evaluator.a.0".
    """
    why = reason(exc)
    advice = {
        "secret": f"{what} at {address} uses a different secret ({why}): {SECRET_ADVICE}",
        "no-secret": f"one side has a secret and the other has none ({why}) talking to {what} at "
                     f"{address}: {SECRET_ADVICE}, or --insecure on both, on loopback only",
        "refused": f"nothing is listening at {address} ({why}): start {what} there, or fix the address "
                   "(--ns or PYRO_COMPUTE_NS for the name server)",
        "timeout": f"{what} at {address} accepted the connection but did not answer ({why}): it is "
                   "stopped (SIGSTOP, a debugger), overloaded, or a firewall passes only part of the "
                   "traffic; check that its process is running",
        "unreachable": f"cannot reach {address} ({why}): the host is down, not routable from here, "
                       "or its name does not resolve; check the address and the network",
        "no-object": f"something at {address} speaks Pyro4 but does not host {what} ({why}): check "
                     "the port",
    }
    return advice.get(kind(exc), f"talking to {what} at {address} failed: {type(root_cause(exc)).__name__}: {why}")


def explain_bind(exc: OSError, host: str, port: int, what: str) -> str:
    """One sentence for a failed bind of ``what`` to ``host:port``: which address, why, what to do."""
    why = exc.strerror or str(exc)
    where = f"{what} cannot listen on {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: the name {host!r} does not resolve ({why}); give --host an address of this machine"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: the port is in use ({why}); pick another port, or stop what holds it "
                f"(see: ss -ltnp 'sport = :{port}')")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: {host} is not an address of this machine ({why}); give --host one of "
                "this machine's addresses (see: ip -brief address)")
    if exc.errno == errno.EACCES:
        return f"{where}: ports below 1024 need root ({why}); pick a port above 1023"
    return f"{where}: {why}"


def peer_alive(uri: str, hmac_key: bytes | None, tries: int = 2, gap: float = 0.5) -> bool:
    """Whether the object at ``uri`` may still be alive; False only when every probe finds nothing.

    Nothing means: connection refused, host unreachable (no answer to connect), or no such
    object. A process that accepts but does not answer (stopped, slow) or speaks another secret
    counts as alive, so a live worker's name is never taken from it.
    """
    for attempt in range(tries):
        if attempt:
            time.sleep(gap)
        try:
            with Pyro4.Proxy(uri) as proxy:
                proxy._pyroHmacKey = hmac_key
                proxy._pyroTimeout = PROBE_TIMEOUT
                proxy._pyroBind()
            return True
        except Pyro4.errors.PyroError as e:
            if kind(e) not in ("refused", "unreachable", "no-object"):
                return True
    return False


def connect_ns(settings: Settings, timeout: float = NS_TIMEOUT) -> Any:
    """A bound proxy to the name server that gives up after ``timeout`` seconds of silence.

    Raises:
        WorkerUnavailableError: one sentence telling a secret mismatch from nothing listening
            from a name server that does not answer (``diagnose.explain``).
    """
    host, port = settings.ns_address
    proxy = Pyro4.Proxy(f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{_bracket(host)}:{port}")
    proxy._pyroHmacKey = settings.hmac_bytes
    proxy._pyroTimeout = timeout
    try:
        proxy._pyroBind()
    except Pyro4.errors.PyroError as e:
        proxy._pyroRelease()
        raise WorkerUnavailableError(explain(e, settings.ns, "the name server")) from e
    return proxy


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
