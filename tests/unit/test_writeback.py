"""Pre-flight's judgement of the host's kernel writeback threshold (writeback.py)."""

from __future__ import annotations

import pytest

from cex_arbitrage.db.migrator.writeback import (
    RECOMMENDED_BYTES,
    WARN_ABOVE_BYTES,
    KernelWriteback,
    mem_total_bytes,
    writeback_warning,
)

GB = 2**30
MB = 2**20


@pytest.mark.parametrize(
    ("kernel", "threshold"),
    [
        (KernelWriteback(0, 10, 24 * GB), 24 * GB // 10),  # Linux's default on this host
        (KernelWriteback(0, 10, 2 * GB), 2 * GB // 10),
        (KernelWriteback(64 * MB, 0, 24 * GB), 64 * MB),  # bytes set: the ratio reads 0
        (KernelWriteback(64 * MB, 10, 24 * GB), 64 * MB),  # bytes win when both are there
    ],
)
def test_the_threshold_is_the_bytes_setting_else_the_ratio_of_ram(
    kernel: KernelWriteback, threshold: int
) -> None:
    assert kernel.threshold == threshold


def test_the_default_ratio_on_a_large_host_is_warned_about_with_the_way_out() -> None:
    warning = writeback_warning("postgres@h:5432/app", 50_000_000, KernelWriteback(0, 10, 24 * GB))
    assert warning is not None
    assert warning.startswith("postgres@h:5432/app: ")
    assert "up to 2.4 GB of written data" in warning
    assert "vm.dirty_background_ratio = 10% of 24.0 GB RAM" in warning
    assert "50,000,000 rows" in warning
    assert "over 200 ms for its WAL flush" in warning
    assert f"sysctl -w vm.dirty_background_bytes={RECOMMENDED_BYTES}" in warning
    assert RECOMMENDED_BYTES == 64 * MB


@pytest.mark.parametrize(
    "kernel",
    [
        KernelWriteback(64 * MB, 0, 24 * GB),  # the measured setting
        KernelWriteback(WARN_ABOVE_BYTES, 0, 24 * GB),
        KernelWriteback(0, 10, 2 * GB),  # a small host at the default: 205 MB
        KernelWriteback(0, 1, 24 * GB),  # the ratio lowered instead: 246 MB
    ],
)
def test_a_threshold_at_or_below_the_limit_is_not_warned_about(kernel: KernelWriteback) -> None:
    assert writeback_warning("db", 50_000_000, kernel) is None


def test_a_bytes_setting_above_the_limit_names_that_setting() -> None:
    warning = writeback_warning("db", 6_000_000, KernelWriteback(512 * MB, 0, 24 * GB))
    assert warning is not None
    assert "up to 512 MB" in warning
    assert "(vm.dirty_background_bytes = 536870912)" in warning


@pytest.mark.parametrize(
    ("text", "total"),
    [
        ("MemTotal:       24683568 kB\nMemFree:        21694468 kB\n", 24683568 * 1024),
        ("MemFree: 1 kB\nMemTotal: 2048 kB\n", 2048 * 1024),
        ("MemFree: 1 kB\n", None),
        ("MemTotal: lots\n", None),
        ("", None),
    ],
)
def test_mem_total_is_read_from_meminfo(text: str, total: int | None) -> None:
    assert mem_total_bytes(text) == total
