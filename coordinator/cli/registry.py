"""The ``coordinator`` command line: the operators' view of, and control over, the fleet's state.

A subcommand is one function decorated with ``@command(...)``; the decorator registers it in
``COMMANDS`` and ``build_parser()`` turns that registry into argparse subparsers.

Exit codes: 0 done; 2 misuse or nothing usable to work with (a bad config, URL, pool, member or
duration; Redis unreachable): one ``coordinator: error: ...`` line on stderr, nothing changed;
130 interrupted (except ``events --follow``, which Ctrl-C ends normally).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "coordinator.toml"
REDIS_URL_ENV = "COORDINATOR_REDIS_URL"
# An operator's command must answer at once when Redis is gone, not after the library's longer
# worker timeouts. The read timeout must stay above FOLLOW_BLOCK.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 5.0
# How long one XREAD waits; also how late a follow thread notices that it should stop.
FOLLOW_BLOCK = 1.0
_CLIENT_REPR = re.compile(r"<redis\.\S*\(.*\)>")
RICH_HINT = "the table view needs rich: pip install 'coordinator[cli]' (or add --json)"


class CliError(Exception):
    """Misuse found by the CLI itself; main() prints it as one line and exits 2."""


# -- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """The positional and keyword arguments of one ``ArgumentParser.add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


#: A subcommand: takes the invocation's ``Session`` (cli.session, a layer above), returns the exit code.
Handler = Callable[[Any], int]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    arguments: tuple[Arg, ...]
    run: Handler
    description: str = ""


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str, *arguments: Arg, description: str = "") -> Callable[[Handler], Handler]:
    """Registers the decorated function as the subcommand ``name`` taking ``arguments``."""

    def register(run: Handler) -> Handler:
        if name in COMMANDS:
            raise RuntimeError(f"subcommand {name!r} is registered twice")
        COMMANDS[name] = Command(name, summary, arguments, run, description or summary)
        return run

    return register


#: Options whose value may start with "-" (argparse would take ``--for -5s`` for two options).
VALUE_OPTIONS = ("--for", "--since")


def join_dash_values(argv: list[str]) -> list[str]:
    """``--for -5s`` as ``--for=-5s``, so the value reaches its type check and gets a clear message."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line in the CLI's own error format (argparse would print usage plus its own prefix).
        self.exit(EXIT_USAGE, f"coordinator: error: {message} (see '{self.prog} --help')\n")


def _add_global_options(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    # The same options are accepted before and after the subcommand. On subparsers they default to
    # SUPPRESS, so leaving them out there does not overwrite a value given before the subcommand.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if on_subcommand else value

    parser.add_argument(
        "--config", metavar="PATH", default=default(DEFAULT_CONFIG),
        help=f"the workers' coordinator.toml (default: ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--redis", metavar="URL", default=default(None),
        help=f"Redis URL; overrides ${REDIS_URL_ENV}, which overrides the config's [redis] url",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coordinator",
        description="Inspect and steer the fleet-wide failover state that coordinator keeps in Redis.",
    )
    _add_global_options(parser, on_subcommand=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.summary, description=cmd.description)
        for argument in cmd.arguments:
            sub.add_argument(*argument.flags, **argument.options)
        _add_global_options(sub, on_subcommand=True)
        sub.set_defaults(handler=cmd.run)
    return parser


