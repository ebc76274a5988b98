"""The package's shape, checked from its source: layers, cycles, private names, prints, sizes.

These are the rules the README's "Code map" states. Each is read off the AST of every
module (imports inside functions count too), so a rule broken anywhere fails here with
the module and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "objathor_release"
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name
    names: tuple[str, ...]
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("objathor_release", "devtools"):
                    found.append(Import(name, alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            if target.split(".")[0] not in ("objathor_release", "devtools"):
                continue
            names = tuple(a.name for a in node.names)
            # `from objathor_release.build import tarball` imports a module, not a name
            submodules = [n for n in names if f"{target}.{n}" in modules]
            for sub in submodules:
                found.append(Import(name, f"{target}.{sub}", (), node.lineno))
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                found.append(Import(name, target, rest, node.lineno))
    return found


def all_imports() -> list[Import]:
    modules = package_modules()
    return [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else parts[-1]


def test_the_package_never_imports_devtools() -> None:
    wrong = [f"{i.importer}:{i.line} imports {i.imported}" for i in all_imports()
             if i.imported.split(".")[0] == "devtools"]
    assert not wrong, "the installed package cannot need the source checkout's devtools:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("build", {"publish", "fetch", "trust", "pipeline", "cli"}),
    ("publish", {"fetch", "pipeline", "cli"}),
    ("fetch", {"publish", "pipeline", "cli"}),
    ("trust", {"publish", "fetch", "pipeline", "cli"}),
    ("s3", {"build", "publish", "fetch", "trust", "pipeline", "cli"}),
])
def test_folders_import_only_downward(folder: str, forbidden: set[str]) -> None:
    wrong = [f"{i.importer}:{i.line} imports {i.imported}" for i in all_imports()
             if layer(i.importer) == folder and i.importer.count(".") >= 2
             and layer(i.imported) in forbidden and i.imported.count(".") >= 1]
    assert not wrong, f"{folder}/ may not import {sorted(forbidden)}:\n" + "\n".join(wrong)


def test_shared_modules_import_no_folder() -> None:
    shared = {"errors", "fsutil", "progress", "settings", "_version", "retry", "ramp"}
    wrong = [f"{i.importer}:{i.line} imports {i.imported}" for i in all_imports()
             if i.importer.count(".") == 1 and layer(i.importer) in shared
             and layer(i.imported) not in shared | {"objathor_release"}]
    assert not wrong, "errors/fsutil/progress/settings sit below every folder:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in all_imports():
        target = i.imported
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != i.importer and modules[target].name != "__init__.py":
            graph[i.importer].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules() -> None:
    wrong = [f"{i.importer}:{i.line} imports {n} from {i.imported}" for i in all_imports()
             for n in i.names if n.startswith("_") and n != "__version__"]
    assert not wrong, "a name another module needs is public:\n" + "\n".join(wrong)


def test_no_print_outside_the_cli() -> None:
    wrong = []
    for name, path in package_modules().items():
        if name == "objathor_release.cli" or name.startswith("objathor_release.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                wrong.append(f"{name}:{node.lineno}")
    assert not wrong, "library modules report through logging, the CLI prints:\n" + "\n".join(wrong)


def test_no_module_over_the_size_limit() -> None:
    big = {name: n for name, path in package_modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_checks_see_the_package() -> None:
    """Guard against the rules passing on an empty walk."""
    modules = package_modules()
    assert {"objathor_release.cli", "objathor_release.build.manifest", "objathor_release.fetch.extract",
            "objathor_release.publish.upload"} <= set(modules)
    assert len(all_imports()) > 50
    fake = ast.parse("from ..errors import InputError").body[0]
    assert isinstance(fake, ast.ImportFrom)
    assert resolve("objathor_release.build.tarball", False, fake) == "objathor_release.errors"


def test_every_folder_of_code_is_a_package_the_wheel_carries() -> None:
    """pyproject finds the packages by their __init__.py: a folder of modules without one would be left
    out of the wheel (and the image) while every test in the checkout still passes."""
    import tomllib

    missing = sorted(str(d.relative_to(REPO)) for d in PACKAGE.rglob("*") if d.is_dir()
                     and any(d.glob("*.py")) and not (d / "__init__.py").exists())
    assert not missing, f"folders of modules without __init__.py: {missing}"
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["objathor_release", "objathor_release.*"]
