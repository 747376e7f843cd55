"""The package's structure, checked from its source: no import cycles, I/O in one module, no private reads.

Every ``import`` statement counts, at module level or inside a function: a
function-level import of a module that imports back is still a cycle, only
deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vzdask"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _owning_module(name: str) -> str | None:
    """The vzdask module an imported dotted name lives in (``vzdask.a.b.func`` -> ``vzdask.a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """vzdask module -> the vzdask modules it imports (the top-level package ``vzdask`` excluded)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module, tree in TREES.items():
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if not name.startswith("vzdask"):
                    continue
                target = _owning_module(name)
                if target in (None, "vzdask", module):
                    continue
                graph[module].add(target)
                # importing vzdask.a.b runs vzdask/a/__init__.py first, unless the importer is inside vzdask.a
                parts = target.split(".")
                for depth in range(2, len(parts)):
                    package = ".".join(parts[:depth])
                    if package in MODULES and not module.startswith(package + "."):
                        graph[module].add(package)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_vzdask_modules():
    """Package ``__init__`` modules count: importing ``vzdask.a.b`` runs ``vzdask/a/__init__.py`` first."""
    assert cycles(import_graph()) == []


def _private_attributes_by_module() -> dict[str, set[str]]:
    """Per module: the ``_private`` attributes its classes set on ``self``."""
    out: dict[str, set[str]] = {}
    for module, tree in TREES.items():
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for inner in ast.walk(node):
                    if (isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name)
                            and inner.value.id == "self" and inner.attr.startswith("_")
                            and not inner.attr.startswith("__")):
                        names.add(inner.attr)
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
                    ):
                        names.update(
                            e.value for e in ast.walk(item.value)
                            if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.startswith("_")
                        )
        out[module] = names
    return out


def test_no_module_reads_private_attributes_of_another_modules_classes():
    """Names are compared, not types; ``vzdask._compat`` is left out: it is where other libraries'
    internals (xarray's ``Variable._data``, say) are read, on purpose."""
    owned = _private_attributes_by_module()
    reads = []
    for module, tree in TREES.items():
        if module == "vzdask._compat":
            continue
        others = set().union(*(names for m, names in owned.items() if m != module)) - owned[module]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in others
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                reads.append(f"{module}:{node.lineno} .{node.attr}")
    assert reads == []


#: obstore's functions that read objects; only vzdask.object_io calls them.
OBSTORE_READS = {"get", "get_async", "get_range", "get_range_async", "get_ranges", "get_ranges_async", "head",
                 "head_async", "list", "list_with_delimiter", "list_with_delimiter_async", "open_reader"}


def test_only_object_io_imports_obstore_for_reads():
    """registry.py builds stores (and lists/writes for its own helpers); nothing else imports obstore at all."""
    importers = set()
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "obstore" for a in node.names):
                importers.add(module)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "obstore":
                importers.add(module)
    assert importers <= {"vzdask.object_io", "vzdask.registry"}
    registry_reads = {
        node.attr for node in ast.walk(TREES["vzdask.registry"])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "obstore"
        and node.attr in OBSTORE_READS - {"list"}
    }
    assert registry_reads == set()


#: The layers, bottom first, as the README's layout lists them: a module imports only from its own layer or
#: the layers below. ("pkg.*" is a package and everything in it.)
LAYERS = [
    ["vzdask.errors"],
    ["vzdask._compat"],
    ["vzdask.object_io"],
    ["vzdask.registry"],
    ["vzdask.manifests", "vzdask.manifests.manifest", "vzdask.manifests.metadata"],
    ["vzdask.codecs", "vzdask.grib_codec"],
    ["vzdask.chunk_tasks"],
    ["vzdask.graph"],
    ["vzdask.dask_array"],
    ["vzdask.manifests.array", "vzdask.manifests.array_api", "vzdask.manifests.group", "vzdask.manifests.store"],
    ["vzdask.policy"],
    ["vzdask.zarr_v2"],
    ["vzdask.parsers.*"],
    ["vzdask.xarray", "vzdask.xarray_writers"],
    ["vzdask.cf_tasks", "vzdask.combine", "vzdask.fast_combine"],
    ["vzdask.writers.*"],
    ["vzdask.accessor"],
    ["vzdask.mfdataset"],
    ["vzdask.datatree"],
    ["vzdask.backend"],
    ["vzdask.process"],
    ["vzdask.cli", "vzdask.demo", "vzdask.__main__"],
]


def _layer(module: str) -> int:
    for i, members in enumerate(LAYERS):
        for member in members:
            if module == member or member.endswith(".*") and (module + ".").startswith(member[:-1]):
                return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the README's layout")


def test_modules_import_only_downward():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items() if module != "vzdask"
        for target in targets if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_every_benchmark_is_in_the_readme_layout():
    """The README's layout names every script and helper module in benchmarks/ (bench_*.py, _timing.py)."""
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("\nbenchmarks/")
    layout = readme[start : readme.index("\nnotebooks/", start)]
    scripts = sorted(path.stem for path in (PACKAGE.parent / "benchmarks").glob("*.py"))
    assert "_timing" in scripts
    assert [name for name in scripts if name not in layout.replace(",", " ").replace(":", " ").split()] == []
