"""BackgroundWork: background migration steps in a task the engine supervises.

Boot does not wait for history: long backfills of old rows run here after
the collectors started, on a connection of their own, resumable from their
checkpoints when the task is stopped.

When another runner holds the background lock, the work is in hand, but that
runner may die. The task then stays as a watcher: every
`background_retry_interval` seconds one `pg_try_advisory_lock` round trip,
and only while background work is unfinished. The lock is session-level, so
it is released when the holder's session ends (its process killed, its host
gone: the runner's sessions check for a vanished client, session.py); the
next try takes it and resumes the work from its checkpoint. An engine that
boots with nothing pending never starts this task, so a boot pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from cex_arbitrage.db.migrator.connect import connect
from cex_arbitrage.db.migrator.failures import is_connection_lost
from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.run import background_pass
from cex_arbitrage.db.migrator.session import RunContext, applied_from
from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import MigrationError


class BackgroundWork:
    """Background migration steps running in a task; `wait` or `stop` it."""

    def __init__(
        self,
        config: DatabaseConfig,
        catalog: Catalog,
        settings: RunnerSettings,
        say: Callable[[str], None],
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.settings = settings
        self.say = say
        self.finished: list[str] = []
        # True once this task found another runner on the work and waited to take it over.
        self.watched = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] = asyncio.create_task(
            self._run(), name=f"cex-migrations-background {config.display}"
        )

    @property
    def done(self) -> bool:
        return self.task.done()

    async def _run(self) -> None:
        conn = await connect(self.config)
        ctx = RunContext(conn, self.config, self.settings, applied_from("engine"), self.say)
        try:
            while True:
                try:
                    outcome = await background_pass(
                        ctx, self.catalog, wait_for_lock=False, quiet=self.watched
                    )
                except Exception as exc:
                    if not self.watched or not is_connection_lost(exc):
                        raise
                    # Lost while only watching (a server restart): nothing was running here.
                    self.say(
                        f"{self.config.display}: connection lost while watching the "
                        f"background migration work ({type(exc).__name__}); reconnecting"
                    )
                    with contextlib.suppress(Exception):
                        conn.terminate()
                    wait = self.settings.boot_wait_timeout
                    conn = ctx.conn = await connect(self.config, wait=wait, say=self.say)
                    continue
                if outcome.elsewhere is None:
                    self.finished = outcome.done
                    return
                if not self.watched:
                    self.say(
                        f"{self.config.display}: this engine takes the background migration "
                        "work over if that runner stops (it checks every "
                        f"{self.settings.background_retry_interval:g}s)"
                    )
                    self.watched = True
                interval = self.settings.background_retry_interval
                await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        except MigrationError as exc:
            self.error = exc
            self.say(f"background migration work stopped: {exc.message}")
        except asyncio.CancelledError:
            self.say(
                f"{self.config.display}: background migration work stopped for shutdown; "
                "it resumes from its checkpoint on the next start"
            )
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=5))

    async def wait(self) -> None:
        """Until the work ends; re-raise what stopped it."""
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # the caller was cancelled, not the work: propagate
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        """Stop cleanly: committed batches stay, the rest resumes on the next start."""
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
