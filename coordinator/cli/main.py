"""The entry point of ``coordinator`` and ``python -m coordinator``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

import redis
from redis.exceptions import RedisClusterException

from coordinator import (
    CoordinatorError,
)
from coordinator.cli import demo_commands, observe_commands, operator  # importing them registers their subcommands
from coordinator.cli.registry import (
    COMMANDS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    build_parser,
    join_dash_values,
)
from coordinator.cli.session import Session

__all__ = ["COMMANDS", "build_parser", "demo_commands", "main", "observe_commands", "operator"]


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code (it never calls ``sys.exit`` itself)."""
    parser = build_parser()
    try:
        args = parser.parse_args(join_dash_values(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # --help, and usage errors (already printed)
        return _exit_code(exc.code)
    session = Session(args)
    try:
        return int(args.handler(session))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) is gone; stop quietly instead of a traceback at shutdown.
        _silence_stdout()
        return EXIT_OK
    except (CliError, CoordinatorError, redis.RedisError, RedisClusterException) as exc:
        return session.fail(exc)
    finally:
        session.close()


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that from raising too.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
