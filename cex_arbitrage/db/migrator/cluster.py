"""Which kind of server this is: one PostgreSQL, or a node of a Citus cluster.

On Citus, migrations run on the coordinator only: DDL there propagates to
the workers and their shards, while DDL on a worker changes that node alone
(and a worker's history table is not the cluster's). So pre-flight refuses a
worker, naming the coordinator when the worker's metadata knows it. Read
only when the extension is installed: a plain server pays nothing for this.
"""

from __future__ import annotations

import dataclasses

import asyncpg

from cex_arbitrage.errors import PreflightError

# pg_dist_local_group: this node's group (0 is the coordinator's); pg_dist_node:
# the nodes this node knows (a worker knows them too once metadata is synced,
# the coordinator only if it was registered with citus_set_coordinator_host).
_CITUS = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'citus') AS version,
       (SELECT groupid FROM pg_dist_local_group) AS group_id,
       (SELECT count(*) FROM pg_dist_node
         WHERE groupid <> 0 AND noderole = 'primary' AND isactive) AS workers,
       (SELECT nodename || ':' || nodeport FROM pg_dist_node
         WHERE groupid = 0 AND noderole = 'primary' ORDER BY nodeid LIMIT 1) AS coordinator
"""


@dataclasses.dataclass(frozen=True)
class CitusNode:
    """This server's place in a Citus cluster."""

    version: str
    group_id: int
    workers: int  # active primary workers the node knows of
    coordinator: str | None  # host:port as registered in the metadata, if it is

    @property
    def is_coordinator(self) -> bool:
        return self.group_id == 0

    def describe(self) -> str:
        role = "coordinator" if self.is_coordinator else f"worker (group {self.group_id})"
        nodes = "worker node" if self.workers == 1 else "worker nodes"
        return f"Citus {self.version} {role}, {self.workers} active {nodes}"


async def detect_citus(conn: asyncpg.Connection, extensions: tuple[str, ...]) -> CitusNode | None:
    """The Citus role of the server behind CONN; None when the extension is not installed.

    EXTENSIONS are pre-flight's `name version` strings, so a server without
    Citus costs no extra round trip.
    """
    if not any(e.split(" ", 1)[0] == "citus" for e in extensions):
        return None
    row = await conn.fetchrow(_CITUS)
    assert row is not None
    return CitusNode(
        version=row["version"],
        group_id=row["group_id"],
        workers=row["workers"],
        coordinator=row["coordinator"],
    )


def refuse_worker(node: CitusNode, database: str) -> None:
    """Exit 7 on a worker: its DDL would change one node, its history is not the cluster's."""
    if node.is_coordinator:
        return
    where = (
        f"the coordinator is {node.coordinator}"
        if node.coordinator
        else "this worker's metadata does not name the coordinator (the host your cluster's "
        "clients connect to)"
    )
    raise PreflightError(
        f"{database}: this server is a Citus worker node (group {node.group_id}); migrations "
        f"run on the coordinator, which propagates them to every worker and shard. Nothing "
        f"was changed; {where}: point DATABASE_URL / database.host at it"
    )
