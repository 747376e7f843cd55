"""Every group of a file (or of many files, group by group) as an ``xarray.DataTree``: virtual or for analysis.

A group's virtual Dataset is what ``open_virtual_mfdataset(paths, group=...)``
gives; the tree holds each group's own variables (children inherit their
ancestors' coordinates, as in ``xr.open_datatree``). One file is parsed
once for all its groups; many files are combined group by group, with the
groups (and their variables) found in the first file.
"""

from __future__ import annotations

import inspect
from typing import Any

import xarray as xr

from vzdask.errors import CombineError, FileOpenError, VzdaskError
from vzdask.parsers import Parser, detect_parser
from vzdask.mfdataset import expand_paths, open_mfdataset, open_virtual_mfdataset, to_analysis
from vzdask.xarray import VirtualParts, open_virtual_groups

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
        Node ``/a/b`` is group ``a/b`` below ``group``; ``tree.vz.to_kerchunk(...)`` and
        ``tree.vz.to_icechunk(...)`` write every group.

    Raises
    ------
    FileOpenError
        A file cannot be parsed, or ``group`` is not one of its groups (the message names the file, the
        group and the file's groups).
    FileOpenError, CombineError...
        As ``open_virtual_mfdataset`` raises them for one group, the message starting with the group's path.
    """
    arguments = _bind(paths, group, kwargs)
    files, first = _first_file(arguments)
    if _one_file(arguments, files):
        preprocess = arguments["preprocess"]
        datasets = {path: parts.to_dataset() for path, parts in first.items()}
        if preprocess is not None:
            datasets = {path: preprocess(ds) for path, ds in datasets.items()}
    else:
        arguments = _parsing_once(arguments, first)
        datasets = {}
        for path, parts in first.items():  # parents first
            datasets[path] = _each_group(open_virtual_mfdataset, arguments, path, parts, datasets)
    return _tree(datasets)


def open_datatree(paths, *, group: str | None = None, chunks=None, **kwargs: Any) -> xr.DataTree:
    """Every group of one file or many as a DataTree of dask-backed Datasets for analysis.

    The analysis counterpart of ``open_virtual_datatree`` (the same arguments, and ``chunks`` as for
    ``open_mfdataset``); each group is what ``vzdask.open_mfdataset(paths, group=...)`` gives, CF-decoded
    as ``xr.open_datatree`` decodes it.
    """
    arguments = _bind(paths, group, kwargs)
    files, first = _first_file(arguments)
    if _one_file(arguments, files) and arguments["preprocess"] is None:
        decode_times = arguments["decode_times"]
        datasets = {path: to_analysis(parts.to_dataset(), chunks, decode_times) for path, parts in first.items()}
    else:
        def analysis(paths, **options):
            return open_mfdataset(paths, chunks=chunks, **options)

        arguments = _parsing_once(arguments, first)
        datasets = {}
        for path, parts in first.items():
            datasets[path] = _each_group(analysis, arguments, path, parts, datasets)
    return _tree(datasets)


class _ParsedOnce(Parser):
    """The detected parser of each file, run once (the whole file) for every group of a tree, in this process.

    Each group of a multi-file tree is combined by its own ``open_virtual_mfdataset`` call; this parser
    keeps each file's parse for the next group instead of parsing it again. Pickled (to processes or a
    cluster) it starts empty there: those parse each file again per group.
    """

    def __init__(self, *, inline, drop_variables, on_unsupported: str) -> None:
        super().__init__(inline=inline, drop_variables=drop_variables)
        self.on_unsupported = on_unsupported
        self._parsed: dict[str, tuple[Any, Any]] = {}

    def parse_keeping_reads(self, url: str, registry) -> tuple[Any, Any]:
        found = self._parsed.get(url)
        if found is None:
            opened, self._opened = self._opened, None
            parser = detect_parser(url, registry, inline=self.inline, drop_variables=self.drop_variables,
                                   on_unsupported=self.on_unsupported, opened=opened)
            found = self._parsed[url] = parser.parse_keeping_reads(url, registry)
        return found

    def __call__(self, url: str, registry):
        return self.parse_keeping_reads(url, registry)[0]

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_parsed": {}}


def _parsing_once(arguments: dict[str, Any], first: dict[str, VirtualParts]) -> dict[str, Any]:
    """``arguments`` with a ``_ParsedOnce`` parser when the tree has several groups and no parser was given."""
    if len(first) < 2 or arguments["parser"] is not None:
        return arguments
    parser = _ParsedOnce(inline=arguments["inline"], drop_variables=arguments["drop_variables"],
                         on_unsupported=arguments["on_unsupported"])
    given = {key: value for key, value in arguments["given"].items() if key not in ("inline", "on_unsupported")}
    return {**arguments, "parser": parser, "given": {**given, "parser": parser}}


#: xarray's combine_by_coords when no dimension coordinate differs between the datasets.
_NO_ORDER = "Could not find any dimension coordinates"


def _bind(paths, group: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All of ``open_virtual_mfdataset``'s arguments (TypeError on unknown names), with the tree's root group.

    ``"given"`` holds the ones the caller gave: only those are passed on (``open_mfdataset`` leaves
    the others to xarray when it combines file by file).
    """
    bound = inspect.signature(open_virtual_mfdataset).bind(paths, group=group, **kwargs)
    bound.apply_defaults()
    return {**bound.arguments, "given": dict(kwargs)}


def _first_file(arguments: dict[str, Any]) -> tuple[list[str], dict[str, VirtualParts]]:
    """The files, and the first one's groups (which groups the tree has, and which variables each holds)."""
    nested = expand_paths(arguments["paths"])
    files = _flatten(nested)
    options = {key: arguments[key] for key in _FILE_OPTIONS}
    try:
        return files, open_virtual_groups(files[0], group=arguments["group"], **options)
    except (VzdaskError, OSError) as err:  # as open_virtual_mfdataset names the file
        raise FileOpenError(f"failed to open {files[0]}: {type(err).__name__}: {err}") from err


def _flatten(nested: list) -> list[str]:
    return [p for item in nested for p in (_flatten(item) if isinstance(item, list) else [item])]


def _one_file(arguments: dict[str, Any], files: list[str]) -> bool:
    """One file that combining would leave as it is: its groups come from one parse."""
    paths = arguments["paths"]
    return len(files) == 1 and arguments["combine"] == "by_coords" and not (
        isinstance(paths, (list, tuple)) and any(isinstance(p, (list, tuple)) for p in paths))


def _each_group(open_group, arguments: dict[str, Any], path: str, parts: VirtualParts,
                done: dict[str, xr.Dataset]) -> xr.Dataset:
    """One group of every file, combined by ``open_group`` (``open_virtual_mfdataset`` or ``open_mfdataset``).

    A group below the file's root is opened with the dimension coordinates it inherits (``inherit_coords``),
    so its files are ordered and aligned by them as the root's are; they are dropped again (the tree
    inherits them), after checking they came out as the ancestor group's in ``done``.
    """
    if not parts.variables:  # a group of attributes only (or of subgroups): nothing to combine
        return xr.Dataset(attrs=dict(parts.attrs))
    options = dict(arguments["given"])
    paths = arguments["paths"]
    root = arguments["group"].strip("/") if arguments["group"] else ""
    options["group"] = "/".join(p for p in (root, path) if p) or None
    options["inherit_coords"] = options["group"] is not None
    dims = {str(d) for var in parts.variables.values() for d in var.dims}
    concat_dim = arguments["concat_dim"]
    if arguments["combine"] == "nested" and isinstance(concat_dim, str) and concat_dim not in dims:
        # a group without the concatenation dimension is the same in every file: merged, as xr.concat of
        # DataTrees leaves such a node (not stacked along a new dimension)
        options["concat_dim"] = [None]
    if arguments["loadable_variables"] is not None:  # the ones of this group (named in no group: already refused)
        options["loadable_variables"] = [n for n in arguments["loadable_variables"] if n in parts.variables]
    try:
        try:
            ds = open_group(paths, **options)
        except ValueError as err:
            if arguments["combine"] != "by_coords" or _NO_ORDER not in str(err):
                raise
            bare = sorted(d for d in dims if d not in parts.variables and _ancestor_with(done, path, d) is None)
            if bare:  # nothing to order these files by: refuse, rather than take one file's values
                raise CombineError(
                    f"group {path or '/'!r} of {_some(paths)}: its dimensions {bare} have no coordinate (in the "
                    "group or inherited) to order the files by with combine='by_coords'; pass "
                    "combine='nested', concat_dim=... (the files in order) or open the group on its own "
                    "(open_virtual_mfdataset(..., group=...))"
                ) from err
            # no coordinate of the group varies between the files (a group of constants, say): merged, as
            # xr.combine_nested(..., concat_dim=None) does (compat as given; "override": the first file's)
            ds = open_group(paths, **{**options, "combine": "nested", "concat_dim": [None]})
    except VzdaskError as err:
        if not path:
            raise
        raise type(err)(f"group {path!r}: {err}") from err
    inherited = [name for name in ds.variables if name not in parts.variables]
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
    files = _flatten(expand_paths(paths))
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
