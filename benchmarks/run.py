"""Benchmarks of coordinator: ``python benchmarks/run.py [--quick]``.

Starts its own redis-server(s) and loopback upstreams, measures figures a-e with every compared
variant interleaved in rounds within one run, prints tables and writes ``benchmarks/RESULTS.md`` and
``benchmarks/README-figures.md`` (``--quick``: ``RESULTS-quick.md`` and ``README-figures-quick.md``).
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    FULL,
    QUICK,
    Section,
    log,
    print_tables,
    write_figures,
    write_results,
)
from _support import (  # noqa: E402
    RedisServer,
    machine,
)
from bench_fleet import bench_c, bench_e_memory, bench_e_throughput  # noqa: E402
from bench_store import bench_b, bench_d  # noqa: E402
from bench_transport import bench_a  # noqa: E402

# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (under a minute); writes *-quick.md")
    parser.add_argument("--only", default="abcde", help="figures to run, e.g. 'ab' (default: abcde)")
    parser.add_argument("--pause", type=float, default=0.001,
                        help="sleep between acquires of the paced fleet loop, seconds (default 0.001)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    info = machine()
    load_before = os.getloadavg()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    log(f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, redis-server {info['redis_server']}")
    sections: list[Section] = []
    with RedisServer() as server:
        admin = server.client()
        try:
            steps: list[tuple[str, Callable[[], Section]]] = [
                ("a", lambda: bench_a(server.url, admin, sizes)),
                ("b", lambda: bench_b(server.url, admin, sizes)),
                ("c", lambda: bench_c(server.url, admin, sizes, args.pause)),
                ("d", lambda: bench_d(server.url, admin, sizes)),
                ("e", lambda: bench_e_throughput(server.url, admin, sizes)),
            ]
            for key, step in steps:
                if key not in args.only:
                    continue
                t = time.perf_counter()
                section = step()
                if key == "e":
                    bench_e_memory(sizes, section)
                section.seconds = time.perf_counter() - t
                sections.append(section)
        finally:
            admin.close()
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    info["load"] = (f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
                    f"(1-minute load average; the runner itself adds up to ~2)")
    targets = [t for s in sections for t in s.targets]
    print_tables(sections, targets)
    log(f"done in {elapsed:.0f} s")
    if not args.no_write:
        suffix = "-quick" if args.quick else ""
        results = HERE / f"RESULTS{suffix}.md"
        figures = HERE / f"README-figures{suffix}.md"
        write_results(results, sections, targets, info, when, args.quick, elapsed)
        write_figures(figures, targets, info, when, sections)
        log(f"wrote {results.relative_to(HERE.parent)} and {figures.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
