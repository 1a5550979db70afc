"""What the benchmarks share: sizes, result tables and targets, timing helpers, and the output files."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coordinator as co

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


PREFIX = "bench"
KEY_ENV = "COORDINATOR_BENCH_KEY"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello."}]}
CONCURRENCY = 16
FLEET_WORKERS = 16


# -- sizes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    a_rounds: int
    a_per_round: int  # sequential requests per variant per round
    a_conc_rounds: int
    a_per_task: int  # requests per task per round (16 tasks)
    a_fake_factor: float  # share of the above for the FakeUpstream contrast
    a_micro: int  # calls per variant in the no-network breakdown (20 rounds)
    b_rounds: int
    b_per_round: int
    c_transitions: int  # per loop mode
    d_calls: dict[int, int]  # pool size -> calls per script
    e_seconds: float  # per variant per round
    e_rounds: int
    e_pools: int
    e_members: int = 20


FULL = Sizes(a_rounds=100, a_per_round=20, a_conc_rounds=40, a_per_task=6, a_fake_factor=0.5, a_micro=2000,
             b_rounds=40, b_per_round=100, c_transitions=30, d_calls={10: 1000, 100: 1000, 1000: 300},
             e_seconds=1.0, e_rounds=3, e_pools=10_000)
QUICK = Sizes(a_rounds=15, a_per_round=20, a_conc_rounds=2, a_per_task=8, a_fake_factor=0.5, a_micro=500,
              b_rounds=8, b_per_round=100, c_transitions=5, d_calls={10: 200, 100: 200, 1000: 60},
              e_seconds=0.4, e_rounds=2, e_pools=1_000)


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Target:
    figure: str
    measured: str
    target: str
    met: bool


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    #: One-line figures for README-figures.md besides the targets.
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def us(ns: float) -> str:
    return f"{ns / 1000:,.0f} µs" if ns >= 10_000 else f"{ns / 1000:,.1f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms"


def ratio(x: float) -> str:
    return f"{x:.3f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def commandstats(client: Any) -> dict[str, dict[str, float]]:
    return {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}


def bench_pool(name: str, members: int = 2, **kwargs: Any) -> co.PoolConfig:
    return co.PoolConfig(name=name, members=[co.Member(id=f"key-{i + 1}", api_key_env=KEY_ENV)
                                             for i in range(members)], **kwargs)


def interleave(variants: dict[str, Callable[[list[int]], None]], rounds: int) -> dict[str, list[int]]:
    """Runs each variant once per round, alternating the order (ABBA), so drift hits all alike."""
    samples: dict[str, list[int]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        gc.collect()
        for name in names if r % 2 == 0 else reversed(names):
            variants[name](samples[name])
    return samples


def timed(fn: Callable[[], Any], n: int) -> Callable[[list[int]], None]:
    clock = time.perf_counter_ns

    def run(out: list[int]) -> None:
        for _ in range(n):
            t = clock()
            fn()
            out.append(clock() - t)

    return run


# -- output --------------------------------------------------------------------------------------------


def print_tables(sections: list[Section], targets: list[Target]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        for s in sections:
            print(f"\n== {s.title}")
            for t in s.tables:
                print(f"\n{t.title}")
                print(_plain(t.headers, t.rows))
        print("\n== Targets")
        print(_plain(["figure", "measured", "target", "met"],
                     [[t.figure, t.measured, t.target, "yes" if t.met else "NO"] for t in targets]))
        return
    console = Console() if sys.stdout.isatty() else Console(width=160)
    for s in sections:
        console.rule(s.title)
        for t in s.tables:
            rt = RichTable(title=t.title, title_justify="left")
            for h in t.headers:
                rt.add_column(h)
            for row in t.rows:
                rt.add_row(*row)
            console.print(rt)
    rt = RichTable(title="Targets", title_justify="left")
    for h in ("figure", "measured", "target", "met"):
        rt.add_column(h)
    for t in targets:
        rt.add_row(t.figure, t.measured, t.target, "[green]yes[/]" if t.met else "[red]NO[/]")
    console.print(rt)


def _plain(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_results(path: Path, sections: list[Section], targets: list[Target], info: dict[str, str],
                  when: str, quick: bool, elapsed: float) -> None:
    lines = [
        "# coordinator benchmarks: results",
        "",
        f"Measured {when} with `python benchmarks/run.py{' --quick' if quick else ''}` in {elapsed:.0f} s"
        + (" (quick run: fewer samples)" if quick else "") + ".",
        "",
        _md_table(["machine", ""], [
            ["CPU", info["cpu"]], ["cores", info["cores"]], ["OS", info["os"]], ["Python", info["python"]],
            ["redis-server", info["redis_server"]], ["redis-py", info["redis_py"]], ["httpx", info["httpx"]],
            ["load", info.get("load", "")],
            ["coordinator commit", info["commit"]],
        ]),
        "",
        "Everything runs on loopback on this one machine: redis-server(s) started by the runner "
        "(`--save '' --appendonly no`), the fake upstream in its own process, the fleet as spawned processes. "
        "Compared variants are measured in alternating rounds within one run.",
        "",
        "## Targets",
        "",
        _md_table(["figure", "measured", "target", "met"],
                  [[t.figure, t.measured, t.target, "yes" if t.met else "**no**"] for t in targets]),
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for t in s.tables:
            lines += [f"{t.title}:", "", _md_table(t.headers, t.rows), ""]
        lines += [f"- {n}" for n in s.notes]
        lines += [f"- Section time: {s.seconds:.0f} s.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_figures(path: Path, targets: list[Target], info: dict[str, str], when: str,
                  sections: list[Section]) -> None:
    lines = [
        f"Benchmarks ({when}; {info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}, "
        f"redis-server {info['redis_server']}, coordinator {info['commit']}, everything on loopback; full tables in "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md), rerun with `python benchmarks/run.py`):",
        "",
        _md_table(["figure", "measured", "target", "met"],
                  [[t.figure, t.measured, t.target, "yes" if t.met else "**no**"] for t in targets]),
        "",
        *[f"- {line}" for s in sections for line in s.figures],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


