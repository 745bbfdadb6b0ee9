"""Shared pieces of the benchmarks: a scratch database per measurement, medians, ratios.

Benchmarks print ratios against a floor measured in the same run on the same
machine; they are not part of the test suite.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable

from cex_arbitrage.config import database_from_url
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.databases import create_database as _create_database
from tests.support.databases import drop_database as drop_database

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_config() -> DatabaseConfig:
    """The server to benchmark on: CEX_BENCH_DSN, else CEX_TEST_DSN, else the local one."""
    dsn = os.environ.get("CEX_BENCH_DSN") or os.environ.get("CEX_TEST_DSN") or DEFAULT_DSN
    return database_from_url(dsn)


async def create_database(admin: DatabaseConfig, prefix: str = "cex_bench") -> DatabaseConfig:
    """A scratch database for one benchmark (the tests' helper, with a bench prefix)."""
    return await _create_database(admin, prefix)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    """Wall-clock seconds of `repeat` sequential calls."""
    out: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def percentile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index] * 1000.0


def verdict(ratio: float, bound: float) -> str:
    return f"{'OK' if ratio <= bound else 'OVER'} (target <= {bound}x)"
