"""Exit codes and the one error hierarchy of cex_arbitrage: a leaf that imports nothing of ours.

Every error carries the exit code the CLI returns (the class decides it) and
the fields an operator or a test needs (version, step, statement index,
SQLSTATE, blocking pids); the message is written for an operator at 3 a.m.:
what happened, to which migration and database, and what to do next.

    MigrationError                      root; exit code from the class
    ├── ConfigError          (2)        malformed config, unset variable, bad argument
    ├── ConnectError         (3)        unreachable server, credentials, missing database
    ├── ValidationError      (4)        refused before anything ran
    │   ├── MigrationFileError          a file is malformed (file, line)
    │   │   └── TransactionControlError BEGIN/COMMIT/... in a step
    │   ├── DuplicateVersionError       two files, one version
    │   ├── MissingDependencyError      a dependency that no file has or that will not run
    │   ├── UnknownTargetError          --target names no file
    │   ├── TargetBelowAppliedError     --target below what is applied
    │   ├── DatabaseAheadError          history rows no file knows (newer code ran)
    │   ├── AbandonedAttemptError       an unfinished attempt whose file is gone
    │   ├── ChecksumMismatchError       an applied file was edited
    │   ├── NotAppliedError             accept-checksum of a migration not applied
    │   └── LintFindingsError           `lint` found unsuppressed findings
    ├── LockTimeoutError     (5)        a lock not obtained in time
    │   ├── MigrationLockTimeoutError   the runner's advisory lock (holder named)
    │   └── TableLockTimeoutError       a table lock, after retries (blocking pids)
    ├── SchemaNotReadyError  (6)        follower mode gave up waiting
    ├── PreflightError       (7)        privilege or server refused before anything ran
    ├── MigrationFailedError (1)        a step's SQL failed (sqlstate, statement)
    ├── ConnectionLostError  (8)        the session died mid-migration; a re-run resumes
    └── RunInterruptedError  (8)        SIGINT/SIGTERM stopped a run (the engine's boot)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """Documented exit codes of `python -m cex_arbitrage.db.migrate` (README)."""

    OK = 0
    MIGRATION_FAILED = 1  # SQL failed; the migration was rolled back (or resumable)
    USAGE = 2  # bad arguments or configuration
    CONNECT = 3  # cannot reach or authenticate to the server
    REFUSED = 4  # validation refused: checksum, dependency, target, duplicate, format, lint
    LOCK_TIMEOUT = 5  # advisory or table lock not obtained in time
    PENDING = 6  # status --exit-code: something pending, failed or drifted
    PERMISSION = 7  # pre-flight: missing privilege or unsupported server
    INTERRUPTED = 8  # connection lost or process interrupted mid-migration


class MigrationError(Exception):
    """Root of every error cex_arbitrage raises on purpose."""

    exit_code: ExitCode = ExitCode.MIGRATION_FAILED

    def __init__(self, message: str, *, database: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.database = database


class ConfigError(MigrationError):
    """Configuration or arguments are malformed, incomplete or name an unset variable."""

    exit_code = ExitCode.USAGE


class ConnectError(MigrationError):
    """The server cannot be reached, or refuses our credentials."""

    exit_code = ExitCode.CONNECT


class ValidationError(MigrationError):
    """The migration set or the target is refused before anything runs."""

    exit_code = ExitCode.REFUSED


class MigrationFileError(ValidationError):
    """A migration file is malformed; `line` is 0 when the problem is the whole file."""

    def __init__(self, message: str, *, filename: str, line: int = 0) -> None:
        super().__init__(message)
        self.filename = filename
        self.line = line


class TransactionControlError(MigrationFileError):
    """BEGIN, COMMIT, ROLLBACK, ... at the top level of a step: the runner owns transactions."""

    def __init__(self, message: str, *, filename: str, line: int, word: str) -> None:
        super().__init__(message, filename=filename, line=line)
        self.word = word


class DuplicateVersionError(ValidationError):
    """Two files carry one version (001 and 0001 count as one)."""

    def __init__(self, message: str, *, version: str, filenames: Sequence[str]) -> None:
        super().__init__(message)
        self.version = version
        self.filenames = tuple(filenames)


class MissingDependencyError(ValidationError):
    """A migration depends on a version that no file has, or that will not run."""

    def __init__(self, message: str, *, version: str, dependency: str, reason: str) -> None:
        super().__init__(message)
        self.version = version
        self.dependency = dependency
        self.reason = reason


class UnknownTargetError(ValidationError):
    """`--target` (or accept-checksum's VERSION) names a version no file has."""

    def __init__(self, message: str, *, target: str, known: Sequence[str]) -> None:
        super().__init__(message)
        self.target = target
        self.known = tuple(known)


class TargetBelowAppliedError(ValidationError):
    """`--target` is below versions already applied (migrations only go forward)."""

    def __init__(self, message: str, *, target: str, applied_above: Sequence[str]) -> None:
        super().__init__(message)
        self.target = target
        self.applied_above = tuple(applied_above)


class DatabaseAheadError(ValidationError):
    """The history records applied versions this code has no file for."""

    def __init__(self, message: str, *, versions: Sequence[str]) -> None:
        super().__init__(message)
        self.versions = tuple(versions)


class AbandonedAttemptError(ValidationError):
    """The history records an unfinished attempt whose file is gone."""

    def __init__(self, message: str, *, versions: Sequence[str]) -> None:
        super().__init__(message)
        self.versions = tuple(versions)


class ChecksumMismatchError(ValidationError):
    """An applied migration's file was edited after it was applied."""

    def __init__(self, message: str, *, version: str, recorded: str, current: str) -> None:
        super().__init__(message)
        self.version = version
        self.recorded = recorded
        self.current = current


class NotAppliedError(ValidationError):
    """An operation that needs an applied migration (accept-checksum) found none."""

    def __init__(self, message: str, *, version: str) -> None:
        super().__init__(message)
        self.version = version


class LintFindingsError(ValidationError):
    """`migrate lint` found findings that no suppression accepts: the files are refused."""

    def __init__(self, message: str, *, findings: int, files: Sequence[str]) -> None:
        super().__init__(message)
        self.findings = findings
        self.files = tuple(files)


class LockTimeoutError(MigrationError):
    """The runner's advisory lock, or a table lock, was not obtained in time."""

    exit_code = ExitCode.LOCK_TIMEOUT


class MigrationLockTimeoutError(LockTimeoutError):
    """Another runner held the migration lock for longer than lock_wait_timeout."""

    def __init__(self, message: str, *, holder: str, waited_s: float) -> None:
        super().__init__(message)
        self.holder = holder
        self.waited_s = waited_s


class TableLockTimeoutError(LockTimeoutError):
    """A statement could not get a table lock within lock_timeout, `attempts` times."""

    def __init__(
        self,
        message: str,
        *,
        version: str,
        step: str | None,
        statement_index: int | None,
        attempts: int,
        blocking_pids: Sequence[int] = (),
    ) -> None:
        super().__init__(message)
        self.version = version
        self.step = step
        self.statement_index = statement_index
        self.attempts = attempts
        self.blocking_pids = tuple(blocking_pids)


class PreflightError(MigrationError):
    """The live database is not fit to migrate (privileges, server version)."""

    exit_code = ExitCode.PERMISSION


class MigrationFailedError(MigrationError):
    """A migration's SQL failed.

    `rolled_back` is True for a transactional step (nothing of it stays);
    False for a statement of a `transaction:false` step, where the statements
    before it stay done and a re-run resumes at `statement_index`.
    """

    exit_code = ExitCode.MIGRATION_FAILED

    def __init__(
        self,
        message: str,
        *,
        version: str,
        step: str | None,
        statement_index: int | None = None,
        statement: str | None = None,
        sqlstate: str | None = None,
        rolled_back: bool,
    ) -> None:
        super().__init__(message)
        self.version = version
        self.step = step
        self.statement_index = statement_index
        self.statement = statement
        self.sqlstate = sqlstate
        self.rolled_back = rolled_back


class ConnectionLostError(MigrationError):
    """The connection was cut while a migration ran; see status for where it stopped."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, *, version: str | None = None, step: str | None = None):
        super().__init__(message)
        self.version = version
        self.step = step


class SchemaNotReadyError(MigrationError):
    """Follower mode: the schema did not become current in time."""

    exit_code = ExitCode.PENDING

    def __init__(self, message: str, *, pending: Sequence[str] = (), waited_s: float = 0.0):
        super().__init__(message)
        self.pending = tuple(pending)
        self.waited_s = waited_s


class RunInterruptedError(MigrationError):
    """A signal (SIGINT, SIGTERM) cancelled a run: the running statement was cancelled and
    its transaction rolled back; a re-run resumes."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, *, signal_name: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.stage = stage
