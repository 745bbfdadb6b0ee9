"""Suppressions: `-- lint:ignore RULE reason` in a file, and the baseline of pinned files.

A suppression names its rule(s) and says why; one without a reason, or of an
unknown rule, or that suppresses nothing, is a finding itself. It covers a
finding on its own line, or on the first line after the comment block it is
in (so it can sit above a statement, inside a DO block too).

Released migrations are pinned by checksum and cannot take a comment, so
their accepted findings live in `lint-baseline.yaml` beside them: one entry per
file, rule and statement (the start of its text as the report shows it,
whitespace folded), each with a reason.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from cex_arbitrage.db.lint.model import Finding
from cex_arbitrage.db.lint.rules import BAD_SUPPRESSION, RULES

BASELINE_NAME = "lint-baseline.yaml"
_IGNORE_RE = re.compile(r"--\s*lint:ignore\b(?P<rest>.*)$")
_RULES_RE = re.compile(r"\s*(?P<rules>[a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)(?P<reason>.*)$")


@dataclasses.dataclass
class Suppression:
    """One accepted reason to ignore `rules` at `lines` of `file` (or a baseline statement)."""

    file: str
    line: int
    rules: tuple[str, ...]
    reason: str
    covers: frozenset[int] = frozenset()
    statement: str | None = None  # baseline entries match on the statement
    used: bool = False

    def accepts(self, finding: Finding) -> bool:
        file = Path(finding.file).name if self.statement is not None else finding.file
        if file != self.file or finding.rule not in self.rules:
            return False
        if self.statement is not None:  # a prefix of the statement as the report shows it
            prefix = self.statement.removesuffix("…")
            return bool(prefix) and finding.statement.removesuffix("…").startswith(prefix)
        return finding.line in self.covers


def _bad(file: str, line: int, message: str) -> Finding:
    hint = "write `-- lint:ignore RULE why this is safe here`; rules: " + ", ".join(RULES)
    return Finding(file, line, BAD_SUPPRESSION, message, hint, "", "")


def inline_suppressions(file: str, text: str) -> tuple[list[Suppression], list[Finding]]:
    """The file's `-- lint:ignore` comments, and findings for the malformed ones."""
    lines = text.splitlines()
    found: list[Suppression] = []
    bad: list[Finding] = []
    for number, line in enumerate(lines, start=1):
        match = _IGNORE_RE.search(line)
        if match is None:
            continue
        parsed = _RULES_RE.match(match["rest"])
        rules = tuple(r.strip() for r in parsed["rules"].split(",")) if parsed else ()
        reason = parsed["reason"].strip(" \t:-—") if parsed else ""
        unknown = [r for r in rules if r not in RULES]
        if not rules or unknown:
            bad.append(_bad(file, number, f"lint:ignore of unknown rule {' '.join(unknown)!r}"))
        elif not reason:
            bad.append(_bad(file, number, f"lint:ignore {','.join(rules)} gives no reason"))
        else:
            covers = _covered(lines, number) if line.lstrip().startswith("--") else {number}
            found.append(Suppression(file, number, rules, reason, frozenset(covers)))
    return found, bad


def _covered(lines: list[str], number: int) -> set[int]:
    """Its own line, and the line after the run of comment lines it stands in."""
    after = number
    while after < len(lines) and lines[after].strip().startswith("--"):
        after += 1
    return {number, after + 1}


def load_baseline(path: Path) -> tuple[list[Suppression], list[Finding]]:
    """The baseline's entries; malformed ones (no reason, unknown rule) are findings."""
    if not path.is_file():
        return [], []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found: list[Suppression] = []
    bad: list[Finding] = []
    for entry in data.get("findings", []) or []:
        file, rule = str(entry.get("file", "")), str(entry.get("rule", ""))
        reason = str(entry.get("reason") or "").strip()
        statement = " ".join(str(entry.get("statement", "")).split())
        if rule not in RULES or not reason or not file:
            bad.append(
                _bad(
                    path.name,
                    0,
                    f"baseline entry {file} {rule}: needs file, a known "
                    "rule, statement and a reason",
                )
            )
            continue
        found.append(Suppression(file, 0, (rule,), reason, statement=statement))
    return found, bad


def apply(findings: Iterable[Finding], suppressions: list[Suppression]) -> list[Finding]:
    """Each finding with the reason of the suppression that accepts it (None: it stands)."""
    out = []
    for finding in findings:
        for suppression in suppressions:
            if finding.rule != BAD_SUPPRESSION and suppression.accepts(finding):
                suppression.used = True
                finding = dataclasses.replace(finding, reason=suppression.reason)
                break
        out.append(finding)
    return out


def unused(suppressions: Iterable[Suppression], linted: set[str]) -> list[Finding]:
    """Suppressions of linted files that matched nothing: stale, or aimed at the wrong line."""
    return [
        _bad(
            s.file if s.statement is None else BASELINE_NAME,
            s.line,
            f"lint:ignore {','.join(s.rules)} suppresses nothing"
            + (f" (baseline entry for {s.file}: {s.statement})" if s.statement else ""),
        )
        for s in suppressions
        if not s.used and (s.file in linted or s.file in {Path(p).name for p in linted})
    ]
