"""Layer 5: the drivers. ``_async/`` is written by hand; ``_sync/`` is generated from it by
``scripts/unasync.py``. ``io_async``/``io_sync`` hold what differs by nature (locks, sleep, listener,
one attempt of the caller's function); ``base`` what both share without I/O."""
