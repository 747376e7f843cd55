"""GRIB2: messages written here with ecCodes (its GRIB2 sample and codes_set), read by vzdask and by cfgrib.

Every value is compared with ``cfgrib`` reading the same file: one hypercube
against ``xr.open_dataset(engine="cfgrib")``, several against
``cfgrib.open_datasets``; NaN exactly where cfgrib gives NaN (bitmaps,
messages a hypercube lacks).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

eccodes = pytest.importorskip("eccodes")
cfgrib = pytest.importorskip("cfgrib")

import vzdask  # noqa: E402
from vzdask.errors import ParseError  # noqa: E402
from vzdask.parsers import GRIBParser, detect_parser  # noqa: E402
from vzdask.registry import ObjectStoreRegistry  # noqa: E402

NI, NJ = 8, 5


def write_message(f, short_name, type_of_level, level, step, *, date=20240101, time=0, step_type="instant",
                  bitmap=False, seed=0, packing=None, grid="regular_ll"):
    """One GRIB2 message from ecCodes' GRIB2 sample, written to ``f``; returns its values (NaN where absent)."""
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        eccodes.codes_set_long(h, "Ni", NI)
        eccodes.codes_set_long(h, "Nj", NJ)
        eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", 60.0)
        eccodes.codes_set(h, "latitudeOfLastGridPointInDegrees", 60.0 - (NJ - 1) * 2.5)
        eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", 0.0)
        eccodes.codes_set(h, "longitudeOfLastGridPointInDegrees", (NI - 1) * 2.5)
        eccodes.codes_set(h, "iDirectionIncrementInDegrees", 2.5)
        eccodes.codes_set(h, "jDirectionIncrementInDegrees", 2.5)
        eccodes.codes_set(h, "dataDate", date)
        eccodes.codes_set(h, "dataTime", time)
        eccodes.codes_set(h, "typeOfLevel", type_of_level)
        eccodes.codes_set(h, "level", level)
        eccodes.codes_set(h, "shortName", short_name)
        if step_type == "instant":
            eccodes.codes_set(h, "stepRange", str(step))
        else:
            eccodes.codes_set(h, "stepType", step_type)
            eccodes.codes_set(h, "stepRange", f"0-{step}")
        if packing:
            eccodes.codes_set(h, "packingType", packing)
        values = 250 + 30 * np.random.default_rng(seed).random(NI * NJ)
        if bitmap:
            eccodes.codes_set(h, "bitmapPresent", 1)
            eccodes.codes_set(h, "missingValue", 9999)
            values[::3] = 9999
        eccodes.codes_set_values(h, values)
        eccodes.codes_write(h, f)
    finally:
        eccodes.codes_release(h)
    return np.where(values == 9999, np.nan, values) if bitmap else values


def write_mixed(path):
    """Two pressure-level parameters, 2 m temperature with a bitmap, accumulated precipitation, 10 m wind."""
    with open(path, "wb") as f:
        for step in (0, 6):
            for level in (850, 500):
                write_message(f, "t", "isobaricInhPa", level, step, seed=level + step)
                write_message(f, "u", "isobaricInhPa", level, step, seed=level + step + 1)
            write_message(f, "2t", "heightAboveGround", 2, step, bitmap=True, seed=step)
            write_message(f, "10u", "heightAboveGround", 10, step, seed=step + 3)
            write_message(f, "tp", "surface", 0, step + 3, step_type="accum", seed=step + 7)
    return path


def open_cfgrib(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""}, **kwargs).load()


def cfgrib_datasets(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [ds.load() for ds in cfgrib.open_datasets(str(path), backend_kwargs={"indexpath": ""})]


def decoded(ds: xr.Dataset) -> xr.Dataset:
    """A virtual dataset read and CF-decoded (values, datetimes, timedeltas)."""
    return xr.decode_cf(ds.vz.compute(), decode_timedelta=True)


def assert_like_cfgrib(ours: xr.Dataset, theirs: xr.Dataset) -> None:
    """Same variables, dimensions, coordinates, values (NaN where cfgrib has NaN) and variable attributes."""
    assert sorted(ours.data_vars) == sorted(theirs.data_vars)
    assert sorted(ours.coords) == sorted(theirs.coords)
    for name in theirs.variables:
        a, b = ours[name], theirs[name]
        assert a.dims == b.dims, name
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        np.testing.assert_array_equal(a.values, b.values, err_msg=name)
    for name in theirs.data_vars:
        expected = dict(theirs[name].attrs)
        got = {k: v for k, v in ours[name].attrs.items() if k != "coordinates"}
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            if isinstance(value, (list, tuple, np.ndarray)):  # e.g. GRIB_pl of reduced Gaussian grids
                np.testing.assert_array_equal(got[key], value, err_msg=f"{name}.{key}")
            else:
                assert got[key] == value and type(got[key]) is type(value), (name, key, got[key], value)
    expected_attrs = {k: v for k, v in theirs.attrs.items() if k != "history"}
    assert {k: v for k, v in ours.attrs.items()} == expected_attrs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed(tmp_path_factory.mktemp("grib") / "mixed.grib2")


@pytest.fixture(scope="module")
def one_cube(tmp_path_factory):
    """One hypercube: t and u on two pressure levels, three steps, two reference times, one message missing."""
    path = tmp_path_factory.mktemp("grib") / "cube.grib2"
    with open(path, "wb") as f:
        for time in (0, 1200):
            for step in (0, 3, 6):
                for level in (1000, 850):
                    write_message(f, "t", "isobaricInhPa", level, step, time=time, seed=time + step + level)
                    if (time, step, level) != (1200, 3, 850):
                        write_message(f, "u", "isobaricInhPa", level, step, time=time, seed=time + step + 7)
    return path


def test_detected_from_the_head(mixed):
    from vzdask.parsers import PARSERS

    assert GRIBParser in PARSERS and "GRIBParser" in vzdask.parsers.__all__
    registry = ObjectStoreRegistry.default()
    assert isinstance(detect_parser(f"file://{mixed}", registry), GRIBParser)
    assert GRIBParser.guess_can_open(b"GRIB\x00\x00\x00\x02" + bytes(8), "x")
    assert not GRIBParser.guess_can_open(b"\x89HDF\r\n\x1a\n", "x.grib2")


def test_one_hypercube_matches_cfgrib_open_dataset(one_cube):
    ours = decoded(vzdask.open_virtual_dataset(str(one_cube)))
    theirs = open_cfgrib(one_cube)
    assert dict(ours.sizes) == {"time": 2, "step": 3, "isobaricInhPa": 2, "latitude": NJ, "longitude": NI}
    assert_like_cfgrib(ours, theirs)
    assert np.isnan(ours["u"].sel(isobaricInhPa=850).isel(time=1, step=1)).all()  # no message: NaN, as cfgrib
    assert ours["step"].dtype == np.dtype("timedelta64[ns]")


def test_zarr_reads_the_store_through_the_registered_codec(one_cube):
    store = GRIBParser()(f"file://{one_cube}", ObjectStoreRegistry.default())
    ds = xr.open_zarr(store, consolidated=False, zarr_format=3)
    theirs = open_cfgrib(one_cube)
    np.testing.assert_array_equal(ds["t"].values, theirs["t"].values)
    np.testing.assert_array_equal(ds["u"].values, theirs["u"].values)
    assert store.group["t"].metadata.codecs[0].to_dict() == {"name": "numcodecs.vzdask_grib"}


def test_hypercubes_as_cfgrib_open_datasets_splits_them(mixed):
    theirs = cfgrib_datasets(mixed)
    store = GRIBParser()(f"file://{mixed}", ObjectStoreRegistry.default())
    names = store.group.attributes["GRIB_groups"]
    assert names == ["heightAboveGround_10", "heightAboveGround_2", "isobaricInhPa", "surface"]
    assert len(theirs) == len(names)
    for name in names:
        ours = decoded(vzdask.open_virtual_dataset(str(mixed), group=name))
        (match,) = [ds for ds in theirs if sorted(ds.data_vars) == sorted(ours.data_vars)]
        assert_like_cfgrib(ours, match)
    tree = xr.open_datatree(store, engine="zarr", zarr_format=3, consolidated=False)  # the groups as a DataTree
    assert sorted(tree.children) == sorted(names)
    np.testing.assert_array_equal(tree["surface"]["tp"].values, [ds for ds in theirs if "tp" in ds][0]["tp"].values)


def test_bitmap_points_are_nan_exactly_where_cfgrib_has_nan(mixed):
    ours = decoded(vzdask.open_virtual_dataset(str(mixed), group="heightAboveGround_2"))
    theirs = [ds for ds in cfgrib_datasets(mixed) if "t2m" in ds][0]
    nan = np.isnan(ours["t2m"].values)
    assert nan.any() and not nan.all()
    np.testing.assert_array_equal(nan, np.isnan(theirs["t2m"].values))
    np.testing.assert_array_equal(ours["t2m"].values, theirs["t2m"].values)


def test_group_and_drop_variables(mixed):
    with pytest.raises(ParseError, match=r"no group 'nope'.*isobaricInhPa"):
        vzdask.open_virtual_dataset(str(mixed), group="nope")
    ds = vzdask.open_virtual_dataset(str(mixed), group="isobaricInhPa", drop_variables=["u"])
    assert list(ds.data_vars) == ["t"]


def test_inline_policy_inlines_messages(one_cube):
    ds = vzdask.open_virtual_dataset(str(one_cube), inline=vzdask.InlinePolicy(variables=["t"]))
    counts = ds["t"].data.manifest.count()
    assert counts["virtual"] == 0 and counts["inlined"] == 12
    assert ds["u"].data.manifest.count() == {"virtual": 11, "inlined": 0, "missing": 1}
    np.testing.assert_array_equal(decoded(ds)["t"].values, open_cfgrib(one_cube)["t"].values)


@pytest.mark.parametrize("packing", ["grid_ccsds", "grid_complex_spatial_differencing", "grid_ieee", "grid_jpeg"])
def test_other_packings(tmp_path, packing):
    path = tmp_path / f"{packing}.grib2"
    with open(path, "wb") as f:
        for step in (0, 6):
            write_message(f, "t", "isobaricInhPa", 500, step, packing=packing, bitmap=step == 6, seed=step)
    assert_like_cfgrib(decoded(vzdask.open_virtual_dataset(str(path))), open_cfgrib(path))


def test_truncated_message_names_file_and_message(mixed, tmp_path):
    data = mixed.read_bytes()
    path = tmp_path / "truncated.grib2"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ParseError, match=r"truncated\.grib2: GRIB message 14 at byte \d+: truncated"):
        vzdask.open_virtual_dataset(str(path))


def test_unsupported_packing_names_file_and_message(tmp_path):
    good = tmp_path / "good.grib2"
    with open(good, "wb") as f:
        write_message(f, "t", "isobaricInhPa", 500, 0)
        write_message(f, "t", "isobaricInhPa", 500, 6)
    data = bytearray(good.read_bytes())
    second = data.find(b"GRIB", 4)
    # section 5 (data representation) of the second message: its template number (octets 10-11) made unknown
    position = second + 16
    while data[position + 4] != 5:
        position += int.from_bytes(data[position : position + 4], "big")
    data[position + 9 : position + 11] = (65000).to_bytes(2, "big")
    bad = tmp_path / "bad.grib2"
    bad.write_bytes(bytes(data))
    with pytest.raises(ParseError, match=rf"bad\.grib2: GRIB message 2 at byte {second}"):
        vzdask.open_virtual_dataset(str(bad))


def test_not_grib2_is_refused(tmp_path):
    path = tmp_path / "edition1.grib"
    h = eccodes.codes_grib_new_from_samples("GRIB1")
    with open(path, "wb") as f:
        eccodes.codes_write(h, f)
    eccodes.codes_release(h)
    with pytest.raises(ParseError, match=r"edition1\.grib: GRIB message 1 at byte 0: GRIB edition 1 is not supported"):
        vzdask.open_virtual_dataset(str(path))


def test_kerchunk_references_read_by_fsspec_and_zarr(one_cube, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    ds = vzdask.open_virtual_dataset(str(one_cube), loadable_variables=[])
    refs = tmp_path / "refs.json"
    ds.vz.to_kerchunk(str(refs), format="json")
    document = json.loads(refs.read_text())
    zarray = json.loads(document["refs"]["t/.zarray"])
    assert zarray["compressor"] == {"id": "vzdask_grib"} and zarray["dtype"] == "<f4"
    mapper = fsspec.filesystem("reference", fo=str(refs), remote_protocol="file").get_mapper("")
    read = xr.open_dataset(mapper, engine="zarr", consolidated=False, zarr_format=2, decode_timedelta=True)
    theirs = open_cfgrib(one_cube)
    np.testing.assert_array_equal(read["t"].values, theirs["t"].values)
    np.testing.assert_array_equal(read["u"].values, theirs["u"].values)
    # and back through vzdask's own kerchunk parser
    again = decoded(vzdask.open_virtual_dataset(str(refs)))
    np.testing.assert_array_equal(again["u"].values, theirs["u"].values)


def test_many_files_along_time(tmp_path):
    paths = [str(p) for p in write_days(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = xr.open_mfdataset(paths, engine="cfgrib", combine="nested", concat_dim="time",
                                   backend_kwargs={"indexpath": ""}).load()
    ours = vzdask.open_virtual_mfdataset(paths, combine="nested", concat_dim="time")
    assert ours["t"].shape == (3, 2, 2, NJ, NI)
    np.testing.assert_array_equal(decoded(ours)["t"].values, theirs["t"].values)
    read = vzdask.open_mfdataset(paths, combine="nested", concat_dim="time")
    np.testing.assert_array_equal(read["t"].values, theirs["t"].values)
    np.testing.assert_array_equal(read["time"].values, theirs["time"].values)


IDX_NAMES = {"t": "TMP", "u": "UGRD", "2t": "TMP", "10u": "UGRD", "tp": "APCP"}


def write_idx(path):
    """The wgrib2/NOAA index of ``path`` (``n:offset:d=YYYYMMDDHH:NAME:level:forecast:``), from ecCodes' keys."""
    lines = []
    with open(path, "rb") as f:
        number = 0
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            number += 1
            get = lambda key: eccodes.codes_get(h, key)  # noqa: E731
            level = {"isobaricInhPa": f"{get('level')} mb", "heightAboveGround": f"{get('level')} m above ground",
                     "surface": "surface"}[get("typeOfLevel")]
            if get("stepType") == "accum":
                forecast = f"{get('startStep')}-{get('endStep')} hour acc fcst"
            else:
                forecast = "anl" if get("endStep") == 0 else f"{get('endStep')} hour fcst"
            date = f"{get('dataDate')}{get('dataTime') // 100:02d}"
            lines.append(f"{number}:{eccodes.codes_get(h, 'offset', int)}:d={date}:{IDX_NAMES[get('shortName')]}:{level}:{forecast}:")
            eccodes.codes_release(h)
    idx = path.with_name(path.name + ".idx")
    idx.write_text("\n".join(lines) + "\n")
    return idx


def test_index_file_gives_the_scans_dataset(one_cube, mixed, tmp_path):
    """The index gives offsets; the heads give cfgrib's names and keys: the same dataset as the scan."""
    for source in (one_cube, mixed):
        path = tmp_path / source.name
        path.write_bytes(source.read_bytes())
        idx = write_idx(path)
        if source is one_cube:
            assert idx.read_text().splitlines()[0] == "1:0:d=2024010100:TMP:1000 mb:anl:"
        for group in GRIBParser()(f"file://{path}", ObjectStoreRegistry.default()).group.attributes.get(
                "GRIB_groups", [None]):
            ours = decoded(vzdask.open_virtual_dataset(str(path), parser=GRIBParser(idx=True, group=group)))
            scanned = decoded(vzdask.open_virtual_dataset(str(path), parser=GRIBParser(group=group)))
            assert ours.identical(scanned), group
    ours = decoded(vzdask.open_virtual_dataset(str(tmp_path / one_cube.name), parser=GRIBParser(idx=True)))
    assert_like_cfgrib(ours, open_cfgrib(one_cube))


def _head_length(data, offset):
    """Bytes from a message's start to the end of section 5's first 11 bytes (its section headers)."""
    position = offset + 16
    while data[position + 4] != 5:
        position += int.from_bytes(data[position : position + 4], "big")
    return position + 11 - offset


def test_index_file_reads_heads_not_bodies(mixed, tmp_path):
    """Messages whose bodies are zeros open through the index (the scan refuses them); reading values fails."""
    from vzdask.parsers.grib import clear_caches

    data = bytearray(mixed.read_bytes())
    path = tmp_path / "damaged.grib2"
    starts = [i for i in range(len(data) - 16) if data[i : i + 4] == b"GRIB" and data[i + 7] == 2]
    for start in starts[1:]:  # every message but the first: zeros after its section headers
        length = int.from_bytes(data[start + 8 : start + 16], "big")
        head = _head_length(data, start)
        data[start + head : start + length] = bytes(length - head)
    path.write_bytes(bytes(data))
    write_idx(mixed).replace(path.with_name("damaged.grib2.idx"))
    with pytest.raises(ParseError, match=r"damaged\.grib2: GRIB message 2 at byte \d+: damaged"):
        vzdask.open_virtual_dataset(str(path))
    clear_caches()  # nothing known: ecCodes reads each kind of head once (from the whole message)
    for _ in range(2):  # then from what it said
        store = GRIBParser(idx=True)(f"file://{path}", ObjectStoreRegistry.default())
        assert sorted(store.group.attributes["GRIB_groups"]) == [
            "heightAboveGround_10", "heightAboveGround_2", "isobaricInhPa", "surface"]
    ds = vzdask.open_virtual_dataset(str(path), parser=GRIBParser(idx=True, group="surface"))
    assert ds["tp"].attrs["GRIB_stepType"] == "accum"
    np.testing.assert_array_equal(ds["step"].values, np.array([3, 9], "timedelta64[h]"))
    with pytest.raises(ValueError, match="ecCodes cannot"):  # the bodies are zeros: only reading values fails
        ds.vz.compute()


def test_hopping_from_head_to_head_finds_what_the_window_scan_finds(mixed, one_cube, tmp_path):
    """Local files are read head by head (``hop_messages``); other stores in windows: the same messages and keys."""
    many = tmp_path / "many.grib2"  # small messages past the first 64 KiB: read in windows of several
    with open(many, "wb") as f:
        for step in range(120):
            for level in (850, 500):
                write_message(f, "t", "isobaricInhPa", level, step, seed=step + level)
    assert many.stat().st_size > 2**16
    from vzdask.object_io import read_ranges
    from vzdask.parsers.common import ObstoreFile
    from vzdask.parsers.grib import (HOP_LENGTH, Catalogue, file_heads, head_size, hop_messages, read_head,
                                     scan_messages)

    large = tmp_path / "large.grib2"  # messages longer than HOP_LENGTH: hopped over, their bodies not read
    with open(large, "wb") as f:
        for step in (0, 6, 12):
            h = eccodes.codes_grib_new_from_samples("GRIB2")
            for key, value in (("Ni", 400), ("Nj", 200), ("bitsPerValue", 32), ("stepRange", str(step))):
                eccodes.codes_set(h, key, value)
            eccodes.codes_set_values(h, np.random.default_rng(step).random(400 * 200))
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
            write_message(f, "t", "isobaricInhPa", 500, step, seed=step)  # and a small one between them
    assert large.stat().st_size > 3 * HOP_LENGTH
    registry = ObjectStoreRegistry.default()
    for path in (mixed, one_cube, many, large):
        url = f"file://{path}"
        opened = ObstoreFile(url, registry)
        windows, hops = Catalogue(url), Catalogue(url)
        assert scan_messages(opened, windows) == len(found := hop_messages(opened))
        store, key = registry.resolve(url)
        file_heads(found, hops, lambda starts, lengths: read_ranges(store, key, starts, lengths, url=url))
        message = bytes(found[0][3])
        head = message[:20]
        for _ in range(4):  # what head_size asks for, read, is enough within four rounds (one per section)
            head = message[: head_size(head)]
        assert read_head(head) is not None and read_head(head[:-1]) is None
        short = Catalogue(url)  # heads cut short: read again up to section 5
        file_heads([(n, o, length, head[:20]) for n, o, length, head in found], short,
                   lambda starts, lengths: read_ranges(store, key, starts, lengths, url=url))
        for other in (hops, short):
            assert list(windows.variables) == list(other.variables)
            for a, b in zip(windows.variables.values(), other.variables.values()):
                assert (a.name, a.attributes, a.fields) == (b.name, b.attributes, b.fields)


def test_section_headers_give_eccodes_keys(tmp_path):
    """Keys taken from a head's signature equal ecCodes' own, for every message: instant, accumulated,
    ensemble (templates 4.0, 4.1, 4.8, 4.11), several dates and steps; unknown layouts fall back (None)."""
    from vzdask.parsers.grib import clear_caches, known_keys, learn, message_keys, read_head

    messages = []
    for template in (0, 1, 8, 11):
        for date, hour in ((20240101, 0), (20240229, 1800), (20250101, 600)):
            for step in (0, 6, 12, 120):
                h = eccodes.codes_grib_new_from_samples("GRIB2")
                eccodes.codes_set(h, "productDefinitionTemplateNumber", template)
                if template in (1, 11):
                    eccodes.codes_set(h, "perturbationNumber", 2)
                    eccodes.codes_set(h, "numberOfForecastsInEnsemble", 10)
                eccodes.codes_set(h, "dataDate", date)
                eccodes.codes_set(h, "dataTime", hour)
                if template in (8, 11):
                    eccodes.codes_set(h, "shortName", "tp")
                    eccodes.codes_set(h, "stepRange", f"{step}-{step + 6}")
                else:
                    eccodes.codes_set(h, "stepRange", str(step))
                messages.append(eccodes.codes_get_message(h))
                eccodes.codes_release(h)
    clear_caches()
    fast = 0
    for i, message in enumerate(messages):
        truth = message_keys(message, f"message {i}")
        head = read_head(message)
        assert head is not None, i
        keys = known_keys(head)
        if keys is None:
            learn(head, truth)
        else:
            fast += 1
            assert keys == truth, (i, keys, truth)
    assert fast == len(messages) - 4  # one ecCodes read per template (the signature leaves out time and step)
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    eccodes.codes_set(h, "indicatorOfUnitOfTimeRange", 0)  # minutes: ecCodes picks the step unit, so ask it
    eccodes.codes_set(h, "forecastTime", 90)
    assert read_head(eccodes.codes_get_message(h)) is None
    eccodes.codes_release(h)
    assert read_head(b"GRIB") is None and read_head(messages[0][:60]) is None


def test_bad_index_file_names_it_and_the_line(one_cube, tmp_path):
    path = tmp_path / one_cube.name
    path.write_bytes(one_cube.read_bytes())
    path.with_name(path.name + ".idx").write_text("1:0:d=2024010100:TMP:1000 mb:anl:\nnot an index line\n")
    with pytest.raises(ParseError, match=r"cube\.grib2\.idx: line 2 is not a wgrib2 index line"):
        GRIBParser(idx=True)(f"file://{path}", ObjectStoreRegistry.default())


def write_days(directory, days=(1, 2, 3)):
    paths = []
    for day in days:
        path = directory / f"gfs.202401{day:02d}.grib2"
        with open(path, "wb") as f:
            for step in (0, 6):
                write_message(f, "t", "isobaricInhPa", 500, step, date=20240100 + day, seed=day * 10 + step)
                write_message(f, "t", "isobaricInhPa", 850, step, date=20240100 + day, seed=day * 10 + step + 1,
                              bitmap=day == 2)
        paths.append(path)
    return paths


def test_files_on_s3_parsed_on_the_cluster(tmp_path, dask_cluster, s3_server, s3_bucket):
    from obstore.store import S3Store

    bucket, s3 = s3_bucket
    local = write_days(tmp_path)
    remote = []
    for path in local:
        s3.upload_file(str(path), bucket, path.name)
        s3.upload_file(str(write_idx(path)), bucket, path.name + ".idx")
        remote.append(f"s3://{bucket}/{path.name}")
    registry = ObjectStoreRegistry({f"s3://{bucket}": S3Store(bucket, **s3_server.store_kwargs())},
                                   create_missing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = xr.open_mfdataset([str(p) for p in local], engine="cfgrib", combine="nested", concat_dim="time",
                                   backend_kwargs={"indexpath": ""}).load()
    scanned = vzdask.open_virtual_mfdataset(remote, registry=registry, parallel=dask_cluster, combine="nested",
                                            concat_dim="time")
    indexed = vzdask.open_virtual_mfdataset(remote, registry=registry, parallel=dask_cluster, combine="nested",
                                            concat_dim="time", parser=GRIBParser(idx=True))
    np.testing.assert_array_equal(decoded(scanned)["t"].values, theirs["t"].values)
    np.testing.assert_array_equal(decoded(indexed)["t"].values, theirs["t"].values)
    with dask_cluster.as_current():  # read on the workers
        read = vzdask.open_mfdataset(remote, registry=registry, combine="nested", concat_dim="time")
        np.testing.assert_array_equal(read["t"].values, theirs["t"].values)


def test_codec_registrations():
    import numcodecs
    from zarr.registry import get_codec_class

    from vzdask.grib_codec import GribCodec, GribNumcodec

    assert get_codec_class("numcodecs.vzdask_grib") is GribCodec
    assert isinstance(numcodecs.get_codec({"id": "vzdask_grib"}), GribNumcodec)
    assert GribCodec.from_dict({"name": "numcodecs.vzdask_grib"}).to_dict() == {"name": "numcodecs.vzdask_grib"}
    with pytest.raises(NotImplementedError, match="GRIB messages cannot be written"):
        GribNumcodec().encode(np.zeros(3, "f4"))
    with pytest.raises(ValueError, match=r"ecCodes cannot (read|decode the values of) this GRIB message \(4 bytes"):
        GribNumcodec().decode(b"GRIB")


@pytest.mark.parametrize("sample", ["regular_gg_sfc_grib2", "reduced_gg_pl_32_grib2", "rotated_ll_sfc_grib2",
                                    "polar_stereographic_pl_grib2"])
def test_other_grids_match_cfgrib(tmp_path, sample):
    """Gaussian (latitude/longitude), reduced Gaussian (values), rotated and polar stereographic ((y, x), 2-D)."""
    path = tmp_path / f"{sample}.grib2"
    with open(path, "wb") as f:
        for step in (0, 6):
            h = eccodes.codes_grib_new_from_samples(sample)
            eccodes.codes_set(h, "stepRange", str(step))
            size = eccodes.codes_get_size(h, "values")
            values = 250 + 30 * np.random.default_rng(step).random(size)
            if step == 6:
                eccodes.codes_set(h, "bitmapPresent", 1)
                values[::5] = eccodes.codes_get(h, "missingValue")
            eccodes.codes_set_values(h, values)
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
    ours = decoded(vzdask.open_virtual_dataset(str(path)))
    assert_like_cfgrib(ours, open_cfgrib(path))


def test_icechunk_holds_the_messages_as_virtual_chunks(one_cube, tmp_path):
    pytest.importorskip("icechunk")
    from icechunk_repos import Repo

    repo = Repo(tmp_path / "repo", one_cube.parent)
    session = repo.writable()
    vzdask.open_virtual_dataset(str(one_cube)).vz.to_icechunk(session, commit="GRIB messages")
    read = repo.read()
    theirs = open_cfgrib(one_cube)
    np.testing.assert_array_equal(read["u"].values, theirs["u"].values)
    np.testing.assert_array_equal(read["valid_time"].values, theirs["valid_time"].values)


def test_ensemble_members_are_the_number_dimension(tmp_path):
    path = tmp_path / "ens.grib2"
    with open(path, "wb") as f:
        for number in (0, 1, 2):
            for step in (0, 6):
                h = eccodes.codes_grib_new_from_samples("GRIB2")
                eccodes.codes_set(h, "productDefinitionTemplateNumber", 1)  # an ensemble member's forecast
                eccodes.codes_set(h, "typeOfEnsembleForecast", 3)
                eccodes.codes_set(h, "perturbationNumber", number)
                eccodes.codes_set(h, "numberOfForecastsInEnsemble", 3)
                eccodes.codes_set(h, "stepRange", str(step))
                eccodes.codes_set_values(h, np.random.default_rng(number * 10 + step).random(496))
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)
    ours = decoded(vzdask.open_virtual_dataset(str(path)))
    assert ours["t"].dims[:2] == ("number", "step")
    assert_like_cfgrib(ours, open_cfgrib(path))


def write_layout_file(path, *, date, time, missing_every, steps=(0, 6)):
    """t and u on two levels, 2 m temperature with a bitmap (``missing_every``: message lengths differ), tp."""
    with open(path, "wb") as f:
        for step in steps:
            for level in (850, 500):
                write_message(f, "t", "isobaricInhPa", level, step, date=date, time=time, seed=date + level + step)
                write_message(f, "u", "isobaricInhPa", level, step, date=date, time=time, seed=date + level + 1)
            h = eccodes.codes_grib_new_from_samples("GRIB2")
            for key, value in (("Ni", NI), ("Nj", NJ), ("dataDate", date), ("dataTime", time),
                               ("typeOfLevel", "heightAboveGround"), ("level", 2), ("shortName", "2t"),
                               ("stepRange", str(step)), ("bitmapPresent", 1), ("missingValue", 9999)):
                eccodes.codes_set(h, key, value)
            values = 250 + np.arange(NI * NJ, dtype=float)
            values[::missing_every] = 9999
            eccodes.codes_set_values(h, values)
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
            write_message(f, "tp", "surface", 0, step + 3, step_type="accum", date=date, time=time, seed=step)
    return path


def test_files_of_one_layout_reuse_it_and_equal_a_fresh_parse(tmp_path):
    """A second file of the first's layout (other reference time, other message lengths) takes the layout
    worked out for the first: its store equals the one a parse with every cache forgotten gives, its values
    cfgrib's. Another layout (other steps) is worked out anew."""
    from vzdask.parsers import grib

    first = write_layout_file(tmp_path / "a.grib2", date=20240101, time=0, missing_every=3)
    second = write_layout_file(tmp_path / "b.grib2", date=20240315, time=1200, missing_every=2)
    other = write_layout_file(tmp_path / "c.grib2", date=20240101, time=0, missing_every=3, steps=(0, 12))
    assert first.stat().st_size != second.stat().st_size
    for path in (first, second, other):
        write_idx(path)
    registry = ObjectStoreRegistry.default()
    for idx in (False, True):
        grib.clear_caches()
        fresh = {}
        for path in (second, other):
            fresh[path] = GRIBParser(idx=idx)(f"file://{path}", registry)
            grib.clear_caches()
        GRIBParser(idx=idx)(f"file://{first}", registry)
        assert len(grib._LAYOUTS) == 1
        for path, layouts in ((second, 1), (other, 2)):
            store = GRIBParser(idx=idx)(f"file://{path}", registry)
            assert len(grib._LAYOUTS) == layouts, path
            for name in store.group.attributes["GRIB_groups"]:
                ours, theirs = store.group.groups[name], fresh[path].group.groups[name]
                assert list(ours.arrays) == list(theirs.arrays) and ours.attributes == theirs.attributes
                for key, array in ours.arrays.items():
                    assert array.metadata == theirs.arrays[key].metadata, (name, key)
                    assert array.manifest == theirs.arrays[key].manifest, (name, key)
    for path in (second, other):  # (the layouts are known now: these parses take them)
        theirs = cfgrib_datasets(path)
        for name in GRIBParser()(f"file://{path}", registry).group.attributes["GRIB_groups"]:
            for idx in (False, True):
                ours = decoded(vzdask.open_virtual_dataset(str(path), parser=GRIBParser(idx=idx, group=name)))
                (match,) = [ds for ds in theirs if sorted(ds.data_vars) == sorted(ours.data_vars)]
                assert_like_cfgrib(ours, match)


def test_messages_decode_into_the_array_as_decode_message_does(tmp_path):
    """The codec writes a message's values straight into the array (ecCodes' C API): the same values as
    ``decode_message`` and cfgrib (packings, bitmaps, rows in alternating directions), the same errors."""
    import gc

    from vzdask.grib_codec import decode_message, decode_message_into

    path = tmp_path / "rows.grib2"
    with open(path, "wb") as f:
        for step, packing in enumerate(("grid_simple", "grid_complex_spatial_differencing", "grid_ccsds")):
            write_message(f, "t", "isobaricInhPa", 500, step, packing=packing, bitmap=step == 1, seed=step)
    with open(path, "ab") as f:
        write_message(f, "t", "isobaricInhPa", 500, 9)
    with open(path, "rb") as f:  # the same message, every other row running east to west
        h = eccodes.codes_grib_new_from_file(f)
        while (following := eccodes.codes_grib_new_from_file(f)) is not None:
            eccodes.codes_release(h)
            h = following
    eccodes.codes_set(h, "alternativeRowScanning", 1)
    eccodes.codes_set_values(h, np.arange(NI * NJ, dtype=float))
    with open(path, "ab") as f:
        eccodes.codes_set(h, "stepRange", "12")
        eccodes.codes_write(h, f)
    eccodes.codes_release(h)
    data = path.read_bytes()
    messages, position = [], 0
    while position < len(data):
        length = int.from_bytes(data[position + 8 : position + 16], "big")
        messages.append(memoryview(data)[position : position + length])
        position += length
    for message in messages:
        expected = decode_message(message)
        for out in (np.empty((NJ, NI), np.float32), np.empty((NJ, NI), np.float64)):
            decode_message_into(message, out)
            np.testing.assert_array_equal(out.ravel(), expected.astype(out.dtype))
    rows = np.empty((NJ, NI), np.float32)
    decode_message_into(messages[-1], rows)
    assert rows[0, -1] == NI - 1
    assert rows[1, 0] == 2 * NI - 1  # the second row, put back west to east
    ours = decoded(vzdask.open_virtual_dataset(str(path)))["t"].values
    np.testing.assert_array_equal(ours, open_cfgrib(path)["t"].values)
    with pytest.raises(ValueError, match=rf"GRIB message holds {NI * NJ} values, the chunk has shape \(3,\)"):
        decode_message_into(messages[0], np.empty(3, np.float32))
    body = bytearray(messages[1])
    body[_head_length(body, 0) :] = bytes(len(body) - _head_length(body, 0))  # a damaged message
    for bad in (memoryview(bytes(body)), b"GRIBxxxx", b"nope"):
        with pytest.raises(ValueError, match="ecCodes cannot") as theirs:
            decode_message(bad)
        for _ in range(3):  # the same error, and nothing left behind that breaks later
            with pytest.raises(ValueError) as ours:
                decode_message_into(bad, np.empty((NJ, NI), np.float32))
            assert str(ours.value) == str(theirs.value)
            gc.collect()


@pytest.mark.parametrize("sample", ["GRIB1", "GRIB2", "reduced_gg_pl_32_grib2"])
def test_a_truncated_message_is_refused_before_ecCodes_sees_it(sample):
    """ecCodes crashes the process on a message cut inside a section's length field (for GRIB2: at 8-15 bytes, or
    just before ``7777``): every cut of every sample is a clear ValueError, in a child process that must survive."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import eccodes, numpy as np
        from vzdask.grib_codec import decode_message, decode_message_into
        from vzdask.parsers.grib import message_keys
        h = eccodes.codes_grib_new_from_samples({sample!r})
        message = eccodes.codes_get_message(h)
        eccodes.codes_release(h)
        refused = 0
        for n in range(8, len(message)):
            for read in (decode_message, lambda m: decode_message_into(m, np.empty(1, "f4")),
                         lambda m: message_keys(m, "here")):
                try:
                    read(message[:n])
                except ValueError as err:  # (ParseError is a ValueError)
                    refused += "truncated" in str(err)
        print(refused, len(message))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    refused, size = map(int, out.stdout.split())
    assert refused == 3 * (size - 8)
