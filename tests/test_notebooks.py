"""Every notebook in notebooks/ runs top to bottom with this environment's Python kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

#: A stdout line (or the start of one) each notebook must print: its point, reached.
KEY_OUTPUT = {
    "quickstart.ipynb": "references read back match the original files: True",
    "inline-vs-load.ipynb": "every chunk inline: True",
    "distributed-combine-and-write.ipynb": "Icechunk repository matches the original files: True",
}

PROBE = "import sys; print('KERNEL-PYTHON', sys.executable)"


def execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))  # which interpreter runs the kernel
    env = {k: v for k, v in os.environ.items() if k != "ICECHUNK_LOG"}  # the notebooks quiet Icechunk themselves
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)  # raises CellExecutionError at the first cell that fails
    return nb


def outputs(nb, output_type: str | None = None) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if output_type is None or o.output_type == output_type]


def stdout_text(nb) -> str:
    return "".join(o.text for o in outputs(nb, "stream") if o.name == "stdout")


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(KEY_OUTPUT)


@pytest.mark.parametrize("name", sorted(KEY_OUTPUT))
def test_notebook_runs(name, tmp_path):
    nb = execute(NOTEBOOKS / name, tmp_path)
    assert outputs(nb, "error") == []
    text = stdout_text(nb)
    probe = next(line for line in text.splitlines() if line.startswith("KERNEL-PYTHON "))
    assert os.path.samefile(probe.split(" ", 1)[1], sys.executable), probe
    assert KEY_OUTPUT[name] in text
    assert "WARN" not in "".join(o.text for o in outputs(nb, "stream"))  # no Icechunk (Rust) warnings shown
    if name == "inline-vs-load.ipynb":  # the two ways a chunk is written, side by side
        assert "1. loaded, not inlined   time/0 -> ['file://" in text
        assert "3. loaded and inlined    time/0 -> base64:" in text
    if name == "distributed-combine-and-write.ipynb":
        assert "[########################################] | 100% Completed" in text  # the progress bar
        assert any("image/png" in o.get("data", {}) for o in outputs(nb, "display_data"))  # the plot
    assert list(tmp_path.iterdir()) == []  # notebooks write to their own temporary directories
