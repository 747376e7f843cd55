"""The ``vzdask`` console script, run as a subprocess from the virtual environment's ``bin``.

Every output is read back by an independent reader (fsspec's
ReferenceFileSystem, Icechunk) and compared with ``xr.open_mfdataset`` of the
original netCDF4 files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import fsspec
import icechunk
import netCDF4
import numpy as np
import pytest
import xarray as xr
from fsspec.implementations.reference import LazyReferenceMapper

VZDASK = Path(sys.executable).parent / "vzdask"
N_FILES, NT, NX = 3, 4, 40
INLINE_THRESHOLD = 300  # above every compressed tas chunk (~170 B), below every raw pr chunk (640 B)


def run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the installed console script; Icechunk's log filter is left to the CLI."""
    environ = {k: v for k, v in os.environ.items() if k != "ICECHUNK_LOG"}
    environ.update(env or {})
    return subprocess.run([str(VZDASK), *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=environ)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def summary(stdout: str) -> dict[str, str]:
    """``virtualize``'s report as ``{"files": "3", "chunks": "...", ...}``."""
    return {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in stdout.splitlines() if line.strip()}


def write_files(directory: Path) -> list[Path]:
    """Three netCDF4 files of 4 time steps: zlib ``tas`` in small chunks, raw ``pr`` in one chunk per file."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(N_FILES):
        rng = np.random.default_rng(k)
        path = directory / f"part_{k}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.title = "cli test"
            nc.createDimension("time", None)
            nc.createDimension("x", NX)
            t = nc.createVariable("time", "f8", ("time",))
            t.units = "days since 2000-01-01"
            t[:] = np.arange(k * NT, (k + 1) * NT)
            x = nc.createVariable("x", "f4", ("x",))
            x[:] = np.arange(NX) * 0.5
            tas = nc.createVariable("tas", "f4", ("time", "x"), zlib=True, shuffle=True, chunksizes=(2, 20))
            tas.units = "K"
            tas[:] = rng.normal(280, 5, (NT, NX)).astype("f4")
            pr = nc.createVariable("pr", "f4", ("time", "x"), chunksizes=(NT, NX))
            pr[:] = rng.gamma(1.0, 2.0, (NT, NX)).astype("f4")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    return write_files(tmp_path_factory.mktemp("cli-data"))


@pytest.fixture(scope="module")
def original(files) -> xr.Dataset:
    with xr.open_mfdataset(files, combine="by_coords", engine="netcdf4") as ds:
        return ds.load()


@pytest.fixture(scope="module")
def outputs(files, tmp_path_factory):
    """One run per output format, shared by the info/validate tests: ``{fmt: (path, stdout, stderr)}``."""
    out = tmp_path_factory.mktemp("cli-out")
    shuffled = [files[2], files[0], files[1]]  # by_coords (the default) sorts them by time
    made = {}
    for fmt, name, extra in (("json", "refs.json", []), ("parquet", "refs.parq", ["--concat-dim", "time"]),
                             ("icechunk", "repo", [])):
        inputs = files if extra else shuffled
        result = run("virtualize", *inputs, "-o", out / name, *extra)
        made[fmt] = (out / name, ok(result), result.stderr)
    return made


def read_kerchunk(path: Path) -> xr.Dataset:
    """fsspec's ReferenceFileSystem (JSON or Parquet) + zarr v2 through xarray."""
    import pandas as pd

    if path.is_dir():  # Parquet: fsspec's mapper with pyarrow; pandas 3 NaN-for-null workaround
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the option is deprecated, and still needed with fsspec 2026.9
            with pd.option_context("future.infer_string", False):
                fo = LazyReferenceMapper(str(path), fs=fsspec.filesystem("file"), engine="pyarrow")
                return _open_refs(fo)
    return _open_refs(str(path))


def _open_refs(fo) -> xr.Dataset:
    fs = fsspec.filesystem("reference", fo=fo)
    with xr.open_dataset(fs.get_mapper(""), engine="zarr",
                         backend_kwargs={"consolidated": False, "zarr_format": 2}) as ds:
        return ds.load()


def read_icechunk(path: Path, data_dir: Path) -> xr.Dataset:
    prefix = f"file://{data_dir}/"
    credentials = icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)),
                                    authorize_virtual_chunk_access=credentials)
    with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as ds:
        return ds.load()


def kerchunk_refs(path: Path) -> dict:
    return json.loads(path.read_text())["refs"]


# --------------------------------------------------------------------------- #
# virtualize
# --------------------------------------------------------------------------- #
def test_virtualize_json_by_coords(outputs, original, files):
    path, stdout, _ = outputs["json"]
    report = summary(stdout)
    assert report["files"] == "3"
    assert report["variables"] == "4 (2 virtual)"
    # tas 12 + pr 3 + x (a reference) virtual; time (loaded, decoded from the files) written inline
    assert report["chunks"] == "16 virtual, 1 inlined, 0 missing"
    assert report["output"] == f"{path} (json)"
    xr.testing.assert_identical(read_kerchunk(path), original)  # time sorted although the inputs were not
    refs = kerchunk_refs(path)
    assert refs["tas/0.0"][0] == f"file://{files[0]}"  # absolute file:// urls
    assert isinstance(refs["pr/2.0"], list) and refs["pr/2.0"][0].endswith("part_2.nc")


def test_virtualize_parquet_concat_dim(outputs, original, files, tmp_path):
    path, stdout, _ = outputs["parquet"]
    assert summary(stdout)["output"] == f"{path} (parquet)"
    assert (path / ".zmetadata").exists() and (path / "tas" / "refs.0.parq").exists()
    xr.testing.assert_identical(read_kerchunk(path), original)
    # --concat-dim keeps the given order: reversed files give reversed blocks of time
    reverse = tmp_path / "reverse.parq"
    ok(run("virtualize", *files[::-1], "-o", reverse, "--concat-dim", "time"))
    got = read_kerchunk(reverse)
    expected = xr.concat([original.isel(time=slice(k * NT, (k + 1) * NT)) for k in reversed(range(N_FILES))], "time")
    xr.testing.assert_identical(got, expected)


def test_virtualize_icechunk(outputs, original, files):
    path, stdout, _ = outputs["icechunk"]
    assert summary(stdout)["output"] == f"{path} (icechunk)"
    got = read_icechunk(path, files[0].parent)
    xr.testing.assert_identical(got, original)


def test_icechunk_warnings_are_quiet_unless_debug(outputs, files, tmp_path):
    assert outputs["icechunk"][2] == ""
    loud = run("--debug", "virtualize", *files, "-o", tmp_path / "loud")
    ok(loud)
    assert "WARN" in loud.stderr  # what the CLI hides: Icechunk's Rust warnings about local storage


def test_virtualize_icechunk_refuses_a_non_empty_directory(files, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = run("virtualize", *files, "-o", target)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {target} exists and is not an empty directory; choose a new directory for the Icechunk repository"
    ]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_inline_threshold(files, tmp_path, original):
    path = tmp_path / "inline.json"
    report = summary(ok(run("virtualize", *files, "-o", path, "--inline-threshold", INLINE_THRESHOLD)))
    assert report["chunks"] == "3 virtual, 14 inlined, 0 missing"  # tas 12 + x (160 B) + time; pr referenced
    assert report["referenced"] == "1.9 KiB"  # the three 640-byte pr chunks, and only them
    refs = kerchunk_refs(path)
    tas = [v for k, v in refs.items() if k.startswith("tas/") and not k.startswith("tas/.")]
    pr = [v for k, v in refs.items() if k.startswith("pr/") and not k.startswith("pr/.")]
    assert len(tas) == 12 and all(isinstance(v, str) and v.startswith("base64:") for v in tas)
    assert len(pr) == 3 and all(isinstance(v, list) and v[2] == NT * NX * 4 for v in pr)
    xr.testing.assert_identical(read_kerchunk(path), original)


def test_inline_var_with_progress_on_stderr(files, tmp_path, original):
    path = tmp_path / "inline-var.json"
    result = run("virtualize", *files, "-o", path, "--inline-var", "pr", "--progress")
    report = summary(ok(result))
    assert list(report) == ["files", "variables", "chunks", "referenced", "output", "time"]  # nothing else on stdout
    assert "100% Completed" in result.stderr
    assert report["chunks"] == "13 virtual, 4 inlined, 0 missing"  # pr 3 + time inlined; tas 12 + x referenced
    refs = kerchunk_refs(path)
    assert all(refs[f"pr/{k}.0"].startswith("base64:") for k in range(N_FILES))
    assert isinstance(refs["tas/0.0"], list)
    xr.testing.assert_identical(read_kerchunk(path), original)


def test_load_var(files, tmp_path, original):
    # by coordinates: the dimension coordinates must be loaded; pr is loaded too -> written inline
    path = tmp_path / "load.json"
    report = summary(ok(run("virtualize", *files, "-o", path, "--load-var", "time", "--load-var", "x",
                            "--load-var", "pr")))
    assert report["variables"] == "4 (1 virtual)"
    refs = kerchunk_refs(path)
    assert all(isinstance(v, str) and v.startswith("base64:")
               for k, v in refs.items() if k.startswith("pr/") and not k.startswith("pr/."))
    xr.testing.assert_identical(read_kerchunk(path), original)
    # nested: only time loaded, x stays a virtual reference into the first file
    path = tmp_path / "load-nested.json"
    report = summary(ok(run("virtualize", *files, "-o", path, "--concat-dim", "time", "--load-var", "time")))
    assert report["variables"] == "4 (3 virtual)"
    x_ref = kerchunk_refs(path)["x/0"]
    assert isinstance(x_ref, list) and x_ref[0].endswith("part_0.nc") and x_ref[2] == NX * 4
    xr.testing.assert_identical(read_kerchunk(path), original)


# --------------------------------------------------------------------------- #
# info
# --------------------------------------------------------------------------- #
def test_info_on_json_and_parquet(outputs):
    for fmt in ("json", "parquet"):
        path, _, _ = outputs[fmt]
        lines = ok(run("info", path)).splitlines()
        assert lines[0] == f"reference set {path}"
        tas = next(line for line in lines if line.strip().startswith("tas:"))
        assert "float32 (12, 40) dims=(time,x) chunks=(2, 20)" in tas
        assert "codecs=[bytes, numcodecs.shuffle, numcodecs.zlib]" in tas
        assert tas.endswith("virtual=12 inlined=0 missing=0")
        pr = next(line for line in lines if line.strip().startswith("pr:"))
        assert pr.endswith("virtual=3 inlined=0 missing=0")
        assert lines[-1] == "files referenced: 3"


def test_info_on_icechunk(outputs):
    path, _, _ = outputs["icechunk"]
    result = run("info", path)
    lines = ok(result).splitlines()
    assert result.stderr == ""
    assert lines[0].startswith(f"icechunk repository {path} (branch main, snapshot ")
    tas = next(line for line in lines if line.strip().startswith("tas:"))
    assert "float32 (12, 40) chunks=(2, 20)" in tas and tas.endswith("initialized=12/12")
    assert lines[-1] == "files referenced: 3"


# --------------------------------------------------------------------------- #
# validate
# --------------------------------------------------------------------------- #
def test_validate_ok_with_decode_sample(outputs):
    for fmt in ("json", "parquet"):
        path, _, _ = outputs[fmt]
        out = ok(run("validate", path, "--decode-sample", "5"))
        # 15 data chunks + x's chunk (x is loaded but written as its reference into the first file)
        assert out.strip() == "ok: 16 virtual references in 3 files checked, 1 inlined chunks decoded, 5 chunks decoded"


def test_validate_finds_truncated_missing_and_corrupt_files(files, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(files[0].parent, data)
    refs = tmp_path / "refs.json"
    ok(run("virtualize", data / "*.nc", "-o", refs))
    url, offset, length = kerchunk_refs(refs)["tas/0.1"]
    with open(url[len("file://"):], "r+b") as f:  # same size, garbage in one zlib chunk of part_0
        f.seek(offset)
        f.write(b"\xff" * length)
    truncated = data / "part_1.nc"
    os.truncate(truncated, truncated.stat().st_size - 200)  # cuts into part_1's last chunk(s)
    (data / "part_2.nc").unlink()
    url1, url2 = f"file://{data}/part_1.nc", f"file://{data}/part_2.nc"

    result = run("validate", refs, "--decode-sample", "100")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    past_end = [line for line in lines if "bytes up to" in line]
    assert past_end and all(line.endswith(f"but {url1} has {truncated.stat().st_size} bytes") for line in past_end)
    missing = [line for line in lines if url2 in line]
    # all 5 virtual chunks of part_2 (4 tas + 1 pr), one line per array
    assert sorted(m.split(":")[0] for m in missing) == ["pr chunk 2.0", "tas chunk 4.0 (+3 more)"]
    assert all("cannot be read" in m for m in missing)
    # decoding every chunk not already bad finds the corrupt one (its size looks fine)
    corrupt = [line for line in lines if "cannot be read and decoded" in line]
    assert [line.split(":")[0] for line in corrupt] == ["tas chunk 0.1"]
    assert len(lines) == len(past_end) + 2 + 1 + 1
    n_bad = len(past_end) + 5
    good = 17 - n_bad - 1  # 17 chunks hold bytes (16 virtual + the inlined time)
    assert lines[-1] == (f"{n_bad + 1} bad reference(s) among 17 checked (16 virtual in 3 file(s), 1 inlined), "
                         f"{good} chunks decoded without error")

    capped = run("validate", refs, "--max-report", "1")  # without decoding the corrupt chunk goes unnoticed
    assert capped.returncode == 1
    assert capped.stdout.strip().splitlines() == [
        past_end[0],
        f"... {len(past_end) + 1} more problem(s) not listed (--max-report 1)",
        f"{n_bad} bad reference(s) among 17 checked (16 virtual in 3 file(s), 1 inlined)",
    ]


def test_validate_decodes_every_inlined_chunk(files, tmp_path):
    refs = tmp_path / "inlined.json"
    ok(run("virtualize", *files, "-o", refs, "--inline-var", "tas"))
    document = json.loads(refs.read_text())
    assert document["refs"]["tas/1.1"].startswith("base64:")
    document["refs"]["tas/1.1"] = "base64:" + base64.b64encode(b"not a zlib stream at all").decode()
    refs.write_text(json.dumps(document))
    result = run("validate", refs)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("tas chunk 1.1: inlined chunk cannot be decoded: ")
    assert lines[-1] == "1 bad reference(s) among 17 checked (4 virtual in 3 file(s), 13 inlined)"  # pr 3, x 1


def test_an_uncompressed_inlined_chunk_of_the_wrong_size_is_named(files, tmp_path):
    refs = tmp_path / "short.json"
    ok(run("virtualize", *files, "-o", refs, "--inline-var", "pr"))
    document = json.loads(refs.read_text())
    raw = base64.b64decode(document["refs"]["pr/1.0"][len("base64:"):])
    document["refs"]["pr/1.0"] = "base64:" + base64.b64encode(raw[:-4]).decode()
    refs.write_text(json.dumps(document))
    for command in (["validate", refs], ["info", refs]):
        result = run(*command)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: ParseError: file://{refs}: variable 'pr': inlined chunk 1.0 holds {NT * NX * 4 - 4} bytes, "
            f"but an uncompressed chunk of shape ({NT}, {NX}) and dtype float32 takes {NT * NX * 4} bytes")


def test_validate_refuses_an_icechunk_repository(outputs):
    path, _, _ = outputs["icechunk"]
    result = run("validate", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path} is an Icechunk repository")


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "error: vzdask: argument command: invalid choice: 'bogus'"),
        (["virtualize", "a.nc"], "error: vzdask virtualize: the following arguments are required: -o/--output"),
        (["virtualize", "a.nc", "-o", "x", "--format", "xml"],
         "error: vzdask virtualize: argument --format: invalid choice: 'xml'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message, tmp_path):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message)


def test_failed_work_exits_1_with_one_line(tmp_path):
    result = run("virtualize", tmp_path / "nope.nc", "-o", tmp_path / "out.json")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: FileOpenError: failed to open {tmp_path}/nope.nc: FileNotFoundError")
    assert not (tmp_path / "out.json").exists()

    result = run("virtualize", tmp_path / "none*.nc", "-o", tmp_path / "out.json")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: FileNotFoundError: no files match '{tmp_path}/none*.nc'"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    command = ["info", tmp_path / "missing.json"]
    args = ["--debug", *command] if where == "before" else [*command, "--debug"]
    result = run(*args)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("FileNotFoundError: cannot open file://")


# --------------------------------------------------------------------------- #
# the command as a tool among others (issue 18, item 8)
# --------------------------------------------------------------------------- #
def test_processes_scheduler_returns_when_piped(files, tmp_path, original):
    # capture_output reads stdout to its end: a worker left holding the pipe made this hang forever
    out = tmp_path / "p.json"
    result = run("virtualize", *files, "-o", out, "--scheduler", "processes", "--workers", "2")
    assert summary(ok(result))["files"] == "3"
    xr.testing.assert_identical(read_kerchunk(out), original)


def test_a_closed_pipe_ends_quietly(outputs):
    path = outputs["json"][0]
    with subprocess.Popen([str(VZDASK), "info", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # `| head -0`: the reader is gone before the report is written
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 0, stderr
    assert stderr == ""


def test_output_errors_name_the_output_not_a_temporary_file(files):
    result = run("virtualize", files[0], "-o", "/proc/vzdask-test.json")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot write /proc/vzdask-test.json" in line
    assert line.index("/proc/vzdask-test.json") < line.index(".tmp-")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["--workers", "two"], "argument --workers: expected a whole number, got 'two'"),
    ],
)
def test_workers_must_be_positive(files, tmp_path, extra, message):
    result = run("virtualize", files[0], "-o", tmp_path / "x.json", *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_an_output_name_that_says_no_format_is_refused(files, tmp_path):
    result = run("virtualize", files[0], "-o", tmp_path / "x.txt")
    assert result.returncode == 2
    assert "cannot tell the output format from the name" in result.stderr and "'.txt'" in result.stderr
    assert not (tmp_path / "x.txt").exists()
    # --format says it; a name without a suffix (or .icechunk) is an Icechunk repository
    ok(run("virtualize", *files, "-o", tmp_path / "x.txt", "--format", "json"))
    assert json.loads((tmp_path / "x.txt").read_text())["version"] == 1
    ok(run("virtualize", *files, "-o", tmp_path / "repo.icechunk"))
    assert (tmp_path / "repo.icechunk" / "repo").exists()


def test_each_glob_is_expanded(files, tmp_path, original):
    directory = files[0].parent
    out = tmp_path / "globs.json"
    stdout = ok(run("virtualize", directory / "part_[0].nc", directory / "part_[12].nc", "-o", out))
    assert summary(stdout)["files"] == "3"
    xr.testing.assert_identical(read_kerchunk(out), original)


def test_summary_counts_agree_with_info(files, tmp_path):
    out = tmp_path / "counts.json"
    stdout = ok(run("virtualize", *files, "-o", out, "--inline-threshold", str(INLINE_THRESHOLD)))
    totals = {"virtual": 0, "inlined": 0, "missing": 0}
    for line in ok(run("info", out)).splitlines():
        for kind in totals:
            if f" {kind}=" in line:
                totals[kind] += int(line.split(f" {kind}=")[1].split()[0])
    assert summary(stdout)["chunks"] == (
        f"{totals['virtual']} virtual, {totals['inlined']} inlined, {totals['missing']} missing")
    assert totals["inlined"] > 0  # tas's compressed chunks and the loaded time coordinate


def test_an_unknown_inline_var_is_an_error(files, tmp_path):
    result = run("virtualize", *files, "-o", tmp_path / "x.json", "--inline-var", "tass")
    assert result.returncode == 1
    assert "names 'tass', which is in none of the files" in result.stderr
    assert "'tas'" in result.stderr  # the names that are there
    assert not (tmp_path / "x.json").exists()


def test_inline_policy_names_unknown_variables(files):
    import vzdask

    with pytest.raises(ValueError, match=rf"names 'nope', which is not in {files[0]}"):
        vzdask.open_virtual_dataset(str(files[0]), inline=vzdask.InlinePolicy(variables=["pr", "nope"]))
    ds = vzdask.open_virtual_dataset(str(files[0]), inline=vzdask.InlinePolicy(variables=["pr"]))
    assert ds["pr"].data.manifest.count() == {"virtual": 0, "inlined": 1, "missing": 0}


@pytest.mark.parametrize("command", [[str(VZDASK)], [sys.executable, "-m", "vzdask"]])
def test_version_and_python_dash_m(command):
    from importlib.metadata import version

    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vzdask {version('vzdask')}"
