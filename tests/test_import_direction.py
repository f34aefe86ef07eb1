"""Dependencies between studio's packages point one way: file formats, then adapters, then the mixer.

``studio.formats`` (file formats and tensor names) is the lowest of the three, ``studio.adapters``
(reading files against a base) sits on it, ``studio.mixer`` on both; none of them imports the
application around it. Imports are read with ``ast``, function-local ones included, so a
back-edge fails here even before it makes an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STUDIO = Path(__file__).resolve().parent.parent / "studio"
LAYERS = ("formats", "adapters", "mixer")  # each may import only those before it
APPLICATION = ("app", "cli", "training", "generate", "grid", "recipes")  # above all three


def _module_of(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The absolute module a ``from ... import`` names, relative ones resolved against ``path``."""
    if node.level == 0:
        return node.module or ""
    package = list(path.relative_to(root).parent.parts)
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def studio_imports(path: Path, root: Path = STUDIO.parent) -> set[str]:
    """The studio subpackages (or top-level modules) ``path`` imports, e.g. ``{"formats", "errors"}``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = _module_of(node, path, root)
            names = [f"studio.{alias.name}" for alias in node.names] if module == "studio" else [module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("studio."))
    return found


def package_imports(package: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(STUDIO.parent)): studio_imports(path) - {package}
        for path in sorted((STUDIO / package).rglob("*.py"))
    }


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_one_above_it(package):
    above = set(LAYERS[LAYERS.index(package) + 1 :]) | set(APPLICATION)
    back_edges = {module: sorted(imports & above) for module, imports in package_imports(package).items()}
    assert {module: edges for module, edges in back_edges.items() if edges} == {}


def test_the_check_sees_imports():
    """Guards the test above against passing because it parses nothing."""
    adapters = set().union(*package_imports("adapters").values())
    mixer = set().union(*package_imports("mixer").values())
    assert "formats" in adapters and {"adapters", "formats"} <= mixer
    assert studio_imports(STUDIO / "cli" / "inspect.py") >= {"formats"}


def test_relative_local_and_from_studio_imports_count(tmp_path):
    module = tmp_path / "studio" / "formats" / "m.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from studio import adapters\n"
        "from ..errors import StudioError\n"
        "from . import keys\n"
        "def f():\n"
        "    import studio.mixer.engine\n"
    )
    assert studio_imports(module, tmp_path) == {"adapters", "errors", "formats", "mixer"}
