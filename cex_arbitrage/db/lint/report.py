"""A lint report for people (file:line, rule, message, hint) and as JSON."""

from __future__ import annotations

import json

from cex_arbitrage.db.lint.check import Report


def format_text(report: Report, *, show_suppressed: bool = False) -> str:
    """One block per finding, then a summary line."""
    out: list[str] = []
    for f in report.findings:
        if f.suppressed and not show_suppressed:
            continue
        where = f"{f.file}:{f.line}" if f.line else f.file
        step = f" (step {f.step})" if f.step else ""
        tag = " [suppressed]" if f.suppressed else ""
        out.append(f"{where}: {f.rule}{tag}: {f.message}{step}")
        if f.statement:
            out.append(f"    statement: {f.statement}")
        out.append(f"    hint: {f.hint}")
        if f.suppressed:
            out.append(f"    reason: {f.reason}")
    out.append(summary(report))
    return "\n".join(out)


def summary(report: Report) -> str:
    active = len(report.active)
    quiet = len(report.findings) - active
    files = len(report.files)
    verdict = "clean" if not active else f"{active} finding{'s' * (active != 1)}"
    return f"lint: {files} file{'s' * (files != 1)}, {verdict} ({quiet} suppressed with a reason)"


def to_json(report: Report) -> str:
    """{"files": [...], "findings": [...], "suppressed": [...], "summary": {...}}."""
    return json.dumps(
        {
            "files": list(report.files),
            "findings": [f.as_dict() for f in report.active],
            "suppressed": [f.as_dict() for f in report.findings if f.suppressed],
            "summary": {
                "files": len(report.files),
                "findings": len(report.active),
                "suppressed": len(report.findings) - len(report.active),
            },
        },
        indent=2,
    )
