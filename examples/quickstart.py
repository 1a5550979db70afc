"""Quickstart: runs as written on the embedded memory:// backend (no Redis needed)."""

import coordinator as co

pool_cfg = co.PoolConfig(
    name="openai",
    members=[
        co.Member(id="acct-1", api_key_env="OPENAI_KEY_1"),
        co.Member(id="acct-2", api_key_env="OPENAI_KEY_2"),
        co.Member(id="acct-3", api_key_env="OPENAI_KEY_3"),
        co.Member(id="acct-4", api_key_env="OPENAI_KEY_4"),
    ],
    strategy="sticky",
)
coord = co.Coordinator("memory://", pools=[pool_cfg])  # a fleet uses "redis://host:6379/0"
pool = coord.pool("openai")

sel = pool.acquire()
print("using", sel.member.id, "under token", (sel.epoch, sel.generation))

# The provider said 429 with retry-after: 30 -> acct-1 cools for 30 s (Redis server time),
# and the whole fleet moves to acct-2 at once. Exactly one reporter sees transitioned=True.
result = pool.report_failure(sel, "rate_limited", retry_after=30.0)
print("transitioned:", result.transitioned, "-> active:", result.active)

sel = pool.acquire()
pool.report_success(sel)

# Operators: park a key for the rest of the day, rotate away from the active one.
pool.park("acct-3", seconds=None, reason="quota gone for today")
rotated = pool.rotate(reason="manual")  # parks acct-2 for the pool's rotate_for (10 min)
print("rotated away from", rotated.member, "-> active:", rotated.active)

snap = pool.snapshot()
for m in snap.members:
    state = "parked" if m.parked else ("cooling" if m.cooling_until else "ready")
    print(f"  {m.id:8} {state:8} {m.reason}")
print("active:", snap.active, "exhausted:", snap.exhausted)
for event in pool.events(limit=10):
    moved = f"{event.from_member} -> {event.to_member}" if event.from_member else ""
    print(f"  gen={event.generation} {event.type:9} {event.member or ''} {moved}")
