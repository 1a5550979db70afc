"""The local stand-in's starting point while Redis is away (docs/design.md, "When Redis is away").

``LastKnownState`` keeps the newest picture of each pool that Redis replies gave this worker, builds
from it the pool hash the stand-in (a private in-process fakeredis running the same scripts) starts
from, and lists what the stand-in learned that Redis must hear about when it is back. No I/O.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

from coordinator.store.codec import MemberRecord, Op, PoolCodec, decode_states

#: Scripts whose ARGV starts with member id, token epoch, token generation.
_TOKEN_SCRIPTS = ("report_failure", "report_success")


class _Undecoded:
    """An acquire reply's ``states`` as it came (most are never needed: only an outage or a lost state
    reads them)."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw


class LastKnownState:
    """What the local stand-in starts from, and what it knows that Redis must hear about."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, Any]] = {}
        self.seeded: set[str] = set()
        #: The epoch each pool's stand-in was seeded with, while it runs.
        self._local_epoch: dict[str, str] = {}

    def remember(self, pool: str, data: Mapping[str, Any]) -> None:
        """Keeps the newest picture Redis replies gave: the pointer from any reply, every member's
        state from an acquire reply, the reported member's cooldown from a failure reply."""
        if "epoch" not in data or "active" not in data:
            return
        last = self._last.get(pool)
        if last is None:
            last = self._last[pool] = {"states": {}}
        last.update(active=data.get("active") or "", server_now=float(data.get("now", 0)),
                    wall_ms=time.time() * 1000.0, epoch=str(data["epoch"]), generation=str(data.get("generation", 0)))
        if "valid_until" in data:
            # As the reply gave them: decoded (decode_states) only when an outage or a lost state needs them.
            last["states"] = _Undecoded(data.get("states"))
        member, until = data.get("member"), data.get("until")
        if "stale" in data and isinstance(member, str) and until:
            states = self._states(pool)
            entry = states.get(member) or MemberRecord(member)
            states[member] = dataclasses.replace(entry, cooling_until=float(until),
                                                 cooling_kind=str(data.get("kind") or entry.cooling_kind),
                                                 failures=int(data.get("failures") or 0),
                                                 ejections=entry.ejections + (1 if data.get("cooled") else 0))

    def _states(self, pool: str) -> dict[str, MemberRecord]:
        """What the last replies said of each member of ``pool``, decoded on first use."""
        last = self._last.get(pool)
        if last is None:
            return {}
        states = last.get("states")
        if isinstance(states, _Undecoded):
            states = last["states"] = decode_states({"states": states.raw})
        return states if isinstance(states, dict) else {}

    def seed(self, codec: PoolCodec) -> dict[str, str]:
        """The hash the stand-in starts a pool from: a local epoch, the last known pointer and states;
        the pool counts as seeded from now on."""
        cfg = codec.config
        ids = [m.id for m in cfg.members]
        now_ms = int(time.time() * 1000)
        last = self._last.get(codec.name, {})
        active = last.get("active") if last.get("active") in ids else ""
        epoch = self._local_epoch[codec.name] = f"local{os.urandom(6).hex()}"
        self.seeded.add(codec.name)
        fields = {
            "epoch": epoch,
            "generation": "0",
            "version": "0",
            "created": str(now_ms),
            "strategy": cfg.strategy,
            "members": ",".join(ids),
            "weights": ",".join(str(m.weight) for m in cfg.members),
            "digest": codec.digest,
            "active": "" if cfg.strategy == "round_robin" else (active or ids[0]),
            "exhausted": "0",
        }
        # Server deadlines become deadlines of this machine's clock, which the stand-in's TIME reads.
        shift = last.get("wall_ms", 0.0) - last.get("server_now", 0.0)
        for m in self._states(codec.name).values():
            if m.id not in ids:
                continue
            if m.cooling_until > 0:
                fields[f"{m.id}:cooling_until"] = str(int(m.cooling_until + shift))
                fields[f"{m.id}:cooling_kind"] = m.cooling_kind
            for name, value in (("failures", m.failures), ("ejections", m.ejections)):
                if value:
                    fields[f"{m.id}:{name}"] = str(value)
            if m.parked_until == -1:
                fields[f"{m.id}:parked_until"] = "forever"
            elif m.parked_until > 0:
                fields[f"{m.id}:parked_until"] = str(int(m.parked_until + shift))
            if m.parked_until and m.park_reason:
                fields[f"{m.id}:park_reason"] = m.park_reason
        return fields

    def redis_epoch(self, pool: str) -> str:
        """The epoch of the last reply Redis gave for ``pool`` ("" before any)."""
        return str(self._last.get(pool, {}).get("epoch") or "")

    def heal_items(self, pool: str, server_now: float, parks: bool = True) -> list[list[Any]]:
        """What this worker knew of ``pool`` before Redis lost it (a flush, an eviction, an empty replica
        promoted), as merge.lua items [member, remaining cooldown ms, kind, ejections, remaining park ms
        (-1 until unparked, 0 none), park reason]; without ``parks`` (after a heal) no park."""
        items = []
        for m in self._states(pool).values():
            cooling = max(0, int(m.cooling_until - server_now))
            parked = -1 if m.parked_until == -1 else max(0, int(m.parked_until - server_now))
            if not parks:
                parked = 0
            if cooling or m.ejections or parked:
                items.append([m.id, cooling, m.cooling_kind, m.ejections, parked, m.park_reason])
        return items

    def to_local(self, codec: PoolCodec, op: Op[Any]) -> Op[Any]:
        """``op`` for the stand-in: a report made under the token Redis gave (the stand-in started from
        that very state) counts as made under the stand-in's first token, so it is applied, not stale."""
        last = self._last.get(codec.name, {})
        local = self._local_epoch.get(codec.name)
        if op.script in _TOKEN_SCRIPTS and local and last.get("epoch") and op.args[1] == last["epoch"]:
            return Op(op.script, op.keys, [op.args[0], local, "0", *op.args[3:]], op.parse, op.operator)
        return op

    def to_redis(self, codec: PoolCodec, op: Op[Any]) -> Op[Any]:
        """``op`` for Redis: a report made under a stand-in's token (Redis is back now) counts as made
        under the last token Redis gave, so it is applied, not dropped as stale."""
        if op.script not in _TOKEN_SCRIPTS or not op.args[1].startswith("local"):
            return op
        last = self._last.get(codec.name, {})
        if last.get("epoch"):
            return Op(op.script, op.keys, [op.args[0], last["epoch"], last["generation"], *op.args[3:]],
                      op.parse, op.operator)
        return op

    @staticmethod
    def merge_items(fields: Mapping[str, str], now_ms: float) -> list[list[Any]]:
        """From a stand-in pool hash: every cooldown still running and every ejection count, as merge.lua
        items [member, remaining ms, kind, ejections]. What the worker knew before the outage goes back
        too: Redis may have come back empty. (Parks do not: operators' actions wait for Redis.)"""
        items = []
        for field, value in fields.items():
            member, _, name = field.rpartition(":")
            if name != "ejections" or not value.isdigit():
                continue
            until = fields.get(f"{member}:cooling_until", "0")
            remaining = int(until) - now_ms if until.isdigit() else 0
            items.append([member, int(max(0, remaining)), fields.get(f"{member}:cooling_kind", ""), int(value)])
        return items

