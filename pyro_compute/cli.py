"""The ``pyro-compute`` command line: argument parsing and output only; the work lives elsewhere."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import secrets
import sys
import time
from typing import Any, Iterator

import Pyro4.errors

from . import __version__, cluster_cli, dashboard, slurm
from .cluster import LocalCluster
from .config import NAME_PREFIX, Settings
from .dashboard_client import RemoteRun
from .diagnose import connect_ns
from .errors import ComputeError
from .montecarlo import estimate_pi
from .pool import Pool
from .status import cluster_status

REPORT_HELP = ("report this run's tasks and progress to a running 'pyro-compute dashboard' at URL, "
               "e.g. http://127.0.0.1:8787 (it must have the same PYRO_COMPUTE_HMAC_KEY)")
COMMANDS = ("pi", "run", "status", "config", "dashboard", "cluster", "slurm")
GLOBAL_FLAGS = ("-v", "--verbose", "-vv")
DEFAULT_SAMPLES = 10**9


def _count(text: str) -> int:
    """Parse a sample count such as 4e9 or 1_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(value)


def _workers(text: str) -> int:
    """Parse a worker count: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} workers cannot run anything; give at least 1, "
                                         "or leave -n out for one per core")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--ns", metavar="HOST:PORT",
                       help="use the workers registered in this name server (default: $PYRO_COMPUTE_NS)")
    where.add_argument("-n", "--workers", type=_workers, metavar="N",
                       help="start an embedded local cluster of N workers (default: one per core)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")


def _add_pi_parser(sub: Any) -> None:
    """Add ``pyro-compute pi``."""
    pi = sub.add_parser("pi", help="estimate π with the Numba kernel across the workers",
                        description="Estimate π by hit counting, spread over the workers. The "
                                    "answer depends only on --samples, --seed and --tol.")
    pi.add_argument("--samples", type=_count, help="points to draw, e.g. 4e9 (default 1e9); with --tol, "
                                                   "the fewest to draw (default 1)")
    pi.add_argument("--seed", type=int, help="seed for the random streams (default: random, printed)")
    pi.add_argument("--tol", type=_positive_float, metavar="EPS",
                    help="keep drawing until the error (one standard error, Wilson score interval) "
                         "is below EPS")
    pi.add_argument("--json", action="store_true", help="print one JSON object")
    _add_cluster_options(pi)
    pi.add_argument("--dashboard", nargs="?", const=0, type=int, metavar="PORT",
                    help="serve a live page of this run on 127.0.0.1:PORT (default: a free port)")
    pi.add_argument("--dashboard-url", metavar="URL", help=REPORT_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-compute`` command line."""
    p = argparse.ArgumentParser(
        prog="pyro-compute",
        description="Spread Monte Carlo and other parallel Python work over Pyro4 compute workers.",
        epilog="'pyro-compute [-n N] script.py ...' is short for 'pyro-compute run ...'.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, dest="global_verbose",
                   help="log what happens (also accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_pi_parser(sub)

    run = sub.add_parser("run", help="run a SCOOP-style script with its futures on the workers",
                         description="Run SCRIPT with 'from pyro_compute import futures' calls spread "
                                     "over the workers; functions defined in the script run there.")
    run.add_argument("script", help="the Python script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    _add_cluster_options(run)
    run.add_argument("--dashboard", nargs="?", const=0, type=int, metavar="PORT",
                     help="serve a live page of this run's tasks on 127.0.0.1:PORT (default: a free "
                          "port); put it before the script, e.g. 'run --dashboard -- SCRIPT'")
    run.add_argument("--dashboard-url", metavar="URL", help=REPORT_HELP)
    cluster_cli.add_hostfile_options(run)

    status = sub.add_parser("status", help="list the registered workers and what they do",
                            description="Show every worker registered in the name server: host, pid, "
                                        "cores, kernels, tasks done, tasks in flight, kernel speed, "
                                        "busy share over the last 10 s, up time.")
    status.add_argument("--ns", metavar="HOST:PORT", help="name server (default: $PYRO_COMPUTE_NS)")
    status.add_argument("--json", action="store_true", help="print a JSON list, one object per worker")
    status.add_argument("--watch", type=_positive_float, nargs="?", const=2.0, metavar="SECONDS",
                        help="print again every SECONDS (default 2) until Ctrl-C")
    status.add_argument("-v", "--verbose", action="store_true", help="log what happens")

    dashboard.add_parser(sub)

    config = sub.add_parser("config", help="print the effective settings",
                            description="Print the settings read from PYRO_COMPUTE_* variables.")
    config.add_argument("--json", action="store_true", help="print one JSON object")
    cluster_cli.add_parser(sub)
    slurm.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (130 after Ctrl-C)."""
    argv = _with_command(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        return 2
    args = build_parser().parse_args(argv)
    verbose = args.global_verbose or getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(globals()[f"_cmd_{args.command}"](args))
    except KeyboardInterrupt:
        print("pyro-compute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 1
    except ComputeError as e:
        print(f"pyro-compute: error: {e}", file=sys.stderr)
        return 1
    except Pyro4.errors.PyroError as e:  # e.g. a worker that answered in a refused serializer
        print(f"pyro-compute: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _with_command(argv: list[str]) -> list[str] | None:
    """``argv`` with ``run`` inserted where a script comes instead of a command; None for a typo.

    Global flags (``--verbose``) may come first; a word that is no file and is close to a command
    (``stauts``) is reported with a suggestion instead of being run as a script.
    """
    first = 0
    while first < len(argv) and argv[first] in GLOBAL_FLAGS:
        first += 1
    rest = argv[first:]
    if not rest or rest[0] in COMMANDS or rest[0] in ("-h", "--help", "--version"):
        return argv
    word = rest[0]
    if not word.startswith("-") and not os.path.exists(word):
        close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
        if close:
            print(f"pyro-compute: error: unknown command {word!r}; did you mean {close[0]!r}? "
                  f"Commands: {', '.join(COMMANDS)}, or a script to run.", file=sys.stderr)
            return None
    return [*argv[:first], "run", *rest]


@contextlib.contextmanager
def _pool(args: argparse.Namespace, script: str | None = None,
          view: dashboard.DashboardRun | None = None) -> Iterator[Pool]:
    """A pool on the named cluster, or on an embedded local cluster started for this run.

    With ``view``, the pool reports every finished call to it (the run's dashboard).
    """
    if args.ns or (args.workers is None and os.environ.get("PYRO_COMPUTE_NS")):
        settings = Settings.from_env(ns=args.ns)
        with connect_ns(settings):  # fails in one sentence: wrong secret, nothing there, no answer
            pass
        by_value = script is not None and _by_value_wanted(settings, script)
        with Pool(args.ns, by_value=by_value, show_output=script is not None,
                  dashboard=view or False) as pool:
            yield pool
        return
    # The launcher's own cluster: per-run secret, loopback, every process the user's: lambdas,
    # closures, partials and objects of script classes travel by value (results come back as
    # plain data: a client never decodes pickle from the wire). --ns keeps by-value opt-in.
    # Kernel commands (no script) get one warm copy of the kernels shared by every worker;
    # a script's workers load Numba only if a kernel runs.
    with LocalCluster(args.workers, script=script, by_value=True, warm_kernels=script is None) as cluster, \
            Pool(cluster=cluster, by_value=True, show_output=script is not None,
                 dashboard=view or False) as pool:
        yield pool


@contextlib.contextmanager
def _view(args: argparse.Namespace, title: str) -> Iterator[dashboard.DashboardRun | None]:
    """The run's own view: reported elsewhere (--dashboard-url), to be served (--dashboard), or None."""
    if args.dashboard_url:
        with RemoteRun(args.dashboard_url, Settings.from_env(), title) as remote:
            yield remote  # closed after the pool: the dashboard hears the last calls, then 'finished'
    else:
        yield None if args.dashboard is None else dashboard.DashboardRun(title)


@contextlib.contextmanager
def _serve_view(args: argparse.Namespace, pool: Pool, view: dashboard.DashboardRun | None) -> Iterator[None]:
    """Serve ``view`` beside ``pool``'s cluster on 127.0.0.1:``args.dashboard``; nothing if None."""
    if view is None or args.dashboard is None:
        yield
        return
    with dashboard.serve_for_run(pool.settings, view, port=args.dashboard) as server:
        print(f"dashboard: {server.url}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            view.finish()


def _cmd_dashboard(args: argparse.Namespace) -> int:
    return dashboard.run(args)


def _by_value_wanted(settings: Settings, script: str) -> bool:
    """Send the script's functions by value when every worker accepts that and none runs the script.

    Workers started with ``--script`` for this very file take references (checked by hash);
    ``--allow-by-value`` workers take any script's functions, so they need no restart per script.
    """
    rows = [r for r in cluster_status(settings) if r["reachable"]]
    if not rows or any(r.get("script") == script for r in rows):
        return False
    return all(r.get("by_value") for r in rows)


def _cmd_pi(args: argparse.Namespace) -> int:
    seed = secrets.randbits(63) if args.seed is None else args.seed
    samples = args.samples or (DEFAULT_SAMPLES if args.tol is None else 1)
    with _view(args, f"pi, {samples:.3g} samples, seed {seed}") as view, \
            _pool(args, view=view) as pool, _serve_view(args, pool, view):
        est = estimate_pi(pool, samples, seed, args.tol, progress=sys.stderr.isatty(), reporter=view)
    if args.json:
        print(json.dumps({**dataclasses.asdict(est), "samples_per_second": est.samples_per_second}))
    else:
        print(f"pi        {est.pi:.10f} ± {est.stderr:.2g} (one standard error)\n"
              f"interval  {est.low:.10f} .. {est.high:.10f} (Wilson score, z = 1)\n"
              f"samples   {est.samples:,}\nseed      {est.seed}\nworkers   {est.workers}\n"
              f"time      {est.seconds:.3f} s\nspeed     {est.samples_per_second / 1e9:.3f} G samples/s")
    return 0


_cmd_cluster = cluster_cli.cmd_cluster
_cmd_slurm = slurm.cmd_slurm


def _cmd_run(args: argparse.Namespace) -> int:
    if args.hostfile:
        return cluster_cli.run_hostfile(args)
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        print(f"pyro-compute: error: no such script: {args.script}", file=sys.stderr)
        return 2
    with _view(args, f"run {args.script}") as view, _pool(args, script, view) as pool, \
            _serve_view(args, pool, view):
        cluster_cli.run_script(pool, script, args.args)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    settings = Settings.from_env(ns=args.ns)
    while True:
        rows = cluster_status(settings)
        if args.json:
            print(json.dumps(rows), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")  # clear the terminal between rounds
            _print_status(rows, settings.ns)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _print_status(rows: list[dict[str, Any]], ns: str) -> None:
    print(f"{'worker':<32} {'host':<14} {'pid':>7} {'cores':>5} {'kernels':<18} {'tasks':>9} "
          f"{'in flight':>9} {'G samples/s':>11} {'busy 10s':>8} {'up':>8}")
    for r in rows:
        name = r["name"].removeprefix(NAME_PREFIX)
        if not r["reachable"]:
            print(f"{name:<32} unreachable: {r['error']}")
            continue
        print(f"{name:<32} {r['host']:<14} {r['pid']:>7} {r['cores']:>5} {','.join(r['kernels']):<18} "
              f"{r['tasks']:>9} {r['in_flight']:>9} {r['samples_per_second'] / 1e9:>11.2f} "
              f"{r['recent_busy_percent']:>7.1f}% {_duration(r['uptime']):>8}")
    if not rows:
        print(f"(no workers registered in the name server at {ns})")
    sys.stdout.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _cmd_config(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = dataclasses.asdict(Settings.from_env())
    if settings["hmac_key"]:
        settings["hmac_key"] = "(set)"
    if args.json:
        print(json.dumps(settings))
    else:
        for key, value in settings.items():
            print(f"PYRO_COMPUTE_{key.upper():<20} {value}")
    return 0
