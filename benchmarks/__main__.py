"""Run the benchmarks side by side and print medians, ratios and targets: ``python -m benchmarks``."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Any

from llvmlite import binding

from .harness import OtherLoad, Report, log, table
from .suite import BENCHMARKS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: ``--only B2,B4``, ``--repeat N``, ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated benchmarks to run (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender (median taken)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    args.only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def machine() -> dict[str, Any]:
    """Where and when this run happened, including the load other processes put on the machine."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": binding.get_host_cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def run(names: list[str], repeat: int) -> Report:
    """Run the named benchmarks in order and merge their reports."""
    report = Report()
    for name in names:
        log(f"running {BENCHMARKS[name].__doc__}")
        with OtherLoad() as load:
            report.extend(BENCHMARKS[name](repeat))
        report.notes.append(f"{name}: other processes kept {load.cores:.2f} of {os.cpu_count()} "
                            "cores busy meanwhile")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run, then print the table (or JSON); return 0 even when targets are missed."""
    args = parse_args(argv)
    info = machine()
    report = run(args.only, args.repeat)
    info["loadavg_end"] = os.getloadavg()
    if args.json:
        print(json.dumps({**info, "repeat": args.repeat, "rows": [r.as_dict() for r in report.rows],
                          "notes": list(dict.fromkeys(report.notes))}, indent=2, ensure_ascii=False))
        return 0
    print(f"{info['date']}  {info['cpu']}, {info['cores']} cores, Python {info['python']}; "
          f"median of {args.repeat} runs; load average {info['loadavg_start'][0]:.2f} at start, "
          f"{info['loadavg_end'][0]:.2f} at end\n")
    print(table(report.rows))
    print("\nratio = pyro_compute / baseline. Every case had one untimed warm-up run first; the "
          "cases of a benchmark ran interleaved, in rotating order.")
    print("\n".join(f"- {note}" for note in dict.fromkeys(report.notes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
