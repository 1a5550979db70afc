"""Configuration models (pydantic v2) and the TOML loader. Imports nothing from the store."""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from coordinator.core.errors import ConfigError

# Ids end up in Redis field names, hash tags, log lines and CLI tables: no separators ("," ":" "|"),
# no braces (they would break the hash tag), no whitespace, nothing invisible.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

Strategy = Literal["sticky", "priority", "round_robin"]
#: What ``coord.call`` does with a pool whose members are all cooling or parked
#: (docs/design.md, "When every member is unavailable").
ExhaustedPolicy = Literal["wait", "fail", "degraded"]
#: Whether a member is asked to finish a stream another member broke, from an assistant prefill
#: (docs/design.md, "Continuation"): ``"auto"`` decides by the request's API (Anthropic Messages,
#: ``/v1/messages``: yes; OpenAI Chat Completions and Responses: no), ``"prefill"`` always (an
#: OpenAI-compatible server that continues a final assistant message), ``"off"`` never.
ContinuationMode = Literal["auto", "prefill", "off"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"5m"``, ``"2h"``, ``"1h30m"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '90s', not a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range, e.g. a 400-digit TOML integer
            raise ValueError("invalid duration: a number too large to be seconds") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_RE.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text):
                raise ValueError(
                    f"invalid duration {value!r}: use seconds or units ms, s, m, h, d (e.g. '90s', '1h30m')"
                ) from None
    else:
        raise ValueError(f"invalid duration {value!r}: expected seconds or a string like '90s'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be finite and not negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_limit(value: Any) -> float | None:
    """A time limit: a duration, or ``None`` / ``"none"`` / ``"off"`` for no limit (TOML has no null)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    return parse_duration(value)


#: A duration or no limit at all (None).
Limit = Annotated[float | None, BeforeValidator(parse_limit)]


def check_id(value: str, what: str = "id") -> str:
    # fullmatch: with match(), "$" would also accept a trailing newline.
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ @ + -, "
            "starting with a letter or digit"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Model):
    """One way to serve a request: a credential, optionally with its own model, base URL, headers.

    The secret comes from ``api_key_env`` (an environment variable of this process) or ``api_key``;
    it is never sent to Redis, logged, or shown by the CLI.
    """

    id: str
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    base_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=1, ge=1, le=1000)
    #: This member's own ``continuation`` setting; None (the default) takes the pool's.
    continuation: ContinuationMode | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return check_id(value, "member id")

    def secret(self) -> str | None:
        """The credential, read from this process' environment or config; None when there is none."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


class CooldownPolicy(_Model):
    """Base cooldown per failure kind, clamp, escalation (docs/design.md, "Cooldown length")."""

    rate_limited: Duration = 60.0
    quota_exhausted: Duration = 1800.0
    auth: Duration = 600.0
    #: Short, because one probe request (not every worker) finds out whether the member is back
    #: (docs/design.md, "Timeouts and streams"): 5 s, doubling per consecutive ejection, up to
    #: ``transient_max``.
    transient: Duration = 5.0
    transient_max: Duration = 60.0
    #: The longest re-cool after a failed probe (a chain's recovery probe, a priority pool's half-open
    #: probe) without a provider hint: the same doubling, capped here, because a probe is one request
    #: for the whole fleet and its interval is how late a recovery is noticed (docs/design.md,
    #: "Timeouts and streams": a pool whose member failed transiently, without a provider hint, is back
    #: within 10 s plus the gap to its next request of recovering, whatever that outage's length; a
    #: rate limit, quota, auth or model cooldown, and a provider's hint, are not capped by it).
    probe_max: Duration = 10.0
    #: Anthropic's 529 ``overloaded_error`` (a busy service, not this key's limit): its own short rest,
    #: separate from the 429 ramp; used when the response carries no retry hint.
    overloaded: Duration = 2.0
    model_unavailable: Duration = 600.0
    min: Duration = 1.0
    max: Duration = 6 * 3600.0
    multiplier: float = Field(default=2.0, ge=1.0, le=16.0)
    transient_threshold: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _check_clamp(self) -> CooldownPolicy:
        if self.min > self.max:
            raise ValueError(f"cooldown min ({self.min}s) is larger than max ({self.max}s)")
        return self

    def base_for(self, kind: str) -> float:
        return float(getattr(self, kind))

    def max_for(self, kind: str, *, probe: bool = False) -> float:
        """The longest cooldown of this kind: ``max``, and for transient failures ``transient_max``
        (``probe_max`` too for a failed probe without a provider hint)."""
        if kind != "transient":
            return self.max
        return min(self.max, self.transient_max, self.probe_max) if probe else min(self.max, self.transient_max)


class Timeouts(_Model):
    """Time limits of one attempt on a member of the pool (docs/design.md, "Timeouts and streams").

    An attempt that runs out of one is not retried on the same member: the call moves to the next
    member (or pool) at once, and the member is counted toward its transient cooldown. The SDK's own
    timeout still applies on top (the smaller one wins). ``None`` (``"none"`` in TOML) is no limit.
    """

    #: Opening the TCP (and TLS) connection.
    connect: Limit = 5.0
    #: From sending the request to the response headers, for streaming requests (``"stream": true``).
    first_byte: Limit = 30.0
    #: The same for non-streaming requests: none, because reasoning models legitimately think for minutes.
    first_byte_unary: Limit = None
    #: From the response headers to the first content event of a stream (text or tool-call delta).
    first_token: Limit = None
    #: The longest gap between two reads of a stream once it started.
    idle: Limit = 30.0
    #: The whole call, when the caller gives no ``deadline`` of its own (waits and failovers included).
    deadline: Limit = None

    def header_limit(self, streaming: bool) -> float | None:
        return self.first_byte if streaming else self.first_byte_unary


class PoolConfig(_Model):
    """An ordered list of interchangeable members with one strategy and one policy."""

    name: str
    members: list[Member] = Field(min_length=1, max_length=10_000)
    strategy: Strategy = "sticky"
    cooldown: CooldownPolicy = Field(default_factory=CooldownPolicy)
    failback_after: Duration = 0.0
    probe_timeout: Duration = 30.0
    rotate_for: Duration = 600.0
    #: Header the transport puts a member's secret in: "authorization" sends "Bearer <secret>"
    #: (OpenAI and most others); any other name gets the bare secret ("x-api-key" for Anthropic).
    auth_header: str = Field(default="authorization", pattern=r"^[A-Za-z0-9-]{1,64}$")
    # -- the failover executor (docs/design.md, "The call plan") --
    #: Tries of one member on transient errors within one call before moving on (1 = no retry).
    attempts_per_member: int = Field(default=3, ge=1, le=100)
    #: Full-jitter backoff between those tries: uniform in [0, min(cap, base * 2**(retry-1))).
    backoff_base: Duration = 0.2
    backoff_cap: Duration = 10.0
    #: When every member is cooling or parked: wait for the soonest recovery if it is within
    #: ``max_wait`` (and the call's deadline), fail at once with ``retry_at``, or try that member anyway.
    on_exhausted: ExhaustedPolicy = "wait"
    max_wait: Duration = 10.0
    #: "A near recovery beats a model fallback": when every member of this pool is cooling and the
    #: soonest comes back within this many seconds (and the call's deadline), wait and retry this pool
    #: before moving down the chain. 0 moves on at once.
    wait_for_recovery: Duration = 3.0
    timeouts: Timeouts = Field(default_factory=Timeouts)
    #: Whether this pool's members finish a broken stream from an assistant prefill (members may say
    #: otherwise): ``"auto"`` (Anthropic Messages yes, OpenAI no), ``"prefill"`` or ``"off"``.
    continuation: ContinuationMode = "auto"
    #: Rolling deploys (docs/design.md, "Rolling deploys"): while workers of two configurations of this
    #: pool run side by side, the membership of the higher revision is the fleet's; the others use the
    #: members they share with it. Raise it with every change of the members (a rollback too).
    revision: int = Field(default=0, ge=0, le=10**12)

    def continuation_of(self, member: Member) -> ContinuationMode:
        return member.continuation if member.continuation is not None else self.continuation

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_id(value, "pool name")

    @field_validator("members")
    @classmethod
    def _unique_ids(cls, members: list[Member]) -> list[Member]:
        seen: set[str] = set()
        for member in members:
            if member.id in seen:
                raise ValueError(f"member id {member.id!r} appears twice")
            seen.add(member.id)
        return members

    def member(self, member_id: str) -> Member | None:
        for member in self.members:
            if member.id == member_id:
                return member
        return None


class RedisConfig(_Model):
    url: str = "memory://"
    prefix: str = "coord"

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", value):
            raise ValueError(f"invalid prefix {value!r}: use A-Z a-z 0-9 . _ : - (at most 64)")
        return value


class Config(_Model):
    """What ``coordinator.toml`` holds: the Redis connection and the pools."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    pools: dict[str, PoolConfig] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_pools(cls, data: Any) -> Any:
        # In TOML a pool's name is its table key: [pools.openai]
        if isinstance(data, dict) and isinstance(data.get("pools"), dict):
            pools = {}
            for key, value in data["pools"].items():
                if isinstance(value, dict) and "name" not in value:
                    value = {**value, "name": key}
                pools[key] = value
            data = {**data, "pools": pools}
        return data

    @model_validator(mode="after")
    def _names_match(self) -> Config:
        for key, pool in self.pools.items():
            if pool.name != key:
                raise ValueError(f"pool table {key!r} has name {pool.name!r}; they must match")
        return self


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def load_config(path: str | os.PathLike[str] = "coordinator.toml") -> Config:
    """Read a ``coordinator.toml``. ``COORDINATOR_REDIS_URL`` overrides ``[redis] url``.

    Raises ConfigError naming the file and the field for anything wrong with it.
    """
    file = Path(path)
    try:
        # Bytes, not read_text(): universal newlines would turn a lone CR, which TOML forbids, into "\n".
        raw = tomllib.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of 4300+ digits; nesting thousands deep
        raise ConfigError(f"{file}: not usable TOML: {str(exc)[:200]}") from None
    env_url = os.environ.get("COORDINATOR_REDIS_URL")
    if env_url:
        section = raw.get("redis")
        raw["redis"] = {**(section if isinstance(section, dict) else {}), "url": env_url}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{file}: {format_validation_error(exc)}") from exc
