"""Writing persisted variables from the workers vs gathering them to the client first.

Run by hand: ``.venv/bin/python benchmarks/bench_distributed_write.py [--files 40] [--repeats 3]``.

``--files`` of the ``tas_*.nc`` files in ``benchmarks/_data`` (made by
``bench_compute.py``) are virtualized on a ``LocalCluster(n_workers=2,
processes=True)`` and ``tas`` is persisted there (every chunk inlined, bytes on
the workers). Then, timed, each case writes kerchunk Parquet and an Icechunk
repository (one commit):

* ``workers``: ``ds.vz.to_kerchunk(...)`` / ``ds.vz.to_icechunk(...)`` on the
  persisted Dataset: the workers write the chunks they hold;
* ``gather``: ``ds.vz.gather()`` first, then the same writes from the client
  (what the writers did before).

With ``--client-refs N`` the Dataset also holds a virtual variable of ``N``
references (into ``benchmarks/_data``, never read), which the client writes
itself while the workers write ``tas``.

Reported: wall time and the growth of the client's resident set during the
write (``VmHWM`` reset before each write), medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_write import _reset_peak, _status  # noqa: E402  (the same /proc/self peak-memory reading)

DATA = Path(__file__).parent / "_data"


def _repo(path: Path, data: Path):
    import icechunk

    prefix = f"file://{data.resolve()}/"
    config = icechunk.RepositoryConfig.default()
    store = icechunk.local_filesystem_store(str(data.resolve()))
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
    credentials = icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)), config,
                                      authorize_virtual_chunk_access=credentials)


def _measure(write) -> tuple[float, int]:
    _reset_peak()
    base = _status("VmRSS")
    start = time.perf_counter()
    write()
    return time.perf_counter() - start, max(0, _status("VmHWM") - base)


def _client_refs(n: int):
    """A virtual variable of ``n`` references (a square chunk grid over 100 files) for the client to write."""
    import numpy as np
    import xarray as xr

    from vzdask import ChunkManifest, ManifestArray, create_array_metadata

    side = max(1, int(round(n**0.5)))
    grid = (side, max(1, n // side))
    count = grid[0] * grid[1]
    urls = np.array([f"file://{DATA.resolve()}/refs_{i:03d}.nc" for i in range(100)], dtype=object)
    manifest = ChunkManifest.from_arrays(
        paths=urls[np.arange(count) % 100].reshape(grid),
        offsets=(np.arange(count, dtype=np.uint64) * 4096).reshape(grid),
        lengths=np.full(grid, 4000, dtype=np.uint64),
    )
    metadata = create_array_metadata(shape=tuple(g * 10 for g in grid), chunk_shape=(10, 10), dtype="float32",
                                     fill_value=float("nan"), dimension_names=("ry", "rx"))
    return xr.Variable(("ry", "rx"), ManifestArray(metadata, manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client-refs", type=int, default=0)
    args = parser.parse_args()

    import distributed

    import vzdask

    paths = sorted(str(p.resolve()) for p in DATA.glob("tas_*.nc"))[: args.files]
    if len(paths) < args.files:
        raise SystemExit(f"need {args.files} tas_*.nc files in {DATA}; run bench_compute.py first")
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        virtual = vzdask.open_virtual_mfdataset(paths, parallel=client)
        if args.client_refs:
            virtual = virtual.assign(refs=_client_refs(args.client_refs))
        held = 0
        for _ in range(args.repeats):
            for fmt in ("parquet", "icechunk"):
                for case in ("workers", "gather"):
                    ds = virtual.assign(tas=virtual[["tas"]].vz.persist().tas)  # fresh, not timed
                    distributed.wait(list(dict(ds.tas.data.__dask_graph__()).values()))
                    held = sum(client.run(lambda dask_worker: dask_worker.data.fast.total_weight).values())
                    out = Path(tempfile.mkdtemp(dir=DATA))
                    repo = _repo(out / "repo", DATA) if fmt == "icechunk" else None

                    def write():
                        source = ds if case == "workers" else ds.vz.gather()
                        if fmt == "parquet":
                            source.vz.to_kerchunk(str(out / "refs.parq"), format="parquet")
                        else:
                            source.vz.to_icechunk(repo.writable_session("main"), commit="bench")

                    try:
                        results.setdefault((case, fmt), []).append(_measure(write))
                    finally:
                        shutil.rmtree(out, ignore_errors=True)
                    ds = None  # let the persisted blocks go before the next case
    extra = f", {args.client_refs:,} virtual references written by the client" if args.client_refs else ""
    print(f"{len(paths)} files, tas persisted on 2 workers (~{held / 2**20:.0f} MiB held on the workers){extra}")
    print(f"{'case':<10}{'format':<10}{'seconds':>10}{'client RSS growth':>20}")
    for (case, fmt), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        seconds = statistics.median(r[0] for r in runs)
        growth = statistics.median(r[1] for r in runs)
        print(f"{case:<10}{fmt:<10}{seconds:>10.2f}{growth / 2**20:>17.0f} MiB")


if __name__ == "__main__":
    main()
