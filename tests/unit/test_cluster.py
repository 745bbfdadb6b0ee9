"""How a Citus node is described, and which nodes pre-flight refuses (no database)."""

from __future__ import annotations

import pytest

from cex_arbitrage.db.migrator.cluster import CitusNode, refuse_worker
from cex_arbitrage.errors import ExitCode, PreflightError


def test_a_coordinator_is_described_and_allowed() -> None:
    node = CitusNode(version="13.2-1", group_id=0, workers=2, coordinator="db1:5432")
    assert node.describe() == "Citus 13.2-1 coordinator, 2 active worker nodes"
    refuse_worker(node, "db")  # no error


@pytest.mark.parametrize(
    ("coordinator", "named"),
    [("db1:5432", "the coordinator is db1:5432"), (None, "does not name the coordinator")],
)
def test_a_worker_is_refused_with_exit_7(coordinator: str | None, named: str) -> None:
    node = CitusNode(version="13.2-1", group_id=3, workers=1, coordinator=coordinator)
    assert node.describe() == "Citus 13.2-1 worker (group 3), 1 active worker node"
    with pytest.raises(PreflightError) as refused:
        refuse_worker(node, "u@w2:5432/app")
    assert refused.value.exit_code == ExitCode.PERMISSION
    assert "is a Citus worker node (group 3)" in refused.value.message
    assert named in refused.value.message
