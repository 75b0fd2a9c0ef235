"""``python -m winnow``: the same command line as the ``winnow`` console script."""

from winnow.services.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
