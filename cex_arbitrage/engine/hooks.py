"""Startup hooks: the ordered registry, and the two the engine registers itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import asyncpg

from cex_arbitrage.db.migrations import ensure_schema

if TYPE_CHECKING:
    from cex_arbitrage.engine.lifecycle import Engine

log = logging.getLogger("cex_arbitrage.engine")

StartupHook = Callable[["Engine"], Awaitable[None]]
"""An async callable run at boot with the engine; raising stops the boot."""


class StartupHooks:
    """Named startup hooks run in order; plugins insert theirs relative to others.

    The engine registers `ensure_schema` then `open_pool`; a plugin usually
    appends (after the schema is current and `engine.pool` is open), and may
    place a hook `before=` or `after=` a named one.
    """

    def __init__(self) -> None:
        self._hooks: list[tuple[str, StartupHook]] = []

    def register(
        self,
        name: str,
        hook: StartupHook,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Add `hook` at the end, or just before/after the hook named so."""
        if name in self.names():
            raise ValueError(f"a startup hook named {name!r} is already registered")
        if before is not None and after is not None:
            raise ValueError("give before= or after=, not both")
        anchor = before if before is not None else after
        if anchor is None:
            self._hooks.append((name, hook))
            return
        if anchor not in self.names():
            raise ValueError(f"no startup hook named {anchor!r}; registered: {self.names()}")
        index = self.names().index(anchor) + (0 if before is not None else 1)
        self._hooks.insert(index, (name, hook))

    def names(self) -> list[str]:
        """The registered hooks' names, in the order they run."""
        return [name for name, _ in self._hooks]

    def __iter__(self) -> Iterator[tuple[str, StartupHook]]:
        return iter(list(self._hooks))


async def _ensure_schema(engine: Engine) -> None:
    """Startup hook 1: the schema is current for the enabled features, or boot stops."""
    report = await ensure_schema(
        engine.config.database,
        features=dict(engine.config.features),
        settings=engine.config.migrations,
        source=engine.migration_source,
    )
    engine.schema = report
    log.info(
        "schema current on %s: %s",
        engine.database,
        f"applied {', '.join(report.applied)}" if report.applied else "nothing to apply",
    )
    if report.background is not None:
        engine._supervisors.append(asyncio.create_task(engine._supervise_background()))


async def _open_pool(engine: Engine) -> None:
    """Startup hook 2: the pool the writers (and later hooks) share."""
    database = engine.config.database
    engine.pool = await asyncpg.create_pool(
        **database.connect_kwargs(),
        min_size=min(database.pool_min_size, database.pool_max_size),
        max_size=database.pool_max_size,
    )
    log.info(
        "connection pool open on %s (%d..%d connections)",
        engine.database,
        database.pool_min_size,
        database.pool_max_size,
    )
