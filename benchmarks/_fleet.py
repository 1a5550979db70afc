"""The worker processes of the fleet-convergence benchmark (figure c).

Coordinator workers are real OS processes, each with its own Coordinator (default staleness, change
notices on), that loop on ``pool.acquire()``; whenever the member they get differs from the last one
they send ``(worker, member, time.time())`` to the parent. All processes run on one machine, so their
``time.time()`` readings share one clock.

Raw workers are the floor any notify-and-refetch design meets on the machine: plain redis-py
subscribers that block on a channel and, on a message, make one GET and report the time.
"""

from __future__ import annotations

import time
from typing import Any

import redis

import coordinator as co

#: Values of the shared phase flag the parent sets for the coordinator workers.
IDLE, BUSY, PACED, STOP = 0, 1, 2, 3
#: How often an idle coordinator worker acquires (while the raw fleet is measured).
IDLE_PAUSE = 0.02


def pool_config(name: str, members: int) -> co.PoolConfig:
    # Cooldowns far longer than the benchmark: a member cooled once stays out, so every transition
    # moves the pointer to a member no worker has seen yet.
    policy = co.CooldownPolicy(auth="1h", rate_limited="1h", max="6h")
    return co.PoolConfig(name=name, members=[co.Member(id=f"m{i:03d}") for i in range(members)], cooldown=policy)


def worker(index: int, url: str, prefix: str, pool: str, members: int, pause: float, phase: Any,
           conn: Any, deadline: float) -> None:
    coord = co.Coordinator(url, [pool_config(pool, members)], prefix=prefix)
    handle = coord.pool(pool)
    last = ""
    try:
        while time.time() < deadline:
            mode = phase.value
            if mode == STOP:
                break
            member = handle.acquire().member.id
            if member != last:
                conn.send((index, member, time.time()))
                last = member
            if mode == PACED:
                time.sleep(pause)
            elif mode == IDLE:
                time.sleep(IDLE_PAUSE)
    finally:
        coord.close()
        conn.close()


def raw_worker(index: int, url: str, channel: str, key: str, conn: Any, deadline: float) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    try:
        conn.send((index, "subscribed", time.time()))
        while time.time() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if not message:
                continue
            received = time.time()
            if message["data"] == "stop":
                break
            client.get(key)
            conn.send((index, message["data"], time.time(), received))
    finally:
        pubsub.close()
        client.close()
        conn.close()
