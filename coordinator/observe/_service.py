"""What the two long-running commands (``alerts``, ``metrics``) share: their Redis client and their stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import redis
from redis.exceptions import RedisClusterException

import coordinator as co

#: Errors of a Redis that is away for a while; a running service waits them out instead of exiting.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException, OSError)


def fleet_coordinator(config: co.Config, url: str, timeout: float) -> co.Coordinator:
    """A coordinator on the fleet's Redis that always reads Redis: no local view, no stand-in, and no
    breaker pause after an outage (a scrape or a read right after Redis is back must see it)."""
    if url.startswith("memory:"):
        raise co.ConfigError(f"{url} keeps state inside one process: this command needs the fleet's Redis "
                             "(--redis URL)")
    if not config.pools:
        raise co.ConfigError("the config defines no pools")
    return co.Coordinator(url, list(config.pools.values()), prefix=config.redis.prefix, timeout=timeout,
                          staleness=0, local_fallback=False, probe_interval=0.0)


def stop_on_sigterm(stop: threading.Event) -> Callable[[], None]:
    """Makes SIGTERM set ``stop`` (when called from the main thread); returns what restores the handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def redis_scrubber(url: str) -> Callable[[str], str]:
    """Removes the Redis URL's password from a text (an error message) before it is printed."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    secrets = sorted({password, unquote(password)} if password else set(), key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return scrub
