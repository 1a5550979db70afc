"""``coordinator.testing`` is public: the README's example of it runs as written, on a real redis-server."""

from __future__ import annotations

import re
from pathlib import Path

import coordinator.testing

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_of_coordinator_testing_runs() -> None:
    section = README.read_text().split("## Testing your own code: `coordinator.testing`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})


def test_the_public_helpers_are_exported() -> None:
    assert set(coordinator.testing.__all__) >= {"RedisServer", "free_port", "FakeUpstream", "BEHAVIOURS"}
    with coordinator.testing.RedisServer("--maxmemory", "2mb") as server:
        assert server.client().config_get("maxmemory")["maxmemory"] == str(2 * 1024 * 1024)
