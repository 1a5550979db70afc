"""``python -m coordinator`` and the ``coordinator`` console script (both run ``_cli.main``)."""

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
