"""Turns a URL into a redis-py client (sync or asyncio).

- ``memory://[NAME]``: the embedded backend, fakeredis running the very same Lua scripts in this
  process; clients with the same NAME share one server.
- ``redis://``, ``rediss://``, ``unix://``: one Redis server (redis-py's own URL syntax).
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS): Redis
  Cluster, discovered from any of the seed nodes.
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB]`` (``rediss+sentinel://``):
  the master of SERVICE as the Sentinels report it, followed across failovers.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordinator.core.errors import ConfigError

SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
           "rediss+sentinel")
# redis-py's defaults wait forever; a coordinator must never hang a worker's call on Redis. A state
# call takes well under a millisecond on a healthy server: a quarter second means it is not healthy.
DEFAULT_TIMEOUT = 0.25

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


@dataclass(frozen=True)
class Target:
    """What a URL asks for, parsed without any I/O."""

    kind: str  # "memory" | "single" | "cluster" | "sentinel"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    service: str = ""
    db: int = 0
    name: str = "default"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/")[0]:
        return url
    userinfo, _, hosts = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}" if ":" in userinfo else url


def parse_url(url: str) -> Target:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported Redis URL scheme {scheme!r} in {redact(url)!r}; use one of {', '.join(SCHEMES)}"
        )
    if scheme == "memory":
        return Target("memory", url, name=urlparse(url).netloc or "default")
    if "+" not in scheme:
        return Target("single", url)
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_pw, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"bad host:port {item!r} in {redact(url)!r}")
        hosts.append((host.strip("[]"), int(port)))
    path = path.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    ssl = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        return Target("cluster", url, tuple(hosts), username, password, ssl)
    if not parts:
        raise ConfigError(f"sentinel URL {redact(url)!r} needs a service name: redis+sentinel://host:port/SERVICE")
    query_db = parse_qs(urlparse(url).query).get("db", ["0"])[0]
    db = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else int(query_db)
    return Target("sentinel", url, tuple(hosts), username, password, ssl, service=parts[0], db=db)


def _memory_server(name: str) -> Any:
    import fakeredis

    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = _memory_servers[name] = fakeredis.FakeServer()
        return server


def _options(target: Target, timeout: float, retry: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        # A timed-out script may have run: it must not be sent again blindly (the caller re-reads instead).
        "retry": retry,
    }
    if target.username:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    if target.ssl:
        options["ssl"] = True
    return options


@dataclass(frozen=True)
class _Flavour:
    """The client classes of one I/O style: the connection logic below is written once for both."""

    fake: str
    redis: Any
    cluster: Any
    sentinel: Any
    retry: Any


def _sync_flavour() -> _Flavour:
    return _Flavour("FakeRedis", redis.Redis, redis.cluster, redis.sentinel, Retry)


def _async_flavour() -> _Flavour:
    return _Flavour("FakeAsyncRedis", redis.asyncio.Redis, redis.asyncio.cluster, redis.asyncio.sentinel, AsyncRetry)


def _connect(url: str, timeout: float, flavour: _Flavour) -> Any:
    target = parse_url(url)
    if target.kind == "memory":
        import fakeredis

        return getattr(fakeredis, flavour.fake)(server=_memory_server(target.name), decode_responses=True)
    options = _options(target, timeout, flavour.retry(NoBackoff(), 0))
    if target.kind == "single":
        options.pop("ssl", None)
        return flavour.redis.from_url(url, **options)
    if target.kind == "cluster":
        # Cluster keeps redis-py's retries: they also carry the redirections a resharding causes.
        options.pop("retry")
        nodes = [flavour.cluster.ClusterNode(h, p) for h, p in target.hosts]
        return flavour.cluster.RedisCluster(startup_nodes=nodes, **options)
    sentinel = flavour.sentinel.Sentinel(
        list(target.hosts), socket_connect_timeout=timeout, socket_timeout=timeout,
        sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout},
    )
    return sentinel.master_for(target.service, db=target.db, **options)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A sync client for the URL (see the module docstring), with ``timeout`` seconds to connect and
    to read, and no automatic retries."""
    return _connect(url, timeout, _sync_flavour())


def connect_async(url: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """An asyncio client for the URL; the same options as ``connect``."""
    return _connect(url, timeout, _async_flavour())


def plain_redis_at(url: str, timeout: float) -> bool:
    """True when a ``rediss://`` URL points at a port that answers plain Redis: a TLS handshake there
    only times out, which would look like an outage. One plaintext PING, answered at once by a plain
    Redis (``+PONG``, or an error asking for credentials); a TLS port answers no such thing."""
    if not url.startswith("rediss://"):
        return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "localhost", parsed.port or 6379), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            head = sock.recv(1)
    except (OSError, ValueError):
        return False
    return head in (b"+", b"-")
