"""Combine many files' virtual parts in one step, for the common case: files that differ along one dimension.

``xr.combine_by_coords`` over N files builds N Datasets (indexes,
alignment) and concatenates them pairwise-checked; when every file has the
same variables, dimensions and other coordinates, the result is just each
variable concatenated along the one dimension whose coordinate differs. This
module recognises that case and builds the one Dataset directly, with the
very same result; in any other case it answers ``None`` and the caller uses
xarray (which then also raises xarray's errors).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from vzdask._compat import variable_data, variable_fastpath
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.manifest import ChunkManifest
from vzdask.xarray import VirtualParts, decode_loaded

#: The combine keywords this path reproduces (``open_virtual_mfdataset``'s defaults); ``join`` does not
#: matter here because the coordinates of every other dimension are required to be equal.
HANDLED = {"data_vars": "all", "coords": "minimal", "compat": "override", "combine_attrs": "override"}


def combine_parts(
    parts: Sequence[VirtualParts], combine: str, concat_dim, kwargs: dict
) -> xr.Dataset | None:
    """The combined Dataset of ``parts`` (in file order) as xarray would make it, or None if not handled.

    Parameters
    ----------
    parts : sequence of VirtualParts
        One per file.
    combine : {"by_coords", "nested"}
        ``"nested"`` is handled for a flat list along one existing dimension, or along a new one
        (files with equal coordinates stacked, as many scenes of one grid).
    concat_dim : str or None
        The nested concatenation dimension.
    kwargs : dict
        ``data_vars``, ``coords``, ``compat``, ``join``, ``combine_attrs`` as given to xarray.

    Returns
    -------
    xarray.Dataset or None
        None when the files are not uniform or the options need xarray.
    """
    if len(parts) < 2 or any(kwargs.get(k) != v for k, v in HANDLED.items()):
        return None
    parts = _same_raw_times(parts)
    first = parts[0]
    sizes = _uniform_sizes(parts)
    if sizes is None:
        return None
    indexed = [d for d in _dims(first) if d in first.variables]
    if any(d not in first.loaded or first.variables[d].dims != (d,) or d not in first.coord_names for d in indexed):
        return None  # a dimension coordinate without an index: xarray decides (and raises)
    differing = [d for d in indexed if not _all_equal([p.variables[d] for p in parts])]
    if combine == "by_coords":
        if len(differing) != 1:
            return None
        dim = differing[0]
        order = _order_by_coordinate([p.variables[dim] for p in parts])
        if order is None:
            return None
        parts = [parts[i] for i in order]
        first = parts[0]  # whose attrs, encodings and other coordinates the result keeps, as in xarray
    elif combine == "nested" and isinstance(concat_dim, str) and concat_dim in _dims(first):
        dim = concat_dim
        if any(d != dim for d in differing):
            return None  # another dimension's coordinates differ: xarray aligns them
    elif combine == "nested" and isinstance(concat_dim, str) and concat_dim not in first.variables:
        if differing or any(len(n) > 1 for n in sizes.values()):
            return None  # xarray aligns (outer join) files whose coordinates or sizes differ
        return _stack_parts(parts, concat_dim)
    else:
        return None
    if any(len(n) > 1 for d, n in sizes.items() if d != dim):
        return None  # another dimension changes size between files
    variables = {}
    for name, var in first.variables.items():
        if name in first.raw_times:
            variables[name] = (_concat_times([p.variables[name] for p in parts], name, first.decode_times)
                               if dim in var.dims else decode_loaded(name, var, first.decode_times))
            if variables[name] is None:
                return None
        elif dim in var.dims:
            variables[name] = _concat([p.variables[name] for p in parts], dim)
            if variables[name] is None:
                return None
        elif name in first.coord_names:
            variables[name] = var  # coords="minimal", compat="override": the first file's
        else:
            return None  # data_vars="all" would broadcast it along ``dim``
    if dim in variables and combine == "by_coords" and not _monotonic(variables[dim]):
        return None  # xarray refuses a non-monotonic global index
    return VirtualParts(variables, first.coord_names, first.loaded, first.attrs).to_dataset()


def _stack_parts(parts: Sequence[VirtualParts], dim: str) -> xr.Dataset | None:
    """``xr.concat`` of uniform files along a new dimension ``dim``, as ``combine_nested`` makes it.

    With ``data_vars="all"`` every data variable gains ``dim`` first (virtual
    ones stacked by their manifests in one step, not expanded and joined file
    by file); with ``coords="minimal"`` and ``compat="override"`` every
    coordinate is the first file's; ``dim`` has no coordinate.
    """
    return _stacked(parts[0], dim, lambda name: _concat([p.variables[name] for p in parts], dim))


def _stacked(first: VirtualParts, dim: str, stack) -> xr.Dataset | None:
    """The Dataset of ``_stack_parts``: ``stack(name)`` gives each data variable stacked (None: not handled)."""
    variables = {}
    for name, var in first.variables.items():
        if name in first.coord_names:
            variables[name] = decode_loaded(name, var, first.decode_times) if name in first.raw_times else var
            continue
        stacked = stack(name)
        if stacked is None:
            return None
        variables[name] = stacked
    # xarray lists the coordinates the files share first, then the stacked variables
    ordered = {name: var for name, var in variables.items() if name in first.coord_names}
    ordered.update((name, var) for name, var in variables.items() if name not in first.coord_names)
    return VirtualParts(ordered, first.coord_names, first.loaded, first.attrs).to_dataset()


#: Scenes whose headers ``stack_tiff_scenes`` fetches ahead, remote and local (with ``vzdask.read-ahead: auto``).
SCENE_READ_AHEAD, LOCAL_SCENE_READ_AHEAD = 16, 4


def stack_tiff_scenes(files: Sequence[str], options: dict, concat_dim, kwargs: dict,
                      analysis: bool = False) -> xr.Dataset | None:
    """Many TIFF scenes of one layout and grid stacked along a new ``concat_dim``, reading only their chunk tables.

    ``open_virtual_mfdataset(files, combine="nested", concat_dim=<new>)`` of
    COGs parses every file into a virtual dataset and stacks them; when every
    file has the first one's layout and grid (``TIFFParser.scene_table``: equal
    keys), those datasets differ in their chunk references only. So the first
    file is opened as usual and the others give their tables: the same
    Dataset (``_stack_parts``' result), for a fraction of the work per file.
    None when anything differs or is not a plain serial open of TIFF files:
    the caller then opens the files one by one, and its checks name them.
    Except (unless for ``analysis``, where each file is decoded on its own) a
    virtual ``image``/``mask`` whose shape, chunks, dtype or codecs differ
    from the first file's: one virtual array cannot hold both, so a
    ``CombineError`` names both files and the difference.
    """
    from contextlib import closing

    import dask

    from vzdask.manifests.metadata import replace_metadata
    from vzdask.parsers.read_ahead import read_ahead, read_ahead_depth
    from vzdask.parsers.tiff import SceneTable, TIFFParser
    from vzdask.registry import ObjectStoreRegistry
    from vzdask.xarray import DecodedCache, as_url, open_virtual_parts

    parser = options.get("parser")
    if (len(files) < 2 or not isinstance(concat_dim, str) or any(kwargs.get(k) != v for k, v in HANDLED.items())
            or any(options.get(k) for k in ("preprocess", "group", "inherit_coords"))
            or options.get("inline") is not None or options.get("on_unsupported", "raise") != "raise"
            or parser is not None and (type(parser) is not TIFFParser or parser.inline is not None or parser.group
                                       or parser.on_unsupported != "raise")):
        return None
    urls = [as_url(f) for f in files]
    if parser is None and not urls[0].lower().endswith((".tif", ".tiff")):
        return None  # (an extra request for any other collection: the suffix says whether to look)
    registry = options.get("registry") or ObjectStoreRegistry.default()
    scenes = parser if parser is not None else TIFFParser(drop_variables=options.get("drop_variables"))
    first_table = scenes.scene_table(urls[0], registry, template=True)

    def open_first():
        """The first file opened as every file is in a serial open (mfdataset._open_batch)."""
        return open_virtual_parts(urls[0], cache=DecodedCache(defer_times=True),
                                  **{**{k: v for k, v in options.items() if k != "preprocess"}, "registry": registry})

    if first_table is None:
        return None
    tables: list[SceneTable | None] = [first_table] + [None] * (len(urls) - 1)
    template = first_table.template
    # the files laid out as the first byte for byte: one small read each, no parse; a batch without any
    # such file ends it (a collection laid out otherwise pays one batch of reads more, not one per file)
    for start in range(1, len(urls), SCENE_READ_AHEAD):
        if template is None:
            break
        batch = range(start, min(start + SCENE_READ_AHEAD, len(urls)))
        heads = _scene_heads([urls[i] for i in batch], registry, template.ranges)
        for i, pieces in zip(batch, heads):
            tables[i] = template.match(pieces, urls[i]) if pieces is not None else None
        if all(tables[i] is None for i in batch):
            template = None
    rest = [url for url, table in zip(urls, tables) if table is None]
    depth = read_ahead_depth(rest, registry)
    if dask.config.get("vzdask.read-ahead", "auto") == "auto":
        # a header each is all that is read: remote, many in flight at once; local, a few read while
        # tifffile parses (on a loaded machine each read otherwise waits for obstore's threads to run)
        depth = SCENE_READ_AHEAD if depth else LOCAL_SCENE_READ_AHEAD
    parsed = iter(range(len(urls)))
    with closing(read_ahead(rest, registry, depth=depth)) as ahead:
        for url, opened in ahead:
            i = next(i for i in parsed if tables[i] is None)
            if opened is None or not TIFFParser.guess_can_open(opened.read_range(0, 4), url):
                return None
            table = tables[i] = scenes.continue_from(opened).scene_table(url, registry)
            if table is None:
                return None
            if table.key != first_table.key:
                difference = first_table.layout_difference(table)
                if difference is not None and not analysis:
                    _refuse_layouts(files[0], files[i], difference, concat_dim, open_first())
                return None
    first = open_first()
    if concat_dim in first.variables or any(concat_dim in var.dims for var in first.variables.values()):
        return None
    others = np.array(urls[1:], dtype=object)

    def stack(name: str) -> xr.Variable | None:
        var = first.variables[name]
        array = variable_data(var)
        if name not in first_table.tables or not isinstance(array, ManifestArray):
            return None
        # the first file's array as its parse made it, then every other file's table in one manifest
        head = np.stack([array], axis=0)
        offsets = np.stack([t.tables[name][0] for t in tables[1:]])  # type: ignore[union-attr]
        lengths = np.stack([t.tables[name][1] for t in tables[1:]])  # type: ignore[union-attr]
        paths = np.where(lengths > 0, others.reshape((-1,) + (1,) * (lengths.ndim - 1)), "")
        tail = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
        stacked = ManifestArray(replace_metadata(head.metadata, shape=(len(urls), *array.shape)),
                                ChunkManifest.concatenate([head.manifest, tail]), registry=head.registry)
        return xr.Variable((concat_dim, *var.dims), stacked, attrs=dict(var.attrs), encoding=dict(var.encoding))

    return _stacked(first, concat_dim, stack)


def _refuse_layouts(first: str, other: str, difference: tuple, concat_dim: str, parts: VirtualParts) -> None:
    """Raise the CombineError of two scenes whose virtual array ``difference[0]`` cannot be one (if it is virtual)."""
    from vzdask.errors import CombineError

    name, what, a, b = difference
    if name not in parts.variables or not isinstance(variable_data(parts.variables[name]), ManifestArray):
        return  # loaded or dropped: xarray stacks it
    raise CombineError(
        f"cannot stack {first} and {other} along a new dimension {concat_dim!r}: the {what} of their {name!r} differs "
        f"({a} in {first} vs {b} in {other}), and one virtual array has one chunk layout, dtype and codec chain. "
        f"Open them with vzdask.open_mfdataset(...) (each file decoded on its own), or load {name!r} "
        f"(loadable_variables=[..., {name!r}])"
    )


def _scene_heads(urls: Sequence[str], registry, ranges: Sequence[tuple[int, int]]) -> list[list | None]:
    """The byte ``ranges`` (start, length) of each file, one request per file; None for a file that cannot give them.

    Local files are read in turn; remote ones ``SCENE_READ_AHEAD`` at a time, concurrently.
    """
    import asyncio

    import dask

    from vzdask.object_io import is_in_process, read_ranges, read_ranges_async, run_sync

    starts, lengths = [int(s) for s, _ in ranges], [int(n) for _, n in ranges]
    resolved = []
    for url in urls:
        try:
            resolved.append(registry.resolve(url))
        except Exception:  # the parse reports it
            resolved.append(None)
    if all(r is None or is_in_process(r[0]) for r in resolved):
        out: list[list | None] = []
        for url, where in zip(urls, resolved):
            try:
                out.append(None if where is None else read_ranges(*where, starts, lengths, url=url, coalesce=0))
            except Exception:  # shorter than the first file, missing...: parsed, which reports it
                out.append(None)
        return out
    value = dask.config.get("vzdask.read-ahead", "auto")
    limit = SCENE_READ_AHEAD if value == "auto" else max(1, int(value))

    async def gather() -> list[list | None]:
        gate = asyncio.Semaphore(limit)

        async def one(url: str, where) -> list | None:
            if where is None:
                return None
            async with gate:
                try:
                    return await read_ranges_async(*where, starts, lengths, url=url, coalesce=0)
                except Exception:
                    return None

        return list(await asyncio.gather(*(one(url, where) for url, where in zip(urls, resolved))))

    return run_sync(gather())


def _same_raw_times(parts: Sequence[VirtualParts]) -> list[VirtualParts]:
    """The parts, their raw time coordinates decoded file by file unless every file has the same ones.

    Raw times compare and order like their decoded values only with the same
    units, calendar and the rest of their attributes in every file.
    """
    first = parts[0]
    if not any(p.raw_times for p in parts):
        return list(parts)
    same = all(p.raw_times == first.raw_times and p.decode_times == first.decode_times for p in parts) and all(
        p.variables[name].attrs == first.variables[name].attrs and p.variables[name].dtype == first.variables[name].dtype
        for p in parts for name in first.raw_times
    )
    return list(parts) if same else [p.decoded() for p in parts]


def _concat_times(raws: list[xr.Variable], name: str, decode_times) -> xr.Variable | None:
    """The files' time coordinate joined, then decoded once: what decoding each file and joining gives.

    Decoding is elementwise for plain time numbers; what could differ is the
    dtype (a file needing cftime, or another resolution), so the joined result
    must be datetime64 of the dtype the first and the last file decode to
    alone, and start with the first file's values. Else None: xarray decides.
    """
    try:
        with warnings.catch_warnings():  # a trial: if it fails, xarray decodes each file and warns as it does
            warnings.simplefilter("ignore")
            joined = xr.Variable.concat(raws, name, combine_attrs="override")
            decoded = decode_loaded(name, joined, decode_times)
            head, tail = decode_loaded(name, raws[0], decode_times), decode_loaded(name, raws[-1], decode_times)
    except (ValueError, TypeError, OverflowError):
        return None
    if decoded.dtype.kind != "M" or not decoded.dtype == head.dtype == tail.dtype:
        return None
    values = np.asarray(variable_data(decoded))
    head_values, tail_values = variable_data(head), variable_data(tail)
    if not (np.array_equal(values[: head.size], head_values) and np.array_equal(values[-tail.size :], tail_values)):
        return None
    return variable_fastpath(head.dims, values, dict(head.attrs), dict(head.encoding))


def _dims(parts: VirtualParts) -> list[str]:
    """Dimension names in the order a Dataset of these variables lists them."""
    dims: dict[str, None] = {}
    for var in parts.variables.values():
        dims.update(dict.fromkeys(var.dims))
    return list(dims)


def _uniform_sizes(parts: Sequence[VirtualParts]) -> dict[str, set[int]] | None:
    """Each dimension's sizes over the files, if they have the same variables (in order), dims and kinds."""
    first = parts[0]
    names = list(first.variables)
    for p in parts[1:]:
        if list(p.variables) != names or p.coord_names != first.coord_names or p.loaded != first.loaded:
            return None
        for name, var in first.variables.items():
            other = p.variables[name]
            if other.dims != var.dims or other.dtype != var.dtype:
                return None
            if type(variable_data(other)) is not type(variable_data(var)):
                return None
    sizes: dict[str, set[int]] = {}
    for p in parts:
        for var in p.variables.values():
            for d, n in zip(var.dims, var.shape):
                sizes.setdefault(d, set()).add(n)
    return sizes


def _all_equal(variables: list[xr.Variable]) -> bool:
    """Exactly equal values and dtype (stricter than the index equality xarray tests, never looser)."""
    first = variables[0]
    values = first.values
    if values.dtype.kind in "fcmM" and pd.isna(values).any():
        return False
    for var in variables[1:]:
        if variable_data(var) is variable_data(first):
            continue
        other = var.values
        if other.dtype != values.dtype or other.shape != values.shape or not np.array_equal(other, values):
            return False
    return True


def _order_by_coordinate(variables: list[xr.Variable]) -> list[int] | None:
    """The file order ``combine_by_coords`` gives: by first coordinate value, all ascending or all descending.

    None when xarray would have to decide: empty coordinates, NaN or NaT,
    non-monotonic coordinates, ties between first values, values other than
    numbers and datetimes.
    """
    values = [np.asarray(v.values) for v in variables]
    if any(v.size == 0 or v.dtype.kind not in "iufmM" or _has_nan(v) for v in values):
        return None
    if all(_increasing(v) for v in values):
        ascending = True
    elif all(_increasing(v[::-1]) for v in values):
        ascending = False
    else:
        return None
    firsts = np.array([v[0] for v in values])
    if np.unique(firsts).size != firsts.size:
        return None
    order = np.argsort(firsts, kind="stable").tolist()
    return order if ascending else order[::-1]


def _has_nan(values: np.ndarray) -> bool:
    if values.dtype.kind in "mM":
        return bool(np.isnat(values).any())
    return values.dtype.kind == "f" and bool(np.isnan(values).any())


def _increasing(values: np.ndarray) -> bool:
    """``pd.Index(values).is_monotonic_increasing`` for values without NaN/NaT."""
    return bool(np.all(values[1:] >= values[:-1]))


def _concat(variables: list[xr.Variable], dim: str) -> xr.Variable | None:
    """``xr.Variable.concat`` with ``combine_attrs="override"`` (the first file's attrs and encoding).

    Virtual arrays of one dtype are joined by their manifests straight away
    (what xarray ends up doing, without its per-array dtype round trip).
    None if they cannot be joined: xarray then raises the error itself.
    """
    first = variables[0]
    try:
        if isinstance(variable_data(first), ManifestArray) and all(v.dtype == first.dtype for v in variables):
            arrays = [variable_data(v) for v in variables]
            if dim in first.dims:
                data = np.concatenate(arrays, axis=first.get_axis_num(dim))
                dims = first.dims
            else:  # a new dimension, first (xarray's ``set_dims`` then ``concat``)
                data, dims = np.stack(arrays, axis=0), (dim, *first.dims)
            return xr.Variable(dims, data, attrs=dict(first.attrs), encoding=dict(first.encoding))
        return xr.Variable.concat(variables, dim, combine_attrs="override")
    except (ValueError, TypeError):
        return None  # e.g. a partial last chunk inside the result


def _monotonic(variable: xr.Variable) -> bool:
    index = pd.Index(variable.values)
    return bool(index.is_monotonic_increasing or index.is_monotonic_decreasing)
