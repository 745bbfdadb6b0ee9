"""One error hierarchy; each error carries the exit code the CLI returns.

Messages are written for an operator at 3 a.m.: what happened, to which
migration and database, and what to do next.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes of `python -m cex_arbitrage.db.migrate` (README)."""

    OK = 0
    MIGRATION_FAILED = 1  # SQL failed; the migration was rolled back (or resumable)
    USAGE = 2  # bad arguments or configuration
    CONNECT = 3  # cannot reach or authenticate to the server
    REFUSED = 4  # validation refused: checksum, dependency, target, duplicate, format
    LOCK_TIMEOUT = 5  # advisory or table lock not obtained in time
    PENDING = 6  # status --exit-code: something pending, failed or drifted
    PERMISSION = 7  # pre-flight: missing privilege or unsupported server
    INTERRUPTED = 8  # connection lost or process interrupted mid-migration


class MigrationError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code: ExitCode = ExitCode.MIGRATION_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(MigrationError):
    """Configuration is malformed, incomplete or refers to an unset variable."""

    exit_code = ExitCode.USAGE


class ConnectError(MigrationError):
    """The server cannot be reached, or refuses our credentials."""

    exit_code = ExitCode.CONNECT


class ValidationError(MigrationError):
    """The migration set or the target is refused before anything runs."""

    exit_code = ExitCode.REFUSED


class ChecksumMismatchError(ValidationError):
    """An applied migration's file was edited after it was applied."""


class LockTimeoutError(MigrationError):
    """The runner's advisory lock, or a table lock, was not obtained in time."""

    exit_code = ExitCode.LOCK_TIMEOUT


class PreflightError(MigrationError):
    """The live database is not fit to migrate (privileges, server version)."""

    exit_code = ExitCode.PERMISSION


class MigrationFailedError(MigrationError):
    """A migration's SQL failed; its transaction was rolled back."""

    exit_code = ExitCode.MIGRATION_FAILED


class ConnectionLostError(MigrationError):
    """The connection was cut while a migration ran; see status for where it stopped."""

    exit_code = ExitCode.INTERRUPTED


class SchemaNotReadyError(MigrationError):
    """Follower mode: the schema did not become current in time."""

    exit_code = ExitCode.PENDING
