"""The shape of the code, checked: small signatures, no import cycles, every import declared, every run file named
once, nothing generic installed into site-packages. Each check names what broke it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"sftjudge": REPO / "sftjudge", "sftjudge.tasks": REPO / "tasks", "sftjudge.flows": REPO / "flows"}
MAX_PARAMETERS = 6


def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            name = ".".join([prefix, *path.relative_to(folder).with_suffix("").parts]).removesuffix(".__init__")
            found[name] = path
    return found


def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in modules().items()}


def test_no_function_takes_more_than_six_parameters():
    wide = []
    for name, tree in trees().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
                if len(params) > MAX_PARAMETERS:
                    wide.append(f"{name}.{node.name} ({len(params)}: {', '.join(params)})")
    assert not wide, f"group parameters into a record or pass the config: {wide}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, deferred (function-level) imports included."""
    known = modules()
    graph = {}
    for name, tree in trees().items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftjudge"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    deps.add(target if target in known else node.module)
        graph[name] = {d for d in deps if d in known and d != name and not name.startswith(d + ".")}
    return graph


def test_no_import_cycles_not_even_behind_deferred_imports():
    graph = import_graph()

    def path_back(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return trail + [start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, trail + [dep]))
        return None

    cycles = [" -> ".join(cycle) for name in graph if (cycle := path_back(name))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    # vLLM's own environment (the in-process vLLM path runs where sftjudge is installed into it, --no-deps)
    requirements += [line for line in (REPO / "requirements" / "vllm.txt").read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
    return {re.split(r"[\s\[<>=!;~]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_third_party_import_is_declared_in_pyproject():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = set()
    for name, tree in trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "sftjudge":
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} (imported by {name})")
    assert not missing, f"declare in pyproject.toml: {sorted(missing)}"


def test_run_directory_file_names_are_written_only_in_run_files():
    from sftjudge.run import files

    names = {value for key, value in vars(files).items() if key.isupper() and isinstance(value, str)}
    names.discard(files.DATA)  # "data" is also an ordinary word in messages
    literal = []
    for name, tree in trees().items():
        if name == "sftjudge.run.files":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                literal.append(f"{name}:{node.lineno} {node.value!r}")
    assert not literal, f"use sftjudge.run.files instead of: {literal}"


def test_only_sftjudge_is_installed_into_site_packages():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "sftjudge" or p.startswith("sftjudge.") for p in setuptools["packages"])
    assert setuptools["package-dir"] == {"sftjudge.tasks": "tasks", "sftjudge.flows": "flows"}
    subpackages = {p.parent.relative_to(REPO).as_posix().replace("/", ".")
                   for p in (REPO / "sftjudge").rglob("__init__.py")}
    assert subpackages <= set(setuptools["packages"]), "a subpackage is missing from pyproject's package list"
