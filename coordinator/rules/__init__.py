"""Layer 2: the pure rules (classification, provider hints, backoff, the call plan, the outage
decision, the local view, hook records). No I/O; imports only ``core``."""
