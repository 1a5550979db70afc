"""The Lua loader (docs/design.md, "Scripts"): each script is the shared library plus its own file,
and an error Redis reports by line of that concatenation names the file and line to open."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from coordinator.store.scripts import LIBRARY, SCRIPT_NAMES, _lua_dir, locate, name_lines, script_source


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_line_of_a_script_maps_back_to_the_same_text_in_its_file(name: str) -> None:
    folder = _lua_dir()
    files = {rel: (folder / rel).read_text().splitlines() for rel in (*LIBRARY, f"{name}.lua")}
    sent = script_source(name).splitlines()
    for number, text in enumerate(sent, start=1):
        rel, _, line = locate(name, number).removeprefix("lua/").rpartition(":")
        assert files[rel][int(line) - 1] == text, (number, rel, line)
    assert locate(name, 1) == "lua/lib/state.lua:1"
    assert locate(name, len(sent)).startswith(f"lua/{name}.lua:")


def broken_acquire() -> tuple[str, int, int]:
    """The acquire script with one line of its own body replaced by a runtime error, same line count."""
    body = (_lua_dir() / "acquire.lua").read_text().splitlines()
    own_line = next(i for i, text in enumerate(body, start=1) if text.startswith("local S, err = load()"))
    sent = script_source("acquire").splitlines()
    sent_line = len(sent) - len(body) + own_line
    sent[sent_line - 1] = "local broken = nil + 1"
    return "\n".join(sent) + "\n", sent_line, own_line


def test_a_real_redis_error_names_the_lua_file_and_line(redis_url: str) -> None:
    source, sent_line, own_line = broken_acquire()
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(redis.ResponseError) as caught:
        client.eval(source, 2, "t:{p}", "t:{p}:events")
    assert f"user_script:{sent_line}" in str(caught.value)
    located = name_lines("acquire", str(caught.value))
    assert f"lua/acquire.lua:{own_line}: attempt to perform arithmetic" in located
    assert "user_script" not in located
    client.close()


def test_a_memory_error_names_the_lua_file_and_line() -> None:
    source, _, own_line = broken_acquire()
    with pytest.raises(redis.ResponseError) as caught:
        fakeredis.FakeRedis().eval(source, 2, "t:{p}", "t:{p}:events")
    assert f"lua/acquire.lua:{own_line}: attempt to perform arithmetic" in name_lines("acquire", str(caught.value))


def test_unknown_script_names_are_refused() -> None:
    with pytest.raises(KeyError):
        script_source("drop_everything")
