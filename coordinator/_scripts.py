"""Loads the Lua sources shipped with the package. Each script is lib.lua followed by its own file."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

SCRIPT_NAMES = ("acquire", "report_failure", "report_success", "park", "unpark", "rotate", "snapshot", "reset",
                "merge")


def _lua_dir() -> Path:
    # In a wheel the files are packaged as coordinator/lua; in a source checkout (editable install)
    # they stay in the top-level lua/ folder.
    packaged = resources.files("coordinator") / "lua"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "lua"


@cache
def script_source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    folder = _lua_dir()
    lib = (folder / "lib.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return f"{lib}\n{body}"
