"""The package's shape: which modules may import which, and every use of another library's
private API named and explained where it is made.

`python tests/test_architecture.py` prints the private-API references and their count.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mnist_sweep"
COMMANDS = {"mnist_sweep.predict", "mnist_sweep.evaluate", "mnist_sweep.explore"}
# What the tests and benchmarks import their helpers as; the package imports none of them.
TEST_HELPERS = {"tests", "benchmarks", "conftest", "support", "servers", "sweeps"}
# Private by name, public by contract: namedtuple's documented methods.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def imports(module: str, tree: ast.Module) -> set[str]:
    """Every module `tree` imports, at its top or inside a function, as absolute names."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_base_modules_import_neither_the_sweep_nor_a_command() -> None:
    wrong = []
    for module, tree in package_modules().items():
        for imported in imports(module, tree):
            is_sweep = within(module, "mnist_sweep.sweep")
            if not is_sweep and module not in COMMANDS and within(imported, "mnist_sweep.sweep"):
                wrong.append(f"{module} imports {imported}")
            if module not in COMMANDS and any(within(imported, c) for c in COMMANDS):
                wrong.append(f"{module} imports the command {imported}")
    assert wrong == []


def test_no_package_module_imports_a_test_or_benchmark_helper() -> None:
    wrong = [
        f"{module} imports {imported}"
        for module, tree in package_modules().items()
        for imported in imports(module, tree)
        if imported.split(".")[0] in TEST_HELPERS
    ]
    assert wrong == []


def test_the_arrow_checks_see_lazy_and_relative_imports() -> None:
    tree = ast.parse("def f():\n    from .sweep import job\n    import tests.support\n")
    assert {"mnist_sweep.sweep.job", "tests.support"} <= imports("mnist_sweep.data", tree)


@dataclass(frozen=True)
class PrivateUse:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.what}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED


def private_uses() -> list[PrivateUse]:
    """Imports from private modules or of private names, attributes with a leading underscore
    that the package does not define itself, and strings naming private methods."""
    paths = [*sorted(PACKAGE.rglob("*.py")), ROOT / "run.py"]
    trees = {path: ast.parse(path.read_text()) for path in paths}
    ours = {
        name for tree in trees.values() for node in ast.walk(tree) for name in defined_names(node)
    }
    uses = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            what = private_reference(node, ours)
            if what:
                uses.append(PrivateUse(path, node.lineno, what))
    return sorted(uses, key=lambda use: (str(use.path), use.line))


def defined_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
        return [node.attr]
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return [node.id]
    return []


def private_reference(node: ast.AST, ours: set[str]) -> str:
    if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
        names = [alias.name for alias in node.names]
        if any(map(is_private, node.module.split("."))) or any(map(is_private, names)):
            return f"from {node.module} import {', '.join(names)}"
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return ", ".join(name for name in names if any(map(is_private, name.split("."))))
    if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in ours:
        return ast.unparse(node)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        name = node.value
        if is_private(name) and name.isidentifier() and not name.endswith("_"):
            return repr(name)
    return ""


def explained(use: PrivateUse, lines: list[str]) -> bool:
    """A comment on the line or among the three above it says why the private API is used."""
    nearby = lines[max(0, use.line - 4) : use.line]
    return any("#" in line and "private" in line.split("#", 1)[1].lower() for line in nearby)


def test_every_private_api_use_says_why() -> None:
    unexplained = [
        str(use) for use in private_uses() if not explained(use, use.path.read_text().splitlines())
    ]
    assert unexplained == []


def test_private_uses_are_found() -> None:
    tree = ast.parse("study._storage.x\nfrom hydra._internal.a import B\nself.mine\n'_get_trials'")
    found = [private_reference(node, ours={"mine"}) for node in ast.walk(tree)]
    assert {"study._storage", "from hydra._internal.a import B", "'_get_trials'"} <= set(found)
    assert "self.mine" not in found


if __name__ == "__main__":
    uses = private_uses()
    print("\n".join(map(str, uses)))
    print(f"{len(uses)} references to private APIs of other libraries", file=sys.stderr)
