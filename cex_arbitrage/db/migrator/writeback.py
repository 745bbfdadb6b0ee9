"""Pre-flight's look at the database host's kernel writeback threshold.

A migration that rewrites or indexes a large table writes gigabytes that do
not pass through shared_buffers, where backend_flush_after and its siblings
hint the kernel to write back: an index build's sort files and the index
itself, and any other sort that spills to temporary files.
Linux keeps such pages dirty in its page cache until they exceed
`vm.dirty_background_bytes`, or when that is 0 (the default)
`vm.dirty_background_ratio` percent (default 10) of the RAM it can use for
the cache: 2.4 GB on a 24 GB host. The writeback of that much data then
saturates the disk, and every collector COMMIT's WAL flush (fdatasync)
queues behind it: the writer batches over 200 ms at 50M rows in
bench/bench_migration_001.py were each waiting on IO:WALSync while the
kernel held 1.0-2.2 GB dirty. PostgreSQL has no setting that reaches those
writes, so the fix is the kernel's: a small `vm.dirty_background_bytes`.

The check reads the server's own /proc through pg_read_file (the database
may be on another host than the runner), so it needs a superuser or a
member of pg_read_server_files; without that, or off Linux, it says nothing.
It runs only when the watched tables are large: one more round trip, and
only on a run that has migrations to apply.
"""

from __future__ import annotations

import dataclasses

import asyncpg

# Measured without a stall over 200 ms at 50M rows (README, "Benchmarks").
RECOMMENDED_BYTES = 64 * 1024 * 1024
# Above this much dirty cache before writeback starts, pre-flight warns. The
# measured bad case was 2.4 GB; between 64 MB and this limit is not measured.
WARN_ABOVE_BYTES = 256 * 1024 * 1024

_READ = """
SELECT pg_read_file('/proc/sys/vm/dirty_background_bytes', 0, 64, true) AS bytes,
       pg_read_file('/proc/sys/vm/dirty_background_ratio', 0, 64, true) AS ratio,
       pg_read_file('/proc/meminfo', 0, 256, true) AS meminfo
"""


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def mem_total_bytes(meminfo: str) -> int | None:
    """MemTotal from /proc/meminfo's text (kB), or None if it is not there."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemTotal":
            fields = rest.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024
    return None


@dataclasses.dataclass(frozen=True)
class KernelWriteback:
    """The host's `vm.dirty_background_*` settings and its RAM."""

    dirty_bytes: int  # vm.dirty_background_bytes; 0: the ratio applies
    dirty_ratio: int  # vm.dirty_background_ratio, percent
    mem_total: int  # bytes

    @property
    def threshold(self) -> int:
        """Dirty page cache the kernel lets build up before it starts writing it back.

        With `dirty_bytes` 0 the kernel takes `dirty_ratio` percent of the
        memory available to the page cache; MemTotal is its upper bound, which
        a large migration on an otherwise idle host approaches.
        """
        if self.dirty_bytes > 0:
            return self.dirty_bytes
        return self.dirty_ratio * self.mem_total // 100

    def describe(self) -> str:
        if self.dirty_bytes > 0:
            return f"vm.dirty_background_bytes = {self.dirty_bytes}"
        return f"vm.dirty_background_ratio = {self.dirty_ratio}% of {_size(self.mem_total)} RAM"


def writeback_warning(database: str, rows: int, kernel: KernelWriteback) -> str | None:
    """The warning for a kernel that lets too much dirty cache build up, or None."""
    if kernel.threshold <= WARN_ABOVE_BYTES:
        return None
    return (
        f"{database}: the database host's kernel lets up to {_size(kernel.threshold)} of "
        f"written data wait in its page cache before writing it back ({kernel.describe()}). "
        f"With {rows:,} rows in the tables the migrations rewrite, a collector's COMMIT "
        "may wait over 200 ms for its WAL flush while that cache is written out. On the "
        f"database host: sysctl -w vm.dirty_background_bytes={RECOMMENDED_BYTES} "
        "(64 MB; in /etc/sysctl.d to keep it), see README, Safety"
    )


async def read_writeback(conn: asyncpg.Connection) -> KernelWriteback | None:
    """The server host's settings, read through pg_read_file; None where they cannot be."""
    try:
        row = await conn.fetchrow(_READ)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.PostgresSystemError):
        return None  # no pg_read_server_files, or /proc/sys hidden or unreadable (class 58)
    if row is None or None in (row["bytes"], row["ratio"], row["meminfo"]):
        return None  # not Linux
    total = mem_total_bytes(row["meminfo"])
    numbers = (row["bytes"].strip(), row["ratio"].strip())
    if total is None or not all(n.isdigit() for n in numbers):
        return None
    return KernelWriteback(int(numbers[0]), int(numbers[1]), total)


async def check_writeback(conn: asyncpg.Connection, database: str, rows: int) -> str | None:
    """Pre-flight's warning about the host's writeback threshold, if it needs one."""
    kernel = await read_writeback(conn)
    return writeback_warning(database, rows, kernel) if kernel else None
