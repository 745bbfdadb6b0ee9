"""cex_arbitrage: market-data collectors and the schema lifecycle that guards them."""

__version__ = "0.3.0"
__all__ = ["__version__"]
