"""Many files into one virtual Dataset: parse in parallel, check CF encodings, combine.

With a ``distributed.Client`` the files are parsed on the workers and
combined there too (a tree of combine tasks over batches of files), so only
the final virtual dataset and each file's small CF signature reach the client.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from vzdask._compat import variable_data
from vzdask.accessor import VirtualDatasetAccessor
from vzdask.combine import (
    cf_signature,
    check_cf_compatible,
    coordinate_range,
    explain_combine_failure,
    pad_missing_variables,
)
from vzdask.fast_combine import combine_parts, stack_tiff_scenes
from vzdask.errors import (
    CFEncodingMismatchError,
    CombineError,
    FileOpenError,
    UnsupportedVariableWarning,
    VzdaskError,
)
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.metadata import AxisChunks
from vzdask.parsers.icechunk import copy_finds_its_data, icechunk_source_url, is_icechunk_source
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import MANIFEST_ENCODING_KEY, DecodedCache, VirtualParts

#: Files combined by one task in the tree reduction on a cluster.
COMBINE_BATCH = 16

#: The most files one parse task opens on a cluster (fewer when there are few files per worker).
CLUSTER_PARSE_BATCH = 64


def expand_paths(paths: str | os.PathLike | Sequence | Any) -> list:
    """A glob string, a path, a list of paths or a nested list (for nested combine) -> list of url strings.

    An icechunk ``Repository``, ``Session`` or ``IcechunkStore`` (alone or in the list) stays itself: the
    parser reads the object (``source_name`` names it in messages).
    """
    if is_icechunk_source(paths):
        return [paths]
    if isinstance(paths, (str, os.PathLike)):
        text = os.fspath(paths)
        if "://" in text and not text.startswith("file://"):
            if any(c in text for c in "*?["):
                raise ValueError(f"glob patterns are only expanded for local paths, got {text!r}; list the urls")
            return [text]
        local = text[len("file://"):] if text.startswith("file://") else text
        matches = sorted(glob.glob(os.path.expanduser(local))) if any(c in local for c in "*?[") else [local]
        if not matches:
            raise FileNotFoundError(f"no files match {text!r}")
        return matches
    out = []
    for item in paths:
        out.append(expand_paths(item) if isinstance(item, (list, tuple)) else
                   item if is_icechunk_source(item) else os.fspath(item))
    if not out:
        raise ValueError("no files given")
    return out


def source_name(source: Any) -> str:
    """What names one of ``expand_paths``'s items in messages: the path or url, or an icechunk object's location.

    (An icechunk object is named by its repository's location where its storage tells it, else by its kind
    and snapshot: ``vzdask.parsers.icechunk.icechunk_source_url``.)
    """
    return icechunk_source_url(source) if is_icechunk_source(source) else str(source)


def source_names(files: Sequence) -> list[str]:
    return [source_name(f) for f in files]


def check_shippable(files: Sequence, parallel) -> None:
    """Refuse icechunk objects that cannot reach other processes (``parallel="processes"``, True, a cluster).

    A writable session does not pickle, and an in-memory repository pickles without its data; the
    repository's path or url opens anywhere. Serial and threaded parses take every object.
    """
    import pickle

    for source in files:
        if not is_icechunk_source(source):
            continue
        why, in_memory = None, False
        storage = getattr(source, "storage", None)  # a Repository's (sessions and stores do not say)
        if storage is not None and "type: in-memory" in repr(storage):
            why, in_memory = "an in-memory repository's data stays in this process", True
        else:
            try:
                if storage is not None:
                    pickle.dumps(source)
                elif not copy_finds_its_data(source):  # a session or store of an in-memory repository
                    why, in_memory = "its repository is in memory: a copy in another process finds none of its data", True
            except Exception as err:  # noqa: BLE001 - icechunk's reason, quoted
                why = f"it cannot be pickled: {(str(err).splitlines() or [''])[0]}"
        if why is not None:
            advice = ("Use parallel=None or 'threads' (this process reads it), or write it to a stored repository "
                      "(a local path, s3://...) and pass that repository's path or url." if in_memory else
                      "Pass the repository's path or url instead (with parser=IcechunkParser(branch=..., tag=... or "
                      "snapshot_id=...) for another snapshot than main's), a readonly session, or parallel=None or "
                      "'threads'.")
            raise FileOpenError(
                f"{source_name(source)}: parallel={parallel!r} parses files in other processes, and this icechunk "
                f"{type(source).__name__} cannot be sent there ({why}). {advice}"
            )


def read_ahead_sources(paths: Sequence, registry: ObjectStoreRegistry):
    """``vzdask.parsers.read_ahead`` over ``expand_paths``'s items: each one's opened file, or None.

    An icechunk object has nothing to open ahead (None); the paths and urls around it are read ahead
    as a list of them alone would be.
    """
    from vzdask.parsers.read_ahead import read_ahead
    from vzdask.xarray import as_url

    ahead = read_ahead([as_url(p) for p in paths if not is_icechunk_source(p)], registry)
    try:
        files = iter(ahead)
        for path in paths:
            yield None if is_icechunk_source(path) else next(files)[1]
    finally:
        close = getattr(ahead, "close", None)
        if close is not None:
            close()


def _flatten(nested) -> list[str]:
    return [p for item in nested for p in (_flatten(item) if isinstance(item, list) else [item])]


def open_one(path: str, options: dict[str, Any], cache=None, as_parts: bool = False, opened=None
              ) -> tuple[Any, dict]:
    """Parse one file (runs on a worker): its virtual dataset and CF signature.

    With ``as_parts`` (and no ``preprocess``) the ``VirtualParts`` stand in for
    the dataset, for ``fast_combine``; ``cache`` shares decoded coordinates
    between the files one process opens; ``opened`` is the file read ahead.
    """
    from vzdask.xarray import open_virtual_parts

    options = dict(options)  # workers may hand several tasks the same deserialized dict: never mutate it
    preprocess = options.pop("preprocess", None)
    in_worker = multiprocessing.parent_process() is not None  # a pool's or a cluster's worker process
    with warnings.catch_warnings(record=True) if in_worker else contextlib.nullcontext() as caught:
        if in_worker:
            warnings.simplefilter("always", UnsupportedVariableWarning)
        try:
            result = open_virtual_parts(path, cache=cache, opened=opened, **options)
            if preprocess is not None or not as_parts:
                result = result.to_dataset()
            if preprocess is not None:
                result = preprocess(result)
        except Exception as err:
            detail = str(err) if isinstance(err, VzdaskError) else (str(err).splitlines() or [""])[0]
            raise FileOpenError(f"failed to open {source_name(path)}: {type(err).__name__}: {detail}") from err
    signature = Signature(cf_signature(result))
    if caught:  # said again where the user is (rewarn), not left in the worker's log
        signature.warnings = tuple(str(w.message) for w in caught if issubclass(w.category, UnsupportedVariableWarning))
        for w in caught:
            if not issubclass(w.category, UnsupportedVariableWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, signature


class Signature(dict):
    """A file's CF signature (``cf_signature``), with the variables a worker process left out (``warnings``)."""

    warnings: tuple[str, ...] = ()


def rewarn(signatures) -> None:
    """Give again, here, the ``UnsupportedVariableWarning``s worker processes caught while parsing."""
    for signature in signatures:
        for message in getattr(signature, "warnings", ()):
            warnings.warn(message, UnsupportedVariableWarning,
                          skip_file_prefixes=(os.path.dirname(os.path.abspath(__file__)) + os.sep,))


def _combine(datasets: list, combine: str, concat_dim, kwargs: dict) -> xr.Dataset:
    if combine == "nested":
        return xr.combine_nested(datasets, concat_dim=concat_dim, **kwargs)
    return xr.combine_by_coords(datasets, **kwargs)


def _combine_batch(combine: str, concat_dim, kwargs: dict, pad: bool, *datasets) -> xr.Dataset:
    """One node of the tree reduction (a worker task); ``pad``: as ``_combine_opened``'s.

    A variable some parts lack is padded here too: a whole parse task's files may lack it.
    """
    parts = list(datasets)
    if pad:
        parts = pad_missing_variables(parts, combine, concat_dim, kwargs)
    return _combine(parts, combine, concat_dim, kwargs)


def _combine_opened(opened: list, nested, combine: str, concat_dim, kwargs: dict, pad: bool = False) -> xr.Dataset:
    """Combine parsed files (``VirtualParts`` or Datasets) laid out as ``nested`` (None: a flat list).

    Uniform files take ``fast_combine``'s one step; anything else goes through xarray. ``pad``: variables
    some files lack become all-missing chunks there where that is xarray's padding exactly
    (``pad_missing_variables``; for virtual datasets: analysis ones are joined file by file instead).
    """
    grid = nested is not None and any(isinstance(p, list) for p in nested)
    if not grid and all(isinstance(p, VirtualParts) for p in opened):
        fast = combine_parts(opened, combine, concat_dim, kwargs)
        if fast is not None:
            return fast
    datasets = [p.to_dataset() if isinstance(p, VirtualParts) else p for p in opened]
    if pad and not grid:
        datasets = pad_missing_variables(datasets, combine, concat_dim, kwargs)
    return _combine(_arrange(nested, iter(datasets)) if grid else datasets, combine, concat_dim, kwargs)


def _combine_parsed(combine: str, concat_dim, kwargs: dict, pad: bool, results: list) -> xr.Dataset:
    """The first level of the tree on a cluster: one parse task's files, combined where they were parsed."""
    return _combine_opened([opened for opened, _ in results], None, combine, concat_dim, kwargs, pad=pad)


def _signatures_of(results: list) -> list:
    return [signature for _, signature in results]


def _dataset_at(results: list, i: int) -> xr.Dataset:
    opened = results[i][0]
    return opened.to_dataset() if isinstance(opened, VirtualParts) else opened


def open_virtual_mfdataset(
    paths,
    *,
    concat_dim: str | Sequence[str | None] | None = None,
    combine: str = "by_coords",
    parser: Callable | None = None,
    registry: ObjectStoreRegistry | None = None,
    group: str | None = None,
    inherit_coords: bool = False,
    loadable_variables=None,
    inline: InlinePolicy | None = None,
    drop_variables=None,
    on_unsupported: str = "raise",
    decode_times: bool | None = None,
    preprocess: Callable[[xr.Dataset], xr.Dataset] | None = None,
    parallel=None,
    data_vars: str | list[str] = "all",
    coords: str | list[str] = "minimal",
    compat: str = "override",
    join: str = "outer",
    combine_attrs: str = "override",
    progress: bool = False,
) -> xr.Dataset:
    """Open many files as one virtual Dataset, in the spirit of ``xr.open_mfdataset``.

    Parameters
    ----------
    paths : str, path, list or nested list
        A glob string, a list of paths/urls, or a nested list for ``combine="nested"``.
    concat_dim, combine, data_vars, coords, compat, join, combine_attrs
        As in ``xr.open_mfdataset``. The defaults never compare virtual values
        (``coords="minimal"``, ``compat="override"``): that would read them.
    parser, registry, group, loadable_variables, inline, drop_variables, on_unsupported, decode_times
        As in ``open_virtual_dataset``, for every file (``group``: open this group of each file, as
        ``xr.open_mfdataset(..., group=)``; every group at once: ``vzdask.open_virtual_datatree``).
        ``on_unsupported="warn"`` warns here once per file, also when the files are parsed in worker
        processes or on a cluster.
    inherit_coords : bool
        With ``group``: also load the dimension coordinates the group inherits from its ancestor groups
        (netCDF-4 dimensions of a parent group; what a DataTree node sees), so files are ordered and
        aligned by them. Each file is then parsed whole.
    preprocess : callable, optional
        Applied to each file's virtual dataset before combining.
    parallel : None, "threads", "processes", distributed.Client or True
        Where files are parsed. ``None``: here, one after another. ``True``:
        the active dask client if there is one, else processes. With a client
        the files are also combined on the cluster.
    progress : bool
        Show a progress bar while parsing.

    Returns
    -------
    xarray.Dataset
        Virtual variables hold the combined ManifestArrays. Each one's ``encoding["chunks"]`` and
        ``encoding["preferred_chunks"]`` describe the combined chunk grid, as ``xr.open_zarr`` shows the
        written store: one size per regular axis; along a rectilinear axis (files of different lengths or
        chunkings) the tuple of every chunk's size, e.g. ``((31, 29, 31, ...), 10, 20)``. A loaded variable
        that was concatenated has the chunks its values are written with: its whole length along an axis
        each file stored in one chunk, else the files' chunk size.

    Raises
    ------
    FileOpenError
        Naming the file that failed to parse.
    vzdask.combine.CFEncodingMismatchError
        When a virtual variable's CF encoding differs between files.
    """
    ds = _open_virtual(dict(locals()), analysis=False)
    if inline is not None:  # a variable that comes and goes is fine; one in no file is a typo
        inline.check_variables([str(name) for name in ds.variables], "is in none of the files")
    return ds


class _NoSingleManifest(Exception):  # noqa: N818 - internal signal, never reaches users
    """The files parsed, but their virtual variables make no one virtual dataset (``open_mfdataset`` goes on).

    ``results``: each file's ``(parts, signature)`` in file order, or None when they are not at hand.
    """

    def __init__(self, results: list | None) -> None:
        super().__init__("no single manifest")
        self.results = results


def _open_virtual(arguments: dict[str, Any], analysis: bool):
    """``open_virtual_mfdataset``'s work. With ``analysis`` a combine that fails raises ``_NoSingleManifest``.

    Without it, a failed combine (or CF check) is explained by the files' signatures when they show why
    (``explain_combine_failure``: the variable, the files, the way out), else re-raised as it is.
    """
    return combined_chunk_encoding(_open_and_combine_virtual(arguments, analysis))


def _zarr_chunks(sizes: Sequence[AxisChunks]) -> tuple[AxisChunks, ...]:
    """Chunk sizes as xarray's zarr backend gives them: one size where the grid is regular along an axis.

    (A rectilinear axis whose chunks are all one size but the last, smaller one, is that size.)
    """
    out: list[AxisChunks] = []
    for size in sizes:
        if isinstance(size, int):
            out.append(size)
        elif len(set(size[:-1])) <= 1 and size and size[-1] <= size[0]:
            out.append(int(size[0]))
        else:
            out.append(tuple(int(s) for s in size))
    return tuple(out)


def combined_chunk_encoding(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (combined in place) with each variable's ``encoding["chunks"]`` describing the combined result.

    Combining keeps the first file's encoding (as ``xr.concat`` does), so a virtual variable would claim the
    first file's chunk shape whatever the combined grid. A virtual variable gets its ManifestArray's grid
    (``_zarr_chunks``) and matching ``preferred_chunks``; a loaded variable that was concatenated (its shape
    is no longer its stored array's) gets the chunks the writers will write it in (``_loaded_chunks``).
    """
    for var in ds.variables.values():
        data = variable_data(var)
        if isinstance(data, ManifestArray):
            chunks = _zarr_chunks(data.chunk_sizes)
            var.encoding = {**var.encoding, "chunks": chunks, "preferred_chunks": dict(zip(var.dims, chunks))}
            continue
        stored = var.encoding.get(MANIFEST_ENCODING_KEY)
        if isinstance(stored, ManifestArray) and stored.ndim == var.ndim and stored.shape != tuple(var.shape):
            var.encoding = {**var.encoding, "chunks": _loaded_chunks(stored, tuple(var.shape))}
    return ds


def _loaded_chunks(stored: ManifestArray, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A concatenated loaded variable's chunks: its whole length along an axis the file held in one chunk."""
    return tuple(n if c >= s else c for n, s, c in zip(shape, stored.shape, stored.chunk_shape))


def _open_and_combine_virtual(arguments: dict[str, Any], analysis: bool):
    """``_open_virtual`` before the chunk encodings are made those of the combined result."""
    paths, concat_dim, combine = arguments["paths"], arguments["concat_dim"], arguments["combine"]
    parallel, progress = arguments["parallel"], arguments["progress"]
    if combine not in ("by_coords", "nested"):
        raise ValueError(f"combine must be 'by_coords' or 'nested', got {combine!r}")
    if combine == "nested" and concat_dim is None:
        raise ValueError("combine='nested' needs concat_dim")
    nested = expand_paths(paths)
    files = _flatten(nested) if any(isinstance(p, list) for p in nested) else list(nested)
    if any(isinstance(p, list) for p in nested) and combine != "nested":
        raise ValueError("a nested list of paths needs combine='nested'")
    options = {key: arguments[key] for key in (
        "parser", "registry", "group", "inherit_coords", "loadable_variables", "inline", "drop_variables", "on_unsupported",
        "decode_times", "preprocess")}
    kwargs = {key: arguments[key] for key in ("data_vars", "coords", "compat", "join", "combine_attrs")}
    client = _resolve_client(parallel)
    if client is not None or parallel in (True, "processes"):
        check_shippable(files, parallel)
    if client is not None:
        return _open_on_cluster(client, nested, files, options, combine, concat_dim, kwargs, progress, analysis)

    grid = any(isinstance(p, list) for p in nested)
    objects = any(is_icechunk_source(f) for f in files)
    if combine == "nested" and not grid and parallel in (None, False, "serial") and not progress and not objects:
        scenes = stack_tiff_scenes(files, options, concat_dim, kwargs, analysis)  # many TIFF scenes of one grid: tables only
        if scenes is not None:
            return scenes
    if parallel in (True, "processes") and not progress and not grid:
        return _open_in_processes(files, options, combine, concat_dim, kwargs, analysis)
    results = _parse_locally(files, options, parallel, progress)
    rewarn(signature for _, signature in results)
    return combine_parsed(files, nested, results, combine, concat_dim, kwargs, analysis)


def combine_parsed(files: list[str], nested: list, results: list, combine: str, concat_dim, kwargs: dict,
                   analysis: bool) -> xr.Dataset:
    """Files parsed already (``results``: each file's ``(parts, signature)``, in ``files`` order) combined here.

    ``nested``: the paths as given (a nested list for a grid). The CF check, the combine, its failure
    explained (``analysis``: ``_NoSingleManifest``), the overlap check: as ``open_virtual_mfdataset`` does.
    """
    signatures = [(source_name(path), signature) for path, (_, signature) in zip(files, results)]
    try:
        check_cf_compatible(signatures)
        combined = _combine_opened([result for result, _ in results], nested, combine, concat_dim, kwargs,
                                   pad=not analysis)
    except Exception as err:
        failure = _combine_failure(err, signatures, combine, concat_dim, analysis, results, kwargs["join"])
        if failure is None:
            raise
        raise failure from err
    if not analysis:
        check_no_overlap(combined, source_names(files), results)
    return combined_chunk_encoding(combined)


def analysis_of_parsed(arguments: dict[str, Any], given: set[str], results: list, chunks) -> xr.Dataset:
    """``open_mfdataset`` of files parsed already (``results``, as for ``combine_parsed``); ``arguments`` as bound.

    One virtual dataset made dask arrays where the files make one, else the files joined file by file.
    """
    nested = expand_paths(arguments["paths"])
    files = _flatten(nested)
    kwargs = {key: arguments[key] for key in ("data_vars", "coords", "compat", "join", "combine_attrs")}
    try:
        virtual = combine_parsed(files, nested, results, arguments["combine"], arguments["concat_dim"], kwargs,
                                 analysis=True)
    except _NoSingleManifest:
        return open_file_by_file(arguments, given, results, chunks)
    return to_analysis(virtual, chunks, arguments["decode_times"])


def parse_files(files: list[str], options: dict[str, Any], parallel, progress: bool,
                batch: Callable[[list[str], dict[str, Any]], list]) -> list:
    """``batch(paths, options)`` (one result per file) over batches of ``files``, where ``parallel`` says.

    For callers that need every file's parse at hand (a DataTree's groups): on a cluster the results
    are gathered here.
    """
    import dask
    from dask import delayed

    client = _resolve_client(parallel)
    if client is not None or parallel in (True, "processes"):
        check_shippable(files, parallel)
    if client is not None:
        workers = len(client.scheduler_info().get("workers", {}))
        size = _batch_size(len(files), workers, CLUSTER_PARSE_BATCH)
        futures = [client.submit(batch, files[i : i + size], dict(options), pure=False)
                   for i in range(0, len(files), size)]
        try:
            if progress:
                from distributed import progress as show_progress

                with client.as_current():
                    show_progress(futures, notebook=False)
            parts = [_result_of(client, future) for future in futures]  # the first error, holding no future
            return [result for part in parts for result in part]
        finally:
            futures.clear()
    scheduler = {None: "sync", False: "sync", "serial": "sync", True: "processes", "threads": "threads",
                 "processes": "processes"}[parallel]
    if scheduler == "sync" and not progress:
        return batch(files, options)
    size = _batch_size(len(files), os.cpu_count() or 1)
    tasks = [delayed(batch, pure=False)(files[i : i + size], dict(options)) for i in range(0, len(files), size)]
    extra = {}
    if scheduler == "processes" and dask.config.get("pool", None) is None:
        extra["pool"] = _process_pool()
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            batches = dask.compute(*tasks, scheduler=scheduler, **extra)
    else:
        batches = dask.compute(*tasks, scheduler=scheduler, **extra)
    return [result for part in batches for result in part]


def _coordinate_values(opened, name: str):
    """A file's decoded values of coordinate ``name`` (from its parts or dataset), or None."""
    try:
        variables = opened.decoded().variables if isinstance(opened, VirtualParts) else opened.variables
        return pd.Index(np.asarray(variables[name].values))
    except Exception:  # not loaded, not decodable: this file cannot be told apart
        return None


def check_no_overlap(ds: xr.Dataset, files: Sequence[str], results: list | None = None,
                     signatures: Sequence[tuple[str, dict]] | None = None) -> None:
    """A dimension coordinate whose values repeat: files cover the same range (or one file holds a value twice).

    ``xr.open_mfdataset`` keeps both copies (``combine="nested"`` concatenates as given, ``"by_coords"``
    too once the files are ordered); a virtual dataset written with them would hold that coordinate
    value twice, so this is refused, naming the files: by their values where ``results`` (each file's
    parse) are at hand, else by the range of values each file's signature gives (``signatures``: the
    parse ran in other processes). In a combined index that is in order, a file whose range holds the
    repeated value holds it.
    """
    for name, index in ds.indexes.items():
        if index.is_unique:
            continue
        value = index[index.duplicated()][0]
        if results is not None:
            holders = [path for path, (opened, _) in zip(files, results)
                       if (values := _coordinate_values(opened, str(name))) is not None and values.isin([value]).any()]
        else:
            holders = [path for path, signature in signatures or ()
                       if _in_range(value, coordinate_range(str(name), signature.get(str(name), {})))]
        where = (" and ".join(holders[:2]) if len(holders) >= 2 else
                 f"{holders[0]} (twice)" if holders else "two of the files")
        raise CombineError(
            f"the files overlap along {name!r}: {value} is in {where}, so the combined {name!r} would hold it "
            f"twice. Leave one of them out, or trim each file to its own range with preprocess=..."
        )


def _in_range(value, ends) -> bool:
    """Whether ``value`` lies between a file's first and last coordinate value (either order)."""
    if ends is None:
        return False
    try:
        low, high = sorted((ends[0], ends[-1]))
        return bool(low <= value <= high)
    except TypeError:
        return False


def _combine_failure(err: Exception, signatures, combine: str, concat_dim, analysis: bool, results: list | None,
                     join: str = "outer"):
    """What to raise instead of a combine's own error ``err`` (None: ``err`` as it is); see ``_open_virtual``."""
    if analysis:
        return _NoSingleManifest(results)
    if isinstance(err, CFEncodingMismatchError):
        return None  # names the variable, the files and the values already
    if isinstance(err, ValueError) and ("monotonically" in str(err) or "monotonic global indexes" in str(err)):
        # xarray's, naming no file
        return _not_monotonic(err, signatures, results)
    explained = explain_combine_failure(signatures, combine, concat_dim, join)
    if explained is None and isinstance(err, (IndexError, NotImplementedError)) and not isinstance(err, VzdaskError):
        # xarray asked the virtual arrays for something references cannot do (reindexing, padding...)
        files = [path for path, _ in signatures]
        where = ", ".join(files) if len(files) <= 4 else f"{files[0]} ... {files[-1]} ({len(files)} files)"
        explained = CombineError(
            f"the files {where} cannot be combined into one virtual dataset with combine={combine!r}, "
            f"concat_dim={concat_dim!r}, join={join!r}: xarray needed to index or pad their virtual arrays "
            f"({type(err).__name__}: {err}). Use vzdask.open_mfdataset(...) for analysis (dask arrays, as "
            "xr.open_mfdataset combines them), or combine options that need no alignment (join='override')."
        )
    return explained


def _not_monotonic(err: Exception, signatures, results: list | None) -> CombineError:
    """xarray's "Coordinate variable X is neither monotonically increasing nor decreasing", with the files.

    A file whose own values are out of order (where its parse is at hand), else two files whose ranges
    interleave (from each file's signature, wherever it was parsed), else the files in general.
    """
    files = [path for path, _ in signatures]
    words = str(err).split()
    name = (words[words.index("variable") + 1] if "variable" in words[:-1] else
            words[-1] if "global" in words and words[-2:-1] == ["dimension"] else None)
    within = [path for path, (opened, _) in zip(files, results or ())
              if name is not None and (values := _coordinate_values(opened, name)) is not None
              and not (values.is_monotonic_increasing or values.is_monotonic_decreasing)]
    pair = _interleaving(name, signatures) if name is not None and not within else None
    if within:
        what = f"its values in {', '.join(within)} are not in order"
    elif pair is not None:
        what = f"the ranges of {pair[0]} and {pair[1]} interleave"
    else:
        what = ("the files' ranges interleave or are not in order (" + ", ".join(files[:4])
                + (f" and {len(files) - 4} more" if len(files) > 4 else "") + ")")
    return CombineError(
        f"combine='by_coords' cannot order the files by {name!r}: {what}. Sort the values within each file "
        "(preprocess=lambda ds: ds.sortby(...) on loaded coordinates), or give the order yourself with "
        f"combine='nested', concat_dim={name!r}"
    )


def _interleaving(name: str, signatures) -> tuple[str, str] | None:
    """Two files whose ranges of coordinate ``name`` overlap (beyond sharing an end value), from their signatures."""
    spans = []
    for path, signature in signatures:
        ends = coordinate_range(name, signature.get(name, {}))
        if ends is not None:
            low, high = sorted((ends[0], ends[-1]))
            spans.append((low, high, path))
    try:
        spans.sort(key=lambda span: (span[0], span[1]))
    except TypeError:
        return None
    for (_, high, path), (next_low, _, next_path) in zip(spans, spans[1:]):
        if next_low < high:
            return path, next_path
    return None


def _arrange(nested, datasets):
    """Put datasets into the shape of the (possibly nested) path list."""
    return [(_arrange(item, datasets) if isinstance(item, list) else next(datasets)) for item in nested]


def _resolve_client(parallel):
    if parallel is None or parallel is False or parallel in ("threads", "processes", "serial"):
        return None
    if parallel is True:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    if hasattr(parallel, "submit") and hasattr(parallel, "gather"):
        return parallel
    raise ValueError(f"parallel must be None, 'threads', 'processes', True or a distributed.Client, not {parallel!r}")


def _open_batch(paths: list[str], options: dict[str, Any]) -> list[tuple[Any, dict]]:
    """Several files in one task, one after another, each opened with the blocks the one before needed.

    (``vzdask.parsers.read_ahead``; from remote stores the next file opens in the
    background.) In a process pool a batch ships one result list, not one per
    file. Coordinates decoded once serve the batch's other files.
    """
    from contextlib import closing

    options = dict(options)
    if options.get("registry") is None:  # one for the batch: an opened file is matched to it
        options["registry"] = ObjectStoreRegistry.default()
    cache = DecodedCache(defer_times=True)
    with closing(read_ahead_sources(paths, options["registry"])) as ahead:
        return [open_one(path, options, cache, as_parts=True, opened=opened) for path, opened in zip(paths, ahead)]


def _open_and_combine(paths: list[str], options: dict[str, Any], combine: str, concat_dim, kwargs: dict,
                      pad: bool):
    """A process-pool task: parse a batch of files and combine them there; ``(signatures, dataset or error)``.

    Shipping one combined dataset back costs far less than every file's parts.
    A combine error is returned, not raised: the caller checks every file's
    CF signature first, which names the files when encodings differ.
    """
    results = _open_batch(paths, options)
    signatures = [signature for _, signature in results]
    try:
        return signatures, _combine_opened([opened for opened, _ in results], None, combine, concat_dim, kwargs,
                                           pad=pad)
    except Exception as err:  # noqa: BLE001 - re-raised by the caller after the CF check
        return signatures, err


def _open_in_processes(files, options, combine, concat_dim, kwargs, analysis: bool = False) -> xr.Dataset:
    """``parallel="processes"`` for a flat list: batches parsed and combined in the pool, then combined here."""
    import dask
    from dask import delayed

    size = _batch_size(len(files), os.cpu_count() or 1)
    tasks = [delayed(_open_and_combine, pure=False)(files[i : i + size], dict(options), combine, concat_dim, kwargs,
                                                     not analysis)
             for i in range(0, len(files), size)]
    extra = {} if dask.config.get("pool", None) is not None else {"pool": _process_pool()}
    batches = dask.compute(*tasks, scheduler="processes", **extra)
    signatures = list(zip(source_names(files), (s for signatures, _ in batches for s in signatures)))
    rewarn(signature for _, signature in signatures)
    combined = [result for _, result in batches]
    try:
        check_cf_compatible(signatures)
        for result in combined:
            if isinstance(result, Exception):
                raise result
        whole = combined[0] if len(combined) == 1 else _combine_batch(combine, concat_dim, kwargs, not analysis,
                                                                      *combined)
    except Exception as err:
        failure = _combine_failure(err, signatures, combine, concat_dim, analysis, None, kwargs["join"])
        if failure is None:
            raise
        raise failure from err
    if not analysis:
        check_no_overlap(whole, source_names(files), None, signatures)
    return whole


def _parse_locally(files, options, parallel, progress):
    import dask
    from dask import delayed

    if parallel is True:
        parallel = "processes"
    scheduler = {None: "sync", False: "sync", "serial": "sync", "threads": "threads", "processes": "processes"}[parallel]
    if scheduler == "sync" and not progress:  # one after another here: no graph to build
        return _open_batch(files, options)
    extra = {}
    if scheduler == "processes" and not progress:
        size = _batch_size(len(files), os.cpu_count() or 1)
        tasks = [delayed(_open_batch, pure=False)(files[i : i + size], dict(options))
                 for i in range(0, len(files), size)]
        if dask.config.get("pool", None) is None:
            extra["pool"] = _process_pool()
        return [result for batch in dask.compute(*tasks, scheduler=scheduler, **extra) for result in batch]
    # threads share one cache (a race only decodes a coordinate twice); processes each start empty
    cache = DecodedCache(defer_times=True) if scheduler in ("sync", "threads") else None
    tasks = [delayed(open_one, pure=False)(path, dict(options), cache, as_parts=True) for path in files]
    if scheduler == "processes" and dask.config.get("pool", None) is None:
        extra["pool"] = _process_pool()
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks, scheduler=scheduler, **extra))
    return list(dask.compute(*tasks, scheduler=scheduler, **extra))


def _batch_size(n_files: int, n_workers: int, most: int | None = None) -> int:
    """Files per parse task: a few tasks per worker, since each task costs a round trip to a process."""
    size = max(1, -(-n_files // (4 * max(1, n_workers))))
    return size if most is None else min(size, most)


_POOL = None


def _process_pool():
    """One process pool per session, started once with vzdask imported (a fresh pool costs seconds)."""
    global _POOL
    if _POOL is None:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["vzdask.mfdataset", "vzdask.parsers.hdf5", "vzdask.xarray"])
        _POOL = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context)
        atexit.register(shutdown_process_pool)
    return _POOL


def shutdown_process_pool() -> None:
    """Stop the pool's worker processes (and so its fork server), waiting for them to end.

    Called at exit, and by ``vzdask.process.exit_process`` before an
    ``os._exit`` (which skips ``atexit``): a worker left waiting for work
    keeps the command's stdout open, so ``vzdask ... | cat`` never returned.
    """
    global _POOL
    pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _open_on_cluster(client, nested, files, options, combine, concat_dim, kwargs, progress, analysis=False):
    """Parse batches of files on the workers, check CF signatures here, combine as a tree on the workers.

    Each parse task opens its files one after another as the local walk does
    (read-ahead, shared decoded coordinates) and, for a flat list, the files
    it parsed are combined where they are (``fast_combine`` when uniform):
    per-file Datasets and per-file tasks would cost several times the parse.
    """
    from distributed import wait

    workers = len(client.scheduler_info().get("workers", {}))
    size = _batch_size(len(files), workers, CLUSTER_PARSE_BATCH)
    batches = [files[i : i + size] for i in range(0, len(files), size)]
    parsed = [client.submit(_open_batch, batch, dict(options), pure=False) for batch in batches]
    signatures = client.map(_signatures_of, parsed)
    level: list = []
    failed: list = []
    try:
        # wait/progress find their client through the default; ``client`` need not be it
        with client.as_current():
            if progress:
                from distributed import progress as show_progress

                show_progress(parsed, notebook=False)  # a text bar: a widget would need ipywidgets and a display() call
            for _ in range(10):  # a result lost with its worker is computed again: wait for that too
                wait(parsed)
                if not any(f.status == "lost" for f in parsed):
                    break
        failed = [(batch, f) for batch, f in zip(batches, parsed) if f.status != "finished"]
        if failed:
            batch, future = failed[0]
            error = future.exception() if future.status == "error" else None
            if isinstance(error, FileOpenError):
                raise error
            # a lost worker (KilledWorker), a cancelled task...: name the files that task was parsing
            raise FileOpenError(f"failed to open {_files_of(source_names(batch))}: {type(error).__name__}: {error} "
                                f"(task {future.key!r} {future.status})") from error
        parsed_signatures = list(zip(source_names(files),
                                     (s for batch in client.gather(signatures) for s in batch)))
        rewarn(signature for _, signature in parsed_signatures)
        try:
            check_cf_compatible(parsed_signatures)
            whole = _combine_on_cluster(client, nested, parsed, batches, combine, concat_dim, kwargs, level,
                                        pad=not analysis)
        except Exception as err:
            # analysis: the parsed files come here (small: references) to be joined as dask arrays
            results = [r for batch in client.gather(parsed) for r in batch] if analysis else None
            failure = _combine_failure(err, parsed_signatures, combine, concat_dim, analysis, results,
                                       kwargs["join"])
            if failure is None:
                raise
            raise failure from err
        if not analysis:
            check_no_overlap(whole, source_names(files), None, parsed_signatures)
        return whole
    finally:
        # Release every future now, also when raising: a traceback kept alive (pytest, a notebook's
        # last error) holds this frame, and with it every parsed file on the workers.
        for held in (parsed, signatures, level, failed):
            held.clear()
        future = None  # noqa: F841


def _combine_on_cluster(client, nested, parsed, batches, combine, concat_dim, kwargs, level: list,
                        pad: bool = False) -> xr.Dataset:
    """Combine the parse tasks' results as a tree on the workers; ``level`` keeps the first level's futures.

    ``pad``: variables some files lack padded at every level, as ``_combine_opened`` does (flat lists).
    """
    try:
        if combine == "nested" and any(isinstance(p, list) for p in nested):
            # a grid: one dataset per file, each innermost list combined on a worker, then the rows
            level.extend(client.submit(_dataset_at, future, i, pure=False)
                         for future, batch in zip(parsed, batches) for i in range(len(batch)))
            dims = list(concat_dim) if isinstance(concat_dim, (list, tuple)) else [concat_dim]
            root = _tree_nested(client, _arrange(nested, iter(level)), dims, kwargs)
        else:
            level.extend(client.submit(_combine_parsed, combine, concat_dim, kwargs, pad, future, pure=False)
                         for future in parsed)
            root = _tree(client, level, combine, concat_dim, kwargs, pad)
        return _result_of(client, root)
    finally:
        root = None  # noqa: F841


def _result_of(client, future):
    """``future.result()``, but a task's error is raised without the frames that waited for it.

    Raised through ``Future.result`` (or ``Client.gather``), the error's traceback keeps their frames,
    whose locals hold the future: the failed combine tree then stays on the cluster until a garbage
    collection breaks the cycle (traceback -> frame -> error), and a later open's tasks share the
    cluster with it (a test of released tasks failed after one that had caught such an error).
    """
    from distributed import wait

    with client.as_current():
        wait([future])
    if future.status != "error":
        return future.result()
    error, traceback = future.exception(), future.traceback()
    future.release()
    raise error.with_traceback(traceback)


def _files_of(batch: list[str]) -> str:
    """The files of one parse task, for a message (all of them when few)."""
    if len(batch) == 1:
        return batch[0]
    if len(batch) <= 8:
        return f"one of the files {', '.join(batch)}"
    return f"one of the {len(batch)} files {batch[0]} ... {batch[-1]} (parsed in one task)"


def _tree(client, futures, combine, concat_dim, kwargs, pad: bool = False):
    """Combine ordered futures in batches of ``COMBINE_BATCH`` until one is left (all on the workers)."""
    level = list(futures)
    while len(level) > 1:
        level = [
            client.submit(_combine_batch, combine, concat_dim, kwargs, pad, *level[i : i + COMBINE_BATCH],
                          pure=False)
            for i in range(0, len(level), COMBINE_BATCH)
        ]
    return level[0]


def _tree_nested(client, grid, dims, kwargs):
    if not isinstance(grid, list):
        return grid
    inner = [_tree_nested(client, item, dims[1:], kwargs) for item in grid]
    return _tree(client, inner, "nested", dims[0], kwargs)


def open_mfdataset(paths, *, chunks=None, **kwargs) -> xr.Dataset:
    """Many files as an ordinary dask-backed Dataset for analysis.

    Parses once, then every task reads byte ranges and decodes them: no h5py
    or file handles at read time, so it runs on workers that only have
    obstore. Default dask chunks are whole native chunks grouped to about
    ``vzdask.task-bytes``; small coordinate variables are loaded. Variables
    are CF-decoded (lazily) as ``xr.open_mfdataset`` would: masking and
    unpacking inside each block's load task, times by ``xr.decode_cf``.
    Keyword arguments are those of ``open_virtual_mfdataset``.

    Files that make no one virtual dataset (different lengths or chunkings
    along the concatenation dimension, variables missing from some files,
    CF encodings that differ between files...) are still opened: each file's
    virtual variables become dask arrays, decoded for that file alone, and
    xarray combines those Datasets with the given ``combine``/``join``/
    ``data_vars``/``coords``/``compat``, as ``xr.open_mfdataset`` does; the
    ones not given are then left to xarray (``compat="no_conflicts"``,
    ``coords="different"`` today, with xarray's warnings where its coming
    defaults would differ), so ``vzdask.open_mfdataset(paths)`` gives what
    ``xr.open_mfdataset(paths)`` gives.

    ``encoding["preferred_chunks"]`` is the combined stored grid (a tuple of
    sizes along a rectilinear axis) and ``encoding["chunks"]`` its chunk shape
    where that grid is regular (absent otherwise, so ``to_zarr`` chunks by the
    dask blocks); both are absent where files were joined file by file along
    an axis (no one stored grid).
    """
    import inspect

    arguments = inspect.signature(open_virtual_mfdataset).bind(paths, **kwargs)  # TypeError on unknown names
    given = set(arguments.arguments)
    arguments.apply_defaults()
    decode_times = arguments.arguments["decode_times"]
    try:
        virtual = _open_virtual(dict(arguments.arguments), analysis=True)
    except _NoSingleManifest as failed:
        # xarray combines values here, so the options not given are left to xarray, as xr.open_mfdataset
        # leaves them: with compat="override" a variable missing from one file would hide another's values
        return open_file_by_file(dict(arguments.arguments), given, failed.results, chunks)
    return to_analysis(virtual, chunks, decode_times)


def to_analysis(virtual: xr.Dataset, chunks, decode_times) -> xr.Dataset:
    """A virtual Dataset as dask arrays, CF-decoded (masking and unpacking in the load tasks).

    ``encoding["chunks"]`` stays only where the stored grid is regular: a rectilinear one (kept in
    ``preferred_chunks``) is what ``to_zarr`` refuses in encoding, while dask chunks it can write.
    """
    analysis = VirtualDatasetAccessor(virtual).to_dask(chunks=chunks, mask_and_scale=True)
    decoded = xr.decode_cf(analysis, **({} if decode_times is None else {"decode_times": decode_times}))
    for var in decoded.variables.values():
        if any(not isinstance(c, (int, np.integer)) for c in var.encoding.get("chunks", ())):
            var.encoding = {k: v for k, v in var.encoding.items() if k != "chunks"}
    return decoded


def _chunks_of_combined(combined: xr.Dataset, first: xr.Dataset) -> xr.Dataset:
    """``combined`` (xarray's combine of per-file datasets) without the first file's chunks where they mislead.

    A variable whose shape changed in combining has no one stored grid (the files were joined as dask
    arrays): its ``chunks`` and ``preferred_chunks`` go, except a loaded one's (``_loaded_chunks``).
    """
    for name, var in combined.variables.items():
        if name not in first.variables or first.variables[name].shape == var.shape:
            continue
        stored = var.encoding.get(MANIFEST_ENCODING_KEY)
        encoding = {k: v for k, v in var.encoding.items() if k not in ("chunks", "preferred_chunks")}
        if isinstance(stored, ManifestArray) and stored.ndim == var.ndim and not hasattr(var.data, "dask"):
            encoding["chunks"] = _loaded_chunks(stored, tuple(var.shape))
        var.encoding = encoding
    return combined


def open_file_by_file(arguments: dict[str, Any], given: set[str], results: list | None, chunks) -> xr.Dataset:
    """``open_mfdataset`` when the files make no one virtual dataset: per-file dask Datasets combined by xarray.

    ``given``: the arguments the caller gave (xarray's own defaults for the other combine options);
    ``results`` are the parsed files (None: parse them again, where ``parallel`` says).
    """
    nested = expand_paths(arguments["paths"])
    grid = any(isinstance(p, list) for p in nested)
    files = _flatten(nested) if grid else list(nested)
    if results is None:
        options = {key: arguments[key] for key in (
            "parser", "registry", "group", "inherit_coords", "loadable_variables", "inline", "drop_variables", "on_unsupported",
            "decode_times", "preprocess")}
        client = _resolve_client(arguments["parallel"])
        if client is not None:
            results = client.gather([client.submit(_open_batch, files, dict(options), pure=False)])[0]
        else:
            results = _parse_locally(files, options, arguments["parallel"], arguments["progress"])
    datasets = [to_analysis(opened.to_dataset() if isinstance(opened, VirtualParts) else opened, chunks,
                          arguments["decode_times"])
                for opened, _ in results]
    kwargs = {key: arguments[key] for key in ("data_vars", "coords", "compat", "join") if key in given}
    kwargs["combine_attrs"] = arguments["combine_attrs"]  # the default is xr.open_mfdataset's ("override")
    combined = _combine(_arrange(nested, iter(datasets)) if grid else datasets, arguments["combine"],
                        arguments["concat_dim"], kwargs)
    return _chunks_of_combined(combined, datasets[0])
