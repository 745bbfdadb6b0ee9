"""The migrate CLI's `status` (with `--drift`), `accept-drift` and `down` commands.

Imported only for these commands (the other commands do not load it); they
print what the runner's API returns and choose the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cex_arbitrage.errors import ExitCode

if TYPE_CHECKING:
    from cex_arbitrage.db.migrator.runner import MigrationRunner
    from cex_arbitrage.db.structs import DatabaseConfig


async def run_schema_command(
    args: argparse.Namespace, runner: MigrationRunner, target: str | None, db: DatabaseConfig
) -> int:
    """`status`, `accept-drift` or `down`, as `args.command` says."""
    if args.command == "status":
        return await _status(args, runner, db)
    if args.command == "accept-drift":
        return await _accept_drift(runner, db)
    assert target is not None  # check_arguments requires --target for down
    return await _down(args, runner, target, db)


async def _status(args: argparse.Namespace, runner: MigrationRunner, db: DatabaseConfig) -> int:
    from cex_arbitrage.db.migrator.status import format_table, to_json

    rows = await runner.get_migration_status()
    drift = await runner.drift() if args.drift else None
    if args.json:
        extra: dict[str, Any] = {"database": db.display}
        if drift is not None:
            extra["drift"] = drift.to_json()
        print(to_json(rows, extra))
    else:
        print(format_table(rows, verbose=args.verbose))
        if drift is not None:
            print(drift.describe(db.display))
    attention = any(r.needs_attention for r in rows) or (drift is not None and drift.drifted)
    return int(ExitCode.PENDING) if args.exit_code and attention else 0


async def _accept_drift(runner: MigrationRunner, db: DatabaseConfig) -> int:
    if not await runner.accept_drift():
        print(
            f"error: {db.display}: there is no fingerprint table to record into; apply "
            "migration 006 (add_schema_fingerprint) first",
            file=sys.stderr,
        )
        return int(ExitCode.REFUSED)
    print(f"{db.display}: recorded the schema as it is now; status --drift compares with it")
    return 0


async def _down(
    args: argparse.Namespace, runner: MigrationRunner, target: str, db: DatabaseConfig
) -> int:
    result = await runner.down(target, allow_data_loss=args.allow_data_loss, dry_run=args.dry_run)
    if args.dry_run:
        print("dry run: nothing will be changed (the walk was rehearsed and rolled back)")
        print(result.plan.describe(sql=args.verbose))
        for loss in result.losses:
            flag = " (needs --allow-data-loss)" if loss.rows else ""
            if loss.bookkeeping:
                flag = " (the runner's fingerprint, not data)"
            print(f"  down of {loss.version} drops {loss.label}: {loss.rows} row(s){flag}")
        return 0
    if not result.undone:
        print(result.plan.describe())
        return 0
    parts = ", ".join(f"{v} ({result.durations_ms[v]} ms)" for v in result.undone)
    print(f"{db.display}: undone {parts}; the schema is at {result.plan.target}")
    return 0
