"""Drivers: ``_async`` is the hand-written copy, ``_sync`` is generated from it (see ``coordinator.drivers``)."""
