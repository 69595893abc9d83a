"""The import contracts of pyproject.toml stay whole as modules are added: the Ray rule covers
every module of trainable/ but trainable/tune.py (import-linter's forbidden contracts list their
sources; the layers contracts are `exhaustive`, so a new module must be placed in a layer)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def contracts() -> dict[str, dict]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return {contract["name"]: contract for contract in tomllib.load(f)["tool"]["importlinter"]["contracts"]}


def children(package: str) -> set[str]:
    """The modules and sub-packages directly under `package`."""
    folder = ROOT / package
    modules = {path.stem for path in folder.glob("*.py") if path.name != "__init__.py"}
    packages = {path.name for path in folder.iterdir() if (path / "__init__.py").is_file()}
    return {f"{package}.{name}" for name in modules | packages}


def test_only_tune_may_import_ray_inside_the_trainable():
    [ray_rule] = [c for name, c in contracts().items() if name.startswith("Only trainable.tune imports Ray")]
    assert ray_rule["forbidden_modules"] == ["ray"]
    sources = set(ray_rule["source_modules"])
    assert children("trainable") - {"trainable.tune"} <= sources, "a module of trainable/ that may import Ray"
    assert "trainable.tune" not in sources
    assert {"datatools", "spaces"} <= sources


def test_the_layers_of_search_and_trainable_are_exhaustive():
    layered = {tuple(c["containers"]): c for c in contracts().values() if c["type"] == "layers" and "containers" in c}
    assert set(layered) == {("search",), ("trainable",)}
    assert all(contract.get("exhaustive") is True for contract in layered.values())
