"""Slurm: where a ``compute-worker`` under ``srun`` belongs, and the sbatch script that runs a script.

The batch script (``pyro-compute slurm script|submit``) runs on the allocation's first node::

    name server on the first node (a secret made in the job, passed to srun in its environment)
    srun --ntasks-per-node=1 python -m pyro_compute.worker    one per node, one worker per core
    python -m pyro_compute.slurm wait                              until every core's worker registered
    python -m pyro_compute run --ns $PYRO_COMPUTE_NS SCRIPT ARGS   the script, on the first node
    on exit: workers stopped (they drain and unregister), then the name server

A worker started under ``srun`` without ``--name``/``--ns``/``--host``/``-n`` takes them from Slurm:
name ``slurm.JOB.TASK``, the name server on the job's first node, the address that reaches it,
and one worker per core Slurm gave its task.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping

from .config import NAME_PREFIX, Settings
from .errors import ComputeError, ConfigError
from .hostfile import expand_ranges

PORT_BASE, PORT_SPAN = 20000, 10000  # below Linux's ephemeral range (32768-60999)


def expand_nodelist(text: str) -> list[str]:
    """Expand a Slurm node list: ``node[01-03,07],gpu1`` -> node01 node02 node03 node07 gpu1."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            if text[start:i].strip():
                names += expand_ranges(text[start:i].strip())
            start = i + 1
    return names


def expand_counts(text: str) -> list[int]:
    """Expand Slurm's per-node counts: ``2(x3),1`` -> 2 2 2 1."""
    counts: list[int] = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ConfigError(f"cannot read the Slurm count list {text!r}")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def ns_port(job_id: str) -> int:
    """The name server port of a job when none was given: the same on every node, from the job id."""
    return PORT_BASE + int(job_id) % PORT_SPAN if job_id.isdigit() else PORT_BASE


def in_slurm(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a task of a Slurm job step (started by srun)."""
    environ = os.environ if environ is None else environ
    return "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ


def cores_for_task(environ: Mapping[str, str]) -> int:
    """Cores Slurm gave this task: ``--cpus-per-task``, or the node's cores when it runs one task there."""
    if environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(environ["SLURM_CPUS_PER_TASK"]))
    node = int(environ.get("SLURM_NODEID", "0"))
    tasks = expand_counts(environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or "1")
    cores = expand_counts(environ.get("SLURM_JOB_CPUS_PER_NODE") or environ.get("SLURM_CPUS_ON_NODE") or "1")
    if node < len(tasks) and node < len(cores) and tasks[node] == 1:
        return max(1, cores[node])
    return 1


def apply_environment(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Fill a ``compute-worker`` command line's unset name, name server, bind address and ``-n`` from Slurm."""
    from .remote import route_to

    environ = os.environ if environ is None else environ
    if not in_slurm(environ):
        return
    job = environ["SLURM_JOB_ID"]
    args.name = args.name or f"slurm.{job}.{environ['SLURM_PROCID']}"
    if not args.ns and not environ.get("PYRO_COMPUTE_NS"):
        nodes = expand_nodelist(environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "")
        if not nodes:
            raise ConfigError("under Slurm, but SLURM_JOB_NODELIST is empty; give --ns HOST:PORT")
        args.ns = f"{nodes[0]}:{ns_port(job)}"
    if not args.host and not environ.get("PYRO_COMPUTE_HOST"):
        host, port = Settings(ns=args.ns or environ["PYRO_COMPUTE_NS"]).ns_address
        args.host = route_to(host, port)
    if getattr(args, "workers", None) is None:
        args.workers = cores_for_task(environ)


def total_cores(environ: Mapping[str, str]) -> int:
    """Cores of the whole allocation (one worker each)."""
    return sum(expand_counts(environ.get("SLURM_JOB_CPUS_PER_NODE", "1")))


def wait_for_workers(settings: Settings, count: int, timeout: float) -> int:
    """Block until ``count`` workers are registered; return how many there are.

    Raises:
        ComputeError: fewer registered within ``timeout`` seconds.
    """
    from .worker import locate_ns
    import Pyro4.errors

    deadline, seen = time.monotonic() + timeout, 0
    while True:
        try:
            with locate_ns(settings) as ns:
                seen = len(ns.list(prefix=NAME_PREFIX))
        except Pyro4.errors.PyroError:
            seen = 0
        if seen >= count:
            return seen
        if time.monotonic() > deadline:
            raise ComputeError(f"only {seen} of {count} workers registered in {settings.ns} within "
                               f"{timeout:.0f} s; see the job's output for the workers' errors")
        time.sleep(0.5)


def ns_address(environ: Mapping[str, str]) -> str:
    """The address the name server binds on the first node: the one the other nodes reach (loopback alone)."""
    from .remote import route_to

    nodes = expand_nodelist(environ.get("SLURM_JOB_NODELIST", ""))
    return route_to(nodes[1], PORT_BASE) if len(nodes) > 1 else "127.0.0.1"


def sbatch_script(script: str, script_args: list[str], *, python: str = "python3", nodes: int | None = None,
                  cpus_per_node: int | None = None, time_limit: str | None = None, partition: str | None = None,
                  job_name: str = "pyro-compute", output: str | None = None, port: int | None = None,
                  allow_modules: list[str] | None = None, sbatch_options: list[str] | None = None,
                  startup_timeout: float = 300.0) -> str:
    """The text of a batch script that runs ``script`` on one worker per allocated core."""
    from . import __version__

    q = shlex.quote
    path = os.path.abspath(script)
    header = [f"--job-name={job_name}", "--ntasks-per-node=1"]
    header += [f"--nodes={nodes}"] if nodes else []
    header += [f"--cpus-per-task={cpus_per_node}"] if cpus_per_node else ["--exclusive"]
    header += [f"--time={time_limit}"] if time_limit else []
    header += [f"--partition={partition}"] if partition else []
    header += [f"--output={output}"] if output else []
    header += list(sbatch_options or [])
    modules = "".join(f" --allow-module {q(m)}" for m in allow_modules or [])
    port_expr = str(port) if port else f"$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))"
    return "\n".join([
        "#!/bin/bash", *(f"#SBATCH {h}" for h in header),
        f"# Made by pyro-compute {__version__}: a name server on the first node, one compute worker per",
        "# allocated core (one forking supervisor per node), then the script on the first node.",
        "set -euo pipefail",
        f"PYTHON={q(python)}",
        'NS_HOST=$($PYTHON -m pyro_compute.slurm ns-address)',
        f"export PYRO_COMPUTE_NS=\"$NS_HOST:{port_expr}\"",
        "# Made here, it reaches the workers in srun's environment, never on a command line.",
        "export PYRO_COMPUTE_HMAC_KEY=\"${PYRO_COMPUTE_HMAC_KEY:-$($PYTHON -c 'import secrets; print(secrets.token_hex(16))')}\"",
        "PYRO_HMAC_KEY=$PYRO_COMPUTE_HMAC_KEY \\",
        '    $PYTHON -m pyro_compute.naming -n "$NS_HOST" -p "${PYRO_COMPUTE_NS##*:}" &',
        "NS_PID=$!",
        'srun --ntasks-per-node=1 --overlap --cpus-per-task="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}" \\',
        f"    $PYTHON -m pyro_compute.worker --script {q(path)}{modules} &",
        "WORKERS_PID=$!",
        "# SIGTERM reaches the workers themselves (killing srun would have Slurm kill them): they drain",
        "# and unregister; then the name server stops.",
        'stop() { scancel --quiet --signal=TERM "$SLURM_JOB_ID.0" 2>/dev/null || true',
        '         wait "$WORKERS_PID" 2>/dev/null || true',
        '         kill -TERM "$NS_PID" 2>/dev/null || true; wait "$NS_PID" 2>/dev/null || true; }',
        "trap stop EXIT",
        f"$PYTHON -m pyro_compute.slurm wait --timeout {startup_timeout:.0f}",
        f"$PYTHON -m pyro_compute run --ns \"$PYRO_COMPUTE_NS\" {q(path)} {' '.join(map(q, script_args))}".rstrip(),
        ""])


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, help="nodes to allocate (default: Slurm's default, 1)")
    p.add_argument("--cpus-per-node", type=int, metavar="N",
                   help="cores per node, one worker each (default: whole nodes, --exclusive)")
    p.add_argument("--time", dest="time_limit", help="time limit, e.g. 1:00:00")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--job-name", default="pyro-compute")
    p.add_argument("--output", help="sbatch --output file (default: slurm-JOBID.out)")
    p.add_argument("--port", type=int, help=f"name server port (default: {PORT_BASE} + job id mod {PORT_SPAN})")
    p.add_argument("--python", default="python3", help="the Python on the nodes (default: python3)")
    p.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                   help="a module whose functions the workers may run; repeat for more")
    p.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                   help="one more '#SBATCH OPTION' line, e.g. --sbatch-option=--mem=4G")
    p.add_argument("script", help="the script to run on the first node")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``slurm script|submit`` to a ``pyro-compute`` subparsers object; return the ``slurm`` parser."""
    p = subparsers.add_parser("slurm", help="print or submit an sbatch script that runs a script on workers",
                              description="Run SCRIPT in a Slurm job: a name server on the first node, one "
                                          "compute worker per allocated core, the script on the first node.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_job_options(sub.add_parser("script", help="print the sbatch script"))
    submit = sub.add_parser("submit", help="submit it with sbatch")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish (sbatch --wait)")
    _add_job_options(submit)
    wait = sub.add_parser("wait", help="(in a job) wait until every allocated core's worker registered")
    wait.add_argument("--workers", type=int, help="how many (default: the allocation's cores)")
    wait.add_argument("--timeout", type=float, default=300.0)
    sub.add_parser("ns-address", help="(in a job) print the address the name server binds")
    return p  # type: ignore[no-any-return]


def cmd_slurm(args: argparse.Namespace) -> int:
    """Run a ``slurm`` action; return the exit status."""
    if args.action == "ns-address":
        print(ns_address(os.environ))
        return 0
    if args.action == "wait":
        settings = Settings.from_env()
        seen = wait_for_workers(settings, args.workers or total_cores(os.environ), args.timeout)
        print(f"{seen} workers registered in {settings.ns}", file=sys.stderr)
        return 0
    if not os.path.isfile(args.script):
        raise ConfigError(f"no such script: {args.script}")
    text = sbatch_script(args.script, list(args.args), python=args.python, nodes=args.nodes,
                         cpus_per_node=args.cpus_per_node, time_limit=args.time_limit, partition=args.partition,
                         job_name=args.job_name, output=args.output, port=args.port,
                         allow_modules=args.allow_module, sbatch_options=args.sbatch_option)
    if args.action == "script":
        print(text, end="")
        return 0
    try:
        done = subprocess.run(["sbatch", *(["--wait"] if args.wait else [])], input=text, text=True)
    except FileNotFoundError:
        raise ConfigError("sbatch is not on PATH; run this on a Slurm login node, or print the script "
                          "with 'pyro-compute slurm script' and submit it there") from None
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    """``python -m pyro_compute.slurm ACTION``: the ``slurm`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m pyro_compute.slurm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["slurm", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_slurm(args)
    except ComputeError as e:
        print(f"pyro-compute: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
