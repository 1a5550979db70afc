"""One CLI invocation: its config, its coordinator (always read from Redis) and its error output."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from coordinator import (
    Config,
    Coordinator,
    Pool,
    StoreUnavailableError,
    load_config,
)
from coordinator.cli.registry import (
    _CLIENT_REPR,
    CONNECT_TIMEOUT,
    EXIT_USAGE,
    READ_TIMEOUT,
    REDIS_URL_ENV,
    CliError,
)
from coordinator.cli.render import (
    dump_json,
    one_line,
    safe_url,
    url_password,
    warn,
)
from coordinator.store.connect import parse_url, plain_redis_at

#: Shorter secrets are not redacted from error text: "a" would turn every letter a into ***. A URL's
#: password is redacted wherever the URL is shown (``safe_url``), whatever its length.
MIN_SECRET_LENGTH = 8


def redact_secrets(message: str, secrets: list[str]) -> str:
    """``message`` with every occurrence of a secret of at least MIN_SECRET_LENGTH characters replaced
    by ``***`` (that long, it appears only where the secret itself leaked, never as letters of a word)."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


# -- the session: config, client and output for one invocation -----------------------------------------


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self._coordinator: Coordinator | None = None
        self._url: str | None = None

    @functools.cached_property
    def config(self) -> Config:
        path = Path(self.args.config)
        if not path.exists():
            raise CliError(f"{path}: config file not found (give the workers' config with --config PATH)")
        return load_config(path)

    @property
    def url(self) -> str:
        """``--redis``, else $COORDINATOR_REDIS_URL (load_config applies it), else the config's."""
        if self._url is None:
            self._url = self.args.redis or self.config.redis.url
        return self._url

    @property
    def url_source(self) -> str:
        if self.args.redis:
            return "--redis"
        if os.environ.get(REDIS_URL_ENV):
            return REDIS_URL_ENV
        return "config"

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            config, url = self.config, self.url
            target = parse_url(url)
            if target.kind == "memory":
                warn(f"{url} keeps state inside this one process; point --redis or ${REDIS_URL_ENV} "
                     "at the fleet's Redis")
            client = None
            if plain_redis_at(url, CONNECT_TIMEOUT):
                # Else the TLS handshake would wait for the whole read timeout before saying anything.
                raise CliError(f"{safe_url(url)} asks for TLS (rediss://) but the port speaks plain Redis, "
                               "without TLS: use redis:// or the server's TLS port")
            if target.kind == "single":
                try:
                    client = redis.Redis.from_url(
                        url, decode_responses=True,
                        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT,
                        retry=Retry(NoBackoff(), 0),  # an operator wants the answer now, not after retries
                    )
                except ValueError as exc:
                    raise CliError(f"invalid Redis URL {safe_url(url)!r}: {exc}") from None
            # Cluster and Sentinel clients connect while they are built; the library's own timeouts apply.
            # An operator's view is always read from Redis, never from a local decision.
            self._coordinator = Coordinator.from_config(config, url=url, client=client, staleness=0,
                                                        local_fallback=False)
        return self._coordinator

    def pools(self, name: str | None) -> list[Pool]:
        coord = self.coordinator
        if name:
            return [coord.pool(name)]
        if not coord.pool_names:
            raise CliError(f"{self.args.config} defines no pools")
        return [coord.pool(n) for n in coord.pool_names]

    def print_json(self, data: Any, *, indent: int | None = 2) -> None:
        print(dump_json(data, indent=indent), flush=True)

    def secrets(self) -> list[str]:
        """Every secret this invocation knows of, to scrub from error text."""
        found: list[str] = []
        for url in (self.args.redis, os.environ.get(REDIS_URL_ENV), self._url):
            password = url_password(url) if url else None
            if password:
                found += [password, unquote(password)]
        if "config" in self.__dict__:
            for pool in self.config.pools.values():
                found += [secret for member in pool.members if (secret := member.secret())]
        return found

    def fail(self, exc: BaseException) -> int:
        message = redact_secrets(self.describe(exc), self.secrets())
        print(f"coordinator: error: {one_line(message)}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    def describe(self, exc: BaseException) -> str:
        where = safe_url(self._url) if self._url else "the configured URL"
        unreachable = StoreUnavailableError | redis.ConnectionError | redis.TimeoutError | RedisClusterException
        if isinstance(exc, unreachable):
            cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) and exc.__cause__ else exc
            # Sentinel errors embed the repr of a whole client: noise on an operator's one line.
            return f"cannot reach Redis at {where}: {_CLIENT_REPR.sub('<redis client>', str(cause))}"
        if isinstance(exc, redis.RedisError):
            return f"Redis at {where} answered with an error: {exc}"
        return str(exc)

    def close(self) -> None:
        if self._coordinator is not None:
            # Closing a client that never connected may fail; there is nothing left to do then.
            with contextlib.suppress(Exception):
                self._coordinator.close()


