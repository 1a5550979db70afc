"""coordinator: fleet-wide failover for LLM credentials and models, with its state in Redis."""

from typing import TYPE_CHECKING, Any

from ._backoff import RandomSource
from ._classify import Classifier, Failure, classify
from ._config import (
    Config,
    CooldownPolicy,
    ExhaustedPolicy,
    FailureKind,
    Member,
    PoolConfig,
    RedisConfig,
    Strategy,
    load_config,
    parse_duration,
)
from ._coordinator import AsyncCoordinator, Coordinator
from ._errors import (
    AllMembersFailedError,
    Cause,
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    PoolExhaustedError,
    StoreError,
    StoreUnavailableError,
    UnknownMemberError,
    UnknownPoolError,
)
from ._hints import preemptive_cooldown, rate_limit_hint
from ._hooks import AttemptEvent, CallEvent, Hook, HookEvent, LoggingHook, TransitionEvent
from ._keys import KeySchema
from ._pool import AsyncPool, Pool
from ._transport import POOLS_HEADER, FailoverTransport
from ._types import (
    FailoverEvent,
    FailureResult,
    MemberState,
    ParkResult,
    Result,
    Selection,
    Snapshot,
    SuccessResult,
)

if TYPE_CHECKING:
    from .observe.otel import OpenTelemetryHook
    from .observe.prometheus import PrometheusHook

__all__ = [
    "AllMembersFailedError",
    "AsyncCoordinator",
    "AsyncPool",
    "AttemptEvent",
    "CallEvent",
    "Cause",
    "Classifier",
    "Config",
    "ConfigError",
    "CooldownPolicy",
    "Coordinator",
    "CoordinatorError",
    "CorruptStateError",
    "ExhaustedPolicy",
    "FailoverEvent",
    "FailoverTransport",
    "Failure",
    "FailureKind",
    "FailureResult",
    "Hook",
    "HookEvent",
    "KeySchema",
    "LoggingHook",
    "Member",
    "MemberState",
    "OpenTelemetryHook",
    "POOLS_HEADER",
    "ParkResult",
    "Pool",
    "PoolConfig",
    "PoolExhaustedError",
    "PrometheusHook",
    "RandomSource",
    "RedisConfig",
    "Result",
    "Selection",
    "Snapshot",
    "StoreError",
    "StoreUnavailableError",
    "Strategy",
    "SuccessResult",
    "TransitionEvent",
    "UnknownMemberError",
    "UnknownPoolError",
    "classify",
    "load_config",
    "parse_duration",
    "preemptive_cooldown",
    "rate_limit_hint",
]

# Hooks for optional extras, imported on first use so that `import coordinator` never imports
# prometheus_client or opentelemetry: name -> (module, extra that provides its dependency).
_OPTIONAL = {
    "PrometheusHook": ("coordinator.observe.prometheus", "prometheus"),
    "OpenTelemetryHook": ("coordinator.observe.otel", "otel"),
}


def __getattr__(name: str) -> Any:
    if name not in _OPTIONAL:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    import importlib

    module, extra = _OPTIONAL[name]
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ImportError(f"coordinator.{name} needs an optional dependency: pip install 'coordinator[{extra}]' "
                          f"({exc})") from exc
    globals()[name] = found
    return found
