"""The parsed migration set of a source, read once per process while its files are unchanged.

Boot stays cheap: the engine's every `ensure_schema` call would otherwise
read and parse every file again. A directory source is re-read only when a
file's name, size or modification time changed.
"""

from __future__ import annotations

from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.source import (
    DirectorySource,
    MigrationSource,
    PackageSource,
    load_catalog,
)

_CACHE: dict[tuple[object, ...], Catalog] = {}


def _key(source: MigrationSource) -> tuple[object, ...] | None:
    if isinstance(source, PackageSource):
        return ("package", source.package)
    if isinstance(source, DirectorySource) and source.path.is_dir():
        stats = sorted(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size)
            for p in source.path.iterdir()
            if p.suffix.lower() == ".sql"  # a .SQL file added later is refused, not missed
        )
        return ("directory", str(source.path.resolve()), tuple(stats))
    return None  # another kind of source: read it every time


def cached_catalog(source: MigrationSource) -> Catalog:
    """`load_catalog(source)`, from the cache when the source cannot have changed."""
    key = _key(source)
    if key is None:
        return load_catalog(source)
    if key not in _CACHE:
        if key[0] == "directory":  # an older listing of the same directory is stale
            for old in [k for k in _CACHE if k[:2] == key[:2]]:
                del _CACHE[old]
        _CACHE[key] = load_catalog(source)
    return _CACHE[key]
