"""Hostile and broken input .

- Config: any value given to ``Config.model_validate``, any file given to ``load_config``, ends in a
  config or in pydantic's ``ValidationError`` / ``co.ConfigError``, never in another exception.
- Ids: whatever could break a Redis key, a hash field, a hash tag, a change notice, a log line or a
  CLI table is rejected with a message that says what is allowed.
- Redis keys: garbage in a pool's keys (wrong types, unreadable or out-of-range fields, a membership
  that does not add up, a foreign or far-future stream, huge values) is reported as
  ``CorruptStateError`` naming the key, with nothing written and no change notice (raw dumps are
  compared); ``pool.reset()`` heals it. Decisions: foreign stream entries make ``events()`` raise
  (the scripts themselves only append, so they keep working); hash fields of ids that are not members
  are ignored and left alone; a park reason is free text of any size.
- Provider headers: any value, on a real ``httpx.Response``, gives no exception and a hint that is
  None or finite within [0, MAX_HINT].
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from helpers import pool_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.crc import key_slot

import coordinator as co
from coordinator.core.config import ID_PATTERN
from coordinator.core.kinds import COOLING_KINDS
from coordinator.rules import hints as _hints

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- config fuzzing ----------------------------------------------------------------------------------

_NASTY_STRINGS = [
    "", " ", "90s", "1h30m", "250ms", "-5s", "5x", "nan", "inf", "-inf", "1e400", "0x10", "\u0661\u0662s", "9" * 5000,
    "sticky", "priority", "round_robin", "wait", "fail", "degraded", "memory://", "redis://127.0.0.1:1/0",
    "acct-1", "a\n", "a\nb", "{x}", "a:b", "a b", "\x00", "\u202eevil", "\u0430", "x" * 200,
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -1, 0, 1001]),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(_NASTY_STRINGS),
)
_json_like = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_valid_ids = st.from_regex(ID_PATTERN, fullmatch=True)
_members = st.fixed_dictionaries(
    {"id": st.one_of(_scalars, _valid_ids)},
    optional={
        "api_key_env": _scalars, "api_key": _scalars, "model": _scalars, "base_url": _scalars,
        "headers": _json_like, "weight": _scalars, "unknown": _scalars,
    },
)
_cooldowns = st.dictionaries(
    st.sampled_from(["rate_limited", "quota_exhausted", "auth", "transient", "model_unavailable", "min", "max",
                     "multiplier", "transient_threshold", "bogus"]),
    _scalars,
    max_size=5,
)
_pools = st.fixed_dictionaries(
    {},
    optional={
        "members": st.lists(_members, max_size=3) | _json_like,
        "strategy": _scalars,
        "cooldown": _cooldowns | _json_like,
        **{name: _scalars for name in ("name", "failback_after", "probe_timeout", "rotate_for", "auth_header",
                                       "attempts_per_member", "backoff_base", "backoff_cap", "on_exhausted",
                                       "max_wait")},
    },
)
_configs = st.fixed_dictionaries(
    {},
    optional={
        "redis": st.fixed_dictionaries({}, optional={"url": _scalars, "prefix": _scalars}) | _json_like,
        "pools": st.dictionaries(st.text(max_size=8) | st.sampled_from(["openai", "a b", "{x}"]),
                                 _pools | _json_like, max_size=3),
        "extra": _json_like,
    },
)


@FUZZ
@given(st.one_of(_configs, _json_like))
def test_config_validation_raises_only_validation_errors(data: Any) -> None:
    try:
        config = co.Config.model_validate(data)
    except ValidationError as exc:
        assert exc.errors() and all(error["loc"] is not None for error in exc.errors())
        return
    _assert_usable(config)


def _assert_usable(config: co.Config) -> None:
    """What every accepted config guarantees the rest of the library, whatever it was built from."""
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", config.redis.prefix)
    for name, pool in config.pools.items():
        assert name == pool.name and re.fullmatch(ID_PATTERN, name)
        assert pool.members, "a pool has at least one member"
        ids = [member.id for member in pool.members]
        assert len(set(ids)) == len(ids)
        assert all(re.fullmatch(ID_PATTERN, member_id) for member_id in ids)
        assert all(1 <= member.weight <= 1000 for member in pool.members)
        assert pool.strategy in ("sticky", "priority", "round_robin")
        assert pool.on_exhausted in ("wait", "fail", "degraded")
        assert 1 <= pool.attempts_per_member <= 100
        cooldown = pool.cooldown
        durations = [pool.failback_after, pool.probe_timeout, pool.rotate_for, pool.backoff_base, pool.backoff_cap,
                     pool.max_wait, cooldown.min, cooldown.max, *(cooldown.base_for(kind) for kind in (
                         "rate_limited", "quota_exhausted", "auth", "transient", "model_unavailable"))]
        assert all(isinstance(d, float) and math.isfinite(d) and d >= 0 for d in durations), durations
        assert cooldown.min <= cooldown.max
        assert 1.0 <= cooldown.multiplier <= 16.0
    # Accepted once, accepted again unchanged: what a worker validated is what it runs with.
    assert co.Config.model_validate(config.model_dump()) == config


def _toml_value(value: Any) -> str:
    """TOML for a JSON-like value (inline tables only), so structured garbage reaches load_config."""
    if value is None:
        return '""'  # TOML has no null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    pairs = (f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(pairs) + "}"


def _toml_document(data: Any) -> str:
    if not isinstance(data, dict):
        return f"value = {_toml_value(data)}\n"
    return "".join(f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}\n" for k, v in data.items())


_TOML_PIECES = ["[redis]\n", "[pools.p]\n", "[pools.p.cooldown]\n", "[[pools.p.members]]\n", 'url = "', 'prefix = "',
                'members = [{id = "', '"}]\n', 'strategy = "', '"\n', "rate_limited = ", "9" * 5000, "[" * 3000,
                "{a=" * 2000, "= ", "\x00", "\ufeff", "\r\n", '"""', "'''", "inf", "nan", "1979-05-27T07:32:00Z"]
_toml_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_TOML_PIECES) | st.text(max_size=10), max_size=12).map("".join),
    _configs.map(_toml_document),
    _json_like.map(_toml_document),
)


def _load_only_config_errors(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with mock.patch.dict(os.environ):
        os.environ.pop("COORDINATOR_REDIS_URL", None)
        try:
            config = co.load_config(path)
        except co.ConfigError as exc:
            assert str(path) in str(exc)
            return
    # Loaded: exactly what the file says, and usable.
    assert config == co.Config.model_validate(tomllib.loads(content.decode("utf-8")))
    _assert_usable(config)


@FUZZ
@given(st.one_of(_toml_texts.map(lambda t: t.encode("utf-8")), st.binary(max_size=300)))
@example(b"x = " + b"[" * 100_000 + b"]" * 100_000)  # deeper than Python's recursion limit
@example(b"x = " + b"{a=" * 5000 + b"1" + b"}" * 5000)
@example(b"[pools.p]\nmembers = [{id = 'a'}]\nfailback_after = " + b"9" * 5000)  # beyond int() digit limit
@example(b"[pools.p]\nmembers = [{id = 'a'}]\nfailback_after = " + b"9" * 400)  # beyond float range
@example(b"\xff\xfe[redis]")
def test_load_config_raises_only_config_errors(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    _load_only_config_errors(tmp_path_factory.getbasetemp() / "fuzz.toml", content)


def test_load_config_of_a_directory_or_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(co.ConfigError, match="cannot read"):
        co.load_config(tmp_path)
    with pytest.raises(co.ConfigError, match="not found"):
        co.load_config(tmp_path / "absent.toml")


# -- ids -------------------------------------------------------------------------------------------------

HOSTILE_IDS = [
    "", "a{b", "a}b", "{a}", "a:b", "a,b", "a|b", "a b", " a", "a ", "a\n", "a\nb", "\na", "a\r", "a\t", "a\x00",
    "a\x7f", "a\u0085", "a\u2028", "a\u200b", "\u200ba", "a\u200d", "a\ufeff", "a\u202e", "\u2066a\u2069",
    # homoglyphs and look-alikes: Cyrillic a, Greek Alpha, fullwidth a, Arabic-Indic one, a combining accent
    "\u0430", "\u0430cct-1", "acct-\u0391", "\uff41", "\u0661", "k\u0301",
    "-a", ".a", "_a", "@a", "+a", "a*", "a?", "a[b]", "a/b", "a\\b", 'a"b', "a'b", "a%b", "a#b", "x" * 129,
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=ascii)
def test_hostile_ids_are_rejected_with_a_clear_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"invalid member id .*use 1-128 characters"):
        co.Member(id=bad)
    with pytest.raises(ValidationError, match="invalid pool name"):
        co.PoolConfig(name=bad, members=[co.Member(id="a")])
    path = tmp_path / "coordinator.toml"
    path.write_text(f"[pools.p]\nmembers = [{{ id = {json.dumps(bad)} }}]\n", encoding="utf-8")
    with mock.patch.dict(os.environ):
        os.environ.pop("COORDINATOR_REDIS_URL", None)
        with pytest.raises(co.ConfigError, match=r"pools\.p\.members\.0\.id: .*invalid member id"):
            co.load_config(path)


@pytest.mark.parametrize("bad", ["", "co{rd", "co}rd", "a b", "a\n", "a,b", "a|b", "\u200ba", "-a", "x" * 65],
                         ids=ascii)
def test_hostile_prefixes_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid prefix"):
        co.RedisConfig(prefix=bad)
    with pytest.raises(ValidationError, match="invalid prefix"):
        co.Coordinator("memory://", [], prefix=bad)


_SEPARATORS = set("{}:,| \t\r\n\x00")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=140), _valid_ids, st.text(alphabet=string.printable, max_size=12)))
def test_an_accepted_id_is_safe_in_every_key_field_and_notice(candidate: str) -> None:
    try:
        member = co.Member(id=candidate)
    except ValidationError:
        return
    member_id = member.id
    assert member_id == candidate
    assert 1 <= len(member_id) <= 128 and member_id.isascii() and member_id.isprintable()
    assert not _SEPARATORS & set(member_id)
    keys = co.KeySchema("coord")
    state, events = keys.pool_keys(member_id)  # a pool named like the id
    # The hash tag is exactly the name: both keys land in the slot of the name alone.
    assert state[state.index("{") + 1 : state.index("}")] == member_id
    assert key_slot(state.encode()) == key_slot(events.encode()) == key_slot(member_id.encode())
    # Fields "<id>:<suffix>" split back unambiguously; a members list "a,b" too; a notice has 4 words.
    assert f"{member_id}:cooling_until".split(":") == [member_id, "cooling_until"]
    assert ",".join([member_id, "other"]).split(",") == [member_id, "other"]
    assert len(f"{member_id} epoch 1 2".split(" ")) == 4


@settings(max_examples=6, deadline=None)
@given(st.lists(_valid_ids, min_size=3, max_size=5, unique=True))
@example(["0", "x" * 128, "a.b_c@d+e-f"])
@example(["Z", "9-", "A+B@C.D_E"])
def test_any_accepted_ids_work_end_to_end(ids: list[str]) -> None:
    pool_cfg = co.PoolConfig(name=ids[0], members=[co.Member(id=i) for i in ids])
    with co.Coordinator("memory://ids", [pool_cfg], prefix="ids", staleness=0) as coord:
        pool = coord.pool(ids[0])
        pool.reset(reason="fresh")
        sel = pool.acquire()
        assert sel.member.id == ids[0]
        assert pool.report_failure(sel, "rate_limited", retry_after=60).active == ids[1]
        pool.park(ids[-1], reason="x")
        assert [m.id for m in pool.snapshot().members] == ids
        assert [e.type for e in pool.events()] == ["reset", "failover", "parked"]


# -- garbage in a pool's Redis keys ----------------------------------------------------------------------


def dump(raw: Any, keys: list[str]) -> dict[str, Any]:
    """Type and full content of each key, to prove that nothing was written."""
    out: dict[str, Any] = {}
    for key in keys:
        kind = raw.type(key)
        if kind == "hash":
            value: Any = raw.hgetall(key)
        elif kind == "stream":
            value = raw.xrange(key)
        elif kind == "string":
            value = raw.get(key)
        elif kind == "list":
            value = raw.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(raw.smembers(key))
        elif kind == "zset":
            value = raw.zrange(key, 0, -1, withscores=True)
        else:
            value = None
        out[key] = (kind, value)
    return out


class Notices:
    """Change notices on a prefix's channel, read up to a barrier message this test publishes itself:
    Redis delivers one channel's messages in order, so no wait is needed to prove that none came."""

    def __init__(self, backend: Any) -> None:
        self.raw = backend.raw
        self.channel = co.KeySchema(backend.prefix).channel
        # Cluster nodes relay PUBLISH over the bus: no order between nodes, so no barrier there.
        self.enabled = not backend.name.startswith("cluster")
        if self.enabled:
            self.pubsub = self.raw.pubsub()
            self.pubsub.subscribe(self.channel)
            assert self._next()["type"] == "subscribe"

    def _next(self) -> dict[str, Any]:
        message = self.pubsub.get_message(timeout=5.0)
        assert message is not None, "no pub/sub message within 5 s"
        return dict(message)

    def received(self) -> list[str]:
        if not self.enabled:
            return []
        self.raw.publish(self.channel, "barrier")
        seen = []
        while (message := self._next())["data"] != "barrier":
            seen.append(message["data"])
        return seen

    def close(self) -> None:
        if self.enabled:
            self.pubsub.close()


def _prepare(backend: Any, strategy: str = "sticky") -> tuple[Any, co.Selection, list[str]]:
    """A pool with some history: a cooled member, a park, a few events."""
    pool = backend.coordinator(pool_config(3, strategy=strategy)).pool("p")
    sel = pool.acquire()
    pool.report_failure(sel, "rate_limited", retry_after=600)
    pool.park("k2", seconds=3600, reason="kept")
    return pool, pool.acquire(), backend.keys("p")


def _every_operation(pool: Any, sel: co.Selection) -> dict[str, Any]:
    return {
        "acquire": pool.acquire,
        "report_failure": lambda: pool.report_failure(sel, "rate_limited", retry_after=5),
        "report_success": lambda: pool.report_success(sel),
        "park": lambda: pool.park("k1", seconds=60),
        "unpark": lambda: pool.unpark("k2"),
        "rotate": lambda: pool.rotate(reason="x"),
        "snapshot": pool.snapshot,
    }


#: The operations of ``_every_operation`` that append an event (here: the others' selection is stale
#: or they change nothing); only they read the event stream.
APPENDING = ("park", "unpark", "rotate")


def assert_reported_and_untouched(backend: Any, key: str, words: list[str],
                                  only: tuple[str, ...] | None = None) -> None:
    """Every operation of a fresh worker (nothing cached locally) raises CorruptStateError naming
    ``key`` and ``words`` (with ``only``: those operations, and the others answer), and neither key
    of the pool, nor the channel, sees a write."""
    keys = backend.keys("p")
    before = dump(backend.raw, keys)
    notices = Notices(backend)
    try:
        pool = backend.coordinator(pool_config(3)).pool("p")  # nothing cached locally
        sel = co.Selection(pool="p", member=pool.config.members[1], epoch="e", generation=1)
        for name, operation in _every_operation(pool, sel).items():
            if only is not None and name not in only:
                operation()
                assert dump(backend.raw, keys) == before, f"{name} wrote to a corrupt state"
                continue
            try:
                operation()
            except co.CorruptStateError as exc:
                message = str(exc)
                assert key in message, (name, message)
                for word in words:
                    assert word in message, (name, word, message)
            else:
                raise AssertionError(f"{name} did not report the corrupt state")
            assert dump(backend.raw, keys) == before, f"{name} wrote to a corrupt state"
        assert notices.received() == []
    finally:
        notices.close()


def assert_healed(backend: Any, old_epoch: str | None) -> None:
    pool = backend.coordinator(pool_config(3)).pool("p")
    result = pool.reset(reason="repair after garbage")
    assert result.transitioned and result.events == ("reset",) and result.generation == 1
    assert result.epoch != old_epoch
    events = pool.events()
    assert [(e.type, e.generation, e.epoch, e.reason) for e in events] == [
        ("reset", 1, result.epoch, "repair after garbage")
    ]
    snap = pool.snapshot()
    assert snap.epoch == result.epoch and [m.id for m in snap.members] == ["k0", "k1", "k2"]
    sel = pool.acquire()
    assert sel.epoch == result.epoch
    assert pool.report_failure(sel, "rate_limited", retry_after=60).transitioned


REDIS_AND_MEMORY = pytest.mark.parametrize("backend", ["redis-sync", "memory-sync"], indirect=True)
# Tests that also damage keys by type run on the cluster and through the asyncio API.
EVERY_BACKEND = pytest.mark.parametrize(
    "backend", ["redis-sync", "redis-async", "memory-sync", "memory-async", "cluster-sync"], indirect=True
)

GARBAGE_FIELDS = [
    ("generation", "abc"), ("generation", "nan"), ("generation", "inf"), ("generation", "0x10"),
    ("generation", "-1"), ("generation", " 12"), ("generation", "1e3"), ("generation", "9" * 400),
    ("generation", "9" * 14), ("version", "NaN"), ("version", "\u0661\u0662"), ("rr", "-3"), ("created", "tomorrow"),
    ("skip_until", "Infinity"), ("k0:cooling_until", "-99999999999999"), ("k1:failures", "1.5"),
    ("k1:ejections", "0b1"), ("k0:parked_until", "never"), ("k0:parked_until", "-1"),
    ("epoch", ""), ("epoch", "two words"), ("epoch", "x" * 65), ("epoch", "a\nb"), ("exhausted", "yes"),
    ("members", ""), ("members", "k0,k0,k1,k1"), ("members", "k0,k1"), ("members", "k0,{k1},k2"),
    ("members", "k0,k 1,k2"), ("members", "k0,k1:x,k2"), ("weights", "1,nan,1"), ("weights", "1,0,10"),
    ("weights", "1,-1,1"), ("weights", "1,1001,1"), ("weights", "1,1"), ("weights", "1,0x1,1"),
    ("strategy", "random"), ("strategy", ""), ("active", "nobody"), ("active", ""),
]


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("field", "value"), GARBAGE_FIELDS, ids=ascii)
def test_garbage_field_is_reported_untouched_and_healed_by_reset(backend: Any, field: str, value: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hset(state, field, value)
    word = "weights" if field == "members" and value == "k0,k1" else field
    assert_reported_and_untouched(backend, state, [word])
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("field", "value"), [("members", "k0,k0,k1"), ("weights", "1,0,1")])
def test_a_hand_edit_that_keeps_the_membership_length_is_reported_by_snapshot(backend: Any, field: str,
                                                                               value: str) -> None:
    # What the scripts trust (docs/design.md, "Scripts"): a stamp of the validated membership's
    # version and lengths (HSTRLEN is O(1); reading the list is not). An edit by hand that moves no
    # version and keeps the lengths is seen by snapshot, which always validates everything, and by
    # every script once any write moves the version; the calls that trust the stamp do not read it.
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hset(state, field, value)
    fresh = backend.coordinator(pool_config(3)).pool("p")
    with pytest.raises(co.CorruptStateError, match=field):
        fresh.snapshot()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize("field", ["epoch", "generation", "version", "members", "weights", "strategy", "active"])
def test_missing_field_is_reported_untouched_and_healed(backend: Any, field: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hdel(state, field)
    assert_reported_and_untouched(backend, state, [])
    assert_healed(backend, old_epoch)


def _write_type(raw: Any, key: str, kind: str) -> None:
    raw.delete(key)
    if kind == "string":
        raw.set(key, "not yours")
    elif kind == "list":
        raw.rpush(key, "a", "b")
    elif kind == "set":
        raw.sadd(key, "a")
    elif kind == "zset":
        raw.zadd(key, {"a": 1.0})
    elif kind == "hash":
        raw.hset(key, "type", "failover")
    elif kind == "stream":
        raw.xadd(key, {"epoch": "x"})


@EVERY_BACKEND
@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "stream"])
def test_state_key_of_a_wrong_type_is_reported_untouched_and_healed(backend: Any, kind: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    _write_type(backend.raw, state, kind)
    assert_reported_and_untouched(backend, state, [f"has type {kind}, expected hash"])
    assert [e.type for e in pool.events()][-1] == "parked", "the stream is intact and readable"
    assert_healed(backend, old_epoch)


@EVERY_BACKEND
@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "hash"])
def test_event_key_of_a_wrong_type_is_reported_untouched_and_healed(backend: Any, kind: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    _write_type(backend.raw, events_key, kind)
    # Only a call that appends an event reads the stream (docs/design.md, "Scripts").
    assert_reported_and_untouched(backend, events_key, [f"has type {kind}, expected stream"], APPENDING)
    reads = [pool.events]
    if not backend.name.startswith("memory"):
        # fakeredis answers XREAD on a key of another type with a Python AttributeError, not WRONGTYPE.
        reads.append(lambda: pool.events_after("0-0"))
    for read in reads:
        with pytest.raises(co.CorruptStateError, match=re.escape(events_key)):
            read()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
def test_both_keys_of_wrong_types_name_the_state_key_first(backend: Any) -> None:
    state, events_key = backend.keys("p")
    backend.raw.set(state, "x")
    backend.raw.rpush(events_key, "y")
    assert_reported_and_untouched(backend, state, ["expected hash"])
    assert_healed(backend, None)


@EVERY_BACKEND
def test_foreign_stream_entries_make_events_raise_but_scripts_only_append(backend: Any) -> None:
    pool, sel, (_, events_key) = _prepare(backend)
    foreign = backend.raw.xadd(events_key, {"hello": "world"})
    backend.raw.xadd(events_key, {"type": "failover", "epoch": "e", "generation": "NaN"})
    for read in (pool.events, lambda: pool.events_after("0-0")):
        with pytest.raises(co.CorruptStateError, match=rf"{re.escape(events_key)} holds an entry {foreign}"):
            read()
    # The scripts never read entries: transitions go on and are appended after the foreign ones.
    result = pool.report_failure(sel, "rate_limited", retry_after=60)
    assert result.transitioned
    entries = backend.raw.xrange(events_key)
    assert entries[-1][1]["type"] == result.events[-1] and entries[-1][1]["generation"] == str(result.generation)
    assert pool.events_after(entries[-2][0])[0].generation == result.generation
    assert_healed(backend, result.epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize("entry_id", ["18446744073709551615-18446744073709551614", "99999999999999-0"])
def test_stream_ids_far_in_the_future_are_reported_before_any_write(backend: Any, entry_id: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.xadd(events_key, {"type": "parked", "epoch": old_epoch, "generation": "99"}, id=entry_id)
    assert_reported_and_untouched(backend, events_key, ["far in the future"], APPENDING)
    with pytest.raises(co.CorruptStateError, match="did not write"):
        pool.events()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
def test_membership_edited_by_hand_is_reported(backend: Any) -> None:
    _, _, (state, _) = _prepare(backend)
    # Valid ids that are not this worker's: caught as soon as a reply names one, before any write
    # for acquire (nothing changes when the active member can serve).
    backend.raw.hset(state, mapping={"members": "zz,k1,k2", "active": "zz"})
    before = dump(backend.raw, backend.keys("p"))
    fresh = backend.coordinator(pool_config(3)).pool("p")
    with pytest.raises(co.CorruptStateError, match=r"field members names 'zz'.*reset\(\)"):
        fresh.acquire()
    assert dump(backend.raw, backend.keys("p")) == before
    # A configured member missing from the stored list: reported, not "unknown member", nothing written.
    backend.raw.hset(state, mapping={"members": "k0,k9,k2", "active": "k0"})
    before = dump(backend.raw, backend.keys("p"))
    for operation in (lambda: fresh.park("k1"), lambda: fresh.unpark("k1")):
        with pytest.raises(co.CorruptStateError, match="field members lacks configured member 'k1'"):
            operation()
    assert dump(backend.raw, backend.keys("p")) == before
    assert_healed(backend, None)


@REDIS_AND_MEMORY
def test_fields_of_ids_that_are_not_members_are_ignored_and_left_alone(backend: Any) -> None:
    pool, sel, (state, _) = _prepare(backend)
    orphans = {f"ghost{i}:cooling_until": "garbage" for i in range(2000)} | {"zz:parked_until": "nan"}
    backend.raw.hset(state, mapping=orphans)
    assert pool.report_failure(sel, "rate_limited", retry_after=60).transitioned
    pool.park("k0", reason="still works")
    stored = backend.raw.hgetall(state)
    assert {k: stored[k] for k in orphans} == orphans


@REDIS_AND_MEMORY
def test_huge_values(backend: Any) -> None:
    pool, sel, (state, events_key) = _prepare(backend)
    # Free text of any size is tolerated: a park reason of 1 MB is shown as it is.
    backend.raw.hset(state, mapping={"k1:parked_until": "forever", "k1:park_reason": "r" * 1_000_000})
    assert pool.snapshot().member("k1").reason == "r" * 1_000_000
    backend.raw.xadd(events_key, {"type": "parked", "epoch": sel.epoch, "generation": "9", "reason": "e" * 1_000_000})
    assert pool.events(limit=1)[0].reason == "e" * 1_000_000
    # Anything structural that is huge is reported at once, with nothing written.
    for field, value in [("epoch", "x" * 1_000_000), ("generation", "7" * 1_000_000),
                         ("members", "k0,k1,k2" + ",k3" * 200_000)]:
        saved = backend.raw.hget(state, field)
        backend.raw.hset(state, field, value)
        assert_reported_and_untouched(backend, state, [field.replace("members", "weights")])
        backend.raw.hset(state, field, saved)
    assert pool.acquire().epoch == sel.epoch


@REDIS_AND_MEMORY
def test_huge_durations_never_write_an_unreadable_state(backend: Any) -> None:
    policy = co.CooldownPolicy(rate_limited=1e15, max=1e15)
    pool = backend.coordinator(pool_config(3, cooldown=policy)).pool("p")
    hundred_years = 100 * 365 * 86400
    sel = pool.acquire()
    pool.report_failure(sel, "rate_limited")  # base cooldown of 31 million years
    pool.park("k1", seconds=1e300, reason="longer than time")
    pool.rotate(seconds=1e18)
    snap = pool.snapshot()  # the state is still readable
    for member_id in ("k0", "k1", "k2"):
        state = snap.member(member_id)
        deadline = state.cooling_until or state.parked_until
        assert deadline is not None and math.isfinite(deadline) and deadline <= snap.now + hundred_years + 1
    for value in backend.raw.hgetall(backend.keys("p")[0]).values():
        assert "e+" not in value and "inf" not in value and "nan" not in value
    sel = pool.acquire()
    assert sel.degraded and sel.retry_at is not None and math.isfinite(sel.retry_at)
    for retry_after in (math.nan, math.inf, -math.inf, -1.0, 1e300, 5e-324):
        pool.report_failure(sel, "rate_limited", retry_after=retry_after)
    pool.snapshot()


@EVERY_BACKEND
def test_reset_keeps_parks_and_starts_a_new_epoch(backend: Any) -> None:
    pool, sel, (state, _) = _prepare(backend)
    pool.park("k0", reason="operator said so")
    pool.park("k1", seconds=1, reason="about to lapse")
    backend.raw.hset(state, "k1:parked_until", "1")  # already over: not carried over
    notices = Notices(backend)
    try:
        result = pool.reset(reason="fresh start")
        received = notices.received()
    finally:
        notices.close()
    assert result.epoch != sel.epoch and result.generation == 1 and result.active is not None
    if notices.enabled:
        assert [n.split()[:3] for n in received] == [["p", result.epoch, "1"]]
    snap = pool.snapshot()
    parks = {m.id: (m.parked, m.parked_until, m.reason) for m in snap.members}
    assert parks["k0"] == (True, math.inf, "operator said so")
    assert parks["k2"][0] and parks["k2"][1] == pytest.approx(sel.now + 3600, abs=5) and parks["k2"][2] == "kept"
    assert parks["k1"] == (False, None, "")
    assert all(m.cooling_until is None and m.failures == 0 and m.ejections == 0 for m in snap.members)
    assert snap.active == "k1" == result.active
    # Tokens of the old epoch move nothing.
    stale = pool.report_failure(sel, "rate_limited", retry_after=60)
    assert stale.stale and not stale.transitioned and pool.snapshot().active == "k1"
    assert [e.type for e in pool.events()] == ["reset"]
    assert pool.events()[0].to_member == "k1"


@REDIS_AND_MEMORY
def test_reset_of_a_pool_without_state_creates_it(backend: Any) -> None:
    pool = backend.coordinator(pool_config(2, strategy="round_robin")).pool("p")
    result = pool.reset()
    assert result.transitioned and result.active is None and result.generation == 1
    assert [(e.type, e.reason) for e in pool.events()] == [("reset", "reset")]
    assert {pool.acquire().member.id for _ in range(4)} == {"k0", "k1"}


# -- provider headers ------------------------------------------------------------------------------------

HINT_HEADERS = [
    "retry-after", "retry-after-ms", "date", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-remaining", "anthropic-ratelimit-unified-status", "ratelimit-reset",
    "ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-remaining", "x-should-retry",
]
NASTY_VALUES = [
    "", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1", "-0", "+5", "0x10",
    "\u0663", "\u0661\u0662\u0663", "\u0967\u0968", "\uff11\uff12",  # Arabic-Indic, Devanagari, fullwidth digits
    "9" * 400, "9" * 5000, "1" * 20, ".", "1.", ".5", "6m0s", "1h2m3.5s", "-6m", "999999999h", "1e400s", "5µs",
    "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00",
    "1714564830", "1714564830000", "99999999999999999999", "\x00", "\u202e5", "5\u200b", "1,2", "5;q=1",
]
_header_values = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.text(max_size=40),
    st.from_regex(r"[0-9.:+\-eEhmsTZ ,]{0,24}", fullmatch=True),
    st.floats().map(repr),
    st.integers().map(str),
    st.binary(max_size=30),  # raw bytes off the wire, not necessarily UTF-8
)
_header_lists = st.lists(
    st.tuples(st.sampled_from(HINT_HEADERS) | st.text(min_size=1, max_size=12), _header_values), max_size=8
)
_bodies = st.one_of(
    st.binary(max_size=100),
    st.sampled_from([b"", b"{}", b"null", b"[]", b'{"error": null}', b'{"error": {"code": 5}}', b"{" * 5000,
                     b'{"error": {"type": "rate_limit_error", "code": "insufficient_quota"}}',
                     b'{"type": "error", "error": {"type": "overloaded_error"}}']),
    _json_like.map(lambda v: json.dumps(v, default=str).encode()),
)
_nows = st.none() | st.floats(min_value=0, max_value=4e9)


def _response(status: int, headers: list[tuple[str, str | bytes]], body: bytes = b"") -> httpx.Response:
    # Bytes, as they come off the wire: httpx decodes them (UTF-8, else Latin-1) itself.
    raw = [(name.encode("utf-8"), value if isinstance(value, bytes) else value.encode("utf-8"))
           for name, value in headers]
    return httpx.Response(status, headers=raw, content=body)


def _assert_hint(value: float | None) -> None:
    assert value is None or (math.isfinite(value) and 0.0 <= value <= _hints.MAX_HINT), value


@FUZZ
@given(_header_lists, _nows)
def test_hints_from_any_headers_are_none_or_finite_and_capped(
    headers: list[tuple[str, str | bytes]], now: float | None
) -> None:
    response = _response(429, headers)
    for source in (response.headers, headers, dict(headers)):
        hint = _hints.rate_limit_hint(source, now)
        explicit = _hints.explicit_retry_after(source, now)
        rest = _hints.preemptive_cooldown(source, now)
        buckets = _hints.rate_limit_buckets(source, now)
        for value in (hint, explicit, rest, *(reset for _, _, reset in buckets)):
            _assert_hint(value)
        resets = [reset for _, _, reset in buckets]
        spent = [reset for _, remaining, reset in buckets if remaining is not None and remaining <= 0]
        # The hint is the server's explicit wait, else the last spent window, else the soonest reset.
        if explicit is not None:
            assert hint == explicit
        else:
            assert hint == (max(spent) if spent else min(resets) if resets else None)
        # After a success: rest until the LAST spent window resets; never when none is spent.
        assert rest == (max(spent) if spent and max(spent) > 0 else None)
    plain = all(isinstance(value, str) and value.isascii() for _, value in headers)
    if plain and len({name.lower() for name, _ in headers}) == len(headers):
        # Header names differ only in case or container: the same reading. (Non-ASCII values are
        # decoded by httpx in its own way, so they may read differently from the raw pairs.)
        readings = {repr((_hints.rate_limit_hint(source, now), _hints.preemptive_cooldown(source, now)))
                    for source in (headers, dict(headers), response.headers)}
        assert len(readings) == 1, readings


@FUZZ
@given(_header_values, st.floats(min_value=0, max_value=4e9))
def test_header_value_parsers_never_raise(value: str | bytes, reference: float) -> None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # as httpx decodes what is not UTF-8
    seconds = _hints.parse_seconds(value)
    duration = _hints.parse_go_duration(value)
    reset = _hints.parse_reset(value, reference)
    retry_after = _hints.parse_retry_after(value, reference)
    for hint in (seconds, duration, reset, retry_after):
        _assert_hint(hint)
    stamp = _hints.parse_timestamp(value)
    assert stamp is None or isinstance(stamp, float)
    if seconds is not None:
        # A plain number is seconds for every reader (below the unix-timestamp range for resets).
        assert duration == seconds and retry_after == seconds
        if float(value.strip().lstrip("+")) < 1e9:
            assert reset == seconds
    if duration is not None and seconds is None:
        assert reset == duration, "a Go duration is a relative reset"


@FUZZ
@given(st.sampled_from([400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 529, 599]),
       _header_lists, _bodies, _nows)
def test_classify_any_error_response_never_raises(status: int, headers: list[tuple[str, str | bytes]], body: bytes,
                                                  now: float | None) -> None:
    failure = co.classify(_response(status, headers, body), now=now)
    assert failure.status == status
    _assert_hint(failure.retry_after)
    assert str(failure)
    assert failure.cools == (failure.kind in COOLING_KINDS)
    if failure.kind not in ("rate_limited", "quota_exhausted", "transient", "model_unavailable"):
        assert failure.retry_after is None, "only kinds that rest a member carry a hint"
    error = httpx.HTTPStatusError("boom", request=httpx.Request("GET", "http://x"),
                                  response=_response(status, headers, body))
    wrapped = co.classify(error, now=now)
    # The exception carries the response: the same evidence, the same meaning.
    assert (wrapped.kind, wrapped.status, wrapped.retry_after, wrapped.code) == (
        failure.kind, failure.status, failure.retry_after, failure.code)


def test_hints_feed_the_store_safely() -> None:
    """Whatever a classified hint is, reporting it keeps the state readable (memory:// backend)."""
    pool_cfg = co.PoolConfig(name="h", members=[co.Member(id="a"), co.Member(id="b")])
    with co.Coordinator("memory://hints", [pool_cfg], prefix="hints") as coord:
        pool = coord.pool("h")
        pool.reset()
        for value in NASTY_VALUES:
            failure = co.classify(_response(429, [("retry-after", value), ("x-ratelimit-reset-tokens", value)]))
            sel = pool.acquire()
            pool.report_failure(sel, failure.kind, retry_after=failure.retry_after)
            pool.unpark(sel.member.id)
        snap = pool.snapshot()
        assert all(m.cooling_until is None or m.cooling_until <= snap.now + _hints.MAX_HINT + 1 for m in snap.members)
