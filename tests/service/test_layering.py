"""The import rules between the service's layers, read from the source with ``ast``.

Nothing is imported: each module's ``import`` statements (relative ones resolved,
those under ``if TYPE_CHECKING`` included, since they say what a module knows
about) are read from its file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"

# The web stack and raster I/O: a runtime reachable with onnxruntime and numpy alone.
NOT_IN_RUNTIME = ("fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "rasterio")
# Raster I/O, the inference engine, and the array-heavy internals routes hand work to.
NOT_IN_API = (
    "rasterio",
    "onnxruntime",
    "service.raster",
    "service.runtime.batcher",
    "service.runtime.session",
    "service.runtime.tiling",
    "service.runtime.graphs",
    "service.pipeline.scene",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SERVICE.rglob("*.py"))}


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module a service module's source imports, as dotted names."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            found.add(stem)
            # `from service.pipeline import views` imports a module, not a name.
            found.update(f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in _modules())
    return frozenset(found)


def reachable(module: str) -> dict[str, str]:
    """Every import reachable through service modules: imported name -> the module importing it."""
    seen = {module}
    todo = [module]
    via: dict[str, str] = {}
    while todo:
        current = todo.pop()
        for name in imports_of(current):
            via.setdefault(name, current)
            if name in _modules() and name not in seen:
                seen.add(name)
                todo.append(name)
    return via


def _breaks(names: dict[str, str] | frozenset[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def _cases(package: str) -> Iterator[str]:
    for module in _modules():
        if module == package or module.startswith(package + "."):
            yield module


@pytest.mark.parametrize("module", list(_cases("service.runtime")))
def test_runtime_reaches_no_web_stack_or_raster_io(module: str) -> None:
    via = reachable(module)
    bad = _breaks(via, NOT_IN_RUNTIME)
    assert not bad, [f"{name} (imported by {via[name]})" for name in bad]


@pytest.mark.parametrize("module", list(_cases("service")))
def test_service_imports_no_torch(module: str) -> None:
    bad = _breaks(imports_of(module), ("torch",))
    assert not bad, bad


@pytest.mark.parametrize("module", list(_cases("service.api")))
def test_api_imports_no_raster_io_engine_or_array_internals(module: str) -> None:
    bad = _breaks(imports_of(module), NOT_IN_API)
    assert not bad, bad


def test_the_reader_sees_imports_as_python_does(tmp_path: Path) -> None:
    # The rules are only as good as the reader: relative, nested and type-only
    # imports all count, and the real graph is not empty.
    assert "numpy" in imports_of("service.runtime.batcher")
    assert "service.runtime.manifest" in reachable("service.runtime.repository")
    assert any(n.startswith("fastapi") for n in imports_of("service.app"))
    assert _breaks({"rasterio.windows": "x"}, NOT_IN_API) == ["rasterio.windows"]
    assert _breaks(frozenset({"rasterio_extra"}), ("rasterio",)) == []
