"""The Redis key schema. The only module that spells a key name.

Every key of one pool shares the hash tag ``{pool}``, so each script touches one Cluster slot::

    <prefix>:{<pool>}          hash    the pool's state (see README "Redis key schema")
    <prefix>:{<pool>}:events   stream  one entry per transition, capped by count and age
    <prefix>:changes:{<pool>}  channel the pool's change notices
                                       "<pool> <epoch> <generation> <version> <active> <dirty>"
                                       (sharded pub/sub on Cluster: same hash tag, same slot)
    <prefix>:changes           channel the same notices for every pool, for workers of releases before
                                       per-pool channels (published while ``legacy_notices`` is on)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySchema:
    prefix: str = "coord"

    def pool(self, pool: str) -> str:
        return f"{self.prefix}:{{{pool}}}"

    def events(self, pool: str) -> str:
        return f"{self.prefix}:{{{pool}}}:events"

    def pool_keys(self, pool: str) -> list[str]:
        """KEYS of every script, in order."""
        return [self.pool(pool), self.events(pool)]

    @property
    def channel(self) -> str:
        """The shared channel of earlier releases (every pool's notices)."""
        return f"{self.prefix}:changes"

    def pool_channel(self, pool: str) -> str:
        """The pool's own change-notice channel: only the workers that use the pool hear its notices."""
        return f"{self.prefix}:changes:{{{pool}}}"

    def notice_targets(self, pool: str, sharded: bool, legacy: bool) -> str:
        """The scripts' ARGV[1]: the channels a write's notice goes to, space-separated; ``!`` marks a
        sharded channel (SPUBLISH)."""
        own = ("!" if sharded else "") + self.pool_channel(pool)
        return f"{own} {self.channel}" if legacy else own

    @property
    def pool_pattern(self) -> str:
        """SCAN pattern matching every pool state hash under this prefix."""
        return f"{self.prefix}:{{*}}"
