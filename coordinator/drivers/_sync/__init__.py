# GENERATED from coordinator/drivers/_async/__init__.py by scripts/unasync.py: do not edit.
"""Drivers: ``_async`` is the hand-written copy, ``_sync`` is generated from it (see ``coordinator.drivers``)."""
