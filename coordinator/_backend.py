"""Turns a URL into a redis-py client (sync or asyncio). ``memory://`` is the embedded backend:
fakeredis running the very same Lua scripts in this process."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio

from ._errors import ConfigError

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def _memory_server(url: str) -> Any:
    import fakeredis

    name = urlparse(url).netloc or "default"
    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = _memory_servers[name] = fakeredis.FakeServer()
        return server


def is_memory(url: str) -> bool:
    return url.startswith("memory://")


SCHEMES = ("redis", "rediss", "unix", "memory")
# redis-py's defaults wait forever; a coordinator must never hang a worker's call on Redis.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0


def check_url(url: str) -> str:
    scheme = urlparse(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported Redis URL scheme {scheme!r} in {redact(url)!r}; use one of {', '.join(SCHEMES)}"
        )
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()


def connect(url: str) -> redis.Redis:
    """A sync client. ``memory://NAME`` clients with the same NAME share one in-process server."""
    check_url(url)
    if is_memory(url):
        import fakeredis

        return fakeredis.FakeRedis(server=_memory_server(url), decode_responses=True)
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT
    )


def connect_async(url: str) -> redis.asyncio.Redis:
    check_url(url)
    if is_memory(url):
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=_memory_server(url), decode_responses=True)
    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT
    )
