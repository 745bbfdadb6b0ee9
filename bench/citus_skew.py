"""Shard skew of candidate distribution columns for `trades` on a Citus cluster.

Not part of the test suite; the numbers go into docs/citus.md. Needs a
Citus-enabled database on a coordinator with its workers registered, named
by CEX_CITUS_DSN (the repository's citus-newdb tool makes one):

    CEX_CITUS_DSN=postgresql://USER:PASSWORD@COORDINATOR:5440/skew \\
        .venv/bin/python -m bench.citus_skew [rows]

It generates `rows` trades (default 1,000,000) with the symbol mix below into
a local table on the coordinator, then for each candidate column creates an
empty hash-distributed table (32 shards unless citus.shard_count says
otherwise) and asks Citus which shard each row's value lands on
(get_shard_id_for_distribution_column, the same hash routing inserts use).
Finally it really distributes the rows by symbol_base and counts them per
shard, to check the computed placement against the stored one.

The mix (trade COUNTS, not notional, since rows are what shards hold): six
majors carry 44% of trades (BTC 18, ETH 10, SOL 6, XRP 4, DOGE 3.5, BNB 2.5),
in line with the majors' share of spot trade counts on the large venues; the
remaining 56% spread over 300 altcoins by a Zipf law (s = 1), the usual
shape of a long tail of listings. Quotes: USDT everywhere; USDC for the top
100 bases, FDUSD for the top 40, BTC for the top 150, ETH for the top 60,
weighted 70 / 12 / 8 / 6 / 4 where present. Five exchanges with their own
spellings (BTCUSDT, BTC_USDT, BTC-USDT, BTC/USDT) share each pair equally.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys

import asyncpg

MAJORS = [("BTC", 18.0), ("ETH", 10.0), ("SOL", 6.0), ("XRP", 4.0), ("DOGE", 3.5), ("BNB", 2.5)]
TAIL_BASES = 300
QUOTES = [
    ("USDT", 70.0, 10_000),
    ("USDC", 12.0, 100),
    ("FDUSD", 8.0, 40),
    ("BTC", 6.0, 150),
    ("ETH", 4.0, 60),
]
EXCHANGES = [
    ("MEXC", "{b}{q}"),
    ("GATEIO", "{b}_{q}"),
    ("BINANCE", "{b}{q}"),
    ("OKX", "{b}-{q}"),
    ("KRAKEN", "{b}/{q}"),
]

# Candidate: name -> SQL expression over the generated rows.
CANDIDATES = {
    "symbol_base": "symbol_base",
    "pair": "symbol_base || '/' || symbol_quote",
    "exchange_pair": "exchange || ':' || symbol_base || '/' || symbol_quote",
    "symbol (raw)": "symbol",
    "exchange": "exchange",
}


def bases() -> list[tuple[str, float]]:
    """(base, share of all trades in percent), majors first, then the Zipf tail."""
    tail_total = 100.0 - sum(w for _, w in MAJORS)
    harmonic = sum(1.0 / k for k in range(1, TAIL_BASES + 1))
    tail = [(f"ALT{k:03d}", tail_total / (k * harmonic)) for k in range(1, TAIL_BASES + 1)]
    return MAJORS + tail


def pair_counts(rows: int) -> list[tuple[str, str, str, str, int]]:
    """(exchange, symbol as spelled, base, quote, row count) for the whole mix."""
    out = []
    for rank, (base, share) in enumerate(bases()):
        quotes = [(q, w) for q, w, top in QUOTES if rank < top and q != base]
        total_w = sum(w for _, w in quotes)
        for quote, w in quotes:
            pair_rows = rows * share / 100.0 * w / total_w
            for exchange, spelling in EXCHANGES:
                n = round(pair_rows / len(EXCHANGES))
                if n:
                    out.append((exchange, spelling.format(b=base, q=quote), base, quote, n))
    return out


async def load(conn: asyncpg.Connection, rows: int) -> int:
    await conn.execute("DROP TABLE IF EXISTS skew_mix, skew_rows")
    await conn.execute(
        "CREATE TABLE skew_mix "
        "(exchange text, symbol text, symbol_base text, symbol_quote text, n int)"
    )
    await conn.copy_records_to_table("skew_mix", records=pair_counts(rows))
    await conn.execute(
        "CREATE TABLE skew_rows AS SELECT m.exchange, m.symbol, m.symbol_base, m.symbol_quote "
        "FROM skew_mix m, generate_series(1, m.n)"
    )
    return int(await conn.fetchval("SELECT count(*) FROM skew_rows"))


async def shard_rows(conn: asyncpg.Connection, name: str, expr: str) -> list[tuple[int, str, int]]:
    """(shard id, worker, rows) for every shard of a table distributed by `expr`."""
    table = "skew_" + "".join(c if c.isalnum() else "_" for c in name)
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.execute(f"CREATE TABLE {table} (k text)")
    await conn.execute(f"SELECT create_distributed_table('{table}', 'k')")
    return [
        (r["shardid"], r["node"], r["rows"])
        for r in await conn.fetch(
            f"""
            WITH keys AS (SELECT {expr} AS k, count(*) AS n FROM skew_rows GROUP BY 1),
                 placed AS (SELECT get_shard_id_for_distribution_column('{table}', k) AS shardid, n
                            FROM keys)
            SELECT s.shardid, s.nodename || ':' || s.nodeport AS node,
                   coalesce(sum(p.n), 0)::bigint AS rows
            FROM citus_shards s LEFT JOIN placed p USING (shardid)
            WHERE s.table_name = '{table}'::regclass
            GROUP BY 1, 2 ORDER BY 1
            """
        )
    ]


def report(name: str, shards: list[tuple[int, str, int]], total: int) -> None:
    counts = [n for _, _, n in shards]
    mean = total / len(counts)
    per_worker: dict[str, int] = {}
    for _, node, n in shards:
        per_worker[node] = per_worker.get(node, 0) + n
    workers = ", ".join(f"{node} {n / total:.1%}" for node, n in sorted(per_worker.items()))
    print(
        f"{name:14} shards={len(counts)} min={min(counts):>7} "
        f"median={statistics.median(counts):>9.0f} max={max(counts):>7} "
        f"max/mean={max(counts) / mean:5.2f} empty={counts.count(0):>2} | {workers}"
    )


async def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    conn = await asyncpg.connect(os.environ["CEX_CITUS_DSN"])
    try:
        total = await load(conn, rows)
        pairs = await conn.fetchval(
            "SELECT count(DISTINCT (symbol_base, symbol_quote)) FROM skew_rows"
        )
        print(f"{total} rows, {pairs} pairs")
        for name, expr in CANDIDATES.items():
            report(name, await shard_rows(conn, name, expr), total)
        # id: uniform by construction (bigserial hashed), computed the same way.
        await conn.execute("ALTER TABLE skew_rows ADD COLUMN id bigserial")
        await conn.execute("DROP TABLE IF EXISTS skew_id")
        await conn.execute("CREATE TABLE skew_id (k bigint)")
        await conn.execute("SELECT create_distributed_table('skew_id', 'k')")
        id_rows = await conn.fetch(
            """
            WITH placed AS (SELECT get_shard_id_for_distribution_column('skew_id', id) AS shardid
                            FROM skew_rows)
            SELECT s.shardid, s.nodename || ':' || s.nodeport AS node, count(p.shardid) AS rows
            FROM citus_shards s LEFT JOIN placed p USING (shardid)
            WHERE s.table_name = 'skew_id'::regclass GROUP BY 1, 2 ORDER BY 1
            """
        )
        report("id", [(r["shardid"], r["node"], r["rows"]) for r in id_rows], total)
        # Check: really distribute the rows by symbol_base and count them per shard.
        await conn.execute("SELECT create_distributed_table('skew_rows', 'symbol_base')")
        stored = await conn.fetch(
            "SELECT shardid, nodename || ':' || nodeport AS node, result::bigint AS rows "
            "FROM run_command_on_shards('skew_rows', 'SELECT count(*) FROM %s') "
            "JOIN citus_shards USING (shardid) ORDER BY 1"
        )
        report("stored base", [(r["shardid"], r["node"], r["rows"]) for r in stored], total)
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
