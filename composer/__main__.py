"""``python -m composer``: the same command line as ``proxy-compose``."""

from composer.cli import main

if __name__ == "__main__":
    main()
