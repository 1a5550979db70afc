"""``co.OpenTelemetryHook`` on real Redis, collected with the OpenTelemetry SDK's in-memory exporter and
metric reader (test dependencies only: the hook itself uses nothing but the API)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from helpers import fast_policy, members
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import SecretStr

import coordinator as co

SECRET = "sk-otel-SECRET-0077"


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def hook(self, **kwargs: Any) -> Any:
        return co.OpenTelemetryHook(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider,
                                    **kwargs)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def answer(status: int) -> httpx.Response:
    headers = {"retry-after": "30"} if status == 429 else {}
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://upstream"))


def pools() -> list[co.PoolConfig]:
    return [
        co.PoolConfig(name="gpt", cooldown=fast_policy(rate_limited=30), members=[
            co.Member(id="k0", api_key=SecretStr(SECRET), model="gpt-4o"),
            co.Member(id="k1", api_key=SecretStr(SECRET + "b"), model="gpt-4o-mini"),
            *members(1, "m"),
        ]),
        co.PoolConfig(name="claude", members=members(2, "c"), cooldown=fast_policy(rate_limited=30)),
    ]


def coordinator(redis_url: str, hook: Any) -> co.Coordinator:
    return co.Coordinator(redis_url, pools(), prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0, hooks=[hook])


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def test_a_span_per_call_with_a_child_per_attempt(redis_url: str, otel: Otel) -> None:
    hook = otel.hook(provider={"gpt": "openai", "claude": "anthropic"})
    tracer = otel.tracer_provider.get_tracer("app")

    def fn(member: co.Member) -> Any:
        with tracer.start_as_current_span("http POST"):  # what an HTTP client instrumentation would make
            return answer(429) if member.id == "k0" else "ok"

    with coordinator(redis_url, hook) as coord, tracer.start_as_current_span("request handler") as outer:
        assert coord.call("gpt", fn) == "ok"

    spans = otel.finished()
    (call,) = by_name(spans, "coordinator.call")
    first, second = by_name(spans, "coordinator.attempt")
    http = by_name(spans, "http POST")
    assert call.parent is not None and call.parent.span_id == outer.get_span_context().span_id
    assert {a.parent.span_id for a in (first, second) if a.parent} == {call.context.span_id}
    # The spans fn makes nest under the attempt that ran them.
    assert [h.parent.span_id for h in http if h.parent] == [first.context.span_id, second.context.span_id]

    assert first.attributes is not None and second.attributes is not None and call.attributes is not None
    assert dict(first.attributes) == {
        "coordinator.pool": "gpt", "coordinator.member": "k0", "coordinator.attempt": 1,
        "coordinator.transitioned": True, "coordinator.next": "next_member", "coordinator.failure_kind": "rate_limited",
        "error.type": "rate_limited", "http.response.status_code": 429,
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
    }
    assert first.status.status_code == StatusCode.ERROR
    assert [e.name for e in first.events] == ["coordinator.transition"]
    assert first.events[0].attributes is not None
    assert list(first.events[0].attributes["coordinator.events"]) == ["failover"]
    assert first.events[0].attributes["coordinator.active"] == "k1"
    assert second.attributes["coordinator.member"] == "k1"
    assert second.attributes["coordinator.transitioned"] is False
    assert second.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert "error.type" not in second.attributes and second.status.status_code == StatusCode.UNSET
    assert dict(call.attributes) == {
        "coordinator.pool": "gpt", "coordinator.pools": ("gpt",), "coordinator.member": "k1",
        "coordinator.attempt": 2, "coordinator.transitioned": True,
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
    }
    # Attempts lie inside their call, in order.
    assert call.start_time is not None and call.end_time is not None
    assert first.start_time is not None and first.end_time is not None and second.start_time is not None
    assert call.start_time <= first.start_time <= first.end_time <= second.start_time <= call.end_time
    assert not any(SECRET in repr(dict(s.attributes or {})) for s in spans)


def test_a_failed_call_has_an_error_status_and_type(redis_url: str, otel: Otel) -> None:
    with coordinator(redis_url, otel.hook()) as coord:
        with pytest.raises(co.AllMembersFailedError):
            coord.call("claude", lambda m: answer(429))
        assert coord.call("gpt", lambda m: answer(400)).status_code == 400
    calls = by_name(otel.finished(), "coordinator.call")
    assert [c.status.status_code for c in calls] == [StatusCode.ERROR, StatusCode.ERROR]
    assert [(c.attributes or {}).get("error.type") for c in calls] == ["AllMembersFailedError", "request"]
    assert (calls[0].attributes or {}).get("coordinator.attempt") == 2


def test_a_chain_fallback_is_counted_and_traced(redis_url: str, otel: Otel) -> None:
    with coordinator(redis_url, otel.hook()) as coord:
        for member in ("k0", "k1", "m0"):
            coord.pool("gpt").park(member)
        assert coord.call(["gpt", "claude"], lambda m: "ok") == "ok"
    (call,) = by_name(otel.finished(), "coordinator.call")
    assert (call.attributes or {})["coordinator.pool"] == "gpt"
    assert (call.attributes or {})["coordinator.member"] == "c0"
    [(labels, point)] = otel.points("coordinator.fallbacks")
    assert labels == {"coordinator.from_pool": "gpt", "coordinator.pool": "claude"} and point.value == 1


def test_the_counters_as_otel_metrics(redis_url: str, otel: Otel) -> None:
    with coordinator(redis_url, otel.hook()) as coord:
        coord.call("gpt", lambda m: answer(429) if m.id == "k0" else "ok")
    attempts = {(a["coordinator.member"], a["coordinator.outcome"], a["coordinator.failure_kind"]): p.value
                for a, p in otel.points("coordinator.attempts")}
    assert attempts == {("k0", "error", "rate_limited"): 1, ("k1", "ok", "none"): 1}
    [(labels, point)] = otel.points("coordinator.transitions")
    assert labels == {"coordinator.pool": "gpt", "coordinator.transition.type": "failover"} and point.value == 1
    [(labels, point)] = otel.points("coordinator.call.duration")
    assert labels == {"coordinator.pool": "gpt", "coordinator.outcome": "ok"} and point.count == 1
    assert sum(p.count for _, p in otel.points("coordinator.attempt.duration")) == 2


def test_concurrent_async_calls_each_get_their_own_tree(redis_url: str, otel: Otel) -> None:
    hook = otel.hook()

    async def main() -> None:
        async with co.AsyncCoordinator(redis_url, pools(), prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0,
                                       hooks=[hook]) as coord:
            async def fn(member: co.Member) -> str:
                await asyncio.sleep(0.01)  # let the other calls' attempts interleave with this one
                return member.id

            assert await asyncio.gather(*(coord.call("claude", fn) for _ in range(5))) == ["c0"] * 5

    asyncio.run(main())
    spans = otel.finished()
    calls = {c.context.span_id for c in by_name(spans, "coordinator.call")}
    attempts = by_name(spans, "coordinator.attempt")
    assert len(calls) == 5 and len(attempts) == 5
    assert {a.parent.span_id for a in attempts if a.parent} == calls
