"""Parsing Icechunk repositories and zipped Zarr stores: vzdask against VirtualiZarr 2.x, same run.

Run by hand: ``.venv/bin/python benchmarks/bench_ice_zip_input.py [--refs 200000] [--members 10000] [--repeats 3]``.

* Icechunk: a repository with one array of ``--refs`` virtual references (into one
  local file) and one of 1,000 native chunks; both parsers turn the main branch into
  a ManifestStore (``IcechunkParser()(url, registry)``).
* Zipped Zarr: a ``zarr.storage.ZipStore`` with one array of ``--members`` chunks;
  both parsers turn it into a ManifestStore (``ZippedZarrParser()(url, registry)``),
  and zarr opens the zip and reads the array, for scale.

Medians of ``--repeats`` runs, the methods taking turns. No speed target is set for
these parsers (issue 19 items 2-3); the figures say where they stand.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data" / "ice_zip_input"


def make_repository(n_refs: int) -> str:
    import icechunk
    import zarr

    root = DATA / f"repo-{n_refs}"
    if (root / "repo").exists():
        return f"file://{root / 'repo'}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    blob = root / "data" / "blob.bin"
    blob.write_bytes(np.arange(n_refs, dtype="<f8").tobytes())
    prefix = f"file://{root / 'data'}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(root / "data"))))
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(root / "repo")), config)
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="a")
    group.create_array("v", shape=(n_refs,), chunks=(1,), dtype="<f8", compressors=None, fill_value=0.0,
                       dimension_names=("i",))
    session.store.set_virtual_refs_arr(
        "v", [n_refs], [f"{prefix}blob.bin"] * n_refs, np.arange(n_refs, dtype=np.uint64) * 8,
        np.full(n_refs, 8, dtype=np.uint64), validate_containers=False)
    native = group.create_array("n", shape=(1000, 100), chunks=(1, 100), dtype="<f8", fill_value=0.0,
                                dimension_names=("r", "c"))
    native[:] = np.random.default_rng(0).random((1000, 100))
    session.commit("benchmark")
    return f"file://{root / 'repo'}"


def make_zip(n_members: int) -> str:
    import zarr

    path = DATA / f"store-{n_members}.zarr.zip"
    if path.exists():
        return str(path)
    DATA.mkdir(parents=True, exist_ok=True)
    store = zarr.storage.ZipStore(path, mode="w")
    array = zarr.create_array(store, name="v", shape=(n_members, 16), chunks=(1, 16), dtype="<f4",
                              fill_value=0.0, dimension_names=("i", "j"))
    array[:] = np.arange(n_members * 16, dtype="<f4").reshape(n_members, 16)
    store.close()
    return str(path)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from obstore.store import LocalStore

    import vzdask.parsers as ours
    from vzdask.registry import ObjectStoreRegistry

    repo_url = make_repository(args.refs)
    zip_path = make_zip(args.members)
    methods = {
        "icechunk: vzdask IcechunkParser": lambda: ours.IcechunkParser()(repo_url, ObjectStoreRegistry.default()),
        "zip: vzdask ZippedZarrParser": lambda: ours.ZippedZarrParser()(f"file://{zip_path}",
                                                                         ObjectStoreRegistry.default()),
    }
    try:
        import virtualizarr.parsers as theirs
        from obspec_utils.registry import ObjectStoreRegistry as TheirRegistry

        methods["icechunk: VirtualiZarr IcechunkParser"] = lambda: theirs.IcechunkParser()(
            repo_url, registry=TheirRegistry({"file://": LocalStore(prefix="/")}))
        methods["zip: VirtualiZarr ZippedZarrParser"] = lambda: theirs.ZippedZarrParser()(
            f"file://{zip_path}", registry=TheirRegistry({"file://": LocalStore(prefix="/")}))
    except ImportError:
        print("VirtualiZarr not installed: vzdask only")

    def zarr_reads_zip():
        import zarr

        store = zarr.storage.ZipStore(zip_path, mode="r")
        zarr.open_array(store, path="v", mode="r")[:]
        store.close()

    methods["zip: zarr ZipStore open + read all"] = zarr_reads_zip
    for fn in methods.values():  # warm up (imports, page cache)
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    print(f"{args.refs} virtual + 1000 native Icechunk references; a zip of {args.members} chunk members; "
          f"median of {args.repeats}")
    for name, values in times.items():
        print(f"  {name:<42} {statistics.median(values) * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
