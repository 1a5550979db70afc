"""coordinator: fleet-wide failover for LLM credentials and models, with its state in Redis.

The public API is what ``__all__`` lists; everything else is private. Layers, bottom up (each folder
imports only the ones below it; docs/design.md, "Layers"): ``core``, ``rules``, ``store``,
``transport``, ``drivers``, then ``observe``, ``testing`` and ``cli``.
"""

from typing import TYPE_CHECKING, Any

from coordinator.core.config import (
    Config,
    CooldownPolicy,
    ExhaustedPolicy,
    Member,
    PoolConfig,
    RedisConfig,
    Strategy,
    Timeouts,
    load_config,
    parse_duration,
)
from coordinator.core.errors import (
    AllMembersFailedError,
    Cause,
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    PoolExhaustedError,
    StoreError,
    StoreMisconfiguredError,
    StoreUnavailableError,
    StreamInterruptedError,
    UnknownMemberError,
    UnknownPoolError,
)
from coordinator.core.kinds import Failure, FailureKind
from coordinator.core.types import (
    FailoverEvent,
    FailureResult,
    MemberState,
    ParkResult,
    Result,
    Selection,
    Snapshot,
    SuccessResult,
)
from coordinator.drivers._async.coordinator import AsyncCoordinator
from coordinator.drivers._async.pool import AsyncPool
from coordinator.drivers._sync.coordinator import Coordinator
from coordinator.drivers._sync.pool import Pool
from coordinator.rules.backoff import RandomSource
from coordinator.rules.classify import Classifier, classify
from coordinator.rules.hints import preemptive_cooldown, rate_limit_hint
from coordinator.rules.hooks import AttemptEvent, CallEvent, Hook, HookEvent, LoggingHook, TransitionEvent
from coordinator.store.schema import KeySchema
from coordinator.transport.failover import POOLS_HEADER, FailoverTransport

if TYPE_CHECKING:
    from coordinator.observe.otel import OpenTelemetryHook
    from coordinator.observe.prometheus import PrometheusHook

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
    "StoreMisconfiguredError",
    "StoreUnavailableError",
    "StreamInterruptedError",
    "Strategy",
    "SuccessResult",
    "Timeouts",
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
