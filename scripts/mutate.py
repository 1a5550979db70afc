"""Mutation testing for the project's own modules: how much of a module's behaviour do its tests pin?

    python scripts/mutate.py coordinator/rules/classify.py tests/unit/test_classify.py [--jobs 2] [--max N]
    python scripts/mutate.py --rules            # the pure-rule modules, each with its unit tests
    python scripts/mutate.py MODULE TESTS... --list   # print the mutants, run nothing

Each mutant is one small change made through ``ast`` (a comparison flipped, ``and``/``or`` swapped, a
condition negated, a number or string changed, a statement replaced by ``pass``, ``min``/``max`` or
``True``/``False`` swapped, ``return x`` turned into ``return None``, ``+``/``-`` or ``*``/``/`` swapped).
It is written over the module in a temporary COPY of the worktree (the real source is never touched;
its hash is checked at the end) and the given tests run against it with ``pytest -x``. A mutant the
tests fail on (or time out on) is killed; one they pass on survived, and is listed with its line.

Speed: every test run is a separate process, forked from a warm worker that has already imported
the heavy third-party packages (pytest, hypothesis, the openai and anthropic SDKs, pydantic, httpx),
never ``coordinator`` itself: the child imports the mutated module fresh. ``--no-fork`` starts a plain
``python -m pytest`` subprocess per mutant instead (slower, no shared state at all).
Not part of CI: it takes minutes. See scripts/README.md.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: ``--rules``: the pure-rule modules and the fast (Redis-free) tests that pin them.
RULES: dict[str, list[str]] = {
    "coordinator/rules/classify.py": ["tests/unit/test_classify.py", "tests/unit/test_classify_evidence.py"],
    "coordinator/rules/hints.py": ["tests/unit/test_hints.py", "tests/unit/test_hints_windows.py"],
    "coordinator/rules/backoff.py": ["tests/unit/test_backoff.py"],
    "coordinator/rules/view.py": ["tests/unit/test_local_view.py"],
    "coordinator/rules/plan.py": ["tests/unit/test_plan.py", "tests/unit/test_plan_exhausted.py"],
}

#: Imported by each warm worker before it forks test runs: third-party only, never the package.
PRELOAD = ("pytest", "_pytest.python", "hypothesis", "pydantic", "httpx", "redis", "fakeredis", "openai", "anthropic",
           "rich")

_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                 ".hypothesis", "build", "dist", "*.egg-info")
_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})
_COMPARE_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_BINOP_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
}
_SIMPLE_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise, ast.Assert,
                      ast.Continue, ast.Break, ast.Delete)


# -- generating mutants ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    number: int
    line: int
    description: str
    #: Where the mutated node sits in ``ast.walk`` order of a fresh parse: parent index, field, list index.
    parent: int
    field: str
    index: int | None
    operator: str
    argument: Any = None


def _op_name(op: ast.AST) -> str:
    return ast.unparse(ast.Compare(left=ast.Name("a"), ops=[op], comparators=[ast.Name("b")]))[2:-2] \
        if isinstance(op, ast.cmpop) else type(op).__name__


def _is_docstring(parent: ast.AST, field: str, index: int | None) -> bool:
    if field != "body" or index != 0 or not isinstance(parent, ast.Module | ast.ClassDef | ast.FunctionDef
                                                           | ast.AsyncFunctionDef):
        return False
    stmt = parent.body[0]
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _excluded_subtrees(tree: ast.AST) -> set[int]:
    """Nodes never mutated: annotations, docstrings, decorators, f-string parts, log and exception
    messages, ``if TYPE_CHECKING`` blocks. Mutating them changes no behaviour anyone relies on."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        for field in ("annotation", "returns"):
            mark(getattr(node, field, None))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                mark(decorator)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and \
                _is_docstring(node, "body", 0):
            mark(node.body[0])
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                mark(arg)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LOG_METHODS:
            for arg in node.args:
                mark(arg)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            mark(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            mark(node)
    return skip


def _in_function(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _children(node: ast.AST) -> Iterator[tuple[str, int | None, ast.AST]]:
    for field, value in ast.iter_fields(node):
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield field, i, item
        elif isinstance(value, ast.AST):
            yield field, None, value


def mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _excluded_subtrees(tree)
    in_function = _in_function(tree)
    out: list[Mutant] = []

    def add(parent: int, field: str, index: int | None, node: ast.AST, operator: str, description: str,
            argument: Any = None) -> None:
        parent_node = node.ifs[argument] if isinstance(node, ast.comprehension) else node
        line = getattr(node, "lineno", 0) or getattr(parent_node, "lineno", 0)
        out.append(Mutant(len(out) + 1, line, description, parent, field, index, operator,
                          argument))

    for p, parent in enumerate(ast.walk(tree)):
        for field, index, node in _children(parent):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Compare):
                for j, op in enumerate(node.ops):
                    swap = _COMPARE_SWAP.get(type(op))
                    if swap is not None:
                        add(p, field, index, node, "compare", f"{_op_name(op)} -> {_op_name(swap())}", j)
            elif isinstance(node, ast.BoolOp):
                add(p, field, index, node, "boolop", "and -> or" if isinstance(node.op, ast.And) else "or -> and")
            elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
                add(p, field, index, node, "binop",
                    f"{type(node.op).__name__} -> {_BINOP_SWAP[type(node.op)].__name__}")
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                add(p, field, index, node, "unnot", "not x -> x")
            elif isinstance(node, ast.Constant) and not isinstance(parent, ast.Expr):
                value = node.value
                if isinstance(value, bool):
                    add(p, field, index, node, "const", f"{value} -> {not value}", not value)
                elif isinstance(value, int | float):
                    new = 1 if value == 0 else 0 if value == 1 else value + 1
                    new = type(value)(new)
                    add(p, field, index, node, "const", f"{value!r} -> {new!r}", new)
                elif isinstance(value, str):
                    new_s = f"mutated_{value}" if value else "mutated"
                    add(p, field, index, node, "const", f"{value!r} -> {new_s!r}", new_s)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
                add(p, field, index, node, "minmax", f"{node.func.id} -> {'max' if node.func.id == 'min' else 'min'}")
            if field in ("test",) and isinstance(parent, ast.If | ast.While | ast.IfExp | ast.Assert) \
                    and id(node) in in_function:
                add(p, field, index, node, "negate", "condition negated")
            if isinstance(node, ast.comprehension):
                for k, cond in enumerate(node.ifs):
                    if id(cond) not in skip:
                        add(p, field, index, node, "negate_if", "comprehension filter negated", k)
            if isinstance(node, _SIMPLE_STATEMENTS) and id(node) in in_function and index is not None \
                    and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                body = getattr(parent, field)
                is_last_return = isinstance(node, ast.Return) and index == len(body) - 1 \
                    and isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef)
                if not is_last_return:
                    add(p, field, index, node, "delete", f"statement deleted: {ast.unparse(node)[:60]}")
                if isinstance(node, ast.Return) and node.value is not None and not (
                        isinstance(node.value, ast.Constant) and node.value.value is None):
                    add(p, field, index, node, "return_none", f"return {ast.unparse(node.value)[:50]} -> return None")
    return sorted(out, key=lambda m: (m.line, m.number))


def _mutate(node: ast.AST, mutant: Mutant) -> ast.AST:
    node = copy.deepcopy(node)
    op, arg = mutant.operator, mutant.argument
    if op == "compare":
        assert isinstance(node, ast.Compare)
        node.ops[arg] = _COMPARE_SWAP[type(node.ops[arg])]()
    elif op == "boolop":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif op == "binop":
        assert isinstance(node, ast.BinOp)
        node.op = _BINOP_SWAP[type(node.op)]()
    elif op == "unnot":
        assert isinstance(node, ast.UnaryOp)
        return node.operand
    elif op == "const":
        assert isinstance(node, ast.Constant)
        node.value = arg
    elif op == "minmax":
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        node.func.id = "max" if node.func.id == "min" else "min"
    elif op == "negate":
        assert isinstance(node, ast.expr)
        return ast.UnaryOp(op=ast.Not(), operand=node)
    elif op == "negate_if":
        assert isinstance(node, ast.comprehension)
        node.ifs[arg] = ast.UnaryOp(op=ast.Not(), operand=node.ifs[arg])
    elif op == "delete":
        return ast.Pass()
    elif op == "return_none":
        assert isinstance(node, ast.Return)
        node.value = ast.Constant(None)
    else:
        raise ValueError(op)
    return node


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    parent = list(ast.walk(tree))[mutant.parent]
    if mutant.index is None:
        setattr(parent, mutant.field, _mutate(getattr(parent, mutant.field), mutant))
    else:
        items = getattr(parent, mutant.field)
        items[mutant.index] = _mutate(items[mutant.index], mutant)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


# -- running tests ---------------------------------------------------------------------------------


def serve() -> None:
    """The warm worker (``--serve``): preloads third-party packages, then forks one child per request
    line (a JSON list of pytest arguments) and answers with its exit code, or "timeout"."""
    sys.dont_write_bytecode = True
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    leaked = [name for name in sys.modules if name == "coordinator" or name.startswith("coordinator.")]
    if leaked:
        raise SystemExit(f"preloading imported the package under test: {leaked[:3]}")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: a fresh interpreter state for the package, its own exit code
            try:
                os.chdir(request["cwd"])
                sys.path.insert(0, request["cwd"])
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                import hypothesis
                import pytest

                # Fewer fuzz examples per mutant: a run is minutes, not hours. A fuzz test then
                # kills fewer mutants, so the score errs low, never high.
                hypothesis.settings.register_profile("mutate", max_examples=request["examples"], deadline=None,
                                                     database=None)
                hypothesis.settings.load_profile("mutate")
                code = int(pytest.main(request["args"]))
            except BaseException:  # any escape must still end the child
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        deadline = time.monotonic() + float(request["timeout"])
        answer: Any = None
        while answer is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                answer = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                answer = "timeout"
            else:
                time.sleep(0.02)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class Worker:
    """One copy of the worktree and a way to run the tests in it."""

    def __init__(self, base: Path, number: int, fork: bool, examples: int) -> None:
        self.examples = examples
        self.copy = base / f"copy{number}"
        shutil.copytree(ROOT, self.copy, ignore=_IGNORE, symlinks=True)
        self.log = base / f"run{number}.log"
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(self.copy))
        self.process: subprocess.Popen[str] | None = None
        if fork and hasattr(os, "fork"):
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                                            cwd=self.copy, env=self.env, text=True, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE)
            assert self.process.stdout is not None
            if self.process.stdout.readline().strip() != "ready":
                raise SystemExit("the warm worker did not start")

    def run(self, args: list[str], timeout: float) -> int | str:
        if self.process is None:
            try:
                with self.log.open("w") as log:
                    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=self.copy, env=self.env,
                                          stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return "timeout"
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"cwd": str(self.copy), "args": args, "timeout": timeout, "log": str(self.log),
                   "examples": self.examples}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer: int | str = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


@dataclass
class Report:
    module: str
    total: int
    killed: int
    timeouts: int
    survivors: list[tuple[Mutant, str]]
    seconds: float

    @property
    def score(self) -> float:
        return self.killed / self.total if self.total else 1.0


def run_module(module: str, tests: list[str], workers: list[Worker], *, limit: int | None, timeout: float | None,
               verbose: bool, sample: int | None = None, seed: int = 0, only: frozenset[int] = frozenset()
               ) -> Report:
    source = (ROOT / module).read_text()
    lines = source.splitlines()
    todo = mutants(source)
    if sample is not None and sample < len(todo):
        todo = random.Random(seed).sample(todo, sample)  # random order: a partial run is still a sample
    if only:
        todo = [m for m in todo if m.number in only]
    if limit is not None:
        todo = todo[:limit]
    args = ["-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *tests]
    started = time.monotonic()
    # Baseline: the unparsed original must pass in every copy, and the copy (not the worktree) must
    # be what the tests import.
    for worker in workers:
        (worker.copy / module).write_text(ast.unparse(ast.parse(source)) + "\n")
        probe = worker.copy / "tests" / "_mutate_probe_test.py"
        probe.write_text(f"import coordinator\n\ndef test_where():\n"
                         f"    assert coordinator.__file__.startswith({str(worker.copy)!r}), coordinator.__file__\n")
        try:
            where = worker.run(["-q", "-p", "no:cacheprovider", str(probe.relative_to(worker.copy))], 120)
        finally:
            probe.unlink()
        if where != 0:
            raise SystemExit(f"the tests would not import the copy ({where}); see {worker.log}")
    t0 = time.monotonic()
    base = workers[0].run(args, 600)
    base_seconds = time.monotonic() - t0
    if base != 0:
        raise SystemExit(f"the tests fail on the unmutated module ({base}); see {workers[0].log}")
    per_mutant = timeout if timeout is not None else max(30.0, 4 * base_seconds)
    print(f"{module}: {len(todo)} mutants; baseline {base_seconds:.1f}s; timeout {per_mutant:.0f}s", flush=True)

    queue: Queue[Mutant] = Queue()
    for mutant in todo:
        queue.put(mutant)
    results: dict[int, int | str] = {}
    lock = threading.Lock()

    def loop(worker: Worker) -> None:
        target = worker.copy / module
        while True:
            try:
                mutant = queue.get_nowait()
            except Empty:
                return
            target.write_text(mutated_source(source, mutant))
            answer = worker.run(args, per_mutant)
            with lock:
                results[mutant.number] = answer
                if verbose:
                    status = "survived" if answer == 0 else "killed"
                    print(f"  #{mutant.number} line {mutant.line}: {mutant.description}: {status}", flush=True)
                elif len(results) % 20 == 0:
                    alive = sum(1 for a in results.values() if a == 0)
                    print(f"  {len(results)}/{len(todo)} tested, {alive} survived", flush=True)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        shutil.copyfile(ROOT / module, worker.copy / module)
    survivors = [(m, lines[m.line - 1].strip() if 0 < m.line <= len(lines) else "") for m in todo
                 if results.get(m.number) == 0]
    timeouts = sum(1 for m in todo if results.get(m.number) == "timeout")
    return Report(module, len(todo), len(todo) - len(survivors), timeouts, survivors, time.monotonic() - started)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help="the module to mutate, relative to the repository root")
    parser.add_argument("tests", nargs="*", help="the tests to run against each mutant")
    parser.add_argument("--rules", action="store_true", help="every pure-rule module with its unit tests")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (one worktree copy each)")
    parser.add_argument("--max", type=int, default=None, help="test only the first N mutants of each module")
    parser.add_argument("--sample", type=int, default=None, help="test a random sample of N mutants (an estimate)")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (as --list shows) to test")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mutant (default 4x the baseline)")
    parser.add_argument("--examples", type=int, default=25, help="hypothesis examples per fuzz test (forked runs)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--no-fork", action="store_true", help="a plain pytest subprocess per mutant")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON at the end")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each mutant's outcome")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve()
        return 0
    if options.rules:
        plan = [(module, [t for t in tests if (ROOT / t).exists()]) for module, tests in RULES.items()]
    elif options.module and options.tests:
        plan = [(options.module, options.tests)]
    else:
        parser.error("give a module and its tests, or --rules")
    for module, tests in plan:
        if not (ROOT / module).is_file():
            parser.error(f"no such module: {module}")
        missing = [t for t in tests if not t.startswith("-") and not (ROOT / t.split("::")[0]).exists()]
        if missing or not tests:
            parser.error(f"no tests for {module}: {missing or tests}")
    if options.list:
        for module, _ in plan:
            for mutant in mutants((ROOT / module).read_text()):
                print(f"{module}:{mutant.line}: #{mutant.number} {mutant.description}")
        return 0

    before = {module: _digest(ROOT / module) for module, _ in plan}
    # A terminated run still removes its copies (the finally blocks and the temporary directory).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="mutate-") as base:
        workers = [Worker(Path(base), n, fork=not options.no_fork, examples=options.examples)
                   for n in range(max(1, options.jobs))]
        try:
            for module, tests in plan:
                report = run_module(module, tests, workers, limit=options.max, timeout=options.timeout,
                                    verbose=options.verbose, sample=options.sample, seed=options.seed,
                                    only=frozenset(int(n) for n in options.only.split(",") if n))
                reports.append(report)
                print(f"{module}: killed {report.killed}/{report.total} ({100 * report.score:.1f}%), "
                      f"{report.timeouts} by timeout, {report.seconds:.0f}s", flush=True)
                for mutant, line in report.survivors:
                    print(f"  survived: line {mutant.line}: {mutant.description}    | {line}")
        finally:
            for worker in workers:
                worker.close()
    changed = [module for module, digest in before.items() if _digest(ROOT / module) != digest]
    if changed:
        print(f"ERROR: the real source changed during the run: {changed}", file=sys.stderr)
        return 2
    print("\nsummary:")
    for report in reports:
        print(f"  {report.module:40} {report.killed:4}/{report.total:<4} {100 * report.score:5.1f}%  "
              f"{report.seconds:5.0f}s")
    if options.json:
        print(json.dumps([{"module": r.module, "killed": r.killed, "total": r.total, "timeouts": r.timeouts,
                           "seconds": round(r.seconds, 1),
                           "survivors": [{"line": m.line, "mutation": m.description} for m, _ in r.survivors]}
                          for r in reports], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
