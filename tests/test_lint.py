"""The lint and type checks of ``pyproject.toml`` ([tool.ruff], [tool.mypy]) pass, so ``make test`` runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff():
    done = _run("ruff", "check", "vzdask", "tests", "benchmarks", "repro", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy():
    done = _run("mypy", "--no-incremental")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
