"""The demo (``make demo``) runs, checks every value and reports mismatches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from vzdask import ManifestStore, demo


def test_main_returns_0_and_prints_demo_ok(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("demo OK")
    assert "all 500 values of 5 variables match" in out
    # the chunk summary shows the inlined and missing chunks of precip
    precip_line = next(line for line in out.splitlines() if line.startswith("precip "))
    assert precip_line.split()[-4:-1] == ["5", "2", "1"]
    assert list(tmp_path.iterdir()) == []  # default: a temporary directory, removed


def test_main_keeps_files_in_output_dir(tmp_path, capsys):
    out_dir = tmp_path / "demo-output"
    assert demo.main(["--output", str(out_dir)]) == 0
    assert "demo OK" in capsys.readouterr().out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["coords.bin", "precip.bin", "temperature_2000.zlib", "temperature_2001.zlib"]
    assert (out_dir / "temperature_2000.zlib").read_bytes().startswith(demo.PACK_HEADER)
    # raw .bin: 5 virtual float64 chunks of 2*3*5 values, nothing else
    assert (out_dir / "precip.bin").stat().st_size == 5 * 30 * 8


def test_python_dash_m_exit_code_0(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vzdask.demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("demo OK")


@pytest.fixture
def demo_dataset(tmp_path):
    group, expected = demo.build_demo(tmp_path)
    ds = xr.open_zarr(ManifestStore(group), consolidated=False, zarr_format=3)
    yield group, expected, ds, tmp_path
    ds.close()


def test_missing_chunk_reads_as_fill_value(demo_dataset):
    _, _, ds, _ = demo_dataset
    block = ds["precip"].values[2:4, 3:6, 5:10]
    assert (block == demo.PRECIP_FILL).all()
    assert (ds["precip"].values[:2] != demo.PRECIP_FILL).all()


def test_check_dataset_reports_a_wrong_value(demo_dataset):
    _, expected, ds, _ = demo_dataset
    assert demo.check_dataset(ds, expected) == []
    expected = dict(expected, temperature=expected["temperature"].copy())
    expected["temperature"][3, 5, 9] += 1
    problems = demo.check_dataset(ds, expected)
    assert len(problems) == 1
    assert problems[0].startswith("temperature: 1 of 240 values differ; first at (3, 5, 9)")


def test_main_returns_1_on_mismatch(tmp_path, monkeypatch, capsys):
    build = demo.build_demo

    def build_with_wrong_expectation(directory: Path):
        group, expected = build(directory)
        expected["x"] = expected["x"] + np.where(np.arange(10) == 7, 0.25, 0.0)
        return group, expected

    monkeypatch.setattr(demo, "build_demo", build_with_wrong_expectation)
    assert demo.main([]) == 1
    captured = capsys.readouterr()
    assert "demo OK" not in captured.out
    assert "demo FAILED" in captured.err
    assert "x: 1 of 10 values differ; first at (7,)" in captured.err
