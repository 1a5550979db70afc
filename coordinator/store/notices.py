"""One change-notice subscriber per coordinator (per process), feeding every pool's local view.

Every script that writes a change some worker decides on publishes
``<pool> <epoch> <generation> <version> <active> <dirty>`` on the pool's own channel
``<prefix>:changes:{<pool>}`` (sharded pub/sub on Cluster, so only the pool's shard forwards it), and,
while ``legacy_notices`` is on, on the shared ``<prefix>:changes`` that earlier releases listen on. The
listener subscribes to the channels of this coordinator's pools only (and to the shared one while
``legacy_notices`` is on, to hear workers of the earlier release), and hands each notice to the pool's
view, which drops a decision the notice outdates, or (sticky pools) takes the notice's own decision
without asking Redis.

The listener keeps ``NoticeHealth.ok`` true while it is subscribed and its connection raised no error:
then views reuse decisions until a notice says otherwise (at most ``SAFETY_STALENESS``, which also
bounds a connection that died without an error: redis-py's pub/sub cannot reliably see a pong on a
TLS connection, so the listener does not ping). If the subscription is lost, views fall back to their
staleness bound; the listener says so once in the log, keeps trying to resubscribe, and after it
succeeds drops every view, since notices may have been missed meanwhile.

A subscription counts as made once Redis confirms it. A subscription Redis refuses (a user without
``+subscribe``) is one lost episode: one log line, and views are not dropped on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.rules.view import NoticeHealth

_log = logging.getLogger("coordinator")

#: How long one wait for a message lasts; also how late the listener notices it should stop.
POLL = 0.5
RETRY_MIN, RETRY_MAX = 0.1, 2.0


@dataclass(frozen=True)
class Notice:
    pool: str
    epoch: str
    generation: int
    version: int
    #: Sticky pools: the member to use from now on, and the members whose successes must be reported.
    active: str | None = None
    dirty: frozenset[str] = frozenset()


def parse_notice(data: Any) -> Notice | None:
    """A notice "<pool> <epoch> <generation> <version> [<active or -> <dirty or ->]"; None for anything else."""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    if not isinstance(data, str):
        return None
    parts = data.split(" ")
    if len(parts) not in (4, 6) or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    active = parts[4] if len(parts) == 6 and parts[4] != "-" else None
    dirty = frozenset(parts[5].split(",")) if len(parts) == 6 and parts[5] != "-" else frozenset()
    return Notice(parts[0], parts[1], int(parts[2]), int(parts[3]), active, dirty)


class _State:
    """What sync and async listeners share: dispatch and the lost/resumed bookkeeping."""

    def __init__(self, channels: Sequence[str], on_notice: Callable[[Notice], None],
                 on_resync: Callable[[], None], sharded: bool = False,
                 health: NoticeHealth | None = None) -> None:
        self.channels = list(channels)
        self.sharded = sharded
        self.on_notice = on_notice
        self.on_resync = on_resync
        self.health = health if health is not None else NoticeHealth()
        self.lost = False
        self.subscribed = threading.Event()

    @property
    def channel(self) -> str:
        return self.channels[0] if len(self.channels) == 1 else f"{self.channels[0]} (+{len(self.channels) - 1})"

    def message(self, message: Any) -> None:
        if not message:
            return
        if message.get("type") in ("subscribe", "ssubscribe"):
            if not self.subscribed.is_set():  # one confirmation per channel; the first one counts
                self.connected()
            return
        if message.get("type") not in ("message", "smessage"):
            return
        notice = parse_notice(message.get("data"))
        if notice is not None:
            self.on_notice(notice)

    def connected(self) -> None:
        if self.lost:
            self.lost = False
            _log.info("coordinator: change notices on %s resumed; local views re-read from Redis", self.channel)
        # Notices may have been missed before (or while) subscribing: nothing local is trusted.
        self.on_resync()
        self.health.ok = True
        self.subscribed.set()

    def failed(self, exc: BaseException) -> None:
        self.health.ok = False
        self.subscribed.clear()
        if not self.lost:
            self.lost = True
            _log.warning("coordinator: change notices on %s lost (%s); local views fall back to their "
                         "staleness bound until the subscription is back", self.channel, exc)

    def stopped(self) -> None:
        self.health.ok = False
        self.subscribed.clear()


class NoticeListener:
    """A daemon thread subscribed to the channels of a sync client."""

    def __init__(self, client: Any, channels: Sequence[str], on_notice: Callable[[Notice], None],
                 on_resync: Callable[[], None], sharded: bool = False, health: NoticeHealth | None = None) -> None:
        self._client = client
        self.state = _State(channels, on_notice, on_resync, sharded, health)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: The subscription the thread reads, for ``close`` to cut short a read waiting up to POLL.
        self._pubsub: Any = None

    def ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="coordinator-notices", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        delay = RETRY_MIN
        state = self.state
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._pubsub = self._client.pubsub()
                if self._stop.is_set():  # closed while it was being made: close() did not see it
                    break
                if state.sharded:
                    pubsub.ssubscribe(*state.channels)
                    read = pubsub.get_sharded_message
                else:
                    pubsub.subscribe(*state.channels)
                    read = pubsub.get_message
                while not self._stop.is_set():
                    state.message(read(timeout=POLL))
                    if state.subscribed.is_set():
                        delay = RETRY_MIN
            except Exception as exc:  # any failure of the subscription: fall back, retry
                if self._stop.is_set():
                    break
                state.failed(exc)
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        state.stopped()

    def close(self, timeout: float = POLL * 4) -> None:
        """Stops the thread, waiting at most ``timeout`` seconds (it is a daemon: it dies with the process)."""
        self._stop.set()
        connection = getattr(self._pubsub, "connection", None)
        if connection is not None:
            # Disconnecting ends the read the thread is waiting in (up to POLL) at once; the thread
            # sees the stop and leaves. Whatever the interrupted read raises is the thread's to ignore.
            with contextlib.suppress(Exception):
                connection.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.state.stopped()


class AsyncNoticeListener:
    """An asyncio task subscribed to the channels of an asyncio client; started on first use."""

    def __init__(self, client: Any, channels: Sequence[str], on_notice: Callable[[Notice], None],
                 on_resync: Callable[[], None], sharded: bool = False, health: NoticeHealth | None = None) -> None:
        self._client = client
        self.state = _State(channels, on_notice, on_resync, sharded, health)
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coordinator-notices")

    async def _run(self) -> None:
        delay = RETRY_MIN
        state = self.state
        while True:
            pubsub = None
            try:
                pubsub = self._client.pubsub()
                if state.sharded:
                    await pubsub.ssubscribe(*state.channels)
                    read = pubsub.get_sharded_message
                else:
                    await pubsub.subscribe(*state.channels)
                    read = pubsub.get_message
                while True:
                    state.message(await read(timeout=POLL))
                    _raise_if_cancelling()
                    if state.subscribed.is_set():
                        delay = RETRY_MIN
            except asyncio.CancelledError:
                state.stopped()
                raise
            except Exception as exc:
                state.failed(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    async def aclose(self, timeout: float = POLL * 4) -> None:
        """Cancels the task and waits for it at most ``timeout`` seconds."""
        task, self._task = self._task, None
        self.state.stopped()
        if task is None or task.done():
            return
        task.cancel()
        if task.get_loop() is not asyncio.get_running_loop():
            return  # its loop is gone or another: nothing to wait for here
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait({task}, timeout=timeout)


def _raise_if_cancelling() -> None:
    # redis-py's get_message may swallow a cancellation that meets its own timeout; the listener must
    # still stop, or aclose() and asyncio.run()'s shutdown wait for it forever.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
