"""Runtime code imports nothing that only requirements-dev.txt installs, and never shared.dev.

A production host installs requirements.txt alone, so a dev-only import in runtime code breaks
it there (scripts/check-production-install shows the same on a real install).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_MAIN = ROOT / "functions" / "main.py"
DEV_PACKAGE = "shared.dev"
# Runtime modules that need a package of their own, installed only where they are used.
OPTIONAL = ("shared.pipeline.prefect",)

PROBE = """
import importlib, importlib.util, json, sys
blocked, modules, main = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None  # `import name` now raises ImportError, as on a production host
for name in modules:
    importlib.import_module(name)
spec = importlib.util.spec_from_file_location("functions_main", main)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(path: Path) -> set[str]:
    """Normalised names of the distributions path pins, following `-r` includes."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= _requirements(path.parent / line[2:].strip())
        elif line:
            names.add(_normalise(re.match(r"[A-Za-z0-9._-]+", line).group()))
    return names


def _dev_only_modules() -> list[str]:
    """Top-level modules of what requirements-dev.txt adds to requirements.txt."""
    dev_only = _requirements(ROOT / "requirements-dev.txt") - _requirements(
        ROOT / "requirements.txt"
    )
    providers = {
        module: {_normalise(d) for d in distributions}
        for module, distributions in packages_distributions().items()
    }
    missing = dev_only - set().union(*providers.values())
    assert not missing, f"dev requirements not installed here: {sorted(missing)}"
    return sorted(module for module, dists in providers.items() if dists & dev_only)


def _shared_modules() -> dict[str, Path]:
    """Every module under shared/ but the dev package, by dotted name."""
    modules = {}
    for path in sorted((ROOT / "shared").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != DEV_PACKAGE and not name.startswith(DEV_PACKAGE + "."):
            modules[name] = path
    return modules


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of everything the module imports, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found += [(node.lineno, base)]
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_runtime_modules_import_without_dev_packages() -> None:
    blocked = _dev_only_modules()
    modules = [name for name in _shared_modules() if name not in OPTIONAL]
    argument = json.dumps([blocked, modules, str(FUNCTIONS_MAIN)])
    # functions/main.py checks its configuration at import; nothing connects to this URL
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, argument],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode:
        pytest.fail(f"runtime code needs a dev package ({blocked} blocked):\n{result.stderr}")


def test_no_runtime_module_imports_the_dev_package() -> None:
    files = _shared_modules()
    files["functions.main"] = FUNCTIONS_MAIN
    offenders = sorted(
        {
            f"{path.relative_to(ROOT)}:{line}"
            for name, path in files.items()
            for line, imported in _imported(
                ast.parse(path.read_text()), name, path.name == "__init__.py"
            )
            if imported == DEV_PACKAGE or imported.startswith(DEV_PACKAGE + ".")
        }
    )
    where = ", ".join(offenders)
    assert not offenders, f"only shared/dev may import {DEV_PACKAGE}; imported at {where}"
