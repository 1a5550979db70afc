"""Loads the Lua sources shipped with the package (docs/design.md, "Scripts").

Each script is sent as the shared library (``lua/lib/state.lua``, ``rules.lua``, ``commit.lua``)
followed by its own file, so Redis numbers lines in the concatenation; ``locate`` turns such a line
back into the file and line a maintainer should open.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

SCRIPT_NAMES = ("acquire", "report_failure", "report_success", "park", "unpark", "rotate", "snapshot", "reset",
                "merge", "check", "heal")
LIBRARY = ("lib/state.lua", "lib/rules.lua", "lib/commit.lua", "lib/membership.lua")
#: How Redis (``user_script:12:``, ``@user_script:12.``) and fakeredis (``[string "..."]:12:``) name a line.
_LINE_REF = re.compile(r"(?:@?user_script|\[string \"[^\"]*\"\]):(\d+)(?=[:.])")


def _lua_dir() -> Path:
    # In a wheel the files are packaged as coordinator/lua; in a source checkout (editable install)
    # they stay in the top-level lua/ folder.
    packaged = resources.files("coordinator") / "lua"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "lua"


@cache
def _parts(name: str) -> tuple[tuple[str, str], ...]:
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    folder = _lua_dir()
    return tuple((rel, (folder / rel).read_text(encoding="utf-8")) for rel in (*LIBRARY, f"{name}.lua"))


@cache
def script_source(name: str) -> str:
    return "\n".join(text.rstrip("\n") for _, text in _parts(name)) + "\n"


def locate(name: str, line: int) -> str:
    """``lua/<file>:<line>`` for line ``line`` (1-based) of the script ``name`` as sent to Redis."""
    first = 1
    for rel, text in _parts(name):
        count = len(text.rstrip("\n").split("\n"))
        if line < first + count:
            return f"lua/{rel}:{line - first + 1}"
        first += count
    return f"{name} line {line}"


def name_lines(name: str, message: str) -> str:
    """``message`` with every script line reference Redis made replaced by ``lua/<file>:<line>``."""
    return _LINE_REF.sub(lambda m: locate(name, int(m.group(1))), message)
