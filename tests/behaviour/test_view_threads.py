"""Many threads on one coordinator: the local view's check-then-act must hold under any interleaving
(docs/design.md, "The local view"). Some threads keep answering quiet successes from the view while
others keep dropping its decision (each failure report does), so the window between "is this success
news?" and "answer it locally" is hit many times a second."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import coordinator as co
from tests.helpers import members

THREADS = 64
DROPPERS = 16
SECONDS = 3.0


def test_64_threads_on_one_coordinator_never_fail_a_report(redis_url: str) -> None:
    # Transient failures below the threshold cool nothing: they only count, and drop the decision.
    cfg = co.PoolConfig(name="p", members=members(3), cooldown=co.CooldownPolicy(transient_threshold=1000))
    coord = co.Coordinator(redis_url, [cfg], staleness=1, prefix=f"t{uuid.uuid4().hex[:10]}")
    pool = coord.pool("p")
    errors: list[BaseException] = []
    counts = [0] * THREADS
    stop = time.monotonic() + SECONDS

    def work(i: int) -> None:
        while time.monotonic() < stop:
            try:
                sel = pool.acquire()
                if i < DROPPERS:
                    pool.report_failure(sel, "transient")
                    pool.report_success(sel)  # resets the count, so the threshold is never reached
                else:
                    for _ in range(20):
                        pool.report_success(sel)
                counts[i] += 1
            except BaseException as exc:  # every error is the finding
                errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often, so a window between two lines is really hit
    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 30)
    finally:
        sys.setswitchinterval(old)
    coord.close()

    assert not errors, f"{len(errors)} errors in {sum(counts)} rounds, first: {errors[0]!r}"
