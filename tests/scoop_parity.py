"""Count SCOOP parity as issue 14 does: SCOOP's own examples and futures API tests, import changed only.

Not collected by pytest (it needs SCOOP's sources and minutes). Usage::

    pip download scoop==0.7.2 --no-deps --no-binary :all: -d /tmp && tar xzf /tmp/scoop-0.7.2.0.tar.gz -C /tmp
    python tests/scoop_parity.py /tmp/scoop-0.7.2.0 [-n 2] [--only NAME ...]

Each example runs as ``python -m pyro_compute -n N example.py`` with ``from scoop import`` turned
into ``from pyro_compute import`` (``import scoop`` into ``import pyro_compute as scoop``). The API
tests are the functions of SCOOP's ``test/tests.py`` (their SCOOP-internal
``_control.execQueue.socket.pumpInfoSocket()`` calls dropped), each run at the script's top level and
again inside a task (``nested``, like SCOOP's ``_startup`` runs them as its root future).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = [(re.compile(r"^(\s*)from scoop(\.futures)? import", re.M), r"\1from pyro_compute\2 import"),
           (re.compile(r"^import scoop\s*$", re.M), "import pyro_compute as scoop")]
# Examples whose success is more than exit code 0: (exit code 0 expected, text the output must hold).
EXPECT = {"except_example": (False, "Exception: This exception is normal"), "full_tree": (True, "76153"),
          "recurse": (True, "2^12 = 4096"), "conditional_import": (True, "Future #15"),
          "map_doc": (True, "Future #15"), "callback": (True, "Done: 5"), "tree_traversal": (True, "Parallel result")}
STDIN = {"interactive_shell": "def myExample(inVal):\n    return inVal + 1\n\nshared.setConst(myExample=myExample)\n"
                              "print(list(futures.map(myExample, range(64)))[-1])\nexit()\n"}
API_TESTS = {
    "as_Completed": ("funcCompleted(30)", "r == 9455"), "map": ("func3(30)", "r == 9455"),
    "map_lambda": ("funcLambda(30)", "r == 9455"),
    "submit_with_keyword": ("funcKeywords(2, kwarg=3.1415926)", "r == {'kwarg': 3.1415926}"),
    "map_lambda_subfunc_not_global": ("funcLambdaSubfuncNotGlobal(30)", "r == 9455"),
    "map_imported_func": ("funcCos()", "0.4 < r < 0.5"), "submit": ("funcSub(10)", "r == 100"),
    "exception": ("funcExcept(19)", "r is True"), "done": ("funcDone()", "r is True"),
    "cancel": ("funcCancel()", "r is True"), "callback": ("funcCallback()", "r is True"),
    "wait_no_timeout": ("funcWait(-1)", "len(r[0]) == 1000 and not r[1]"),
    "wait_with_timeout": ("funcWait(0.1)", "len(r[0]) + len(r[1]) == 1000"),
    "wait_nonblocking": ("funcWait(0)", "len(r[0]) + len(r[1]) == 1000"),
    "map_as_completed": ("funcMapAsCompleted(30)", "r == 9455"), "from_generator": ("funcIter(30)", "r == 9455"),
    "mapReduce": ("funcMapReduce([10, 20, 30])", "r == 1400"),
    "doubleMapReduce": ("funcDoubleMapReduce([10, 20, 30])", "r is True"),
    "mapScan": ("funcMapScan([10, 20, 30])", "max(r) == 1400"),
    "shareConstant": ("funcSharedFunction()", "r is True"), "shareFunction": ("funcSharedConstant()", "r is True"),
}
API_MAIN = '''

TESTS = {%s}


def run_one(name):
    """Run test ``name`` here; (passed, what it returned): plain data, also from a worker."""
    call, check = TESTS[name]
    r = call()
    short = f"({len(r[0])} done, {len(r[1])} not done)" if isinstance(r, tuple) else repr(r)
    return bool(check(r)), short[:120]


if __name__ == "__main__":
    name, where = sys.argv[1], sys.argv[2]
    passed, short = run_one(name) if where == "top" else futures.submit(run_one, name).result()
    print("PASS" if passed else "FAIL", short)
'''


def translate(source: str) -> str:
    """SCOOP source with only its imports pointed at pyro_compute."""
    for pattern, repl in IMPORTS:
        source = pattern.sub(repl, source)
    return source


def api_script(tests_py: str) -> str:
    """SCOOP's test functions, import changed, and a main that runs one of them."""
    body = tests_py[tests_py.index("def func0(n):"):tests_py.index("def submit_get_queues_size")]
    body = body.replace("    _control.execQueue.socket.pumpInfoSocket()\n", "")
    head = "import math\nimport operator\nimport sys\nfrom scoop import futures, shared\n\n\n"
    table = ", ".join(f"{k!r}: (lambda: {call}, lambda r: {check})" for k, (call, check) in API_TESTS.items())
    return translate(head + body) + API_MAIN % table


def launch(script: Path, args: list[str], workers: int, timeout: float, stdin: str = "") -> tuple[int, str, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", str(workers), script.name, *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(script.parent))
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout} s", time.perf_counter() - started
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started


def verdict(name: str, code: int, out: str, err: str) -> str:
    ok_exit, text = EXPECT.get(name, (True, ""))
    if (code == 0) == ok_exit and text in out + err:
        return "works"
    last = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
    return f"fails: {last[:160]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scoop", type=Path, help="an unpacked SCOOP source distribution")
    p.add_argument("-n", type=int, default=2, help="workers (default 2)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--only", nargs="*", help="run only these examples / API tests")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "examples"
        shutil.copytree(args.scoop / "examples", work)
        for path in work.rglob("*.py"):
            path.write_text(translate(path.read_text(errors="replace")))
        api = work / "scoop_api_tests.py"
        api.write_text(api_script((args.scoop / "test" / "tests.py").read_text()))
        works = total = 0
        for path in sorted(work.glob("*.py")):
            if path == api or (args.only and path.stem not in args.only):
                continue
            code, out, err, took = launch(path, [], args.n, args.timeout, STDIN.get(path.stem, ""))
            said = verdict(path.stem, code, out, err)
            works, total = works + said.startswith("works"), total + 1
            print(f"example {path.stem:24} {took:6.1f} s  {said}", flush=True)
        for name in API_TESTS:
            for where in ("top", "nested"):
                if args.only and name not in args.only:
                    continue
                code, out, err, took = launch(api, [name, where], args.n, args.timeout)
                said = "works" if code == 0 and out.startswith("PASS") else f"fails: {(err.strip().splitlines() or out.splitlines() or ['?'])[-1][:160]}"
                works, total = works + said.startswith("works"), total + 1
                print(f"api {name + ' ' + where:32} {took:6.1f} s  {said}", flush=True)
        print(f"{works} of {total} work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
