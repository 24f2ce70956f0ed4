"""The import direction of STYLE.md, checked mechanically over the source tree.

configs <- actors.modeling <- actors <- cluster; training <- cluster; configs <- streams;
actors may import streams' message types; nothing imports cluster; actors.modeling has no
Ray, Kafka or DeepSpeed imports.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "actors", "training", "streams", "cluster")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _files(package):
        for name in _imports(path):
            if name.startswith(allowed):
                continue
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize(
    "package, forbidden, allowed",
    [
        ("configs", ("actors", "training", "streams", "cluster", "ray", "torch"), ()),
        ("actors/modeling", ("ray", "kafka", "deepspeed", "streams", "cluster", "training", "fastapi"), ("actors.modeling",)),
        ("actors", ("cluster", "training", "kafka"), ()),
        ("training", ("cluster", "streams", "kafka"), ()),
        ("streams", ("actors", "cluster", "training"), ()),
    ],
)
def test_import_direction(package, forbidden, allowed):
    # actors.modeling may import itself but no other part of actors
    if package == "actors/modeling":
        forbidden = forbidden + ("actors",)
    assert _violations(package, forbidden, allowed) == []


def test_packages_are_declared():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            dotted = ".".join(init.parent.relative_to(ROOT).parts)
            assert dotted in declared, f"{dotted} missing from [tool.setuptools] packages"
        assert (ROOT / package / "__init__.py").is_file(), f"{package}/__init__.py missing"
