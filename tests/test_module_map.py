"""docs/design.md's module map: the one list of every module of the packages, kept true.

Every module of trainable/, search/, spaces/, datatools/ and bench/ appears in the map in a code
span (`trainable/training/kfold.py`; a package by its folder, `trainable/data/`), and every
module the map names exists, so the map neither misses a module nor keeps a stale one.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("trainable", "search", "spaces", "datatools", "bench")
MAP_HEADING = re.compile(r"^## .*the module map", re.IGNORECASE)
# A module path in a code span: `search/tuner/session.py`, or a package's folder `trainable/data/`.
MODULE_SPAN = re.compile(r"`((?:" + "|".join(PACKAGES) + r")/(?:\w+/)*(?:\w+\.py)?)`")


def module_name(path: Path) -> str:
    """A module's name in the map: its path from the root; a package's is its folder's, with a slash."""
    relative = path.relative_to(ROOT)
    if relative.name == "__init__.py":
        return relative.parent.as_posix() + "/"
    return relative.as_posix()


def modules_on_disk() -> set[str]:
    return {module_name(path) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
            if "__pycache__" not in path.parts}


def map_section() -> str:
    """The map's section of the design page: from its heading to the next heading of its level."""
    lines = DESIGN.read_text().splitlines()
    start = next((n for n, line in enumerate(lines) if MAP_HEADING.match(line)), None)
    assert start is not None, f"{DESIGN.name} has no '## ... the module map' section"
    end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def modules_in_map() -> set[str]:
    return set(MODULE_SPAN.findall(map_section()))


def test_the_map_and_the_packages_are_found():
    on_disk, in_map = modules_on_disk(), modules_in_map()
    assert {"trainable/", "trainable/tune.py", "search/run.py", "spaces/"} <= on_disk
    assert len(in_map) > 50, "the map's code spans were not found"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_the_map(package):
    missing = sorted(name for name in modules_on_disk() - modules_in_map() if name.startswith(package + "/"))
    assert not missing, f"modules missing from {DESIGN.relative_to(ROOT)}'s module map: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_in_the_map_exists(package):
    stale = sorted(name for name in modules_in_map() - modules_on_disk() if name.startswith(package + "/"))
    assert not stale, f"{DESIGN.relative_to(ROOT)}'s module map names modules that do not exist: {stale}"


def test_no_module_is_ignored_by_git():
    """A module that .gitignore matches is missing from every clone (`data/` once hid trainable/data/'s
    new modules): every module of the packages must be outside the ignore patterns."""
    paths = sorted(str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                   if "__pycache__" not in path.parts)
    # --no-index: the patterns alone, whether or not the file is tracked already.
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                             capture_output=True, text=True)
    assert checked.returncode in (0, 1), checked.stderr  # 1: nothing ignored
    assert checked.stdout.split() == [], f"modules that .gitignore hides from a clone: {checked.stdout.split()}"
