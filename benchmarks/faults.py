"""The faults of a misbehaving provider, as a new user meets them, measured with every coordinator
setting at its default: ``AsyncOpenAI(max_retries=0, timeout=30, http_client=httpx2.AsyncClient(
transport=coord.transport(["primary", "fallback"])))``, one member per pool, a loopback fake provider.

Per fault: what the caller got, how long it took, and what the provider saw (requests per member and
when), timed from the first request reaching the provider. All scenarios run at once; the whole run
takes about as long as the longest (~85 s).

    python benchmarks/faults.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai

import coordinator as co
from coordinator.testing.upstream import FakeUpstream

PRIMARY, FALLBACK = "sk-primary-0001", "sk-fallback-0002"


def _pools(**primary: Any) -> list[co.PoolConfig]:
    return [co.PoolConfig(name="primary", members=[co.Member(id="p1", api_key=PRIMARY)], **primary),
            co.PoolConfig(name="fallback", members=[co.Member(id="f1", api_key=FALLBACK, model="fallback-model")])]


async def _ask(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, int]:
    kwargs: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    if not stream:
        reply = await client.chat.completions.create(**kwargs)
        return f"answer from {reply.model}", 0
    tokens = 0
    model = ""
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        model = chunk.model
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
    return f"{tokens} tokens from {model}", tokens


async def _scenario(name: str, behaviour: str, *, stream: bool, pieces: int | None = None, delay: float = 0.0,
                    events: int = 0, retry_after: float = 1.0, primary: dict[str, Any] | None = None,
                    drive: Callable[..., Awaitable[str]] | None = None) -> dict[str, Any]:
    with FakeUpstream({PRIMARY: behaviour, FALLBACK: "ok"}, pieces=pieces) as upstream:
        upstream.set(PRIMARY, behaviour, retry_after=retry_after, delay=delay, events=events)
        async with co.AsyncCoordinator(f"memory://{uuid.uuid4().hex}", _pools(**(primary or {}))) as coord:
            client = openai.AsyncOpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, timeout=30,
                                        http_client=httpx2.AsyncClient(transport=coord.transport(
                                            ["primary", "fallback"])))
            started = time.monotonic()
            try:
                got = await drive(client, upstream, coord) if drive else (await _ask(client, stream))[0]
            except Exception as exc:
                got = f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}"
            ended = time.monotonic()
            # Times count from the first request reaching the provider: the SDK's first-call setup
            # (hundreds of milliseconds on a busy machine) is not the coordinator's.
            first = min([*upstream.times(PRIMARY), *upstream.times(FALLBACK)], default=started)
            took = ended - first
            seen = {member: [round(t - first, 2) for t in upstream.times(key)]
                    for member, key in (("primary", PRIMARY), ("fallback", FALLBACK))}
    return {"fault": name, "caller": got, "seconds": round(took, 2),
            "primary_requests": len(seen["primary"]), "fallback_requests": len(seen["fallback"]),
            "primary_at": seen["primary"][:12], "fallback_at": seen["fallback"][:12]}


async def _outage_then_healthy(client: openai.AsyncOpenAI, upstream: FakeUpstream, coord: Any) -> str:
    """503 for 60 s, then healthy; a request every 4 s until 20 s after recovery."""
    start = time.monotonic()
    back = None
    while time.monotonic() - start < 80:
        if time.monotonic() - start >= 60 and upstream.account(PRIMARY).behaviour != "ok":
            upstream.set(PRIMARY, "ok")
        reply = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=[])
        pool = reply.http_response.extensions["coordinator"]["pool"]
        if pool == "primary" and back is None and time.monotonic() - start >= 60:
            back = time.monotonic() - start - 60
        await asyncio.sleep(4)
    return f"back on the primary {back:.1f} s after its recovery" if back is not None else "never back on the primary"


async def main() -> list[dict[str, Any]]:
    return list(await asyncio.gather(
        _scenario("accepts, never answers (unary)", "silent", stream=False),
        _scenario("accepts, never answers (stream)", "silent", stream=True),
        _scenario("first token after 20 s (defaults)", "slow_first_token", stream=True, delay=20),
        _scenario("first token after 20 s, first_token = 5 s", "slow_first_token", stream=True, delay=20,
                  primary={"timeouts": co.Timeouts(first_token=5)}),
        _scenario("stream cut after 40 of 60 tokens", "cut", stream=True, pieces=60, events=40),
        _scenario("stream stalls 30 s after 20 tokens", "stall", stream=True, pieces=60, events=20, delay=40),
        _scenario("stream stalls after 20 tokens, idle = 5 s", "stall", stream=True, pieces=60, events=20,
                  delay=40, primary={"timeouts": co.Timeouts(idle=5)}),
        _scenario("one malformed event mid-stream", "malformed", stream=True, pieces=60, events=20),
        _scenario("in-band error event mid-stream", "error_event", stream=True, pieces=60, events=20),
        _scenario("400 context_length_exceeded, chain", "context_length", stream=False),
        _scenario("429 retry-after: 2, one-member primary", "first:1:rate_limited_retry_after", stream=False,
                  retry_after=2),
        _scenario("503 for 60 s then healthy, a request every 4 s", "unavailable", stream=False,
                  drive=_outage_then_healthy),
    ))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    rows = asyncio.run(main())
    if parser.parse_args().json:
        print(json.dumps(rows, indent=2))
    else:
        print("| fault | caller got | time | primary requests (at s) | fallback requests (at s) |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['fault']} | {row['caller']} | {row['seconds']:.2f} s | {row['primary_requests']} "
                  f"{row['primary_at']} | {row['fallback_requests']} {row['fallback_at']} |")
