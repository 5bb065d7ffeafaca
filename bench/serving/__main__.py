"""`python -m bench.serving`: see bench.serving.cli."""

from bench.serving.cli import main

if __name__ == "__main__":
    main()
