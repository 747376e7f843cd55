"""The end-to-end demo (``make demo``): one real run as a subprocess, one in-process that must catch a mismatch."""

from __future__ import annotations

import subprocess
import sys

import icechunk
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

from vzdask import cli, demo


def test_python_dash_m_exits_0_and_prints_demo_ok(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vzdask.demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.rstrip().splitlines()
    assert lines[-1] == "demo OK"
    report = "\n".join(lines)
    for step in ("wrote 12 netCDF4 files", "started a LocalCluster (2 worker processes)",
                 "virtualized the files in parallel on the cluster", "persisted pr on the cluster",
                 "wrote kerchunk Parquet references", "wrote an Icechunk repository",
                 "read the Parquet references", "read the Icechunk repository", "total"):
        assert step in report, step
    assert "tas: 96 virtual/0 inlined; pr: 12 virtual/0 inlined" in report  # as parsed
    assert "pr: 0 virtual/12 inlined" in report  # after persist
    assert "221352 values of 5 variables, twice" in report
    assert "removed now" in report  # default: a temporary directory
    assert list(tmp_path.iterdir()) == []
    assert "WARN" not in result.stderr  # Icechunk's Rust warnings are quieted


@pytest.fixture
def corrupt_icechunk_read(monkeypatch):
    """Make the Icechunk read-back return one wrong value of ``tas``."""
    read = demo.read_icechunk

    def read_and_corrupt(path, prefix):
        ds = read(path, prefix)
        ds["tas"].values[5, 3, 7] += 0.5
        return ds

    monkeypatch.setattr(demo, "read_icechunk", read_and_corrupt)


def test_cli_demo_keeps_outputs_and_reports_a_mismatch(tmp_path, capsys, monkeypatch, corrupt_icechunk_read):
    monkeypatch.setenv("ICECHUNK_LOG", "error")  # main() would otherwise set it for this whole process
    out = tmp_path / "demo-output"
    assert cli.main(["demo", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "demo OK" not in captured.out
    assert f"outputs: {out}\n" in captured.out
    problems = captured.err.splitlines()
    assert problems[0] == "demo FAILED:"
    assert len(problems) == 2  # the Parquet read-back matched; the corrupted Icechunk one did not
    assert problems[1].startswith("  Icechunk: tas: 1 of 110592 values differ; first at (5, 3, 7)")

    # what was written: the files, Parquet references and an Icechunk repository
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"sample_{k:02d}.nc" for k in range(12)]
    assert (out / "refs.parq" / ".zmetadata").is_file()
    # tas stays virtual (a path per chunk); pr was persisted: inlined bytes, no path
    tas = pq.read_table(out / "refs.parq" / "tas" / "refs.0.parq")
    pr = pq.read_table(out / "refs.parq" / "pr" / "refs.0.parq")
    assert tas.num_rows == 96 and tas.column("path").null_count == 0 and tas.column("raw").null_count == 96
    assert pr.num_rows == 12 and pr.column("path").null_count == 12 and pr.column("raw").null_count == 0
    for name in ("time", "lat", "lon"):  # coordinates: inlined (InlinePolicy(coordinates=True))
        table = pq.read_table(out / "refs.parq" / name / "refs.0.parq")
        assert table.column("path").null_count == table.num_rows and table.column("raw").null_count == 0, name
    # the repository, opened here without the demo's reader, holds the originals' values
    prefix = demo.container_prefix(out / "data")
    with xr.open_mfdataset(sorted((out / "data").glob("*.nc")), combine="by_coords") as expected:
        expected = expected.load()
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(out / demo.ICECHUNK_NAME)),
                                    authorize_virtual_chunk_access=demo._credentials(prefix))
    assert [s.message for s in repo.ancestry(branch="main")][0] == "vzdask demo: 12 files"
    with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as got:
        xr.testing.assert_identical(got.load(), expected)


def test_compare_names_each_problem():
    time = np.array(["2000-01-01", "2000-01-02"], dtype="datetime64[ns]")
    expected = xr.Dataset(
        {"a": ("t", np.array([1.0, np.nan])), "b": ("t", np.array([1, 2], dtype="i4"))},
        coords={"t": time}, attrs={"title": "x", "source": "y"},
    )
    assert demo.compare(expected.copy(deep=True), expected, "same") == []  # NaN equals NaN

    got = expected.copy(deep=True)
    got["a"].values[1] = 3.0
    got["b"] = got["b"].astype("i8")
    got.attrs["title"] = "other"
    got = got.drop_vars("t").assign_coords(t=time + np.timedelta64(1, "D"))
    problems = demo.compare(got, expected, "here")
    assert problems == [
        "here: a: 1 of 2 values differ; first at (1,): expected np.float64(nan), got np.float64(3.0)",
        "here: b: expected int32 ('t',) (2,), got int64 ('t',) (2,)",
        f"here: t: 2 of 2 values differ; first at (0,): expected {time[0]!r}, got {time[0] + np.timedelta64(1, 'D')!r}",
        "here: attribute 'title': expected 'x', got 'other'",
    ]
    assert demo.compare(expected.drop_vars("b"), expected, "gone") == ["gone: b: missing"]
