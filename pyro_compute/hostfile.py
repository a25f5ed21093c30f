"""SCOOP's hostfile format: one ``host [count]`` per line, ``#`` comments, blank lines ignored.

::

    # three machines; gpu1 runs one worker per core
    node1 4
    user@node2 2
    gpu1
    node[07-09,12] 2      Slurm-style ranges expand to node07 node08 node09 node12

A host is anything the system ``ssh`` accepts (a name from ``~/.ssh/config``, ``user@host``);
``localhost`` and ``127.0.0.1`` start their workers here, without ssh.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from .errors import ConfigError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_RANGE = re.compile(r"^([^\[\]]*)\[([0-9,\-]+)\](.*)$")


@dataclasses.dataclass(frozen=True)
class Host:
    """One hostfile line: where to start workers and how many (None: one per core there)."""

    name: str
    count: int | None = None

    @property
    def local(self) -> bool:
        """Whether the workers start on this machine instead of over ssh."""
        return self.name.rpartition("@")[2] in LOCAL_HOSTS

    @property
    def label(self) -> str:
        """The host's name without ``user@``, safe in a worker name."""
        return re.sub(r"[^A-Za-z0-9_\-]", "-", self.name.rpartition("@")[2])


def expand_ranges(name: str) -> list[str]:
    """Expand one Slurm-style range group: ``node[1-3,7]`` -> node1 node2 node3 node7 (widths kept).

    Raises:
        ConfigError: a range such as ``[5-2]`` or ``[a-b]``.
    """
    match = _RANGE.match(name)
    if not match:
        return [name]
    head, ranges, tail = match.groups()
    names = []
    for part in filter(None, ranges.split(",")):
        low, _, high = part.partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise ConfigError(f"the host range [{ranges}] in {name!r} is not of the form [1-4,7]")
        names += [f"{head}{i:0{len(low)}d}{tail}" for i in range(int(low), int(high) + 1)]
    return [n for name_ in names for n in expand_ranges(name_)]


def parse_hostfile(text: str, source: str = "hostfile") -> list[Host]:
    """Parse hostfile text into hosts, in order.

    Raises:
        ConfigError: a line that is not ``host [count]`` with a count of at least 1, or no host at all.
    """
    hosts: list[Host] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 2 or (len(fields) == 2 and not (fields[1].isascii() and fields[1].isdigit())):
            raise ConfigError(f"{source} line {number}: {raw.strip()!r} is not 'HOST [COUNT]'; write one "
                              "host per line, optionally followed by its number of workers")
        count = int(fields[1]) if len(fields) == 2 else None
        if count == 0:
            raise ConfigError(f"{source} line {number}: a host with 0 workers serves nothing; give at "
                              "least 1, or leave the count out for one worker per core")
        hosts += [Host(name, count) for name in expand_ranges(fields[0])]
    if not hosts:
        raise ConfigError(f"{source} names no host; write one 'HOST [COUNT]' per line")
    return hosts


def read_hostfile(path: str) -> list[Host]:
    """Read and parse a hostfile.

    Raises:
        ConfigError: the file cannot be read or is not a hostfile.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the hostfile {path!r}: {e}") from e
    return parse_hostfile(text, path)


def limit(hosts: Iterable[Host], total: int) -> list[Host]:
    """Keep ``total`` workers in all, like SCOOP's ``-n``: fill the hosts in order, then go round again.

    A host without a count counts as one worker per pass.
    """
    hosts = list(hosts)
    if total < 1:
        raise ConfigError(f"-n {total} starts no worker; give at least 1")
    counts = [0] * len(hosts)
    left = total
    first_pass = True
    while left:
        for i, host in enumerate(hosts):
            take = min(left, (host.count or 1) if first_pass else 1)
            counts[i] += take
            left -= take
        first_pass = False
    return [Host(h.name, c) for h, c in zip(hosts, counts) if c]
