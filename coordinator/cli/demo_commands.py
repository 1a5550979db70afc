"""The ``demo`` and ``upstream`` subcommands."""

from __future__ import annotations

import os
import sys
from typing import Any

from coordinator.cli.args import positive_duration, positive_int
from coordinator.cli.registry import (
    EXIT_OK,
    REDIS_URL_ENV,
    CliError,
    arg,
    command,
)
from coordinator.cli.render import (
    _rich_console,
    span,
)
from coordinator.cli.session import Session
from coordinator.store.connect import parse_url


@command(
    "demo",
    "watch a fleet fail over: workers, a fake upstream, a live view and a summary",
    arg("--workers", type=positive_int, default=8, metavar="N", help="workers in the fleet (default: 8)"),
    arg("--duration", type=positive_duration, default=None, metavar="DURATION",
        help="how long the fleet runs (default: 10s; with --worker: until interrupted)"),
    arg("--worker", action="store_true",
        help="run one worker of a compose fleet on the config's first pool (needs --upstream)"),
    arg("--upstream", metavar="URL", help="with --worker: the fake upstream to call"),
    description="Starts a fake OpenAI-compatible upstream on loopback whose first account is out of quota, "
    "whose second starts answering 429 a third of the way in, and whose third is healthy, then runs a "
    "fleet of workers through the transport. On the embedded default (memory://) the workers are threads; "
    "with --redis URL they are OS processes sharing that Redis. Exit code 0 when no caller saw an error "
    "and every transition wrote exactly one event.",
)
def demo(session: Session) -> int:
    from coordinator.cli.demo import run_demo, run_worker_forever

    args = session.args
    if args.worker:
        if not args.upstream:
            raise CliError("demo --worker needs --upstream URL (the fake upstream the worker calls)")
        config = session.config
        if not config.pools:
            raise CliError(f"{args.config} defines no pools")
        return run_worker_forever(list(config.pools.values()), session.url, config.redis.prefix, args.upstream,
                                  args.duration, print)
    duration = args.duration if args.duration is not None else 10.0
    url = args.redis or os.environ.get(REDIS_URL_ENV) or None
    if url is not None and parse_url(url).kind == "memory":
        url = None
    live = None if session.json or not sys.stdout.isatty() else _DemoView()
    try:
        result = run_demo(url=url, workers=args.workers, duration=duration,
                          on_tick=live.update if live is not None else None)
    finally:
        if live is not None:
            live.stop()
    summary = {**result.__dict__, "ok": result.ok}
    if session.json:
        session.print_json(summary)
    else:
        print(_demo_summary(result))
    return EXIT_OK if result.ok else 1


def _demo_summary(r: Any) -> str:
    verdict = "OK" if r.ok else "PROBLEM"
    lines = [
        f"demo {verdict}: {r.workers} workers on {r.store}, {r.duration:.1f}s",
        f"  requests            {r.requests} ({r.requests_per_second:.0f}/s)",
        f"  caller errors       {r.errors} (expected 0)",
        f"  transitions         {r.transition_events} (as seen by the one worker that won each)",
        f"  events              {r.events}: {', '.join(r.event_types) or '-'}",
        f"  reached a cooling member  {r.requests_to_cooling_member} "
        "(requests already in flight when the fleet learned of a cooldown)",
        "  upstream requests   " + ", ".join(f"{k} {v}" for k, v in sorted(r.upstream_requests.items())),
        f"  active now          {r.active}",
    ]
    lines += [f"  error: {sample}" for sample in r.error_samples]
    return "\n".join(lines)


class _DemoView:
    """The live view: requests per second, the active member and the cooling ones."""

    def __init__(self) -> None:
        from rich.live import Live

        self._console = _rich_console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, tick: dict[str, Any]) -> None:
        from rich.table import Table

        title = f"coordinator demo  {tick['elapsed']:.1f}s / {tick['duration']:.0f}s"
        table = Table(title=title, title_justify="left")
        for name in ("member", "state", "until"):
            table.add_column(name)
        for member_id, cooling_until, parked, kind in tick["members"]:
            if parked:
                state, until = "parked", ""
            elif cooling_until:
                state, until = f"cooling ({kind})", f"{span(cooling_until - tick['now'])} left"
            else:
                state, until = "ready", ""
            marker = "* " if member_id == tick["active"] else "  "
            table.add_row(marker + member_id, state, until)
        table.caption = (f"{tick['requests']} requests  {tick['rps']:.0f}/s  errors {tick['errors']}  "
                         f"generation {tick['generation']}")
        self._live.update(table)

    def stop(self) -> None:
        self._live.stop()


@command(
    "upstream",
    "run the fake OpenAI/Anthropic-compatible upstream (for the compose demo and local tests)",
    arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"),
    arg("--port", type=int, default=8080, help="port (default: 8080)"),
    arg("--switch-after", type=positive_duration, default=60.0, metavar="DURATION",
        help="when the demo's second account starts answering 429 (default: 60s)"),
    description="Serves POST /v1/chat/completions and /v1/messages. Accounts are told apart by their API key: "
    "sk-fake-acct-1 is out of quota, sk-fake-acct-2 answers 429 after --switch-after, sk-fake-acct-3 is "
    "healthy; any other key gets 401. Runs until interrupted.",
)
def upstream(session: Session) -> int:
    import time as _time

    from coordinator.cli.demo import scenario_accounts, start_scenario
    from coordinator.testing import FakeUpstream

    args = session.args
    try:
        server = FakeUpstream(scenario_accounts(), host=args.host, port=args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    with server:
        start_scenario(server, args.switch_after)
        print(f"fake upstream listening on {server.url}", flush=True)
        while True:
            _time.sleep(3600)


