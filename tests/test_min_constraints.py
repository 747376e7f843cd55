"""constraints/min.txt pins exactly the floors pyproject.toml declares, so ``make test-min`` tests the real floors.

What ``pip install -e '.[test]'`` installs directly: the dependencies and every
extra the ``test`` extra pulls in. Each of those must have a floor (``>=``),
and the same package the same floor wherever it is named (``bench`` too).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]

#: ``name[extras]>=version``, or the project itself with extras (``vzdask[all]``)
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[(?P<extras>[^\]]*)\])?(>=(?P<floor>[^,;\s]+))?$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(requirement: str) -> tuple[str, list[str], str | None]:
    match = REQUIREMENT.match(requirement.replace(" ", ""))
    assert match, f"{requirement!r}: write requirements as name[extras]>=floor (or extend this test)"
    extras = [e.strip() for e in (match["extras"] or "").split(",") if e.strip()]
    return _normalize(match["name"]), extras, match["floor"]


def _extra_closure(extra: str) -> list[str]:
    """``extra`` and every extra of this project it pulls in, recursively."""
    seen, todo = [], [extra]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        for requirement in PYPROJECT["project"]["optional-dependencies"][name]:
            package, extras, _ = _parse(requirement)
            if package == _normalize(PROJECT):
                todo.extend(extras)
    return seen


def declared_floors(requirements: list[str]) -> dict[str, str]:
    floors: dict[str, str] = {}
    for requirement in requirements:
        package, _, floor = _parse(requirement)
        if package == _normalize(PROJECT):
            continue
        assert floor is not None, f"{requirement!r} has no floor (>=): make test-min could not test it"
        assert floors.get(package, floor) == floor, f"{package}: floors {floors[package]} and {floor} disagree"
        floors[package] = floor
    return floors


def installed_requirements() -> list[str]:
    requirements = list(PYPROJECT["project"]["dependencies"])
    for extra in _extra_closure("test"):
        requirements += PYPROJECT["project"]["optional-dependencies"][extra]
    return requirements


def pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / "min.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints/min.txt: {line!r} is not name==version"
        assert _normalize(name) not in pins, f"constraints/min.txt pins {name} twice"
        pins[_normalize(name)] = version.strip()
    return pins


def test_min_constraints_pin_exactly_the_declared_floors():
    assert pinned() == declared_floors(installed_requirements())


def test_a_package_has_one_floor_across_all_extras():
    everything = list(PYPROJECT["project"]["dependencies"])
    for requirements in PYPROJECT["project"]["optional-dependencies"].values():
        everything += requirements
    declared_floors(everything)


def test_the_checker_reads_requirements():
    assert _parse("dask[array]>=2025.4.1") == ("dask", ["array"], "2025.4.1")
    assert _parse("imagecodecs_zarr>=2026.10.10") == ("imagecodecs-zarr", [], "2026.10.10")
    assert _parse("vzdask[hdf,icechunk]") == ("vzdask", ["hdf", "icechunk"], None)
    assert "hdf" in _extra_closure("test") and "bench" not in _extra_closure("test")
