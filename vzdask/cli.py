"""The ``vzdask`` command: virtualize files, describe and validate reference sets.

Exit codes: 0 ok, 1 the work failed, 2 bad usage. Errors are one line;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

from vzdask.accessor import VirtualDatasetAccessor
from vzdask.errors import VzdaskError
from vzdask.process import exit_process, quiet_icechunk_logs

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _store_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed: object = value
    if value.lower() in ("true", "false"):
        parsed = value.lower() == "true"
    elif value.isdigit():
        parsed = int(value)
    return key.strip(), parsed


def _registry(args):
    """The registry for this command's remote options (``--anon``, ``--store-option``)."""
    from vzdask.registry import ObjectStoreRegistry

    options = dict(args.store_option)
    if args.anon:
        options["skip_signature"] = True
    return ObjectStoreRegistry(store_options=options)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vzdask")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vzdask", description="Virtual Zarr datasets over archival files.")
    parser.add_argument("--version", action="version", version=f"vzdask {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (and Icechunk's warnings)")
    # ``--debug`` is also accepted after the command (``vzdask info refs.json --debug``)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # how remote objects (s3://, https://...) are reached
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--anon", action="store_true",
                        help="read s3:// urls without credentials (public buckets: skip_signature)")
    remote.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE", type=_store_option,
                        help="an option for the remote stores (obstore's names: region=us-west-2, "
                             "endpoint=http://host:9000, allow_http=true, timeout=30s...); repeatable")

    v = commands.add_parser("virtualize", parents=[common, remote],
                            help="turn files into kerchunk JSON/Parquet or an Icechunk repository")
    v.add_argument("paths", nargs="+", help="files, globs or urls (local, s3://, http(s)://)")
    v.add_argument("-o", "--output", required=True, help="output file (json), directory (parquet, icechunk)")
    v.add_argument("--format", choices=["json", "parquet", "icechunk"], default=None,
                   help="default: from the output name (.json; .parq/.parquet; a name without a suffix, "
                        ".icechunk or an existing directory: icechunk)")
    how = v.add_mutually_exclusive_group()
    how.add_argument("--concat-dim", help="concatenate the files in the given order along this dimension")
    how.add_argument("--combine", choices=["by_coords"], help="combine by coordinate values (the default)")
    v.add_argument("--inline-threshold", type=int, default=None, metavar="BYTES",
                   help="inline chunks of at most this many stored bytes")
    v.add_argument("--inline-var", action="append", default=[], metavar="NAME", help="inline every chunk of NAME")
    v.add_argument("--load-var", action="append", default=None, metavar="NAME",
                   help="load NAME for indexing; replaces the default, the dimension coordinates "
                        "(combining by coordinates needs every one of them)")
    v.add_argument("--group", default=None, metavar="PATH",
                   help="virtualize only this group of every file, written as the output's root "
                        "(default: every group, each written as a group of the output)")
    v.add_argument("--drop-var", action="append", default=None, metavar="NAME", help="leave NAME out of every file")
    v.add_argument("--skip-unsupported", action="store_true",
                   help="leave out variables that cannot be virtualized, with a warning naming them "
                        "(default: stop with an error listing them)")
    v.add_argument("--scheduler", default="threads", help="threads, processes or a dask scheduler ADDRESS")
    v.add_argument("--workers", type=_positive_int, default=None,
                   help="local worker count (threads or processes)")
    v.add_argument("--progress", dest="progress", action="store_true", default=None)
    v.add_argument("--no-progress", dest="progress", action="store_false")

    i = commands.add_parser("info", parents=[common, remote],
                            help="summarise a kerchunk JSON/Parquet reference set or an Icechunk repository")
    i.add_argument("refs")

    c = commands.add_parser("validate", parents=[common, remote],
                            help="check every virtual reference of a kerchunk reference set against its object")
    c.add_argument("refs")
    c.add_argument("--decode-sample", type=int, default=0, metavar="N", help="also decode N random chunks")
    c.add_argument("--max-report", type=int, default=20, metavar="N", help="bad references listed (default 20)")

    d = commands.add_parser("demo", parents=[common], help="the end-to-end demo (what `make demo` runs)")
    d.add_argument("--output", default=None, metavar="DIR", help="keep the files and outputs in DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        quiet_icechunk_logs()
    try:
        args = build_parser().parse_args(argv)
        return {"virtualize": virtualize, "info": info, "validate": validate, "demo": demo}[args.command](args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    except BrokenPipeError:  # `vzdask info refs.json | head`: the reader has gone, which is not an error here
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        if debug:
            raise
        # vzdask's own messages are whole (a list of unsupported variables, say); others' first line only
        # (no Rust debug dump)
        message = (str(err) if isinstance(err, VzdaskError) else str(err).splitlines()[0]) if str(err) \
            else type(err).__name__
        print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
        return EXIT_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)


def run() -> None:
    """The console script: ``main()``, then exit with its status (see ``exit_process``)."""
    try:
        code = main()
    except Exception:  # --debug: the traceback, then exit 1 as usual
        traceback.print_exc()
        code = EXIT_FAILED
    exit_process(code)


# -- virtualize --------------------------------------------------------------------------


def _output_format(args) -> str:
    """The format ``--format`` names, else the one the output name says; a name that says none is refused."""
    if args.format:
        return args.format
    name = args.output.rstrip("/").lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith((".parq", ".parquet")):
        return "parquet"
    suffix = os.path.splitext(os.path.basename(name))[1]
    if not suffix or suffix == ".icechunk" or os.path.isdir(args.output):
        return "icechunk"
    raise UsageError(f"cannot tell the output format from the name {args.output!r} (suffix {suffix!r}); "
                     "use .json or .parq/.parquet for kerchunk references, a directory name without a suffix "
                     "(or .icechunk) for an Icechunk repository, or say --format json|parquet|icechunk")


def virtualize(args) -> int:
    from vzdask.datatree import open_virtual_datatree
    from vzdask.mfdataset import expand_paths, open_virtual_mfdataset
    from vzdask.policy import InlinePolicy

    started = time.perf_counter()
    fmt = _output_format(args)
    if fmt == "icechunk" and os.path.exists(args.output) and (
        not os.path.isdir(args.output) or os.listdir(args.output)
    ):  # checked before any file is parsed
        raise UsageError(f"{args.output} exists and is not an empty directory; "
                         "choose a new directory for the Icechunk repository")
    files = [path for pattern in args.paths for path in expand_paths(pattern)]  # each glob expanded
    files = [os.path.abspath(f) if "://" not in f else f for f in files]
    prefixes = _container_prefixes(files) if fmt == "icechunk" else []
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    inline = None
    if args.inline_threshold is not None or args.inline_var:
        inline = InlinePolicy(max_chunk_bytes=args.inline_threshold, variables=args.inline_var)
    parallel, client = _parallel(args)
    try:
        # progress bars (dask's, distributed's) write to stdout: keep stdout for the report
        with contextlib.redirect_stdout(sys.stderr):
            options = dict(
                combine="nested" if args.concat_dim else "by_coords",
                concat_dim=args.concat_dim,
                loadable_variables=args.load_var,
                inline=inline,
                drop_variables=args.drop_var,
                on_unsupported="warn" if args.skip_unsupported else "raise",
                registry=_registry(args),
                parallel=parallel,
                progress=progress,
            )
            if args.group is not None:
                ds = open_virtual_mfdataset(files, group=args.group, **options)
            else:  # every group; files without groups give the root alone, written as before
                tree = open_virtual_datatree(files, **options)
                ds = tree if tree.children else tree.to_dataset()
        _write(ds, args.output, fmt, files, prefixes)
    finally:
        if client is not None:
            client.close()
    print(_summary(ds, files, fmt, args.output, time.perf_counter() - started))
    return EXIT_OK


def _parallel(args):
    if args.scheduler in ("threads", "processes"):
        if args.workers:
            import dask

            dask.config.set(num_workers=args.workers)
        return args.scheduler, None
    from distributed import Client

    client = Client(args.scheduler)
    return client, client


def _write(ds, output: str, fmt: str, files: list[str], prefixes: list[str]) -> None:
    """Write a virtual Dataset, or a DataTree (every group), as ``fmt``."""
    accessor = ds.vzdask  # the Dataset's or the DataTree's
    if fmt in ("json", "parquet"):
        accessor.to_kerchunk(output, format=fmt)
        return
    import icechunk

    config = icechunk.RepositoryConfig.default()
    credentials = {}
    for prefix in prefixes:
        store = icechunk.local_filesystem_store(unquote(urlsplit(prefix).path))
        config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
        credentials[prefix] = icechunk.credentials.LocalFileSystemAccess
    existed = os.path.isdir(output)
    try:
        repo = icechunk.Repository.create(
            icechunk.local_filesystem_storage(output), config,
            authorize_virtual_chunk_access=icechunk.containers_credentials(credentials),
        )
        session = repo.writable_session("main")
        accessor.to_icechunk(session, commit=f"vzdask virtualize: {len(files)} files")
    except BaseException:  # leave no half-made repository behind (the directory was new or empty)
        if existed:
            for name in os.listdir(output):
                _remove(os.path.join(output, name))
        else:
            _remove(output)
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _container_prefixes(files: list[str]) -> list[str]:
    """The Icechunk virtual chunk container prefixes covering ``files`` (local files only).

    One per directory, or its nearest ancestor whose path needs no
    percent-encoding (see ``vzdask.writers.icechunk``); nested prefixes are
    dropped in favour of their ancestors.
    """
    from vzdask.writers.icechunk import _suggested_prefix, icechunk_location

    found = set()
    for path in files:
        url = path if "://" in path else "file://" + os.path.abspath(path)
        if urlsplit(url).scheme != "file":
            raise UsageError(f"--format icechunk from the command line supports local files only, got {url}")
        found.add(_suggested_prefix(icechunk_location(url)))
    kept: list[str] = []
    for prefix in sorted(found):  # an ancestor sorts before its descendants
        if not any(prefix.startswith(k) for k in kept):
            kept.append(prefix)
    return kept


def _summary(ds, files, fmt, output, seconds) -> str:
    """The report: chunk counts as written, so they agree with ``vzdask info`` on the output.

    Kerchunk references hold loaded variables as inlined chunks (counted
    here as the writer plans them); Icechunk stores them as native chunks
    (said on their own line). A DataTree is counted over all its groups.
    """
    import xarray as xr

    from vzdask.writers.plan import plan_write

    counts = {"virtual": 0, "inlined": 0, "missing": 0}
    referenced = 0
    groups = [node.to_dataset(inherit=False) for node in ds.subtree] if isinstance(ds, xr.DataTree) else [ds]
    n_variables = sum(len(group.variables) for group in groups)
    n_virtual = sum(len(VirtualDatasetAccessor(group).virtual_variables) for group in groups)
    with warnings.catch_warnings():  # the write itself said what it had to (exact_encoding's warnings)
        warnings.simplefilter("ignore")
        plan = plan_write(ds, in_memory="inline" if fmt in ("json", "parquet") else "keep")
    for planned in plan.all_arrays():
        manifest = planned.array.manifest
        for k, n in manifest.count().items():
            counts[k] += n
        referenced += int(manifest.lengths[manifest.states == 1].sum())
    native = [name for group in plan.walk() if group.loaded is not None for name in group.loaded.variables]
    lines = [
        f"files       {len(files)}",
        *([f"groups      {len(groups)}"] if len(groups) > 1 else []),
        f"variables   {n_variables} ({n_virtual} virtual)",
        f"chunks      {counts['virtual']} virtual, {counts['inlined']} inlined, {counts['missing']} missing"
        + (f"; {len(native)} loaded variable(s) stored as native Icechunk chunks" if native else ""),
        f"referenced  {_human(referenced)}",
        f"output      {output} ({fmt})",
        f"time        {seconds:.2f} s",
    ]
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- reading reference sets -----------------------------------------------------------------


def _is_icechunk(path: str) -> bool:
    local = path[len("file://"):] if path.startswith("file://") else path
    return "://" not in local and os.path.isdir(local) and any(
        os.path.exists(os.path.join(local, name)) for name in ("repo", "config.yaml", "refs", "snapshots")
    ) and not os.path.exists(os.path.join(local, ".zmetadata"))


def load_references(refs: str, registry=None):
    """A kerchunk JSON/Parquet reference set as a ManifestGroup (parsed by vzdask's own parsers)."""
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import detect_parser
    from vzdask.parsers.kerchunk import KerchunkJSONParser, KerchunkParquetParser
    from vzdask.xarray import as_url

    url = as_url(refs)
    registry = ObjectStoreRegistry() if registry is None else registry
    parser = detect_parser(url, registry)
    if not isinstance(parser, (KerchunkJSONParser, KerchunkParquetParser)):
        raise UsageError(f"{refs} is not a kerchunk reference set (detected {type(parser).__name__})")
    return parser(url, registry).group, registry


def info(args) -> int:
    if _is_icechunk(args.refs):
        print(_icechunk_info(args.refs))
        return EXIT_OK
    group, _ = load_references(args.refs, _registry(args))
    urls = set()
    lines = [f"reference set {args.refs}"]
    for path, array in group.walk_arrays():
        counts = array.manifest.count()
        urls.update(array.manifest.urls)
        codecs = ", ".join(c.to_dict()["name"] for c in array.metadata.codecs)
        dims = ",".join(array.dimension_names or ()) or "-"
        lines.append(
            f"  {path}: {array.dtype} {array.shape} dims=({dims}) chunks={array.chunk_shape} codecs=[{codecs}] "
            f"virtual={counts['virtual']} inlined={counts['inlined']} missing={counts['missing']}"
        )
    lines.append(f"files referenced: {len(urls)}")
    print("\n".join(lines))
    return EXIT_OK


def _icechunk_info(path: str) -> str:
    import icechunk
    import zarr

    from vzdask._compat import sync  # zarr's loop: see object_io.run_sync

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(path))
    session = repo.readonly_session("main")
    root = zarr.open_group(session.store, mode="r")
    lines = [f"icechunk repository {path} (branch main, snapshot {session.snapshot_id})"]
    arrays = [(name, node) for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
    for name, array in sorted(arrays, key=lambda kv: kv[0]):
        codecs = ", ".join(c.to_dict()["name"] for c in array.metadata.codecs)
        stored = sync(_count_chunk_keys(session.store, name))
        lines.append(
            f"  {name}: {array.dtype} {array.shape} chunks={array.chunks} codecs=[{codecs}] "
            f"initialized={stored}/{array.nchunks}"
        )
    locations = session.all_virtual_chunk_locations()
    lines.append(f"files referenced: {len(set(locations))}")
    return "\n".join(lines)


async def _count_chunk_keys(store, array_path: str) -> int:
    """Stored chunks (virtual or native) of an array written with ``c/...`` chunk keys.

    Not ``zarr.Array.nchunks_initialized``: zarr leaves Icechunk's listing
    iterator (a Rust stream) open, which makes the crashes at interpreter exit
    described in ``vzdask.process.exit_process`` much more frequent when ``main`` runs in-process.
    """
    chunk_prefix = f"{array_path}/c/"
    count = 0
    async with contextlib.aclosing(store.list_prefix(f"{array_path}/")) as keys:  # Icechunk lists nodes only
        async for key in keys:
            count += key.startswith(chunk_prefix)
    return count


def validate(args) -> int:
    from vzdask.object_io import head_size

    if _is_icechunk(args.refs):
        raise UsageError(f"{args.refs} is an Icechunk repository; validate checks kerchunk JSON/Parquet "
                         "reference sets (Icechunk does not expose its references' offsets)")
    if args.max_report < 0 or args.decode_sample < 0:
        raise UsageError("--max-report and --decode-sample take a number >= 0")
    group, registry = load_references(args.refs, _registry(args))
    problems: list[str] = []  # one line per bad reference, or per unreadable file of an array
    bad: dict[str, np.ndarray] = {}  # array path -> mask of bad chunks
    checked = 0
    sizes: dict[str, int | Exception] = {}
    for path, array in group.walk_arrays():
        manifest = array.manifest
        virtual = manifest.states == 1
        if not virtual.any():
            continue
        index = np.asarray(manifest.path_index)[virtual]
        ends = (np.asarray(manifest.offsets) + np.asarray(manifest.lengths))[virtual]
        where = np.argwhere(virtual)
        mask = np.zeros(manifest.shape, dtype=bool)
        for code in np.unique(index):
            url = manifest.urls[code]
            if url not in sizes:
                try:
                    store, key = registry.resolve(url)
                    sizes[url] = head_size(store, key, url=url)
                except Exception as err:  # missing object, no permission...
                    sizes[url] = err
            mine = index == code
            checked += int(mine.sum())
            size = sizes[url]
            if isinstance(size, Exception):
                rows = np.nonzero(mine)[0]
                mask[tuple(where[rows].T)] = True
                others = f" (+{rows.size - 1} more)" if rows.size > 1 else ""
                problems.append(f"{path} chunk {_key(where[rows[0]])}{others}: {url} cannot be read: "
                                f"{_first_line(size)}")
                continue
            for row in np.nonzero(mine & (ends > size))[0]:
                mask[tuple(where[row])] = True
                problems.append(f"{path} chunk {_key(where[row])}: bytes up to {int(ends[row])} "
                                f"but {url} has {size} bytes")
        if mask.any():
            bad[path] = mask
    inlined = _decode_inlined(group, problems, bad)
    decoded = _decode_sample(group, registry, args.decode_sample, problems, bad) if args.decode_sample else 0
    n_bad = sum(int(m.sum()) for m in bad.values())
    if problems:
        for line in problems[: args.max_report]:
            print(line)
        more = len(problems) - args.max_report
        if more > 0:
            print(f"... {more} more problem(s) not listed (--max-report {args.max_report})")
        print(f"{n_bad} bad reference(s) among {checked + inlined} checked ({checked} virtual in {len(sizes)} "
              f"file(s), {inlined} inlined)"
              + (f", {decoded} chunks decoded without error" if args.decode_sample else ""))
        return EXIT_FAILED
    print(f"ok: {checked} virtual references in {len(sizes)} files checked, {inlined} inlined chunks decoded"
          + (f", {decoded} chunks decoded" if decoded else ""))
    return EXIT_OK


def _key(index) -> str:
    return ".".join(str(int(i)) for i in index) or "0"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _decode_inlined(group, problems: list[str], bad: dict[str, np.ndarray]) -> int:
    """Decode every inlined chunk (its bytes are in the reference set: no reads); returns how many."""
    from vzdask.codecs import codec_for
    from vzdask.manifests.manifest import INLINED

    count = 0
    for path, array in group.walk_arrays():
        manifest = array.manifest
        where = np.argwhere(manifest.states == INLINED)
        if not len(where):
            continue
        codec = codec_for(array.metadata)
        for index in where:
            key = tuple(int(i) for i in index)
            count += 1
            try:
                codec.decode(manifest.inlined_data(key))
            except Exception as err:
                bad.setdefault(path, np.zeros(manifest.shape, dtype=bool))[key] = True
                problems.append(f"{path} chunk {_key(key)}: inlined chunk cannot be decoded: {_first_line(err)}")
    return count


def _decode_sample(group, registry, n: int, problems: list[str], bad: dict[str, np.ndarray]) -> int:
    """Read and decode up to ``n`` random chunks (virtual or inlined) not already found bad."""
    from vzdask.codecs import codec_for
    from vzdask.chunk_tasks import fetch_block

    rng = np.random.default_rng(0)
    candidates = []
    for path, array in group.walk_arrays():
        usable = array.manifest.states != 0
        if path in bad:
            usable &= ~bad[path]
        candidates += [(path, array, tuple(int(i) for i in ix)) for ix in np.argwhere(usable)]
    picks = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False) if candidates else []
    done = 0
    for pick in picks:
        path, array, index = candidates[int(pick)]
        try:
            part = array.manifest[tuple(slice(i, i + 1) for i in index)]
            block = fetch_block(part, registry)
            for _, data in block.chunks():
                codec_for(array.metadata).decode(data)
            done += 1
        except Exception as err:
            bad.setdefault(path, np.zeros(array.manifest.shape, dtype=bool))[index] = True
            problems.append(f"{path} chunk {_key(index)}: cannot be read and decoded: {_first_line(err)}")
    return done


def demo(args) -> int:
    from vzdask.demo import main as run_demo

    return run_demo([] if args.output is None else ["--output", args.output])


if __name__ == "__main__":  # pragma: no cover
    run()
