"""``python -m coordinator`` and the ``coordinator`` console script (both run ``coordinator.cli.main.main``)."""

from coordinator.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
