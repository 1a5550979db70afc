"""Test helpers for projects that use coordinator, and for coordinator's own tests, benchmarks and demo.

- ``RedisServer``: a throwaway ``redis-server`` on a free loopback port, without persistence, with
  any extra server options (``RedisServer("--maxmemory", "1mb")``).
- ``free_port()``: a loopback TCP port nobody listens on.
- ``FakeUpstream``: a loopback OpenAI- and Anthropic-compatible provider whose accounts (told apart by
  their API key) behave as scripted: healthy, rate limited, quota exhausted, failing, broken streams.

    from coordinator.testing import FakeUpstream, RedisServer

    with RedisServer() as server, FakeUpstream({"sk-a": "rate_limited", "sk-b": "ok"}) as upstream:
        coord = coordinator.Coordinator(server.url, pools=[...])
        ...  # point the SDK at upstream.url
"""

from coordinator.testing.redis_server import RedisServer, free_port
from coordinator.testing.upstream import BEHAVIOURS, FakeUpstream

__all__ = ["BEHAVIOURS", "FakeUpstream", "RedisServer", "free_port"]
