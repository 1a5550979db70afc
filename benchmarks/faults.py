"""The faults of a misbehaving provider, as a new user meets them, measured with every coordinator
setting at its default: ``AsyncOpenAI(max_retries=0, timeout=30, http_client=httpx2.AsyncClient(
transport=coord.transport(["primary", "fallback"])))``, one member per pool, a loopback fake provider.

Per fault: what the caller got, how long it took, and what the provider saw (requests per member and
when), timed from the first request reaching the provider. All scenarios run at once; the whole run
takes about as long as the longest (~85 s). ``--fleet`` also runs the chain probe's multi-process
measurement with the real default cooldowns (8 processes, a 60 s outage, a throwaway redis-server).

    python benchmarks/faults.py [--json] [--fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai

import coordinator as co
from coordinator.testing.upstream import FakeUpstream

PRIMARY, FALLBACK = "sk-primary-0001", "sk-fallback-0002"


def _pools(**primary: Any) -> list[co.PoolConfig]:
    shared = {"continuation": primary["continuation"]} if "continuation" in primary else {}
    return [co.PoolConfig(name="primary", members=[co.Member(id="p1", api_key=PRIMARY)], **primary),
            co.PoolConfig(name="fallback", members=[co.Member(id="f1", api_key=FALLBACK, model="fallback-model")],
                          **shared)]


async def _ask_claude(client: anthropic.AsyncAnthropic) -> str:
    kwargs: dict[str, Any] = {"model": "claude-test", "max_tokens": 100,
                              "messages": [{"role": "user", "content": "hi"}]}
    tokens = 0
    async with client.messages.stream(**kwargs) as stream:
        async for _ in stream.text_stream:
            tokens += 1
        final = await stream.get_final_message()
        record = stream.response.extensions["coordinator"]
    text = final.content[0].text if final.content else ""
    whole = "whole" if text == "".join(f" t{i}" for i in range(60)) else "NOT whole"
    spliced = ", ".join(f"{c['after']['member']} -> {c['member']} ({c['prefill_chars']} chars prefilled)"
                        for c in record.get("continuations", []))
    return f"{tokens} text events, the {whole} answer once; {spliced or 'not continued'}"


async def _claude(client: openai.AsyncOpenAI, upstream: FakeUpstream, coord: Any) -> str:
    claude = anthropic.AsyncAnthropic(api_key="unused", base_url=upstream.url, max_retries=0, timeout=30,
                                      http_client=httpx2.AsyncClient(transport=coord.transport(
                                          ["primary", "fallback"])))
    return await _ask_claude(claude)


async def _continued_chat(client: openai.AsyncOpenAI, upstream: FakeUpstream, coord: Any) -> str:
    pieces = []
    stream = await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    record = stream.response.extensions["coordinator"]
    whole = "whole" if "".join(pieces) == "".join(f" t{i}" for i in range(60)) else "NOT whole"
    spliced = ", ".join(f"{c['after']['member']} -> {c['member']} ({c['prefill_chars']} chars prefilled)"
                        for c in record.get("continuations", []))
    return f"{len(pieces)} tokens, the {whole} answer once; {spliced or 'not continued'}"


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
        _scenario("stream cut after 40 of 60 tokens, continuation = prefill", "cut", stream=True, pieces=60,
                  events=40, primary={"continuation": "prefill"}, drive=_continued_chat),
        _scenario("Anthropic stream cut after 40 of 60 tokens (continuation auto)", "cut", stream=True, pieces=60,
                  events=42, drive=_claude),
        _scenario("Anthropic stream stalls after 20 tokens (continuation auto)", "stall", stream=True, pieces=60,
                  events=22, delay=40, drive=_claude),
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


def fleet() -> dict[str, Any]:
    """The chain probe with the real defaults: 8 processes, primary 503 for 60 s, then healthy."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from coordinator.testing.redis_server import RedisServer
    from tests.infrastructure.test_chain_probe import PROCESSES, run_fleet

    with RedisServer() as server:
        got = run_fleet(server.url, 60.0, 25.0, 1.0)
    start, backs = got["start"], got["backs"]
    return {"processes": PROCESSES, "outage_s": 60.0, "errors": got["errors"], "requests": got["requests"],
            "primary_during_outage": len(got["during"]),
            "probes_at_s": [round(t - start, 2) for t in got["probes"]],
            "back_on_primary_max_s": round(max(backs), 2),
            "back_on_primary_median_s": round(sorted(backs)[len(backs) // 2], 2),
            "recovered_events": got["events"].count("recovered")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fleet", action="store_true", help="also the 8-process chain probe (real defaults, ~90 s)")
    args = parser.parse_args()
    rows = asyncio.run(main())
    fleet_row = fleet() if args.fleet else None
    if args.json:
        print(json.dumps({"faults": rows, "fleet": fleet_row}, indent=2))
    else:
        print("| fault | caller got | time | primary requests (at s) | fallback requests (at s) |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['fault']} | {row['caller']} | {row['seconds']:.2f} s | {row['primary_requests']} "
                  f"{row['primary_at']} | {row['fallback_requests']} {row['fallback_at']} |")
        if fleet_row is not None:
            print()
            print(f"fleet: {fleet_row['processes']} processes, primary 503 for {fleet_row['outage_s']:g} s: "
                  f"{fleet_row['primary_during_outage']} primary requests during the outage (probes at "
                  f"+{', +'.join(f'{t:g}' for t in fleet_row['probes_at_s'])} s), {fleet_row['errors']} caller errors "
                  f"in {fleet_row['requests']} requests; every process back on the primary "
                  f"{fleet_row['back_on_primary_max_s']:g} s after its recovery (median "
                  f"{fleet_row['back_on_primary_median_s']:g} s), {fleet_row['recovered_events']} recovered event")
