"""Layer 6: the ``coordinator`` command line. Uses only the public API and ``coordinator.testing``."""
