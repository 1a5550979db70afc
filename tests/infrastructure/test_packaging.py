"""The wheel ships the Lua scripts and the package works from it; the README quickstart runs as written."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_lua_script_and_loads_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("coordinator-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"coordinator/lua/{p.name}" for p in (ROOT / "lua").glob("*.lua")}
    assert expected and expected <= names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import coordinator as co, coordinator.store.scripts as s;"
        "print(s._lua_dir());"
        "c = co.Coordinator('memory://', [co.PoolConfig(name='p', members=[co.Member(id='a')])]);"
        "print(c.pool('p').acquire().member.id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True,
        capture_output=True, text=True,
    ).stdout.split()
    assert out[0].startswith(str(target)), "scripts come from the installed wheel, not the checkout"
    assert out[1] == "a"


def test_quickstart_runs_as_written():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], check=True, capture_output=True, text=True
    ).stdout
    assert "transitioned: True -> active: acct-2" in out
    assert "rotated away from acct-2 -> active: acct-4" in out


def test_readme_quickstart_is_the_example_file():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    start = readme.index("```python\n# examples/quickstart.py") + len("```python\n# examples/quickstart.py\n")
    block = readme[start : readme.index("```", start)]
    assert block.strip() in example
