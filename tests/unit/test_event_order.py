"""Events of several pools in the order they happened (docs/design.md, "Event order"): merged by the
server microseconds each entry carries, each pool's own stream order kept as it is."""

from __future__ import annotations

import coordinator as co
from coordinator.cli.render import in_order
from coordinator.store.codec import PoolCodec


def event(pool: str, entry_id: str, time_us: int | None) -> co.FailoverEvent:
    return co.FailoverEvent(id=entry_id, pool=pool, type="parked", time=int(entry_id.split("-")[0]) / 1000,
                            epoch="e", generation=1, time_us=time_us)


def test_pools_sharing_a_millisecond_are_merged_by_server_microseconds() -> None:
    a = [event("a", "1000-0", 1_000_100), event("a", "1000-1", 1_000_300)]
    b = [event("b", "1000-0", 1_000_200), event("b", "1001-0", 1_001_000)]
    assert [(e.pool, e.id) for e in in_order([a, b])] == [("a", "1000-0"), ("b", "1000-0"), ("a", "1000-1"),
                                                          ("b", "1001-0")]


def test_a_pools_own_order_is_never_changed() -> None:
    # The server clock stepped back between the two writes to pool a: its stream order still wins.
    a = [event("a", "1000-0", 1_000_500), event("a", "1000-1", 1_000_100)]
    b = [event("b", "1000-0", 1_000_300)]
    merged = in_order([a, b])
    assert [e.id for e in merged if e.pool == "a"] == ["1000-0", "1000-1"]
    assert len(merged) == 3


def test_entries_of_older_versions_count_at_their_millisecond_first_pool_first_on_a_tie() -> None:
    a = [event("a", "1000-0", None), event("a", "1002-0", None)]
    b = [event("b", "1000-0", None), event("b", "1001-5", 1_001_500)]
    assert [(e.pool, e.id) for e in in_order([a, b])] == [("a", "1000-0"), ("b", "1000-0"), ("b", "1001-5"),
                                                          ("a", "1002-0")]


def test_the_codec_reads_time_us_and_ignores_what_is_not_a_plain_integer() -> None:
    codec = PoolCodec(co.PoolConfig(name="p", members=[co.Member(id="a")]), co.KeySchema("t"))
    fields = {"type": "parked", "pool": "p", "epoch": "e", "generation": "2"}
    events = codec.parse_events([
        ("1000-0", {**fields, "time_us": "1000000123"}),
        ("1000-1", fields),
        ("1000-2", {**fields, "time_us": "12x"}),
        ("1000-3", {**fields, "time_us": "\u00b2"}),
        (b"1000-4", {b"type": b"parked", b"pool": b"p", b"epoch": b"e", b"generation": b"2", b"time_us": b"7"}),
    ])
    assert [e.time_us for e in events] == [1000000123, None, None, None, 7]
