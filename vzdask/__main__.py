"""``python -m vzdask``: the ``vzdask`` command."""

from vzdask.cli import run

if __name__ == "__main__":
    run()
