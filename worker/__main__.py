"""``python -m worker`` is the ``bmsreboot`` console script."""

from worker.cli import main

if __name__ == "__main__":
    main()
