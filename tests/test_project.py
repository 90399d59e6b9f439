"""The project's own promises: CI runs the README's test command, and the code is lint-clean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [block.split("\n```")[0].strip() for block in blocks]


def test_ci_runs_the_readme_test_command():
    demo, tests = readme_commands()
    assert "--demo" in demo and "pytest" in tests
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_ruff_clean():
    pytest.importorskip("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _package_imports() -> dict[str, list[tuple[str, str, bool]]]:
    """``{module: [(imported module, imported name, at module level), ...]}`` of the package's own
    imports, read from the source (nothing is imported)."""
    import ast

    root = REPO / "bias_pipeline"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports: dict[str, list[tuple[str, str, bool]]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        top_level = {id(node) for node in tree.body}
        found = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if not target.startswith("bias_pipeline"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.append((full if full in modules else target, alias.name, id(node) in top_level))
        imports[name] = found
    return imports


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{module} imports {name} from {target}"
        for module, found in _package_imports().items()
        for target, name, _ in found
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert private == []


def _forwarded() -> dict[str, str]:
    """``{module: home}`` of the modules that find names in another on first use (PEP 562,
    :func:`bias_pipeline.lazy.forward`): the one kind of reference that may run back up."""
    import ast

    found = {}
    for path in (REPO / "bias_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "forward":
                home = node.args[2]
                assert isinstance(home, ast.Constant), f"{path}: forward() to a computed module name"
                found[".".join(path.relative_to(REPO).with_suffix("").parts)] = home.value
    return found


def test_no_import_cycle():
    """Not even through imports inside functions: each module's dependencies form a tree a reader
    can follow from the entry points down to the leaves. The step modules' legacy names, found in
    legacy.py on first use, are the one declared way back up."""
    graph = {
        module: {target for target, _, _ in found if target != module} for module, found in _package_imports().items()
    }
    graph["bias_pipeline"] = set()  # the package's lazy re-exports are its public face, not a dependency
    forwarded = _forwarded()
    assert set(forwarded.values()) <= {"bias_pipeline.legacy"}, forwarded
    assert all(module.startswith("bias_pipeline.steps.") for module in forwarded), forwarded
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
