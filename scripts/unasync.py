#!/usr/bin/env python3
"""Generates the sync drivers (coordinator/drivers/_sync/) from the async ones (coordinator/drivers/_async/).

The async code is the only hand-written copy; this script rewrites it line by line (httpcore's
approach). ``--check`` exits 1 when a generated file is missing or differs from what it would write;
``.ci/run`` runs it so a stale generated file fails CI.

    python scripts/unasync.py          # regenerate
    python scripts/unasync.py --check  # verify
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "coordinator" / "drivers" / "_async"
TARGET = ROOT / "coordinator" / "drivers" / "_sync"

#: Whole-word rewrites, applied in order to every line.
SUBS = [
    (r"coordinator\.drivers\._async\b", "coordinator.drivers._sync"),
    (r"coordinator\.drivers\.io_async\b", "coordinator.drivers.io_sync"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\bAsyncCoordinator\b", "Coordinator"),
    (r"\bAsyncPool\b", "Pool"),
    (r"\bAsyncStore\b", "Store"),
]
COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in SUBS]


def header(source: Path) -> str:
    rel = source.relative_to(ROOT).as_posix()
    return f"# GENERATED from {rel} by scripts/unasync.py: do not edit.\n"


def unasync(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        for pattern, replacement in COMPILED:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return "".join(lines)


def expected() -> dict[Path, str]:
    return {TARGET / src.name: header(src) + unasync(src.read_text()) for src in sorted(SOURCE.glob("*.py"))}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    want = expected()
    stale = [path for path, text in want.items() if not path.exists() or path.read_text() != text]
    extra = [path for path in TARGET.glob("*.py") if path not in want]
    if check:
        for path in [*stale, *extra]:
            print(f"unasync: {path.relative_to(ROOT)} is stale; run python scripts/unasync.py", file=sys.stderr)
        return 1 if stale or extra else 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(want[path])
        print(f"unasync: wrote {path.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"unasync: removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
