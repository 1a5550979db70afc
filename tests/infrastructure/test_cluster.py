"""Redis Cluster: every script touches one slot (the pool's hash tag), so pools spread over masters."""

from __future__ import annotations

import uuid

import coordinator as co
from coordinator.store.connect import connect


def test_pools_spread_over_slots_and_masters_each_work(redis_cluster_url):
    names = [f"pool{i}" for i in range(12)]
    prefix = f"c{uuid.uuid4().hex[:8]}"
    cfgs = [co.PoolConfig(name=n, members=[co.Member(id="a"), co.Member(id="b")]) for n in names]
    coord = co.Coordinator(redis_cluster_url, cfgs, prefix=prefix)
    raw = connect(redis_cluster_url)
    keys = co.KeySchema(prefix)
    owners = set()
    for name in names:
        state_key, events_key = keys.pool_keys(name)
        assert raw.keyslot(state_key) == raw.keyslot(events_key)
        owners.add(raw.nodes_manager.get_node_from_slot(raw.keyslot(state_key)).name)
        pool = coord.pool(name)
        result = pool.report_failure(pool.acquire(), "rate_limited", retry_after=60)
        assert result.transitioned and result.active == "b"
        assert [e.type for e in pool.events()] == ["created", "failover"]
    assert len(owners) >= 2, "twelve pools landed on one master; the hash tags do not spread"
    coord.close()
    raw.close()


def test_cluster_url_parsing_names_problems():
    from coordinator.store.connect import parse_url

    target = parse_url("rediss+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert target.kind == "cluster" and target.ssl and target.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (target.username, target.password) == ("user", "s3cret")
    sentinel = parse_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2")
    assert (sentinel.kind, sentinel.service, sentinel.db) == ("sentinel", "mymaster", 2)
    for bad, problem in [("redis+cluster://nohost", "bad host:port"), ("redis+sentinel://h:1", "service name"),
                         ("http://x:1", "unsupported")]:
        try:
            parse_url(bad)
        except co.ConfigError as exc:
            assert problem in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
