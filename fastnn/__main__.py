"""``python -m fastnn``: the same commands as the ``fastnn`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
