"""Frozen settings read from arguments or ``PYRO_COMPUTE_*`` environment variables."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from typing import Any, Mapping

from .errors import ConfigError

ENV_PREFIX = "PYRO_COMPUTE_"
NAME_PREFIX = "pyro_compute.evaluator."
DEFAULT_NS = "127.0.0.1:9090"
DEFAULT_HOST = "127.0.0.1"
SECRET_HELP = (
    "Make a secret once with\n"
    "    python3 -c \"import secrets; print(secrets.token_hex(32))\" > secret && chmod 600 secret\n"
    "copy that file to every worker, name server and client machine, and point "
    "PYRO_COMPUTE_HMAC_KEY_FILE at it (or put the secret itself in PYRO_COMPUTE_HMAC_KEY).")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a pool, worker or cluster needs to know; one field per ``PYRO_COMPUTE_*`` variable.

    Attributes:
        ns: name server address as ``HOST:PORT``.
        hmac_key: shared secret; empty means no authentication.
        hmac_key_file: file whose first line is the shared secret (used when ``hmac_key`` is empty).
        host: interface a worker binds to; empty means the loopback default.
        idle_timeout: seconds a worker keeps an idle authenticated connection open.
        call_timeout: seconds an RMI call may take before its worker counts as stuck.
        max_retries: how many different workers a task may be tried on.
        worker_wait: seconds a pool waits for a worker to appear before failing.
        max_message_size: largest Pyro4 message accepted, in bytes.
        allow_modules: comma-separated extra modules whose functions workers may call.
        discovery_interval: seconds between name-server scans for new workers, and between
            probes of a worker that stopped answering.
        ns_timeout: seconds a pool waits for the name server to answer.
        probe_timeout: seconds a worker has to answer a pool's handshake before it counts as hung.
    """

    ns: str = DEFAULT_NS
    hmac_key: str = ""
    hmac_key_file: str = ""
    host: str = DEFAULT_HOST
    idle_timeout: float = 600.0
    call_timeout: float = 300.0
    max_retries: int = 3
    worker_wait: float = 30.0
    max_message_size: int = 256 * 1024 * 1024
    allow_modules: str = ""
    discovery_interval: float = 2.0
    ns_timeout: float = 5.0
    probe_timeout: float = 1.0

    def __post_init__(self) -> None:
        host = self.host.strip().strip("[]")
        if not host:  # an empty PYRO_COMPUTE_HOST= means the default, never every interface
            host = DEFAULT_HOST
        if _is_wildcard(host):
            raise ConfigError(f"host {self.host!r} would listen on every interface and register an "
                              "address nobody can connect to; give this machine's address on the "
                              "network the clients use, e.g. PYRO_COMPUTE_HOST=10.0.0.7")
        object.__setattr__(self, "host", host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PYRO_COMPUTE_*`` variables, then apply non-None overrides.

        Raises:
            ConfigError: an unknown ``PYRO_COMPUTE_*`` variable or a value of the wrong type.
        """
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in fields:
                raise ConfigError(f"unknown setting {key}; known ones are "
                                  + ", ".join(ENV_PREFIX + n.upper() for n in fields))
            values[name] = _convert(key, raw, type(fields[name].default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
        return cls(**values)

    @property
    def ns_address(self) -> tuple[str, int]:
        """The name server address split into host and port."""
        return parse_address(self.ns, "ns")

    @property
    def hmac_bytes(self) -> bytes | None:
        """The shared secret as bytes, or None when none is configured."""
        if self.hmac_key:
            return self.hmac_key.encode()
        if self.hmac_key_file:
            try:
                with open(self.hmac_key_file, encoding="utf-8") as f:
                    key = f.readline().strip()
            except OSError as e:
                raise ConfigError(f"cannot read the HMAC key file {self.hmac_key_file!r}: {e}") from e
            if not key:
                raise ConfigError(f"the HMAC key file {self.hmac_key_file!r} is empty")
            return key.encode()
        return None

    @property
    def allowed_modules(self) -> tuple[str, ...]:
        """``allow_modules`` as a tuple of module names."""
        return tuple(m.strip() for m in self.allow_modules.split(",") if m.strip())

    def as_env(self) -> dict[str, str]:
        """The settings as ``PYRO_COMPUTE_*`` variables, for child processes."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
                for f in dataclasses.fields(self)}


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` into its parts.

    Raises:
        ConfigError: the text is not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port = text.rpartition(":")
    # isdigit() alone accepts digits such as '²' that int() rejects.
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"{what} must be HOST:PORT, e.g. 127.0.0.1:9090, not {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def require_secret(settings: Settings, insecure: bool, who: str, host: str) -> bytes | None:
    """The shared secret; without one, allowed only with ``insecure`` when ``host`` is loopback.

    Raises:
        ConfigError: no secret and not ``insecure``, or ``insecure`` on a non-loopback host.
    """
    key = settings.hmac_bytes
    if key is not None:
        return key
    if not insecure:
        raise ConfigError(f"{who} needs a shared secret: without one, anyone who can reach its "
                          f"port can use it. {SECRET_HELP} To try things out on this machine only, "
                          "pass --insecure instead.")
    if not is_loopback(host):
        raise ConfigError(f"--insecure is allowed only on a loopback address such as 127.0.0.1, "
                          f"not {host!r}: anyone on the network could use {who}. {SECRET_HELP}")
    return None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _convert(key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
