"""Frozen settings read from arguments or ``PYRO_COMPUTE_*`` environment variables."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from .errors import ConfigError

ENV_PREFIX = "PYRO_COMPUTE_"
NAME_PREFIX = "pyro_compute.evaluator."
DEFAULT_NS = "127.0.0.1:9090"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a pool, worker or cluster needs to know; one field per ``PYRO_COMPUTE_*`` variable.

    Attributes:
        ns: name server address as ``HOST:PORT``.
        hmac_key: shared secret; empty means no authentication.
        hmac_key_file: file whose first line is the shared secret (used when ``hmac_key`` is empty).
        host: interface a worker binds to.
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
    host: str = "127.0.0.1"
    call_timeout: float = 300.0
    max_retries: int = 3
    worker_wait: float = 30.0
    max_message_size: int = 256 * 1024 * 1024
    allow_modules: str = ""
    discovery_interval: float = 2.0
    ns_timeout: float = 5.0
    probe_timeout: float = 1.0

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


def _convert(key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
