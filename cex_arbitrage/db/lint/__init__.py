"""`migrate lint`: safety rules for migrations on live tables, read with PostgreSQL's parser.

Needs the optional `lint` extra (pglast, the libpg_query binding); nothing
else imports this package, so the runtime needs only asyncpg and PyYAML. It
may use the runner's file parser (`migrator.parse`), never the reverse, and
names no table of the application: what the application knows (its legacy
tables, what its collectors write) arrives as `AppFacts`. Modules:

    model        statements, places, findings, knowledge (plain values)
    statements   a file as parsed statements with lines and steps
    bodies       statements inside DO blocks, function bodies, EXECUTE literals
    tree         small readers of pglast's tree
    rules_locks  rules about locks and rewrites
    rules_code   rules about data, written columns, transactions, roles
    rules        the rule table
    learn        what each statement teaches about the schema
    suppress     `-- lint:ignore RULE reason` and the baseline of pinned files
    check        a run over files, each in its directory's context
    report       text and JSON output
"""

from __future__ import annotations

from cex_arbitrage.db.lint.check import Report, lint_paths
from cex_arbitrage.db.lint.model import AppFacts, Finding
from cex_arbitrage.db.lint.report import format_text, to_json
from cex_arbitrage.db.lint.rules import META_RULES, RULES
from cex_arbitrage.db.lint.suppress import BASELINE_NAME

__all__ = [  # noqa: RUF022 (plain sorted, as tests/unit/test_structure.py holds it)
    "AppFacts",
    "BASELINE_NAME",
    "Finding",
    "META_RULES",
    "RULES",
    "Report",
    "format_text",
    "lint_paths",
    "to_json",
]
