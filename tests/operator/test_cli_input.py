"""Hostile or mistaken CLI input (docs/security.md, "Hostile input"): durations beyond the documented
maximum or negative, terminal escape sequences in park reasons, and short secrets that must not
garble error text. Each case: exit 2 and one line, or output that is safe to print."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

import coordinator as co
from coordinator.cli.args import MAX_PARK_TEXT
from coordinator.cli.main import main

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil"


@pytest.fixture
def config(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    path = tmp_path / "coordinator.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n\n[pools.openai]\nmembers = [\n'
                    '  { id = "acct-1", api_key = "a" }, { id = "acct-2", api_key = "b" },\n'
                    '  { id = "acct-3", api_key = "c" },\n]\n')
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_park_for_beyond_the_maximum_or_negative_is_refused(capsys: pytest.CaptureFixture[str],
                                                           config: Path) -> None:
    for duration, told in (("99999999h", f"at most {MAX_PARK_TEXT}"), ("367d", f"at most {MAX_PARK_TEXT}"),
                           ("-5s", "cannot be negative")):
        code, out, err = run(capsys, config, "park", "openai", "acct-1", "--for", duration)
        assert code == 2 and told in err and len(err.strip().splitlines()) == 1 and not out, (duration, err)
    code, out, _ = run(capsys, config, "--json", "status")
    assert code == 0 and json.loads(out)["pools"][0]["epoch"] is None, "nothing was ever written"
    assert run(capsys, config, "park", "openai", "acct-1", "--for", MAX_PARK_TEXT)[0] == 0


def test_escape_sequences_in_reasons_never_reach_a_terminal(capsys: pytest.CaptureFixture[str], config: Path,
                                                            redis_url: str) -> None:
    code, out, err = run(capsys, config, "park", "openai", "acct-1", "--reason", f"quota {ESCAPES}")
    assert code == 0, err
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    prefix = config.read_text().split('prefix = "')[1].split('"')[0]
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    key = co.KeySchema(prefix).pool("openai")
    stored = raw.hget(key, "acct-1:park_reason") or ""
    assert stored.startswith("quota") and not any(ch in stored for ch in "\x1b\x07\x9b\u202e"), repr(stored)
    # A reason written raw (an older worker, a hand edit) is printed escaped.
    raw.hset(key, "acct-1:park_reason", f"raw {ESCAPES}")
    for args in (["status"], ["events"]):
        code, out, err = run(capsys, config, *args)
        assert code == 0, err
        assert not any(ch in out for ch in "\x1b\x07\x9b\u202e"), (args, repr(out))
    assert "\\x1b" in run(capsys, config, "status")[1]
    raw.close()


def test_short_secrets_do_not_garble_error_text(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, config, "park", "openai", "nobody-here")
    assert code == 2 and "pool 'openai' has no member 'nobody-here'" in err, err
    assert "***" not in err
