"""The ``alerts`` and ``metrics`` subcommands: only argument parsing lives here; each command's logic is
in ``coordinator.observe`` (``alerts.py``, ``exporter.py``)."""

from __future__ import annotations

import argparse

from coordinator.cli.args import duration_arg
from coordinator.cli.registry import EXIT_OK, CliError, arg, command
from coordinator.cli.render import dump_json
from coordinator.cli.session import Session


@command(
    "alerts",
    "POST every transition to a webhook, once fleet-wide, from any number of replicas",
    arg("--webhook", metavar="URL", help="where to POST (never printed: output shows scheme://host/*** only)"),
    arg("--format", choices=["json", "slack"], default="json",
        help="json: the event as 'events --json' prints it; slack: a readable {\"text\": ...} message"),
    arg("--group", default="alerts", help="consumer group shared by the replicas (default: alerts)"),
    arg("--name", metavar="NAME", help="this replica's consumer name (default: host-pid)"),
    arg("--from-start", action="store_true",
        help="a new group starts at the oldest kept event, not at the newest (no effect once it exists)"),
    arg("--claim-after", type=duration_arg, default=30.0, metavar="DURATION",
        help="take over another replica's entries unacknowledged this long (default: 30s)"),
    arg("--retry-max", type=duration_arg, default=30.0, metavar="DURATION",
        help="longest pause between two tries of one delivery (default: 30s)"),
    arg("--timeout", type=duration_arg, default=10.0, metavar="DURATION",
        help="how long one webhook request may take (default: 10s)"),
    arg("--status", action="store_true", help="print the group's state (pending, unread, replicas) and exit"),
    description="Reads every pool's event stream through a Redis consumer group and POSTs each transition to "
    "--webhook with an Idempotency-Key header (<prefix>:<pool>:<event id>). Run several replicas with the same "
    "--group: each event is delivered once; only a delivery in flight when a replica dies may be repeated, "
    "with the same key. Failed deliveries are retried with backoff until the webhook answers 2xx. Runs until "
    "SIGTERM or Ctrl-C (exit 0); --json prints one JSON object per line.",
)
def alerts(session: Session) -> int:
    from coordinator.observe.alerts import AlertOptions, alert_status, run_alerts, status_text

    args = session.args
    if args.status:
        state = alert_status(session.config, session.url, args.group)
        print(dump_json(state) if session.json else status_text(state), flush=True)
        return EXIT_OK
    if not args.webhook:
        raise CliError("alerts needs --webhook URL (or --status to show the group's state)")
    named = {"consumer": args.name} if args.name else {}
    options = AlertOptions(webhook=args.webhook, format=args.format, group=args.group, from_start=args.from_start,
                           claim_after=args.claim_after, retry_max=args.retry_max, timeout=args.timeout, **named)
    return run_alerts(session.config, session.url, options, json_lines=session.json,
                      out=lambda line: print(line, flush=True))


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


@command(
    "metrics",
    "serve the fleet's state as Prometheus metrics on /metrics (needs coordinator[prometheus])",
    arg("--port", type=port_arg, default=9464, help="port to listen on (default: 9464)"),
    arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 in a container)"),
    description="A fleet-level exporter: at every scrape it reads each pool's state from Redis and serves "
    "per-member state, seconds until recovery, each pool's generation and exhausted flag. Run one per fleet; "
    "workers count their own calls with co.PrometheusHook. Runs until SIGTERM or Ctrl-C (exit 0).",
)
def metrics(session: Session) -> int:
    try:
        from coordinator.observe.exporter import run_metrics
    except ImportError:
        raise CliError("the exporter needs prometheus_client: pip install 'coordinator[prometheus]'") from None
    args = session.args
    return run_metrics(session.config, session.url, port=args.port, host=args.host,
                       out=lambda line: print(line, flush=True))
