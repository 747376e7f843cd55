"""A self-checking tour of vzdask: ``python -m vzdask.demo`` (what ``make demo`` runs).

The demo

1. writes a few archival-style files: raw little-endian ``.bin`` files
   (chunks encoded by zarr with only the ``bytes`` codec, concatenated) and
   zlib-packed files (several zarr-encoded zlib chunks at recorded offsets
   after a small header);
2. describes them by hand with ``ChunkManifest.from_arrays``: virtual chunks
   point into the files, two chunks are inlined (their encoded bytes held in
   memory) and one chunk is missing (it reads as the fill value);
3. combines two ManifestArrays with ``np.concatenate`` (references only);
4. serves the ManifestGroup through a ManifestStore, opens it with
   ``xr.open_zarr`` and compares every value with the numpy arrays it wrote.

It prints ``demo OK`` and returns 0, or prints the mismatch and returns 1.
Chunks are always encoded by zarr's codec pipeline, never by hand.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vzdask import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore, create_array_metadata

#: Written at the start of every packed file, so chunk offsets are not zero.
PACK_HEADER = b"VZDASK-DEMO-PACK"

#: Fill value of ``precip``, whose chunk (1, 1, 1) is missing.
PRECIP_FILL = -9999.0

GROUP_ATTRIBUTES = {"title": "vzdask demo", "source": "written by vzdask.demo"}


# --------------------------------------------------------------------------- #
# encoding (zarr does it) and packing (offsets recorded by us)
# --------------------------------------------------------------------------- #
def encode_chunks(
    data: np.ndarray, chunk_shape: tuple[int, ...], compressors: list[Any] | None, fill_value: Any
) -> tuple[dict[tuple[int, ...], bytes], list[dict[str, Any]]]:
    """Encode ``data`` chunk by chunk with zarr's codec pipeline.

    Returns the encoded bytes of every chunk, keyed by chunk index, and the
    codec list (zarr v3 dicts) that decodes them.
    """
    import zarr
    from zarr.codecs import BytesCodec
    from zarr.storage import MemoryStore

    objects: dict[str, Any] = {}
    array = zarr.create_array(
        store=MemoryStore(objects),
        shape=data.shape,
        chunks=chunk_shape,
        dtype=data.dtype,
        serializer=BytesCodec(endian="little"),
        compressors=compressors,
        fill_value=fill_value,
        config={"write_empty_chunks": True},
    )
    array[...] = data
    grid = tuple(-(-s // c) for s, c in zip(data.shape, chunk_shape))
    encode_key = array.metadata.chunk_key_encoding.encode_chunk_key
    chunks = {index: objects[encode_key(index)].to_bytes() for index in np.ndindex(grid)}
    return chunks, list(array.metadata.to_dict()["codecs"])


def pack(path: Path, chunks: dict[tuple[int, ...], bytes], header: bytes = b"") -> dict[tuple[int, ...], tuple[int, int]]:
    """Write ``header`` then the chunks, in order, to one file; return ``{index: (offset, length)}``."""
    positions = {}
    offset = len(header)
    with open(path, "wb") as f:
        f.write(header)
        for index, data in chunks.items():
            f.write(data)
            positions[index] = (offset, len(data))
            offset += len(data)
    return positions


def manifest_for(
    grid: tuple[int, ...],
    url: str,
    positions: dict[tuple[int, ...], tuple[int, int]],
    inlined: dict[tuple[int, ...], bytes] | None = None,
) -> ChunkManifest:
    """Build a manifest with ``from_arrays``; chunks in neither mapping are missing."""
    paths = np.full(grid, "", dtype=object)
    offsets = np.zeros(grid, dtype=np.uint64)
    lengths = np.zeros(grid, dtype=np.uint64)
    for index, (offset, length) in positions.items():
        paths[index], offsets[index], lengths[index] = url, offset, length
    return ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)


def _array(data, chunk_shape, codecs, fill_value, dims, attributes, manifest) -> ManifestArray:
    metadata = create_array_metadata(
        shape=data.shape,
        chunk_shape=chunk_shape,
        dtype=data.dtype,
        codecs=codecs,
        fill_value=fill_value,
        dimension_names=dims,
        attributes=attributes,
    )
    return ManifestArray(metadata, manifest)


# --------------------------------------------------------------------------- #
# the sample dataset
# --------------------------------------------------------------------------- #
def build_demo(directory: Path) -> tuple[ManifestGroup, dict[str, np.ndarray]]:
    """Write the sample files into ``directory`` and describe them by hand.

    Returns the ManifestGroup and the values every variable must read as.
    """
    from zarr.codecs import Zlib

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    nt, ny, nx = 4, 6, 10
    expected: dict[str, np.ndarray] = {}
    arrays: dict[str, ManifestArray] = {}

    # Coordinates. time: both chunks inlined. y, x: raw little-endian, one .bin file.
    time = np.arange(nt, dtype=np.int64) * 24
    chunks, codecs = encode_chunks(time, (2,), None, 0)
    arrays["time"] = _array(time, (2,), codecs, 0, ("time",), {"long_name": "hours since start"},
                            ChunkManifest.from_arrays(paths=["", ""], offsets=[0, 0], lengths=[0, 0], inlined=chunks))
    expected["time"] = time

    y = np.linspace(45.0, 47.5, ny)
    x = np.linspace(5.0, 9.5, nx)
    y_chunks, y_codecs = encode_chunks(y, (ny,), None, 0.0)
    x_chunks, x_codecs = encode_chunks(x, (5,), None, 0.0)
    coords_bin = directory / "coords.bin"
    with open(coords_bin, "wb") as f:  # y's chunk, then x's two chunks
        y_positions = {}
        x_positions = {}
        for positions, chunks in ((y_positions, y_chunks), (x_positions, x_chunks)):
            for index, data in chunks.items():
                positions[index] = (f.tell(), len(data))
                f.write(data)
    url = coords_bin.resolve().as_uri()
    arrays["y"] = _array(y, (ny,), y_codecs, 0.0, ("y",), {"units": "degrees_north"}, manifest_for((1,), url, y_positions))
    arrays["x"] = _array(x, (5,), x_codecs, 0.0, ("x",), {"units": "degrees_east"}, manifest_for((2,), url, x_positions))
    expected["y"], expected["x"] = y, x

    # temperature: zlib chunks, one packed file per pair of time steps,
    # joined into one virtual array with np.concatenate (references only).
    temperature = (15 + 8 * rng.standard_normal((nt, ny, nx))).astype(np.float32)
    chunk = (2, 3, 5)
    parts = []
    for year, t0 in (("2000", 0), ("2001", 2)):
        part = temperature[t0 : t0 + 2]
        chunks, codecs = encode_chunks(part, chunk, [Zlib(level=5)], 0.0)
        path = directory / f"temperature_{year}.zlib"
        positions = pack(path, chunks, header=PACK_HEADER)
        manifest = manifest_for((1, 2, 2), path.resolve().as_uri(), positions)
        parts.append(_array(part, chunk, codecs, 0.0, ("time", "y", "x"), {"units": "degC"}, manifest))
    arrays["temperature"] = np.concatenate(parts, axis=0)
    expected["temperature"] = temperature

    # precip: raw little-endian chunks in one .bin file, except two inlined
    # chunks (bytes in memory) and one missing chunk (reads as the fill value).
    precip = np.round(rng.gamma(2.0, 1.5, (nt, ny, nx)), 2)
    chunks, codecs = encode_chunks(precip, chunk, None, PRECIP_FILL)
    inlined_at, missing_at = [(0, 0, 0), (0, 0, 1)], (1, 1, 1)
    inlined = {index: chunks.pop(index) for index in inlined_at}
    del chunks[missing_at]
    path = directory / "precip.bin"
    positions = pack(path, chunks)
    manifest = manifest_for((2, 2, 2), path.resolve().as_uri(), positions, inlined=inlined)
    arrays["precip"] = _array(precip, chunk, codecs, PRECIP_FILL, ("time", "y", "x"), {"units": "mm"}, manifest)
    precip_read = precip.copy()
    precip_read[tuple(slice(i * c, (i + 1) * c) for i, c in zip(missing_at, chunk))] = PRECIP_FILL
    expected["precip"] = precip_read

    return ManifestGroup(arrays=arrays, attributes=GROUP_ATTRIBUTES), expected


# --------------------------------------------------------------------------- #
# checking
# --------------------------------------------------------------------------- #
def check_dataset(ds, expected: dict[str, np.ndarray]) -> list[str]:
    """Compare a dataset with the expected values; return one message per problem."""
    problems = []
    for key, value in GROUP_ATTRIBUTES.items():
        if ds.attrs.get(key) != value:
            problems.append(f"attribute {key!r}: expected {value!r}, got {ds.attrs.get(key)!r}")
    for name, want in expected.items():
        if name not in ds.variables:
            problems.append(f"{name}: missing from the dataset")
            continue
        got = ds[name].values
        if got.dtype != want.dtype or got.shape != want.shape:
            problems.append(f"{name}: expected {want.dtype} {want.shape}, got {got.dtype} {got.shape}")
            continue
        bad = got != want
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(
                f"{name}: {int(bad.sum())} of {want.size} values differ; first at {where}: "
                f"expected {want[where]!r}, got {got[where]!r}"
            )
    if ds["temperature"].dims != ("time", "y", "x"):
        problems.append(f"temperature: expected dims ('time', 'y', 'x'), got {ds['temperature'].dims}")
    return problems


def summarize(group: ManifestGroup) -> str:
    """One line per array: shape, chunks and chunk counts by state."""
    lines = [f"{'variable':<12} {'shape':<12} {'chunks':<10} {'virtual':>7} {'inlined':>7} {'missing':>7}  files"]
    for name, array in group.walk_arrays():
        c = array.manifest.count()
        files = ", ".join(Path(u).name for u in array.manifest.urls) or "-"
        lines.append(
            f"{name:<12} {str(array.shape):<12} {str(array.chunk_shape):<10} "
            f"{c['virtual']:>7} {c['inlined']:>7} {c['missing']:>7}  {files}"
        )
    return "\n".join(lines)


def run(directory: Path) -> int:
    """Build, open and check the demo dataset in ``directory``; 0 on success."""
    import xarray as xr

    group, expected = build_demo(directory)
    store = ManifestStore(group)
    with xr.open_zarr(store, consolidated=False, zarr_format=3) as ds:
        print(f"Sample files in {directory}:")
        for path in sorted(directory.iterdir()):
            print(f"  {path.name:<22} {path.stat().st_size:>6} bytes")
        print()
        print("Chunk manifests:")
        print(summarize(group))
        print()
        print(ds)
        print()
        problems = check_dataset(ds, expected)
    if problems:
        print("demo FAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"all {sum(v.size for v in expected.values())} values of {len(expected)} variables match")
    print("demo OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 mismatch)."""
    parser = argparse.ArgumentParser(prog="python -m vzdask.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=None,
        help="keep the sample files in this directory (default: a temporary directory, removed afterwards)",
    )
    args = parser.parse_args(argv)
    if args.output is not None:
        return run(args.output)
    with tempfile.TemporaryDirectory(prefix="vzdask-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
