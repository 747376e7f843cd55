"""Every group of a file (or of many files, group by group) as an ``xarray.DataTree``: virtual or for analysis.

A group's virtual Dataset is what ``open_virtual_mfdataset(paths, group=...)``
gives; the tree holds each group's own variables (children inherit their
ancestors' coordinates, as in ``xr.open_datatree``). One file is parsed
once for all its groups; so is each of many files (where ``parallel`` says:
here, in threads, in processes or on a cluster; the parses are gathered
here), and the files are then combined group by group. The tree has every
group of any file: a group some files lack is padded for analysis as xarray
pads a variable missing from some files, and refused for a virtual tree,
naming the group and the files.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from contextlib import closing, nullcontext
from typing import Any

import xarray as xr

from vzdask.combine import cf_signature
from vzdask.errors import CombineError, FileOpenError, VzdaskError
from vzdask.manifests.group import ManifestGroup
from vzdask.mfdataset import (
    Signature,
    analysis_of_parsed,
    combine_parsed,
    expand_paths,
    open_one,
    open_virtual_mfdataset,
    parse_files,
    read_ahead_sources,
    rewarn,
    source_name,
    source_names,
    to_analysis,
)
from vzdask.parsers import Parser, detect_parser
from vzdask.registry import ObjectStoreRegistry
from vzdask.parsers.icechunk import is_icechunk_source
from vzdask.xarray import DecodedCache, VirtualParts, open_virtual_groups, source_url

#: The arguments that configure how one file is opened (the others say how files are combined).
_FILE_OPTIONS = ("parser", "registry", "loadable_variables", "inline", "drop_variables", "on_unsupported",
                 "decode_times")


def open_virtual_datatree(paths, *, group: str | None = None, **kwargs: Any) -> xr.DataTree:
    """Every group of one file or many as a DataTree of virtual Datasets.

    Parameters
    ----------
    paths : str, path, list or nested list
        One file, or many as for ``open_virtual_mfdataset``.
    group : str, optional
        The tree's root: this group and the groups below it (default: the file's root).
    **kwargs
        Those of ``open_virtual_mfdataset`` (``combine``, ``concat_dim``, ``join``, ``parallel``,
        ``loadable_variables``...). ``loadable_variables`` and ``drop_variables`` name variables of
        any group: each group loads (or drops) the ones it has.

    Returns
    -------
    xarray.DataTree
        Node ``/a/b`` is group ``a/b`` below ``group``, for every group of any of the files;
        ``tree.vz.to_kerchunk(...)`` and ``tree.vz.to_icechunk(...)`` write every group.

    Raises
    ------
    FileOpenError
        A file cannot be parsed, or ``group`` is not one of its groups (the message names the file, the
        group and the file's groups).
    CombineError
        A group with variables is missing from some of the files (naming the group and the files; the
        analysis tree pads it).
    FileOpenError, CombineError...
        As ``open_virtual_mfdataset`` raises them for one group, the message starting with the group's path.
    """
    arguments = _bind(paths, group, kwargs)
    files = _flatten(expand_paths(arguments["paths"]))
    if not _one_file(arguments, files):
        return _tree(_combine_groups(arguments, files, analysis=False))
    first = _first_file(arguments, files)
    preprocess = arguments["preprocess"]
    datasets = {path: parts.to_dataset() for path, parts in first.items()}
    if preprocess is not None:
        datasets = {path: preprocess(ds) for path, ds in datasets.items()}
    return _tree(datasets)


def open_datatree(paths, *, group: str | None = None, chunks=None, **kwargs: Any) -> xr.DataTree:
    """Every group of one file or many as a DataTree of dask-backed Datasets for analysis.

    The analysis counterpart of ``open_virtual_datatree`` (the same arguments, and ``chunks`` as for
    ``open_mfdataset``); each group is what ``vzdask.open_mfdataset(paths, group=...)`` gives, CF-decoded
    as ``xr.open_datatree`` decodes it. A group some files lack is padded over those files' ranges with
    the fill value (NaN), as xarray pads a variable missing from some files (``join``, ``data_vars``).
    """
    arguments = _bind(paths, group, kwargs)
    files = _flatten(expand_paths(arguments["paths"]))
    if not _one_file(arguments, files) or arguments["preprocess"] is not None:
        return _tree(_combine_groups(arguments, files, analysis=True, chunks=chunks))
    first = _first_file(arguments, files)
    decode_times = arguments["decode_times"]
    return _tree({path: to_analysis(parts.to_dataset(), chunks, decode_times) for path, parts in first.items()})


class _ParsedOnce(Parser):
    """One file's parse (the detected parser's, or ``inner``'s), kept for each of the file's groups.

    Made in the task that opens the file (``_open_tree_batch``), so the file is parsed once for every
    group whatever the scheduler; pickled, it starts empty.
    """

    def __init__(self, *, inline, drop_variables, on_unsupported: str, inner=None) -> None:
        super().__init__(inline=inline, drop_variables=drop_variables)
        self.on_unsupported = on_unsupported
        self.inner = inner
        self._parsed: dict[str, tuple[Any, Any]] = {}

    def parse_keeping_reads(self, url: str, registry) -> tuple[Any, Any]:
        found = self._parsed.get(url)
        if found is None:
            opened, self._opened = self._opened, None
            if self.inner is None:
                parser = detect_parser(url, registry, inline=self.inline, drop_variables=self.drop_variables,
                                       on_unsupported=self.on_unsupported, opened=opened)
                found = parser.parse_keeping_reads(url, registry)
            elif hasattr(self.inner, "parse_keeping_reads"):
                if opened is not None and isinstance(self.inner, Parser):
                    self.inner.continue_from(opened)
                found = self.inner.parse_keeping_reads(url, registry)
            else:  # any callable (url, registry) -> ManifestStore
                found = (self.inner(url, registry), None)
            self._parsed[url] = found
        return found

    def __call__(self, url: str, registry):
        return self.parse_keeping_reads(url, registry)[0]

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_parsed": {}}


def _open_tree_batch(paths: list[str], options: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, list]]]:
    """A parse task: each file parsed once, and every group below ``options["group"]`` opened from that parse.

    Per file: group path (relative to the tree's root; "" first, parents before children) ->
    ``(VirtualParts or Dataset, Signature)`` as ``open_one`` gives them, and group path -> the names of
    the group's own arrays: a group below the file's root comes with the dimension coordinates it
    inherits too (to order and align its files by).
    """
    options = dict(options)
    if options.get("registry") is None:
        options["registry"] = ObjectStoreRegistry.default()
    root = (options.pop("group") or "").strip("/")
    loadable = options.pop("loadable_variables")
    given = options.pop("parser")
    cache = DecodedCache(defer_times=True)
    out = []
    ahead = read_ahead_sources(paths, options["registry"])
    with closing(ahead) if isinstance(ahead, Generator) else nullcontext():
        for path, opened in zip(paths, ahead):
            inner = given
            if inner is None and is_icechunk_source(path):  # the object itself is what its parser reads
                inner = detect_parser(path, options["registry"], inline=options["inline"],
                                      drop_variables=options["drop_variables"])
            if given is not None and getattr(given, "group", None):  # its own group is its store's root
                parser = given
            else:
                parser = _ParsedOnce(inline=options["inline"], drop_variables=options["drop_variables"],
                                     on_unsupported=options["on_unsupported"], inner=inner)
            each = {**options, "parser": parser, "inline": None, "on_unsupported": "raise"}
            # the tree's root first: the parse (its warnings, its errors naming the file) happens in open_one
            top = open_one(path, {**each, "group": root or None, "inherit_coords": bool(root),
                                  "loadable_variables": None}, cache, as_parts=True, opened=opened)
            store = parser(source_url(path)[1], options["registry"])
            node = store.group[root] if root and not getattr(parser, "group", None) else store.group
            assert isinstance(node, ManifestGroup)  # open_one checked the group
            groups: dict[str, Any] = {}
            own: dict[str, list[str]] = {}
            for rel, child in node.walk_groups():
                own[rel] = list(child.arrays)
                if not rel and loadable is None:
                    groups[rel] = top
                    continue
                full = "/".join(p for p in (root, rel) if p)
                names = None if loadable is None else [n for n in loadable if n in child.arrays]
                groups[rel] = open_one(path, {**each, "group": full or None, "inherit_coords": bool(full),
                                              "loadable_variables": names}, cache, as_parts=True)
            out.append((groups, own))
    return out


def _combine_groups(arguments: dict[str, Any], files: list[str], analysis: bool, chunks=None
                    ) -> dict[str, xr.Dataset]:
    """Every group of any file, each combined over the files (the multi-file tree; see the module's notes)."""
    options = {key: arguments[key] for key in (*_FILE_OPTIONS, "group", "preprocess")}
    parsed = parse_files(files, options, arguments["parallel"], arguments["progress"], _open_tree_batch)
    per_file = [groups for groups, _ in parsed]
    rewarn(signature for groups in per_file for _, signature in groups.values())
    loadable, inline = arguments["loadable_variables"], arguments["inline"]
    found = {str(n) for groups in per_file for parts, _ in groups.values() for n in parts.variables}
    if loadable is not None:  # named in no group of any file: a typo
        unknown = sorted(set(loadable) - found)
        if unknown:
            raise ValueError(f"loadable_variables in no group of any of the files: {unknown}")
    if inline is not None and not analysis:  # as open_virtual_mfdataset checks it
        inline.check_variables(sorted(found), "is in none of the files (in no group)")
    order: dict[str, None] = {}
    own: dict[str, set[str]] = {}
    for groups, names in parsed:
        order.update(dict.fromkeys(groups))
        for path, listed in names.items():
            own.setdefault(path, set()).update(listed)
    datasets: dict[str, xr.Dataset] = {}
    for path in sorted(order, key=lambda p: len(p.split("/")) if p else 0):  # parents first
        results = [groups.get(path) for groups in per_file]
        present = [r for r in results if r is not None]
        if not any(r[0].variables for r in present):  # attributes (or subgroups) only
            datasets[path] = xr.Dataset(attrs=dict(present[0][0].attrs))
            continue
        if len(present) < len(files):
            results = _lacking_group(path, files, per_file, results, analysis)
        datasets[path] = _each_group(arguments, path, results, own[path], datasets, analysis, chunks)
    return datasets


def _lacking_group(path: str, files: list[str], per_file: list[dict], results: list, analysis: bool) -> list:
    """A group some files lack: refused for a virtual tree; for analysis padded as xarray pads a variable.

    Each file that lacks it stands in with the dimension coordinates the group would inherit there (its
    nearest ancestor's), so xarray's join fills the group's variables over that file's range.
    """
    lacking = [source_name(f) for f, r in zip(files, results) if r is None]
    having = [source_name(f) for f, r in zip(files, results) if r is not None]
    if not analysis:
        raise CombineError(
            f"group {path!r} is missing from {len(lacking)} of {len(files)} files ({_named(lacking)}; it is in "
            f"{_named(having)}): a virtual DataTree cannot pad its variables over the files that lack it (the "
            f"padding would refer to no file). Open the files that have it (open_virtual_mfdataset(..., "
            f"group={path!r})), or use vzdask.open_datatree(...), which pads the group for analysis as xarray "
            "pads a variable missing from some files."
        )
    parts = next(r for r in results if r is not None)[0]
    dims = {str(d) for var in parts.variables.values() for d in var.dims}
    padded = []
    for groups, result in zip(per_file, results):
        if result is None:
            coords = {}
            for dim in sorted(dims):
                ancestor = _nearest(groups, path, dim)
                if ancestor is not None:
                    coords[dim] = ancestor[dim].variable
            pad = xr.Dataset(coords=coords, attrs=dict(parts.attrs))  # the group's attributes, not none
            result = (pad, Signature(cf_signature(pad)))
        padded.append(result)
    return padded


def _nearest(groups: dict[str, Any], path: str, name: str) -> xr.Dataset | None:
    """In one file's groups, the nearest ancestor of ``path`` with the dimension coordinate ``name``."""
    parts = path.split("/") if path else []
    for depth in range(len(parts) - 1, -1, -1):
        found = groups.get("/".join(parts[:depth]))
        if found is not None:
            ds = found[0].to_dataset() if isinstance(found[0], VirtualParts) else found[0]
            if name in ds.coords and ds[name].dims == (name,):
                return ds
    return None


def _named(files: list[str]) -> str:
    return ", ".join(files) if len(files) <= 4 else f"{', '.join(files[:4])} and {len(files) - 4} more"


#: xarray's combine_by_coords when no dimension coordinate differs between the datasets.
_NO_ORDER = "Could not find any dimension coordinates"


def _bind(paths, group: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All of ``open_virtual_mfdataset``'s arguments (TypeError on unknown names), with the tree's root group.

    ``"given"`` holds the ones the caller gave (``open_mfdataset`` leaves the others to xarray when it
    combines file by file).
    """
    bound = inspect.signature(open_virtual_mfdataset).bind(paths, group=group, **kwargs)
    bound.apply_defaults()
    return {**bound.arguments, "given": dict(kwargs)}


def _first_file(arguments: dict[str, Any], files: list[str]) -> dict[str, VirtualParts]:
    """The one file's groups, from one parse."""
    options = {key: arguments[key] for key in _FILE_OPTIONS}
    try:
        return open_virtual_groups(files[0], group=arguments["group"], **options)
    except (VzdaskError, OSError) as err:  # as open_virtual_mfdataset names the file
        raise FileOpenError(f"failed to open {source_name(files[0])}: {type(err).__name__}: {err}") from err


def _flatten(nested: list) -> list[str]:
    return [p for item in nested for p in (_flatten(item) if isinstance(item, list) else [item])]


def _one_file(arguments: dict[str, Any], files: list[str]) -> bool:
    """One file that combining would leave as it is: its groups come from one parse."""
    paths = arguments["paths"]
    return len(files) == 1 and arguments["combine"] == "by_coords" and not (
        isinstance(paths, (list, tuple)) and any(isinstance(p, (list, tuple)) for p in paths))


def _combined(arguments: dict[str, Any], results: list, overrides: dict[str, Any], analysis: bool,
              chunks) -> xr.Dataset:
    """One group's parsed files combined as ``open_virtual_mfdataset`` (or ``open_mfdataset``) would."""
    bound = {**arguments, **overrides}
    if analysis:
        return analysis_of_parsed(bound, set(arguments["given"]) | set(overrides), results, chunks)
    nested = expand_paths(bound["paths"])
    kwargs = {key: bound[key] for key in ("data_vars", "coords", "compat", "join", "combine_attrs")}
    return combine_parsed(_flatten(nested), nested, results, bound["combine"], bound["concat_dim"], kwargs,
                          analysis=False)


def _each_group(arguments: dict[str, Any], path: str, results: list, variables: set[str],
                done: dict[str, xr.Dataset], analysis: bool, chunks) -> xr.Dataset:
    """One group of every file (``results``: each file's parse of it; ``variables``: its own arrays), combined.

    Its files come with the dimension coordinates the group inherits, so they are ordered and aligned by
    them as the root's are; they are dropped again (the tree inherits them), after checking they came out
    as the ancestor group's in ``done``.
    """
    paths = arguments["paths"]
    dims = {str(d) for opened, _ in results for var in opened.variables.values() for d in var.dims}
    overrides: dict[str, Any] = {}
    concat_dim = arguments["concat_dim"]
    if arguments["combine"] == "nested" and isinstance(concat_dim, str) and concat_dim not in dims:
        # a group without the concatenation dimension is the same in every file: merged, as xr.concat of
        # DataTrees leaves such a node (not stacked along a new dimension)
        overrides["concat_dim"] = [None]
    try:
        try:
            ds = _combined(arguments, results, overrides, analysis, chunks)
        except ValueError as err:
            if arguments["combine"] != "by_coords" or _NO_ORDER not in str(err):
                raise
            bare = sorted(d for d in dims if d not in variables and _ancestor_with(done, path, d) is None)
            if bare:  # nothing to order these files by: refuse, rather than take one file's values
                raise CombineError(
                    f"group {path or '/'!r} of {_some(paths)}: its dimensions {bare} have no coordinate (in the "
                    "group or inherited) to order the files by with combine='by_coords'; pass "
                    "combine='nested', concat_dim=... (the files in order) or open the group on its own "
                    "(open_virtual_mfdataset(..., group=...))"
                ) from err
            # no coordinate of the group varies between the files (a group of constants, say): merged, as
            # xr.combine_nested(..., concat_dim=None) does (compat as given; "override": the first file's)
            ds = _combined(arguments, results, {"combine": "nested", "concat_dim": [None]}, analysis, chunks)
    except VzdaskError as err:
        if not path:
            raise
        raise type(err)(f"group {path!r}: {err}") from err
    inherited = [name for name in ds.variables if name not in variables]
    for name in inherited:
        ancestor = _ancestor_with(done, path, str(name))
        if ancestor is not None and not ds[name].equals(done[ancestor][name]):
            raise CombineError(
                f"group {path!r}: its files combine to other {name!r} values than group {ancestor or '/'!r} "
                f"({ds.sizes.get(name)} vs {done[ancestor].sizes.get(name)} along {name!r}): a DataTree "
                "needs a child's inherited dimension to match its parent's; open the groups separately "
                "(open_virtual_mfdataset(..., group=...))"
            )
    return ds.drop_vars(inherited)


def _some(paths) -> str:
    files = source_names(_flatten(expand_paths(paths)))
    return ", ".join(files) if len(files) <= 3 else f"{files[0]} ... {files[-1]} ({len(files)} files)"


def _ancestor_with(done: dict[str, xr.Dataset], path: str, name: str) -> str | None:
    """The nearest ancestor of ``path`` already opened whose dataset has the coordinate ``name``."""
    parts = path.split("/") if path else []
    for depth in range(len(parts) - 1, -1, -1):
        ancestor = "/".join(parts[:depth])
        if ancestor in done and name in done[ancestor].coords:
            return ancestor
    return None


def _tree(datasets: dict[str, xr.Dataset]) -> xr.DataTree:
    return xr.DataTree.from_dict({"/" + path: ds for path, ds in datasets.items()})
