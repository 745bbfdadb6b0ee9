"""`migrate lint`: suppressions need a reason, the baseline of pinned files, the output, the
shipped files lint clean, and the CLI without the extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pglast", reason="the lint extra (pglast) is not installed")

from cex_arbitrage.db.lint import AppFacts, lint_paths, to_json
from cex_arbitrage.db.migrate import main
from cex_arbitrage.db.structs import LEGACY_TABLES
from tests.support.paths import MIGRATIONS, REPO, SUPPORT
from tests.unit.test_lint_rules import FACTS, do


def _lint(tmp_path: Path, sql: str, baseline: str | None = None) -> list[tuple[str, int, bool]]:
    target = tmp_path / "005_change.sql"
    target.write_text("-- migrate:description change\n" + sql)
    if baseline is not None:
        (tmp_path / "lint-baseline.yaml").write_text(baseline)
    report = lint_paths([target], FACTS)
    return [(f.rule, f.line, f.suppressed) for f in report.findings]


def test_a_suppression_with_a_reason_accepts_the_finding_below_it(tmp_path: Path) -> None:
    sql = "-- lint:ignore lock-table the table is new and empty here\nLOCK TABLE trades;\n"
    assert _lint(tmp_path, sql) == [("lock-table", 3, True)]


def test_a_suppression_on_the_statement_line_and_inside_a_do_block(tmp_path: Path) -> None:
    inline = "LOCK TABLE trades; -- lint:ignore lock-table,whole-table-dml why: test\n"
    nested = do(
        "-- lint:ignore whole-table-dml empty until the engine starts\n    DELETE FROM trades;"
    )
    assert _lint(tmp_path, inline + nested) == [
        ("lock-table", 2, True),
        ("whole-table-dml", 6, True),
    ]


def test_a_suppression_without_a_reason_is_a_finding_and_suppresses_nothing(
    tmp_path: Path,
) -> None:
    sql = "-- lint:ignore lock-table\nLOCK TABLE trades;\n"
    assert _lint(tmp_path, sql) == [("lint-suppression", 2, False), ("lock-table", 3, False)]


def test_a_suppression_of_an_unknown_rule_or_that_matches_nothing_is_a_finding(
    tmp_path: Path,
) -> None:
    sql = (
        "-- lint:ignore no-such-rule because\nSELECT 1;\n"
        "-- lint:ignore lock-table stale\nSELECT 2;\n"
    )
    assert _lint(tmp_path, sql) == [("lint-suppression", 2, False), ("lint-suppression", 4, False)]


def test_the_baseline_accepts_by_file_rule_and_statement_and_needs_a_reason(
    tmp_path: Path,
) -> None:
    entry = "  - {file: 005_change.sql, rule: lock-table, statement: LOCK TABLE trades%s}\n"
    good = "findings:\n" + entry % ", reason: pinned"
    assert _lint(tmp_path, "LOCK TABLE trades;\n", good) == [("lock-table", 2, True)]
    no_reason = "findings:\n" + entry % ""
    assert sorted(_lint(tmp_path, "LOCK TABLE trades;\n", no_reason)) == [
        ("lint-suppression", 0, False),
        ("lock-table", 2, False),
    ]
    stale = "findings:\n" + entry.replace("trades", "orders") % ", reason: gone"
    assert sorted(_lint(tmp_path, "LOCK TABLE trades;\n", stale)) == [
        ("lint-suppression", 0, False),
        ("lock-table", 2, False),
    ]


def test_json_shape(tmp_path: Path) -> None:
    target = tmp_path / "005_change.sql"
    target.write_text("-- migrate:description x\nLOCK TABLE trades;\n")
    data = json.loads(to_json(lint_paths([target], FACTS)))
    assert set(data) == {"files", "findings", "suppressed", "summary"}
    assert data["summary"] == {"files": 1, "findings": 1, "suppressed": 0}
    (finding,) = data["findings"]
    assert finding == {
        "file": str(target),
        "line": 2,
        "rule": "lock-table",
        "message": finding["message"],
        "hint": finding["hint"],
        "step": "main",
        "statement": "LOCK TABLE trades",
        "suppressed": False,
        "reason": None,
    }


def test_a_malformed_file_and_bad_sql_are_findings(tmp_path: Path) -> None:
    assert _lint(tmp_path, "-- migrate:Step x\nSELECT 1;\n") == [("file-format", 2, False)]
    assert _lint(tmp_path, "SELECT 1;\nSELEC 2;\n") == [("sql-syntax", 3, False)]


def test_the_shipped_files_lint_clean_with_their_reasons() -> None:
    report = lint_paths(sorted(MIGRATIONS.glob("*.sql")), FACTS)
    assert not report.active, [(f.file, f.line, f.rule) for f in report.active]
    assert all(f.reason for f in report.findings)


def test_legacy_tables_are_those_of_the_legacy_schema() -> None:
    import pglast

    text = (SUPPORT / "legacy-schema.sql").read_text()
    created = {
        raw.stmt.relation.relname
        for raw in pglast.parse_sql(text)
        if isinstance(raw.stmt, pglast.ast.CreateStmt)
    }
    assert created == set(LEGACY_TABLES)


def test_lint_without_pglast_is_a_usage_error_saying_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pglast", None)
    assert main(["lint"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cex-arbitrage[lint]'" in err and "pglast" in err


def test_the_cli_loads_neither_pglast_nor_the_linter_for_other_commands() -> None:
    code = (
        "import sys; from cex_arbitrage.db.migrate import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('pglast', 'cex_arbitrage.db.lint'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_lint_loads_neither_asyncpg_nor_the_config_layer() -> None:
    code = (
        "import sys, io, contextlib; from cex_arbitrage.db.migrate import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): code = main(['lint'])\n"
        "print(code, sorted(m for m in sys.modules if m in ('asyncpg', 'cex_arbitrage.config')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "0 []"


def test_lint_refuses_options_it_does_not_take_and_stray_files_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["lint", "--dry-run"]) == 2
    assert main(["status", "a.sql"]) == 2
    assert "unexpected argument 'a.sql'" in capsys.readouterr().err


def test_app_facts_default_to_nothing_known() -> None:
    assert AppFacts().legacy_tables == frozenset() and not AppFacts().written_columns


def test_a_body_postgresql_would_refuse_is_a_finding(tmp_path: Path) -> None:
    plpgsql = do("SELECT 1 INTO undeclared;")
    assert _lint(tmp_path, plpgsql) == [("sql-syntax", 2, False)]
    sql_body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELEC 1 $$;\n"
    assert _lint(tmp_path, sql_body) == [("sql-syntax", 2, False)]


def test_a_file_that_is_not_utf8_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "004_latin1.sql").write_bytes(b"-- caf\xe9\nSELECT 1;\n")
    assert _lint(tmp_path, "SELECT 1;\n") == []
    report = lint_paths([tmp_path / "004_latin1.sql"], FACTS)
    assert [(f.rule, f.line) for f in report.active] == [("file-format", 0)]
