"""``OpenTelemetryHook``: a span per call with a child span per attempt, and the worker's counters as
OpenTelemetry metrics, through the OpenTelemetry API only (``pip install 'coordinator[otel]'``); the
application chooses the SDK and exporters.

Call span ``coordinator.call`` (INTERNAL, current while the call runs, so spans that ``fn`` makes nest
under it): ``coordinator.pool`` (the chain's first pool), ``coordinator.pools``, and at the end
``coordinator.member`` (the member tried last), ``coordinator.attempt`` (attempts made),
``coordinator.transitioned`` and ``error.type`` with an ERROR status when the call failed.

Attempt span ``coordinator.attempt`` (current while ``fn`` runs): ``coordinator.pool``,
``coordinator.member``, ``coordinator.attempt`` (1-based within the call), ``coordinator.failure_kind``
and ``error.type`` (the failure kind) when it failed, ``http.response.status_code`` when known,
``coordinator.next`` (what the executor did next), ``coordinator.transitioned`` (its report moved the
pool; the span then has a ``coordinator.transition`` event naming the event types; a transition made by
an acquire goes on the call span). The GenAI
semantic-convention attributes ``gen_ai.request.model`` (the member's configured model) and
``gen_ai.provider.name`` (from ``provider``) are set where they are known.

Attributes hold config names, fixed words and numbers: never a secret, a header, a URL or a provider
message. Metrics (same meaning as ``PrometheusHook``'s): ``coordinator.attempts``,
``coordinator.transitions``, ``coordinator.fallbacks``, ``coordinator.call.duration`` and
``coordinator.attempt.duration`` (seconds).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from coordinator import AttemptEvent, CallEvent, TransitionEvent
from coordinator.observe._calls import CallStack, CallState, outcome

_NAME = "coordinator"


@dataclass
class _Open:
    span: Span
    token: Token[Context] | None
    start_ns: int


@dataclass
class _TracedCall(CallState):
    call: _Open | None = None
    #: The attempt whose ``fn`` is running.
    running: _Open | None = None
    #: The attempt that just ended, with its end time: kept open until the next boundary, because the
    #: transition its failure report made is announced after it.
    finished: tuple[Span, int] | None = None


class OpenTelemetryHook:
    """Traces and counts every ``coord.call``::

        coord = co.Coordinator(url, pools, hooks=[co.OpenTelemetryHook(provider="openai")])

    ``tracer_provider``, ``meter_provider``: default to the global ones. ``provider``: the
    ``gen_ai.provider.name`` of every pool (``"openai"``), or a mapping of pool name to provider name.
    """

    #: Asks the coordinator for ``CallEvent``s, which frame calls and attempts.
    call_events = True

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        provider: str | Mapping[str, str] | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_NAME, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_NAME, meter_provider=meter_provider)
        self._provider = provider
        self._attempts = meter.create_counter("coordinator.attempts", unit="{attempt}",
                                              description="Attempts of coord.call on one member.")
        self._transitions = meter.create_counter(
            "coordinator.transitions", unit="{transition}",
            description="Pool transitions this worker's own store calls made, by event type.")
        self._fallbacks = meter.create_counter("coordinator.fallbacks", unit="{call}",
                                               description="Calls that moved on to a later pool of their chain.")
        self._call_duration = meter.create_histogram(
            "coordinator.call.duration", unit="s", description="Duration of whole coord.call calls.")
        self._attempt_duration = meter.create_histogram(
            "coordinator.attempt.duration", unit="s", description="Duration of one attempt.")
        self._calls: CallStack[_TracedCall] = CallStack("coordinator_otel_calls")

    def __call__(self, event: Any) -> None:
        if isinstance(event, CallEvent):
            if event.phase == "start":
                self._start(event)
            elif event.phase == "attempt":
                self._attempt_start(event)
            else:
                self._end(event)
        elif isinstance(event, AttemptEvent):
            self._attempt_end(event)
        elif isinstance(event, TransitionEvent):
            self._transition(event)

    def _provider_of(self, pool: str | None) -> str | None:
        if self._provider is None or isinstance(self._provider, str):
            return self._provider
        return self._provider.get(pool or "")

    # -- the call --

    def _start(self, event: CallEvent) -> None:
        first = event.pools[0] if event.pools else ""
        span = self._tracer.start_span("coordinator.call", kind=SpanKind.INTERNAL, attributes={
            "coordinator.pool": first, "coordinator.pools": list(event.pools)})
        token = otel_context.attach(trace.set_span_in_context(span))
        state = _TracedCall(pools=event.pools)
        state.call = _Open(span, token, time.time_ns())
        self._calls.push(state)

    def _end(self, event: CallEvent) -> None:
        state = self._calls.pop()
        if state is None:
            return
        result, error_type = outcome(state, event)
        if state.running is not None:
            # The attempt never finished: the call was cancelled or fn raised past the executor.
            running = state.running
            state.running = None
            if running.token is not None:
                otel_context.detach(running.token)
            running.span.set_attribute("error.type", event.error or "unknown")
            running.span.end()
        self._close_finished(state)
        first = event.pools[0] if event.pools else ""
        self._call_duration.record(event.elapsed, {"coordinator.pool": first, "coordinator.outcome": result})
        if state.call is None:
            return
        span = state.call.span
        span.set_attribute("coordinator.attempt", state.attempts)
        span.set_attribute("coordinator.transitioned", state.transitioned)
        if state.member is not None:
            span.set_attribute("coordinator.member", state.member)
            self._gen_ai(span, state.pool, state.model)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
        if result == "error":
            span.set_status(Status(StatusCode.ERROR))
        if state.call.token is not None:
            otel_context.detach(state.call.token)
        span.end()

    # -- attempts --

    def _attempt_start(self, event: CallEvent) -> None:
        state = self._calls.top()
        if state is None:
            return
        self._close_finished(state)
        moved_from = state.fallback_from(event)
        if moved_from is not None:
            self._fallbacks.add(1, {"coordinator.from_pool": moved_from, "coordinator.pool": event.pool or ""})
        state.pool, state.member, state.model = event.pool, event.member, event.model
        state.attempts += 1
        span = self._tracer.start_span("coordinator.attempt", kind=SpanKind.INTERNAL, attributes={
            "coordinator.pool": event.pool or "", "coordinator.member": event.member or "",
            "coordinator.attempt": event.number, "coordinator.transitioned": False})
        self._gen_ai(span, event.pool, event.model)
        token = otel_context.attach(trace.set_span_in_context(span))
        state.running = _Open(span, token, time.time_ns())

    def _attempt_end(self, event: AttemptEvent) -> None:
        labels = {"coordinator.pool": event.pool, "coordinator.member": event.member,
                  "coordinator.outcome": "ok" if event.ok else "error"}
        self._attempts.add(1, {**labels, "coordinator.failure_kind": event.kind or "none"})
        self._attempt_duration.record(event.elapsed, labels)
        state = self._calls.top()
        if state is None:
            return
        state.last = event
        running, state.running = state.running, None
        if running is None:
            return
        if running.token is not None:
            otel_context.detach(running.token)
        span = running.span
        span.set_attribute("coordinator.next", event.next)
        if event.degraded:
            span.set_attribute("coordinator.degraded", True)
        if event.status is not None:
            span.set_attribute("http.response.status_code", event.status)
        if not event.ok:
            span.set_attribute("coordinator.failure_kind", event.kind or "")
            span.set_attribute("error.type", event.kind or "")
            span.set_status(Status(StatusCode.ERROR))
        state.finished = (span, running.start_ns + round(event.elapsed * 1e9))

    def _close_finished(self, state: _TracedCall) -> None:
        if state.finished is not None:
            span, end_ns = state.finished
            state.finished = None
            span.end(end_time=end_ns)

    # -- transitions --

    def _transition(self, event: TransitionEvent) -> None:
        for kind in event.events:
            self._transitions.add(1, {"coordinator.pool": event.pool, "coordinator.transition.type": kind})
        state = self._calls.top()
        if state is None:
            return
        state.transitioned = True
        target = state.finished[0] if state.finished is not None and event.source != "acquire" else None
        if target is None and state.call is not None:
            target = state.call.span
        if target is None:
            return
        target.set_attribute("coordinator.transitioned", True)
        target.add_event("coordinator.transition", {
            "coordinator.pool": event.pool,
            "coordinator.events": list(event.events),
            "coordinator.active": event.active or "",
            "coordinator.exhausted": event.exhausted,
        })

    def _gen_ai(self, span: Span, pool: str | None, model: str | None) -> None:
        provider = self._provider_of(pool)
        if provider:
            span.set_attribute("gen_ai.provider.name", provider)
        if model:
            span.set_attribute("gen_ai.request.model", model)
