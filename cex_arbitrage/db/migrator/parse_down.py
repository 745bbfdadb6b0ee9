"""Parse a down file, `NNN_name.down.sql`: how to undo migration NNN, or why it cannot be.

A down is a companion file rather than a section of the migration because
every migration file must stay runnable by `psql -f`, which would run an
in-file down section too. Its format is the migration format's, smaller: an
optional `-- migrate:irreversible REASON` header, no steps (the whole file
is one transaction), and an optional psql-only tail.
"""

from __future__ import annotations

import re

from cex_arbitrage.db.migrator.model import Down
from cex_arbitrage.db.migrator.parse import header_values, scan_file
from cex_arbitrage.db.migrator.refusals import refuse_transaction_control
from cex_arbitrage.db.migrator.split import split_statements
from cex_arbitrage.errors import MigrationFileError

DOWN_SUFFIX = ".down.sql"
DOWN_FILENAME_RE = re.compile(r"^(?P<version>\d{3,})_(?P<name>[a-z0-9][a-z0-9_]*)\.down\.sql$")
_DOWN_KEYS = ("irreversible",)


def is_down_file(filename: str) -> bool:
    return filename.endswith(DOWN_SUFFIX)


def up_filename(down: Down) -> str:
    """The migration file this down undoes."""
    return f"{down.version}_{down.name}.sql"


def parse_down(filename: str, text: str) -> Down:
    """Parse a down file; refuse steps, and SQL next to `migrate:irreversible`."""
    match = DOWN_FILENAME_RE.match(filename)
    if not match:
        raise MigrationFileError(
            f"{filename}: not a down file name; expected NNN_snake_case_name.down.sql, "
            "named like the migration it undoes (NNN_snake_case_name.sql)",
            filename=filename,
        )
    scan = scan_file(filename, text)
    if len(scan.steps) != 1:
        raise MigrationFileError(
            f"{filename}:{scan.steps[1].line}: a down file has no steps: it runs whole, in "
            "one transaction together with the removal of the migration's history row",
            filename=filename,
            line=scan.steps[1].line,
        )
    sql = scan.steps[0].sql
    refuse_transaction_control(filename, sql, scan.steps[0].line_numbers)
    header = header_values(filename, scan, _DOWN_KEYS)
    reason = header.get("irreversible", [None])[0]
    if reason is not None and split_statements(sql):
        raise MigrationFileError(
            f"{filename}: marked migrate:irreversible, yet it holds SQL the runner would "
            "never run; remove the SQL (a psql-only tail may stay), or the directive",
            filename=filename,
        )
    return Down(
        version=match["version"],
        name=match["name"],
        filename=filename,
        sql=sql if split_statements(sql) else "",
        irreversible=reason,
    )
