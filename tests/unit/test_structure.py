"""The shape of the code, held by tests: layering, small units, the public faces.

Layering, one line each (an upward import fails here, naming the file):
- `cex_arbitrage.errors` is a leaf: it imports nothing of ours.
- The runner (`cex_arbitrage.db.migrator`) imports only errors, db.structs and itself:
  no config, engine, collectors, embedded server, CLI or migration package.
- Config depends on the runner (for RunnerSettings), never the reverse.
- Collectors do not import the runner, config or the engine.
- The embedded server imports only errors and db.structs.
- The linter (`cex_arbitrage.db.lint`) imports only errors and the runner (its file
  parser); the runner never imports the linter, and only the CLI's `lint` command does.
And neither the runner nor the linter names a table of the application.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGE = REPO / "cex_arbitrage"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(under: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every cex_arbitrage module this file imports, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    # module names as string literals (lazy `importlib.import_module` tables)
    for literal in re.findall(r'"(cex_arbitrage(?:\.\w+)+)"', path.read_text(encoding="utf-8")):
        relative = Path(*literal.split(".")[1:])
        if (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").is_file():
            found.add(literal)
    return {name for name in found if name.split(".")[0] == "cex_arbitrage"}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# layer -> what it may import of ours (besides itself)
RULES: dict[str, tuple[str, ...]] = {
    "cex_arbitrage.errors": (),
    "cex_arbitrage.db.structs": (),
    "cex_arbitrage.db.migrator": ("cex_arbitrage.errors", "cex_arbitrage.db.structs"),
    "cex_arbitrage.collectors": ("cex_arbitrage.errors",),
    "cex_arbitrage.embedded": ("cex_arbitrage.errors", "cex_arbitrage.db.structs"),
    "cex_arbitrage.db.lint": ("cex_arbitrage.errors", "cex_arbitrage.db.migrator"),
    "cex_arbitrage.config": (
        "cex_arbitrage.errors",
        "cex_arbitrage.db.structs",
        "cex_arbitrage.db.migrator.settings",
        "cex_arbitrage.features",
    ),
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_only_what_is_below_it(layer: str) -> None:
    allowed = (layer, *RULES[layer])
    offenders = []
    for path in _modules():
        if not _within(_dotted(path), layer):
            continue
        for name in sorted(_imports(path)):
            # a package's own name (e.g. `from cex_arbitrage.db import x`) is its parent
            if name in ("cex_arbitrage", "cex_arbitrage.db"):
                continue
            if not any(_within(name, a) for a in allowed):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", ["migrator", "lint"])
def test_runner_and_linter_name_no_table_of_the_application(package: str) -> None:
    tables = ("trades", "book_ticker_snapshots", "ingest_batch_log", "trades_duplicates_removed")
    offenders = []
    for path in _modules(PACKAGE / "db" / package):
        text = path.read_text(encoding="utf-8")
        for table in tables:
            if re.search(rf"\b{table}\b", text):
                offenders.append(f"{path.name} names {table}")
        if "cex." in text and re.search(r"['\"]cex\.\w+", text):
            offenders.append(f"{path.name} names a cex.* session setting")
    assert not offenders, "\n".join(offenders)


def test_no_module_over_the_size_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_size_limit() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE.parent)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_only_the_lint_command_imports_the_linter() -> None:
    importers = {
        str(path.relative_to(PACKAGE.parent))
        for path in _modules()
        if not _within(_dotted(path), "cex_arbitrage.db.lint")
        and any(_within(name, "cex_arbitrage.db.lint") for name in _imports(path))
    }
    assert importers == {"cex_arbitrage/db/cli_lint.py"}


@pytest.mark.parametrize(
    "package",
    [
        "cex_arbitrage.db.migrator",
        "cex_arbitrage.db.migrations",
        "cex_arbitrage.db.lint",
        "cex_arbitrage.collectors",
    ],
)
def test_public_face_exports_what_it_lists(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert module.__all__ == sorted(module.__all__)
