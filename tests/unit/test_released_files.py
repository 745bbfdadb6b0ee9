"""Released migrations are pinned: editing one fails here, not on a production database."""

from __future__ import annotations

from cex_arbitrage.db.migrator.model import checksum_of
from cex_arbitrage.db.migrator.parse import parse_migration
from tests.support.paths import MIGRATIONS

PINS = MIGRATIONS / "released.sum"


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in PINS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            checksum, name = line.split()
            pins[name] = checksum
    return pins


def test_every_versioned_file_is_pinned() -> None:
    # Down files (NNN_name.down.sql) are not pinned: no database records them, and a
    # down that turns out wrong may be fixed after its migration was released.
    files = sorted(
        p.name for p in MIGRATIONS.glob("[0-9]*.sql") if not p.name.endswith(".down.sql")
    )
    assert sorted(_pins()) == files, (
        "a versioned migration is not in released.sum (or a pinned one is gone); a new "
        "migration is released by adding its line: sha256sum of the file and its name"
    )


def test_released_files_are_unchanged() -> None:
    for name, pinned in _pins().items():
        text = (MIGRATIONS / name).read_text(encoding="utf-8")
        assert checksum_of(text) == pinned, (
            f"{name} was edited after its release: databases that applied it refuse to run "
            "with it. Put the change in a new migration; if it is schema-neutral, add "
            "`-- migrate:replaces <pinned checksum> <why>` to its header and update released.sum"
        )


def test_replaced_checksums_are_of_earlier_releases_not_of_the_current_file() -> None:
    for name in _pins():
        m = parse_migration(name, (MIGRATIONS / name).read_text(encoding="utf-8"))
        assert m.checksum not in m.replaces, name
