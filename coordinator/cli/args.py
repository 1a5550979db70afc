"""Argument types of the CLI: each turns a word into a value or raises one clear argparse error."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime

from coordinator import (
    parse_duration,
)

# -- argument types ----------------------------------------------------------------------------------


#: The longest ``park --for`` / ``rotate --for`` the CLI takes: a park longer than a year is a park
#: until unparked (leave ``--for`` out), and a typo such as ``99999999h`` must not be applied silently.
MAX_PARK_SECONDS = 366 * 86400
MAX_PARK_TEXT = "366d"


def duration_arg(text: str) -> float:
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: a duration cannot be negative (e.g. 5s, 2h)")
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than 0")
    if seconds > MAX_PARK_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: at most {MAX_PARK_TEXT}; leave --for out to park until unparked"
        )
    return seconds


@dataclass(frozen=True)
class Since:
    """``--since``: either a duration back from Redis' clock, or an absolute time."""

    ago: float | None = None
    at: float | None = None


def since_arg(text: str) -> Since:
    try:
        return Since(ago=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use a duration back from now like 10m or 2h, "
            "or an ISO time like 2025-01-31T14:00:00Z"
        ) from None
    # A time without an offset is this machine's local time, as Python reads it.
    return Since(at=moment.timestamp())


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must not be negative")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256, not {value}")
    return value


def positive_duration(text: str) -> float:
    seconds = duration_arg(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero: {text!r}")
    return seconds


