"""The Redis key schema. The only module that spells a key name.

Every key of one pool shares the hash tag ``{pool}``, so each script touches one Cluster slot::

    <prefix>:{<pool>}          hash    the pool's state (see README "Redis key schema")
    <prefix>:{<pool>}:events   stream  one entry per transition, capped
    <prefix>:changes           channel change notices "<pool> <epoch> <generation> <version>"
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
        return f"{self.prefix}:changes"

    @property
    def pool_pattern(self) -> str:
        """SCAN pattern matching every pool state hash under this prefix."""
        return f"{self.prefix}:{{*}}"
