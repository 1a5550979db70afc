"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

import coordinator as co


def members(n: int, prefix: str = "k") -> list[co.Member]:
    return [co.Member(id=f"{prefix}{i}") for i in range(n)]


def pool_config(n: int = 3, name: str = "p", **kwargs: Any) -> co.PoolConfig:
    return co.PoolConfig(name=name, members=members(n), **kwargs)
