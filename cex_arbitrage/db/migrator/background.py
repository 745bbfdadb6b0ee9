"""BackgroundWork: background migration steps in a task the engine supervises.

Boot does not wait for history: long backfills of old rows run here after
the collectors started, on a connection of their own, resumable from their
checkpoints when the task is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cex_arbitrage.db.migrator.connect import connect
from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.run import run_background_steps
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
            self.finished = await run_background_steps(ctx, self.catalog, wait_for_lock=False)
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
