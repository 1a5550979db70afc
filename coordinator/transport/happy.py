"""The transport's happy path (docs/design.md, "The local view"): the common request without the call
plan, for the sync and the async transport alike.

Most requests are one attempt on the member the local view names, answered by a success that changes
nothing in Redis. For such a request the transport does only what it must: the local selection, the
member's credential on the caller's request, the pool's header-phase timeouts, the inner call, and a
look at the status and the rate-limit headers. Anything else (an exception, a status >= 400, a spent
rate-limit window, an event stream to guard, a success Redis must hear about) is handed to the
generic path as the first attempt of its call: never sent again (``FailoverTransport`` hands it over,
``Caller._carry_on`` continues it). A request that cannot take this path (call options, a deadline,
hooks, a per-request choice of pools, a one-shot body, a member with more to set than its credential,
no local decision) goes to the generic path before anything is sent.

The caller's headers are read as httpx and httpx2 keep them (``Headers._list``: raw name, lower-case
name, value, all bytes), once, and copied, never parsed again; a headers object of another shape
takes the generic path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from coordinator.core.config import PoolConfig
from coordinator.core.types import Selection
from coordinator.rules.happy import first_pool
from coordinator.rules.hints import preemptive_cooldown
from coordinator.transport import limits
from coordinator.transport.routes import CREDENTIAL_HEADERS, POOLS_HEADER, TIMED_TYPES, Route, asks_for_stream, route

_POOLS = POOLS_HEADER.encode("latin-1")
#: Per HTTP library (httpx, httpx2): whether its ``Headers._list`` holds (raw name, lower-case name,
#: value) as this path reads and writes it; a release that keeps its headers otherwise takes the
#: generic path, which uses only the public API.
_LAYOUT: dict[str, bool] = {}


def _known_layout(lib: ModuleType) -> bool:
    known = _LAYOUT.get(lib.__name__)
    if known is None:
        probe = getattr(lib.Headers({"X-Probe": "v"}), "_list", None)
        known = _LAYOUT[lib.__name__] = probe == [(b"X-Probe", b"x-probe", b"v")]
    return known
#: The headers a member replaces (lower case, as ``Headers._list`` holds them), and the pools header.
_DROPPED = frozenset(name.encode("latin-1") for name in (*CREDENTIAL_HEADERS, POOLS_HEADER))


@dataclass(slots=True)
class Fast:
    """One request on the happy path: the attempt it sent, and what it changed in the caller's request."""

    request: Any
    lib: ModuleType
    body: bytes
    selection: Selection
    cfg: PoolConfig
    #: The caller's own headers and timeout extension, put back when the call returns.
    caller: Any
    sdk: Mapping[str, Any] | None
    #: The body-phase timeouts of a body that is no event stream (the only kind this path finishes).
    body_phase: dict[str, float | None]

    def restore(self) -> None:
        self.request.headers = self.caller


class HappyPath:
    """A transport's happy path, and what it needs that does not change per request."""

    def __init__(self, coordinator: Any, pools: Sequence[str], owners: dict[int, PoolConfig],
                 routes: dict[int, Route], options: Mapping[str, Any], deadline: float | None) -> None:
        self._coordinator = coordinator
        self._owners = owners
        self._routes = routes
        #: The first pool, when this transport's calls may skip the plan: no call options or deadline
        #: (the plan's business), and members that set nothing but their credential (``Route.plain``).
        self.name = first_pool(pools) if not options and deadline is None else None
        if self.name is not None:
            cfg = coordinator.pool_config(self.name)
            plain = all(self._route(member).plain for member in cfg.members)
            if cfg.timeouts.deadline is not None or not plain:
                self.name = None
        self._pool: Any = None
        #: Each member's credential header, name and value encoded as ``Headers.__setitem__`` would, by
        #: ``id(member)``, after the secret they were made of.
        self._values: dict[int, tuple[str, bytes, bytes]] = {}

    def _route(self, member: Any) -> Route:
        found = self._routes.get(id(member))
        cfg = self._owners[id(member)]
        if found is None or found.member is not member or found.pool is not cfg:
            found = self._routes[id(member)] = route(member, cfg)
        return found

    def begin(self, request: Any, lib: ModuleType) -> Fast | None:
        """Prepares the caller's request for the happy path's attempt (the member's credential, the
        header-phase timeouts) and returns what to finish it with; None, changing nothing, when the
        request takes the generic path."""
        if (self.name is None or "coordinator" in request.extensions or not isinstance(request.stream, lib.ByteStream)
                or not _known_layout(lib)):
            return None
        coordinator = self._coordinator
        if coordinator.hooks:
            return None
        caller = request.headers
        items = getattr(caller, "_list", None)
        if type(items) is not list:
            return None
        names = [item[1] for item in items]
        hits = _DROPPED.intersection(names)
        if _POOLS in hits:
            return None
        coordinator._enter()
        pool = self._pool
        if pool is None:
            pool = self._pool = coordinator.pool(self.name)
        selection = pool.local_selection()
        if selection is None:
            return None
        # From here on the request is this path's: every member of the pool is plain (``__init__``).
        member = selection.member
        found = self._route(member)
        cfg = found.pool
        body = request.read()
        headers = lib.Headers(caller)  # a copy of the caller's list, not a new parse
        secret = member.secret()
        if secret:
            known = self._values.get(id(member))
            if known is None or known[0] != secret:  # read every time: the environment may change
                value = f"Bearer {secret}" if found.bearer else secret
                known = self._values[id(member)] = (secret, found.auth.encode("utf-8"), value.encode("utf-8"))
            auth = known[1]
            if auth not in _DROPPED and auth in names:
                # A pool's own credential header (not one of CREDENTIAL_HEADERS) that the caller sent too:
                # the member's takes its place, as ``Headers.__setitem__`` on the generic path does.
                hits = hits | {auth}
            _set_credential(headers._list, names, hits, auth, known[2])
        elif hits:
            headers._list = [item for item in items if item[1] not in hits]
        request.headers = headers
        sdk = request.extensions.get("timeout")
        streaming = b'"stream"' in body and asks_for_stream(body)
        header, body_phase = limits.phases(sdk, cfg.timeouts, streaming)
        request.extensions["timeout"] = header
        return Fast(request, lib, body, selection, cfg, caller, sdk, body_phase)

    def settle(self, fast: Fast, response: Any) -> bool:
        """True when the attempt served and that is all: the caller's request has its headers back and
        the response says where it went. False: the generic path takes the attempt over."""
        if response.status_code >= 400:
            return False
        items = getattr(response.headers, "_list", None)
        if type(items) is not list:
            return False
        keys = [item[1] for item in items]
        if b"content-type" in keys and items[keys.index(b"content-type")][2].startswith(TIMED_TYPES):
            return False  # the guard's, or the idle limit's: the generic path's, which has them
        if b"remaining" in b"\n".join(keys) and preemptive_cooldown(response.headers) is not None:
            return False
        selection = fast.selection
        if not self._pool.quiet_success(selection):
            return False
        request = fast.request
        request.extensions["timeout"] = fast.body_phase
        request.headers = fast.caller
        name, member = fast.cfg.name, selection.member.id  # the pool ``prepare`` would name (``_Call.owners``)
        response.extensions = {
            **response.extensions,
            "coordinator": {"pool": name, "member": member, "attempts": 1, "tried": [{"pool": name, "member": member}],
                            "replayable": True},
        }
        return True


def _set_credential(items: list[tuple[bytes, bytes, bytes]], names: list[bytes], hits: frozenset[bytes],
                    auth: bytes, value: bytes) -> None:
    """What ``Headers.__delitem__`` of each credential header the caller sent and then
    ``Headers.__setitem__`` of the member's does, on the copied list: the member's header takes the
    place of the caller's first one of that name, or goes last."""
    entry = (auth, auth, value)
    if not hits:
        items.append(entry)
    elif len(hits) == 1 and auth in hits and names.count(auth) == 1:
        items[names.index(auth)] = entry  # the common case: the SDK's placeholder in the same header
    else:
        kept = [item for item in items if item[1] not in hits]
        if auth in hits:
            kept.insert(sum(1 for name in names[:names.index(auth)] if name not in hits), entry)
        else:
            kept.append(entry)
        items[:] = kept
