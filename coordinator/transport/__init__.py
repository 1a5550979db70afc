"""Layer 4: the httpx/httpx2 transport. Depends on a small protocol of what it needs from a
coordinator (``transport.failover.Caller``), never on the coordinator classes."""
