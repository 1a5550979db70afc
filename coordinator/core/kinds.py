"""The failure vocabulary: what a failed request can mean, and the record of one classified failure.

It sits at the bottom of the layers (docs/design.md, "Layers") because config, the exception tree,
the classifier, hooks and the store all speak it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FailureKind = Literal[
    "rate_limited",
    "quota_exhausted",
    "auth",
    "transient",
    "model_unavailable",
    "request",
    "content_policy",
    "context_length",
]
#: Kinds that cool a member (or, for model_unavailable, the pool); the others touch no state.
COOLING_KINDS = frozenset({"rate_limited", "quota_exhausted", "auth", "transient", "model_unavailable"})


@dataclass(frozen=True, kw_only=True)
class Failure:
    """One classified failure: what it means (``kind``) and the evidence it was read from."""

    kind: FailureKind
    #: Seconds the provider asked us to wait (already chosen among its headers), or None.
    retry_after: float | None = None
    status: int | None = None
    #: The most specific machine-readable cause the provider gave: error code, else error type.
    code: str | None = None
    message: str = field(default="", repr=False)
    #: The member did not answer in time (connect, headers, first token, a stalled stream): a silent
    #: route stays silent, so the call moves on at once instead of retrying it.
    timeout: bool = False

    @property
    def cools(self) -> bool:
        """True when this failure changes pool state; False for ones that re-raise unchanged."""
        return self.kind in COOLING_KINDS

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.code:
            details.append(self.code)
        if self.retry_after is not None:
            details.append(f"retry after {self.retry_after:g}s")
        return f"{self.kind} ({', '.join(details)})" if details else self.kind
