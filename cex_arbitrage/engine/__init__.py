"""The engine's lifecycle: startup hooks (schema first), then the collectors, then a clean stop.

Boot order matters: no collector may write before `ensure_schema()` has made
the schema current for the enabled features, so ensure_schema is the first
startup hook and a hook that raises stops the boot before any collector
starts. Stopping (SIGINT/SIGTERM, or the end of a replay) flushes every
buffered record, stops background migration work at a checkpoint it resumes
from, and closes the pool.

Modules: `lifecycle` (the Engine), `hooks` (startup hooks), `sources` (the
feeds), `ohlcv` (reading the OHLCV aggregates).
"""

from __future__ import annotations

from cex_arbitrage.engine.hooks import StartupHook, StartupHooks
from cex_arbitrage.engine.lifecycle import BOOK_TICKERS as BOOK_TICKERS
from cex_arbitrage.engine.lifecycle import TRADE_FEATURE, Engine
from cex_arbitrage.engine.lifecycle import TRADES as TRADES
from cex_arbitrage.engine.ohlcv import fetch_ohlcv
from cex_arbitrage.engine.sources import EngineSources

__all__ = [
    "TRADE_FEATURE",
    "Engine",
    "EngineSources",
    "StartupHook",
    "StartupHooks",
    "fetch_ohlcv",
]
