"""Lint files of a migration set: every statement, in the order the runner runs them.

Each file is read in the context of its whole directory: versioned files in
version order (a table an earlier file created is live for the later ones),
routines after them (they may be re-applied at any time). Procedures that
COMMIT are found across the set first, so a CALL of one from a transactional
step is caught wherever the procedure is defined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cex_arbitrage.db.lint.learn import committing_procedures, learn
from cex_arbitrage.db.lint.model import AppFacts, Finding, Hit, Knowledge, SqlSyntaxError, Stmt
from cex_arbitrage.db.lint.rules import FILE_FORMAT, SQL_SYNTAX, hits
from cex_arbitrage.db.lint.statements import file_statements
from cex_arbitrage.db.lint.suppress import (
    BASELINE_NAME,
    Suppression,
    apply,
    inline_suppressions,
    load_baseline,
    unused,
)
from cex_arbitrage.db.lint.tree import short
from cex_arbitrage.db.migrator.model import Migration, Routine
from cex_arbitrage.db.migrator.parse import parse_file
from cex_arbitrage.errors import MigrationFileError


@dataclasses.dataclass(frozen=True)
class Report:
    """Every finding of a run (suppressed ones carry their reason) and the files linted."""

    findings: tuple[Finding, ...]
    files: tuple[str, ...]

    @property
    def active(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.suppressed)


@dataclasses.dataclass
class _File:
    shown: str  # the path as the report shows it
    text: str
    parsed: Migration | Routine | None = None
    statements: list[Stmt] = dataclasses.field(default_factory=list)
    problems: list[Finding] = dataclasses.field(default_factory=list)


def lint_paths(paths: Sequence[Path], facts: AppFacts) -> Report:
    """Lint `paths` (migration or routine files), each with its directory as context."""
    by_dir: dict[Path, list[Path]] = {}
    for path in paths:
        by_dir.setdefault(path.parent, []).append(path)
    findings: list[Finding] = []
    for directory, targets in by_dir.items():
        findings += _lint_directory(directory, targets, facts)
    order = {str(p): i for i, p in enumerate(paths)}
    findings.sort(key=lambda f: (order.get(f.file, len(order)), f.line, f.rule))
    return Report(tuple(findings), tuple(str(p) for p in paths))


def _lint_directory(directory: Path, targets: list[Path], facts: AppFacts) -> list[Finding]:
    shown = {p.name: str(p) for p in targets}
    names = sorted({p.name for p in directory.glob("*.sql")} | set(shown))
    files = {name: _read(directory / name, shown.get(name, name)) for name in names}
    every = [s for f in files.values() for s in f.statements]
    know = Knowledge(facts, existing=set(facts.legacy_tables))
    know.committing_procedures = committing_procedures(every)
    findings: list[Finding] = []
    for name in sorted(files, key=_run_order):
        file = files[name]
        know.start_file()
        for stmt in file.statements:
            if name in shown:
                findings += [_finding(file.shown, stmt, h) for h in hits(stmt, know)]
            learn(stmt, know)
        if name in shown:
            findings += file.problems
    suppressions, bad = load_baseline(directory / BASELINE_NAME)
    findings += bad
    for name in shown:
        inline, malformed = inline_suppressions(files[name].shown, files[name].text)
        suppressions += inline
        findings += malformed
    return _with_suppressions(findings, suppressions, set(shown.values()))


def _with_suppressions(
    findings: list[Finding], suppressions: list[Suppression], linted: set[str]
) -> list[Finding]:
    applied = apply(findings, suppressions)
    return applied + unused(suppressions, linted)


def _run_order(name: str) -> tuple[int, int, str]:
    """Versioned files by version, then routines, then anything else."""
    head = name.split("_", 1)[0]
    if head.isdigit():
        return (0, int(head), name)
    return (1 if name.startswith("R__") else 2, 0, name)


def _read(path: Path, shown: str) -> _File:
    """A file parsed twice: the runner's way (steps) and PostgreSQL's (statements)."""
    try:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte offset {exc.start}); save the file as UTF-8"
        return _File(shown, "", problems=[_problem(shown, 0, FILE_FORMAT, problem)])
    file = _File(shown, text)
    try:
        file.parsed = parse_file(path.name, text)
    except MigrationFileError as exc:
        message = exc.message.removeprefix(f"{path.name}:{exc.line}: ").removeprefix(
            f"{path.name}: "
        )
        file.problems.append(_problem(shown, exc.line, FILE_FORMAT, message))
        return file
    try:
        file.statements = list(file_statements(file.parsed, text))
    except SqlSyntaxError as exc:
        file.problems.append(_problem(shown, exc.line, SQL_SYNTAX, str(exc)))
    return file


def _problem(shown: str, line: int, rule: str, message: str) -> Finding:
    hint = "the runner refuses this file" if rule == FILE_FORMAT else "PostgreSQL refuses this SQL"
    return Finding(shown, line, rule, message, hint, "", "")


def _finding(shown: str, stmt: Stmt, hit: Hit) -> Finding:
    return Finding(
        shown, stmt.line, hit.rule, hit.message, hit.hint, stmt.place.step, short(stmt.text)
    )
