"""``Coordinator`` and ``AsyncCoordinator``: the entry points a worker holds."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio

from ._backend import connect, connect_async
from ._config import Config, PoolConfig, RedisConfig, load_config
from ._errors import ConfigError, UnknownPoolError
from ._keys import KeySchema
from ._pool import AsyncPool, Pool
from ._protocol import DEFAULT_STREAM_MAXLEN, PoolProtocol
from ._scripts import SCRIPT_NAMES, script_source


class _Base:
    def __init__(
        self,
        url: str,
        pools: Iterable[PoolConfig],
        prefix: str,
        stream_maxlen: int,
    ) -> None:
        self.url = url
        self.keys = KeySchema(RedisConfig(url=url, prefix=prefix).prefix)
        self._protocols: dict[str, PoolProtocol] = {}
        for cfg in pools:
            if not isinstance(cfg, PoolConfig):
                raise ConfigError(f"pools must be PoolConfig objects, got {type(cfg).__name__}")
            if cfg.name in self._protocols:
                raise ConfigError(f"pool {cfg.name!r} is configured twice")
            self._protocols[cfg.name] = PoolProtocol(cfg, self.keys, stream_maxlen)

    @classmethod
    def _config_args(cls, config: Config | str | os.PathLike[str]) -> dict[str, Any]:
        if not isinstance(config, Config):
            config = load_config(config)
        return {"url": config.redis.url, "pools": list(config.pools.values()), "prefix": config.redis.prefix}

    @property
    def pool_names(self) -> list[str]:
        return list(self._protocols)

    def pool_config(self, name: str) -> PoolConfig:
        return self._protocol(name).config

    def _protocol(self, name: str) -> PoolProtocol:
        try:
            return self._protocols[name]
        except KeyError:
            raise UnknownPoolError(name, list(self._protocols)) from None


class Coordinator(_Base):
    """Fleet-wide failover state for sync workers.

    ``url`` is ``memory://`` (embedded, this process only), ``redis://``, ``rediss://`` or ``unix://``.
    """

    def __init__(
        self,
        url: str = "memory://",
        pools: Iterable[PoolConfig] = (),
        *,
        prefix: str = "coord",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(url, pools, prefix, stream_maxlen)
        self.client = client if client is not None else connect(url)
        scripts = {name: self.client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._pools = {name: Pool(proto, self.client, scripts) for name, proto in self._protocols.items()}

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> Coordinator:
        """Build from a ``Config`` or the path of a ``coordinator.toml``."""
        return cls(**{**cls._config_args(config), **kwargs})

    def pool(self, name: str) -> Pool:
        self._protocol(name)
        return self._pools[name]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCoordinator(_Base):
    """Fleet-wide failover state for asyncio workers: the ``Coordinator`` API, awaitable."""

    def __init__(
        self,
        url: str = "memory://",
        pools: Iterable[PoolConfig] = (),
        *,
        prefix: str = "coord",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        super().__init__(url, pools, prefix, stream_maxlen)
        self.client = client if client is not None else connect_async(url)
        scripts = {name: self.client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._pools = {name: AsyncPool(proto, self.client, scripts) for name, proto in self._protocols.items()}

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> AsyncCoordinator:
        return cls(**{**cls._config_args(config), **kwargs})

    def pool(self, name: str) -> AsyncPool:
        self._protocol(name)
        return self._pools[name]

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
