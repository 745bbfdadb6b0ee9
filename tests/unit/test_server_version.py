"""Pre-flight's decision on the server's major: refuse below the supported range, warn above it."""

from __future__ import annotations

import pytest

from cex_arbitrage.db.migrator.preflight import (
    NEWEST_TESTED_MAJOR,
    OLDEST_MAJOR,
    check_server_version,
)
from cex_arbitrage.errors import ExitCode, PreflightError
from tests.support.pg_servers import SUPPORTED_MAJORS


def test_the_supported_range_is_the_matrix_the_tests_run_on() -> None:
    assert tuple(range(OLDEST_MAJOR, NEWEST_TESTED_MAJOR + 1)) == SUPPORTED_MAJORS == (
        13, 14, 15, 16, 17, 18,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("num", "text"), [(130000, "13.0"), (130023, "13.23"), (150018, "15.18"), (180004, "18.4")]
)
def test_every_supported_major_passes_without_a_warning(num: int, text: str) -> None:
    assert check_server_version("db", num, text) is None


@pytest.mark.parametrize(
    ("num", "text", "major"), [(120022, "12.22", 12), (110022, "11.22", 11), (90624, "9.6.24", 9)]
)
def test_an_older_major_is_refused_with_exit_7_naming_it_and_the_range(
    num: int, text: str, major: int
) -> None:
    with pytest.raises(PreflightError) as caught:
        check_server_version("postgres@h:5432/app", num, text)
    assert caught.value.exit_code == ExitCode.PERMISSION == 7
    message = str(caught.value)
    assert f"PostgreSQL {text} (major {major}) is not supported" in message
    assert "supported: PostgreSQL 13 to 18" in message
    assert "nothing was changed" in message
    assert message.startswith("postgres@h:5432/app: ")


def test_a_newer_major_than_tested_goes_ahead_with_a_warning() -> None:
    warning = check_server_version("db", 190001, "19.1")
    assert warning is not None
    assert "PostgreSQL 19.1 (major 19) is newer than the newest tested major" in warning
    assert "supported: PostgreSQL 13 to 18" in warning
