"""ManifestArray as a dask collection: compute, persist, names, graphs, the dask view.

Every array here is written by zarr-python into a LocalStore; the manifests
point at zarr's own chunk files (or a packed copy of them at offsets), inline
some chunks' bytes and leave some out, and each test checks the values read
against the numpy source and against ``xr.open_zarr(ManifestStore(...))``.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from vzdask import ChunkManifest, ManifestArray, create_array_metadata
from vzdask.chunk_tasks import DEFAULT_TASK_BYTES
from vzdask.manifests.manifest import INLINED, MISSING

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #

SHAPE, CHUNKS = (7, 9), (2, 4)  # a 4 x 3 chunk grid with partial edge chunks on both axes


def source(kind: str, seed: int = 0) -> tuple[np.ndarray, object]:
    """(values of shape SHAPE, fill value) for each dtype; ``seed`` shifts the values."""
    n = np.arange(np.prod(SHAPE)).reshape(SHAPE) + 1000 * seed
    if kind == "float32":
        return (n * 1.5 - 7).astype("float32"), np.float32(-9.5)
    if kind == "float64":
        return np.sin(n) * 1e6, np.nan
    if kind == "int16":
        return (n * 937 - 16000).astype("int16"), -1
    if kind == "uint8":
        return ((n * 7 + 3) % 250).astype("uint8"), 255
    if kind == "bool":
        return n % 3 == 0, False
    raise AssertionError(kind)


CASES = [
    pytest.param("float32", "bytes", False, id="float32-bytes"),
    pytest.param("float32", "bytes-big-endian", True, id="float32-bytes-big-endian-packed"),
    pytest.param("int16", "zlib", False, id="int16-zlib"),
    pytest.param("int16", "bytes-big-endian", False, id="int16-bytes-big-endian"),
    pytest.param("uint8", "shuffle-zlib", True, id="uint8-shuffle-zlib-packed"),
    pytest.param("float64", "zstd", False, id="float64-zstd"),
    pytest.param("float64", "shuffle-zlib", False, id="float64-shuffle-zlib"),
    pytest.param("bool", "blosc", True, id="bool-blosc-packed"),
]


def assert_values(got, expected) -> None:
    """Same dtype, same shape, same values (NaN equals NaN)."""
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected, strict=True)


def assert_fully_inlined(persisted: ManifestArray, case) -> None:
    """Every non-missing chunk inlined with exactly zarr's bytes; missing chunks still missing."""
    manifest = persisted.manifest
    assert persisted.metadata.to_dict() == case.array.metadata.to_dict()
    for index, state in case.states.items():
        if state == "missing":
            assert manifest.states[index] == MISSING, index
            assert manifest.entry(index) is None
        else:
            assert manifest.states[index] == INLINED, index
            assert manifest.inlined_data(index) == case.raw[index], index
    assert manifest.urls == ()


def open_via_zarr(case) -> np.ndarray:
    return xr.open_zarr(case.store(), consolidated=False, zarr_format=3)["v"].values


# --------------------------------------------------------------------------- #
# compute
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(("kind", "codec", "packed"), CASES)
def test_compute_matches_source_and_manifest_store(make_virtual, kind, codec, packed):
    data, fill = source(kind)
    case = make_virtual(data, CHUNKS, codec=codec, fill_value=fill, packed=packed)
    assert case.array.manifest.count() == {"virtual": 4, "inlined": 4, "missing": 4}
    via_zarr = open_via_zarr(case)
    assert_values(via_zarr, case.expected)

    chunk_nbytes = np.prod(CHUNKS) * data.dtype.itemsize
    for task_bytes, ntasks in [(None, 1), (200, None), (1, 12)]:
        config = {} if task_bytes is None else {"vzdask.task-bytes": task_bytes}
        with dask.config.set(config):
            array = case.array
            graph = array.__dask_graph__()
            layout = array.layout
            if ntasks is not None:
                assert len(graph) == ntasks
            # each task covers at most task-bytes of decoded chunks (or a single chunk)
            assert np.prod(layout.block) == 1 or np.prod(layout.block) * chunk_nbytes <= (task_bytes or DEFAULT_TASK_BYTES)
            assert len(graph) == len(array.__dask_keys__()) == np.prod(layout.nblocks)
            for scheduler in ("sync", "threads"):
                assert_values(array.compute(scheduler=scheduler), case.expected)
            with dask.config.set(scheduler="sync"):
                assert_values(array.compute(), via_zarr)


def test_many_blocks_with_small_task_bytes(make_virtual):
    data, fill = source("float32")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill)
    with dask.config.set({"vzdask.task-bytes": 200}):  # 6 chunks of 32 bytes per task at most
        assert case.array.layout.block == (2, 3)
        assert len(case.array.__dask_graph__()) == 2
        assert_values(case.array.compute(), case.expected)
    with dask.config.set({"vzdask.task-bytes": "64B"}):  # strings parsed like other dask byte sizes
        assert case.array.layout.block == (1, 2)
        assert len(case.array.__dask_graph__()) == 8
        assert_values(case.array.compute(), case.expected)


def test_cut_axes_get_equal_blocks(make_virtual):
    """Blocks along a cut axis are equal (no runt last task), never above the task size, and read right."""
    from vzdask.chunk_tasks import BlockLayout

    layout = BlockLayout.for_array((2400, 2, 2), 90 * 180 * 4, target=64 * 2**20)
    assert layout.block == (240, 2, 2) and layout.nblocks == (10, 1, 1)  # not 9 x 258 + 1 x 78
    assert layout.element_chunks((2400, 180, 360), (1, 90, 180)) == ((24 * 10,) * 10, (180,), (360,))
    data, fill = source("float32")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill)
    with dask.config.set({"vzdask.task-bytes": 288}):  # 9 chunks of 32 bytes: rows of 3 chunks, 3 rows -> 2 + 2, not 3 + 1
        assert case.array.layout.block == (2, 3)
        assert case.array.to_dask_array().chunks == ((4, 3), (9,))
        assert_values(case.array.compute(), case.expected)
        assert_values(case.array.to_dask_array().compute(), case.expected)


def test_processes_scheduler(make_virtual):
    a_data, a_fill = source("int16")
    b_data, b_fill = source("float64", seed=1)
    a = make_virtual(a_data, CHUNKS, codec="zlib", fill_value=a_fill, name="a")
    b = make_virtual(b_data, CHUNKS, codec="zstd", fill_value=b_fill, packed=True, name="b")
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=2, mp_context=context) as pool,  # one pool for both calls
        dask.config.set({"vzdask.task-bytes": 40}),
    ):
        got_a, got_b = dask.compute(a.array, b.array, scheduler="processes", pool=pool)
        persisted_a, persisted_b = dask.persist(a.array, b.array, scheduler="processes", pool=pool)
        assert len(a.array.__dask_graph__()) == 8 and len(b.array.__dask_graph__()) == 12
    assert_values(got_a, a.expected)
    assert_values(got_b, b.expected)
    assert_fully_inlined(persisted_a, a)
    assert_fully_inlined(persisted_b, b)
    assert_values(persisted_b.compute(scheduler="sync"), b.expected)


def test_zero_dimensional_and_empty(make_virtual):
    scalar = make_virtual(np.array(2.5, dtype="float32"), (), codec="zstd", state_of=lambda ix: "virtual", name="s")
    assert scalar.array.shape == ()
    assert_values(scalar.array.compute(), np.array(2.5, dtype="float32"))
    assert_fully_inlined(scalar.array.persist(), scalar)
    missing = make_virtual(np.array(2.5, dtype="float32"), (), fill_value=-1.0, state_of=lambda ix: "missing", name="m")
    assert_values(missing.array.compute(), np.array(-1.0, dtype="float32"))

    empty = ManifestArray(
        create_array_metadata(shape=(0, 4), chunk_shape=(2, 2), dtype="int16"), ChunkManifest.empty((0, 2))
    )
    assert_values(empty.compute(), np.zeros((0, 4), dtype="int16"))
    assert_values(empty.to_dask_array().compute(), np.zeros((0, 4), dtype="int16"))


# --------------------------------------------------------------------------- #
# task count: batching, not one task per chunk
# --------------------------------------------------------------------------- #


def test_hundred_thousand_chunks_make_few_tasks(tmp_path):
    """100,000 chunks of 80 kB (8 GB decoded) in one file: ~120 tasks, built in well under a second."""
    chunk = np.arange(100 * 100, dtype="float64").reshape(100, 100) / 7
    one = zarr.create_array(LocalStore(tmp_path), name="one", shape=chunk.shape, chunks=chunk.shape, dtype="float64",
                            compressors=[zarr.codecs.ZstdCodec()])
    one[...] = chunk
    encoded = (tmp_path / "one" / one.metadata.encode_chunk_key((0, 0))).read_bytes()
    big_file = tmp_path / "big.bin"
    big_file.write_bytes(b"H" * 100 + encoded)  # every chunk of the big array points at the same bytes
    grid = (1000, 100)
    metadata = create_array_metadata(
        shape=(100 * grid[0], 100 * grid[1]), chunk_shape=(100, 100), dtype="float64", codecs=one.metadata.codecs
    )
    start = time.perf_counter()
    manifest = ChunkManifest.from_arrays(
        paths=np.full(grid, big_file.as_uri(), dtype=object),
        offsets=np.full(grid, 100, dtype=np.uint64),
        lengths=np.full(grid, len(encoded), dtype=np.uint64),
    )
    array = ManifestArray(metadata, manifest)
    graph = array.__dask_graph__()
    ntasks = len(graph)
    keys = array.__dask_keys__()
    tasks = dict(graph)  # materialise every task
    elapsed = time.perf_counter() - start

    assert 1 < ntasks <= 300, ntasks
    assert len(keys) == ntasks == len(tasks)
    assert elapsed < 2.0, f"building the graph of 100,000 chunks took {elapsed:.2f} s"
    # the tasks' manifest parts cover the grid exactly once
    covered = sum(task.args[0].nchunks for task in tasks.values())
    assert covered == 100_000
    # at a tiny task size every chunk gets its own task (the bound above is the batching)
    with dask.config.set({"vzdask.task-bytes": 1}):
        assert len(array.__dask_graph__()) == 100_000

    # and the references are right: a chunk-aligned corner reads as the tiled chunk
    corner = array[:200, 9800:]
    assert_values(corner.compute(), np.tile(chunk, (2, 2)))


@pytest.mark.parametrize("packed", [False, True])
def test_task_parts_hold_exactly_their_chunks(make_virtual, packed):
    """Each task's manifest part has the same entries as slicing the manifest, and only its own urls and bytes."""
    data, fill = source("float32")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill, packed=packed)
    manifest = case.array.manifest
    for task_bytes in (1, 64, 200):
        with dask.config.set({"vzdask.task-bytes": task_bytes}):
            layout = case.array.layout
            tasks = dict(case.array.__dask_graph__())
            for index in layout.indices():
                part = tasks[(case.array.name, *index)].args[0]
                expected = manifest[layout.grid_slices(index)]
                assert part.dict() == expected.dict(), index
                assert set(part.urls) == set(expected.urls)
                assert len(part.inline_buffer) == sum(len(v["data"]) for v in part.dict().values() if "data" in v)
    # at native chunking (or finer) each task carries its one chunk's reference
    for chunks in (CHUNKS, (1, 2)):
        native = case.array.to_dask_array(chunks=chunks)
        tasks = dict(native.dask)
        assert len(tasks) == native.npartitions
        for (_, *index), task in tasks.items():
            ref = task.args[0]
            grid_index = tuple(i * c // n for i, c, n in zip(index, chunks, CHUNKS))
            entry = manifest.entry(grid_index)
            if entry is None:
                assert ref.state == MISSING
            elif entry[0] == "inlined":
                assert (ref.state, ref.data) == (INLINED, entry[1])
            else:
                assert (ref.url, ref.offset, ref.length) == entry[1:]
        assert_values(native.compute(), case.expected)


# --------------------------------------------------------------------------- #
# persist
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("task_bytes", [None, 200, 1])
def test_persist_inlines_every_chunk(make_virtual, task_bytes):
    data, fill = source("int16")
    case = make_virtual(data, CHUNKS, codec="shuffle-zlib", fill_value=fill, packed=True)
    with dask.config.set({} if task_bytes is None else {"vzdask.task-bytes": task_bytes}):
        persisted = case.array.persist()
    assert isinstance(persisted, ManifestArray) and persisted.is_gathered
    assert persisted.manifest.count() == {"virtual": 0, "inlined": 8, "missing": 4}
    assert persisted.count() == persisted.manifest.count()
    assert case.array.count() == {"virtual": 4, "inlined": 4, "missing": 4}
    assert_fully_inlined(persisted, case)
    assert_values(persisted.compute(), case.expected)
    assert_values(persisted.to_dask_array(chunks=(3, 5)).compute(), case.expected)
    # the source is unchanged, persisting again changes nothing, and the names differ
    assert case.array.manifest.count() == {"virtual": 4, "inlined": 4, "missing": 4}
    assert persisted.persist().equals(persisted)
    assert persisted.name != case.array.name


def test_dask_compute_and_persist_several_arrays(make_virtual):
    """Two arrays of the same shape, dtype and codecs but different files and values keep their own values."""
    a_data, fill = source("float32", seed=0)
    b_data, _ = source("float32", seed=1)
    a = make_virtual(a_data, CHUNKS, codec="zstd", fill_value=fill, name="a")
    b = make_virtual(b_data, CHUNKS, codec="zstd", fill_value=fill, name="b")
    assert not np.array_equal(a.expected, b.expected)
    assert a.array.name != b.array.name
    with dask.config.set({"vzdask.task-bytes": 200}):
        got_a, got_b, got_a_again = dask.compute(a.array, b.array, a.array)
        persisted_a, persisted_b = dask.persist(a.array, b.array)
        mixed = dask.compute(a.array, b.array.to_dask_array() * 2, a.array + b.array)
    assert_values(got_a, a.expected)
    assert_values(got_b, b.expected)
    assert_values(got_a_again, a.expected)
    assert_fully_inlined(persisted_a, a)
    assert_fully_inlined(persisted_b, b)
    assert_values(mixed[0], a.expected)
    assert_values(mixed[1], b.expected * 2)
    assert_values(mixed[2], a.expected + b.expected)


# --------------------------------------------------------------------------- #
# names
# --------------------------------------------------------------------------- #


def _references(case) -> dict:
    """The case's references in JSON form (inlined bytes as hex)."""
    m = case.array.manifest
    return {
        "paths": m.paths().tolist(),
        "offsets": m.offsets.tolist(),
        "lengths": m.lengths.tolist(),
        "inlined": {
            ",".join(map(str, ix)): m.inlined_data(ix).hex() for ix, s in case.states.items() if s == "inlined"
        },
    }


def _build(metadata_json: str, refs: dict) -> ManifestArray:
    paths = np.array(refs["paths"], dtype=object)
    inlined = {tuple(int(i) for i in k.split(",")): bytes.fromhex(v) for k, v in refs["inlined"].items()}
    manifest = ChunkManifest.from_arrays(
        paths=paths,
        offsets=np.array(refs["offsets"], dtype=np.uint64),
        lengths=np.array(refs["lengths"], dtype=np.uint64),
        inlined=inlined or None,
    )
    return ManifestArray(json.loads(metadata_json), manifest)


def test_names_are_deterministic_tokens_of_the_references(make_virtual):
    data, fill = source("float64")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill)
    metadata_json = case.metadata_json.read_text()
    refs = _references(case)

    rebuilt = _build(metadata_json, refs)
    assert rebuilt is not case.array and rebuilt.equals(case.array)
    assert rebuilt.name == case.array.name
    assert dask.base.tokenize(rebuilt) == dask.base.tokenize(case.array)
    assert_values(rebuilt.compute(), case.expected)

    # ... in another interpreter (another hash seed) too
    script = textwrap.dedent(
        """
        import json, sys
        import dask
        sys.path.insert(0, {tests!r})
        from test_dask_collection import _build
        spec = json.loads(sys.stdin.read())
        names = [_build(spec["metadata"], spec["refs"]).name]
        with dask.config.set({{"vzdask.task-bytes": 200}}):
            names.append(_build(spec["metadata"], spec["refs"]).name)
        print(json.dumps(names))
        """
    ).format(tests=str(REPO / "tests"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"metadata": metadata_json, "refs": refs}),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with dask.config.set({"vzdask.task-bytes": 200}):
        small_blocks_name = case.array.name
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [case.array.name, small_blocks_name]

    # any change to the references, the metadata or the block layout changes the name
    other_offset = dict(refs, offsets=[[o + (1 if (i, j) == (0, 0) else 0) for j, o in enumerate(row)]
                                       for i, row in enumerate(refs["offsets"])])
    key = next(iter(refs["inlined"]))
    flipped = bytes.fromhex(refs["inlined"][key])
    other_inlined = dict(refs, inlined={**refs["inlined"], key: (flipped[:-1] + bytes([flipped[-1] ^ 1])).hex()})
    other_metadata = json.loads(metadata_json)
    other_metadata["fill_value"] = 0.0
    names = {
        case.array.name,
        _build(metadata_json, other_offset).name,
        _build(metadata_json, other_inlined).name,
        _build(json.dumps(other_metadata), refs).name,
        small_blocks_name,
    }
    assert len(names) == 5
    assert all(name.startswith("manifestarray-") for name in names)


def test_graph_manipulation_clone_and_bind(make_virtual):
    """``clone`` and ``bind`` work: new names, same values (also computed next to the original)."""
    from dask.graph_manipulation import bind, checkpoint, clone

    data, fill = source("uint8")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill)
    with dask.config.set({"vzdask.task-bytes": 100}):
        cloned = clone(case.array)
        assert isinstance(cloned, ManifestArray) and cloned.name != case.array.name
        original, copy = dask.compute(case.array, cloned)
        assert_values(original, case.expected)
        assert_values(copy, case.expected)

        side = case.array.to_dask_array() + 1
        bound = bind(case.array, side)
        assert isinstance(bound, ManifestArray) and bound.name != case.array.name
        assert_values(bound.compute(), case.expected)
        done, values = dask.compute(checkpoint(case.array, side), case.array)
        assert done is None
        assert_values(values, case.expected)

        persisted_clone = clone(case.array).persist()
    assert_fully_inlined(persisted_clone, case)


def test_visualize(make_virtual, tmp_path):
    pytest.importorskip("graphviz", reason="graphviz (python package) is not installed")
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz's `dot` program is not installed")
    data, fill = source("int16")
    case = make_virtual(data, CHUNKS, fill_value=fill)
    target = tmp_path / "graph.png"
    dask.visualize(case.array, filename=str(target))
    assert target.stat().st_size > 0
    assert_values(case.array.compute(), case.expected)


# --------------------------------------------------------------------------- #
# the dask array view
# --------------------------------------------------------------------------- #


def test_to_dask_array_chunks_and_meta(make_virtual):
    data, fill = source("float32")
    case = make_virtual(data, CHUNKS, codec="blosc", fill_value=fill)
    view = case.array.to_dask_array()
    assert isinstance(view, da.Array)
    assert view.dtype == np.float32 and view.shape == SHAPE
    assert type(view._meta) is np.ndarray and view._meta.dtype == np.float32 and view._meta.ndim == 2
    assert view.chunks == ((7,), (9,))  # one block: the whole (small) array
    assert_values(view.compute(), case.expected)

    with dask.config.set({"vzdask.task-bytes": 200}):
        view = case.array.to_dask_array()
    # default blocks are whole native chunks: every boundary but the array's end is a chunk boundary
    for axis, chunks in enumerate(view.chunks):
        assert all(c % CHUNKS[axis] == 0 for c in chunks[:-1]), view.chunks
    assert view.chunks == ((4, 3), (9,))
    assert_values(view.compute(), case.expected)

    for chunks in [(3, 5), (1, 9), ((5, 2), (2, 2, 5)), 4, -1]:
        view = case.array.to_dask_array(chunks=chunks)
        assert_values(view.compute(), case.expected)
        assert_values(view[2:5, 3:8].compute(), case.expected[2:5, 3:8])
    assert case.array.to_dask_array(chunks=(3, 5)).chunks == ((3, 3, 1), (5, 4))

    rechunked = case.array.rechunk((5, 2))
    assert isinstance(rechunked, da.Array) and rechunked.chunks == ((5, 2), (2, 2, 2, 2, 1))
    assert_values(rechunked.compute(), case.expected)
    assert_values(case.array.to_dask_array().rechunk((2, 3)).compute(), case.expected)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_arithmetic_and_numpy_functions_hand_off_to_dask(make_virtual):
    data, fill = source("float64")
    case = make_virtual(data, CHUNKS, codec="zstd", fill_value=fill)
    ma, expected = case.array, case.expected
    with dask.config.set({"vzdask.task-bytes": 200}):
        results = {
            "ma + 1": (ma + 1, expected + 1),
            "1 + ma": (1 + ma, 1 + expected),
            "ma * ma": (ma * ma, expected * expected),
            "ma - ma": (ma - ma, expected - expected),
            "2 / ma": (2 / ma, 2 / expected),
            "-ma": (-ma, -expected),
            "ma > 0": (ma > 0, expected > 0),
            "np.sin(ma)": (np.sin(ma), np.sin(expected)),
            "np.add(ma, ma)": (np.add(ma, ma), expected + expected),
            "np.where(ma > 0, ma, 0)": (np.where(ma > 0, ma, 0), np.where(expected > 0, expected, 0)),
            "np.nanmax(ma, axis=0)": (np.nanmax(ma, axis=0), np.nanmax(expected, axis=0)),
        }
        for label, (lazy, want) in results.items():
            assert isinstance(lazy, da.Array), label
            np.testing.assert_allclose(lazy.compute(), want, rtol=1e-12, err_msg=label)
        mean = np.nanmean(ma)
        assert isinstance(mean, da.Array)
        assert np.isnan(expected).any()
        np.testing.assert_allclose(mean.compute(), np.nanmean(expected), rtol=1e-12)
        assert float(np.nanmean(ma).compute()) != float(np.mean(ma).compute())  # NaNs propagate in mean

    # functions of numpy's submodules go to dask's submodules
    ints = make_virtual(source("int16")[0], CHUNKS, codec="zlib", fill_value=-1, name="ints")
    spectrum = np.fft.rfft(ints.array, axis=1)
    norm = np.linalg.norm(ma)  # (dask's norm does not upcast integers as numpy's does)
    assert isinstance(spectrum, da.Array) and isinstance(norm, da.Array)
    np.testing.assert_allclose(spectrum.compute(), np.fft.rfft(ints.expected, axis=1), rtol=1e-10)
    np.testing.assert_allclose(norm.compute(), np.linalg.norm(expected), rtol=1e-10)  # NaN: NaNs propagate
    corner = expected[:2, :8]  # chunks (0, 0) and (0, 1): no missing chunk, no NaN
    assert not np.isnan(corner).any()
    np.testing.assert_allclose(np.linalg.norm(ma[:2, :8]).compute(), np.linalg.norm(corner), rtol=1e-10)
    with pytest.raises(TypeError, match="not supported on a ManifestArray"):
        np.copy(ints.array)


# --------------------------------------------------------------------------- #
# distributed
# --------------------------------------------------------------------------- #


def test_distributed_compute(make_virtual, dask_client):
    a_data, a_fill = source("float32", seed=0)
    b_data, _ = source("float32", seed=1)
    a = make_virtual(a_data, CHUNKS, codec="zlib", fill_value=a_fill, name="a")
    b = make_virtual(b_data, CHUNKS, codec="zlib", fill_value=a_fill, packed=True, name="b")
    with dask.config.set({"vzdask.task-bytes": 200}):
        got_a, got_b = dask.compute(a.array, b.array)
        view = (a.array.to_dask_array(chunks=(3, 5)) - b.array).compute()
    assert_values(got_a, a.expected)
    assert_values(got_b, b.expected)
    assert_values(view, a.expected - b.expected)
    assert_values(a.array.compute(), a.expected)


def test_distributed_persist_keeps_blocks_on_workers(make_virtual, dask_client, capsys):
    import distributed

    data, fill = source("int16")
    case = make_virtual(data, CHUNKS, codec="shuffle-zlib", fill_value=fill)
    with dask.config.set({"vzdask.task-bytes": 40}):  # 2 chunks of 16 bytes per task
        persisted = case.array.persist()
        assert persisted.is_gathered is False
        futures = distributed.futures_of(persisted)
        assert len(futures) == len(case.array.__dask_graph__()) == 8
        distributed.wait(persisted)
        assert all(f.status == "finished" for f in futures)
        distributed.progress(persisted)
        assert "ManifestArray" in repr(persisted) and "not gathered" in repr(persisted)
        assert_values(persisted.compute(), case.expected)
    # outside the config block the persisted blocks keep the layout they were made with
    assert_values(persisted.compute(), case.expected)
    assert_values(persisted.to_dask_array(chunks=(3, 5)).compute(), case.expected)
    # and a fresh read of the same references at another layout does not pick up those blocks
    assert_values(case.array.compute(), case.expected)

    gathered = persisted.gather()
    assert gathered.is_gathered and persisted.is_gathered
    assert_fully_inlined(gathered, case)
    assert_values(gathered.compute(scheduler="sync"), case.expected)
    assert gathered.equals(persisted)


# --------------------------------------------------------------------------- #
# bad data
# --------------------------------------------------------------------------- #


def _repoint(case, index, *, path=None, offset=None, length=None) -> ManifestArray:
    """The case's array with virtual chunk ``index`` pointing somewhere else."""
    m = case.array.manifest
    paths, offsets, lengths = m.paths().copy(), m.offsets.copy(), m.lengths.copy()
    assert case.states[index] == "virtual"
    if path is not None:
        paths[index] = path
    if offset is not None:
        offsets[index] = offset
    if length is not None:
        lengths[index] = length
    inlined = {ix: m.inlined_data(ix) for ix, s in case.states.items() if s == "inlined"}
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)
    return ManifestArray(case.array.metadata, manifest)


def _all_read_paths(array):
    """Every way of reading the array's values."""
    return {
        "compute": lambda: array.compute(),
        "to_dask_array": lambda: array.to_dask_array(chunks=(3, 5)).compute(),
        "persist": lambda: array.persist(),
    }


@pytest.mark.parametrize(
    ("where", "packed", "task_bytes"),
    [
        (where, packed, task_bytes)
        for where in ["offset-past-end", "far-past-end", "length-past-end", "no-such-file"]
        for packed, task_bytes in [(False, None), (False, 1), (True, None)]
        if not (packed and where == "no-such-file")
    ],
)
def test_reading_past_the_end_or_a_missing_file_names_the_url(make_virtual, tmp_path, where, packed, task_bytes):
    """One bad reference among good ones: every way of reading fails with an OSError naming its file.

    Packed: all chunks in one file, so the bad range is read in one ``get_ranges`` with good ones.
    """
    data, fill = source("float32")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill, packed=packed)
    index = (1, 2)  # virtual, and not the first chunk of any block
    url = case.urls[index]
    size = len(case.raw[index])
    file_size = Path(url.removeprefix("file://")).stat().st_size
    if where == "offset-past-end":
        array = _repoint(case, index, offset=file_size + 10)
    elif where == "far-past-end":
        array = _repoint(case, index, offset=10**6)
    elif where == "length-past-end":
        array = _repoint(case, index, offset=file_size - size + 1)  # the last byte is past the end
    else:
        url = (tmp_path / "gone" / "chunk.bin").as_uri()
        array = _repoint(case, index, path=url)
    # the good chunks still read: only the broken one fails
    assert_values(array[:2].compute(), case.expected[:2])
    with dask.config.set({} if task_bytes is None else {"vzdask.task-bytes": task_bytes}):
        for how, read in _all_read_paths(array).items():
            with pytest.raises(OSError, match=url) as info:
                read()
            assert url in str(info.value), how


@pytest.mark.parametrize("zlib_ng", [True, False], ids=["zlib-ng", "numcodecs-zlib"])
@pytest.mark.parametrize("task_bytes", [None, 1])
@pytest.mark.parametrize("state", ["virtual", "inlined"])
def test_corrupt_chunk_names_the_chunk(make_virtual, tmp_path, state, task_bytes, zlib_ng):
    """Random bytes where a zlib chunk should be: decoding fails naming chunk 1.2; persist copies them as they are."""
    data, fill = source("int16")
    case = make_virtual(data, CHUNKS, codec="zlib", fill_value=fill)
    garbage = np.random.default_rng(42).bytes(37)
    index = (1, 2)
    m = case.array.manifest
    paths, offsets, lengths = m.paths().copy(), m.offsets.copy(), m.lengths.copy()
    inlined = {ix: m.inlined_data(ix) for ix, s in case.states.items() if s == "inlined"}
    paths[index], offsets[index], lengths[index] = "", 0, 0
    inlined.pop(index, None)
    if state == "virtual":
        bad = tmp_path / "garbage.bin"
        bad.write_bytes(b"0123456789" + garbage)
        paths[index], offsets[index], lengths[index] = bad.as_uri(), 10, len(garbage)
    else:
        inlined[index] = garbage
    array = ManifestArray(
        case.array.metadata, ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)
    )
    config = {"vzdask.zlib-ng": zlib_ng} | ({} if task_bytes is None else {"vzdask.task-bytes": task_bytes})
    with dask.config.set(config):
        for how, read in list(_all_read_paths(array).items())[:2]:
            with pytest.raises(ValueError, match=r"chunk 1\.2\b") as info:
                read()
            assert "37 bytes" in str(info.value), how
        persisted = array.persist()  # persisting copies encoded bytes: nothing is decoded
        assert persisted.manifest.inlined_data(index) == garbage
        with pytest.raises(ValueError, match=r"cannot decode chunk 1\.2\b"):
            persisted.compute()
        # every other chunk is intact
        assert_values(array[:2].compute(), case.expected[:2])
    assert_values(array[:, :8].compute(), case.expected[:, :8])


def test_compute_beside_dask_arrays_gives_each_collection_its_own_values(tmp_path):
    """dask groups one compute's collections by optimiser and returns the groups in order: a ManifestArray
    with an optimiser of its own got a dask array's values (``dask.compute(y, x, y + 1)``)."""
    import netCDF4

    import vzdask

    path = tmp_path / "two.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 8)
        nc.createVariable("a", "f4", ("x",), chunksizes=(4,))[:] = np.arange(8)
        nc.createVariable("b", "f4", ("x",), chunksizes=(4,))[:] = np.arange(8) + 100
    ds = vzdask.open_virtual_dataset(str(path))
    with netCDF4.Dataset(path) as nc:
        a, b = nc["a"][:].data, nc["b"][:].data
    other = da.arange(8, chunks=4) * 1000
    got = dask.compute(other, ds["a"].data, other + 1, ds["b"].data, dask.delayed(sum)([1, 2]))
    np.testing.assert_array_equal(got[0], np.arange(8) * 1000)
    np.testing.assert_array_equal(got[1], a)
    np.testing.assert_array_equal(got[2], np.arange(8) * 1000 + 1)
    np.testing.assert_array_equal(got[3], b)
    assert got[4] == 3


@pytest.mark.parametrize("how", ["whole", "blocks", "to_dask_array", "processes"])
def test_large_results_are_mapped_without_huge_page_advice(make_virtual, how):
    """Results of 4 MiB or more are anonymous maps (numpy's huge-page advice stalls first touches), values exact."""
    import mmap

    from vzdask.chunk_tasks import MAPPED_RESULT_BYTES

    data = (np.arange(1200 * 1000, dtype="float64").reshape(1200, 1000) % 977) * 0.25
    assert data.nbytes >= MAPPED_RESULT_BYTES
    case = make_virtual(data, (300, 1000), codec="zstd", fill_value=np.nan, state_of=lambda index: "virtual")
    array = case.array
    if how == "whole":  # one task's assemble, or one shared result the load tasks decode into
        got = array.compute(scheduler="threads")
    elif how == "blocks":
        with dask.config.set({"vzdask.task-bytes": MAPPED_RESULT_BYTES}):
            got = array.compute(scheduler="threads")
    elif how == "to_dask_array":
        got = array.to_dask_array().compute(scheduler="threads")
    else:  # pickled back from worker processes
        got = array.compute(scheduler="processes")
    assert_values(got, data)
    got[0, 0] = -1.0  # a result is the caller's own, writable memory
    assert got[0, 0] == -1.0 and array.compute(scheduler="sync")[0, 0] == data[0, 0]
    if how != "processes" and sys.platform == "linux":  # (elsewhere numpy gives no huge-page advice: np.empty)
        assert isinstance(got.base, mmap.mmap)  # the result itself, not a copy of blocks joined


def test_small_and_object_results_stay_numpy_arrays():
    from vzdask.chunk_tasks import MAPPED_RESULT_BYTES, result_array

    small = result_array((10, 10), "float32")
    assert small.flags.owndata and small.shape == (10, 10) and small.dtype == np.float32
    objects = result_array((MAPPED_RESULT_BYTES,), object)
    assert objects.flags.owndata and objects.dtype == object
    large = result_array((MAPPED_RESULT_BYTES // 2, 1), ">i2")
    assert large.shape == (MAPPED_RESULT_BYTES // 2, 1) and large.dtype == np.dtype(">i2") and large.flags.writeable
    with pytest.raises(MemoryError, match=r"Unable to allocate .* GiB for an array with shape \(10000000000000000,\)"):
        result_array((10**16,), "float64")  # as np.empty: MemoryError, not the mapping's OSError
