"""The drift report as values: what `status --drift` prints and returns as JSON (no database)."""

from __future__ import annotations

import datetime as dt

from cex_arbitrage.db.migrator.fingerprint import Drift, digest

WHEN = dt.datetime(2026, 12, 2, 23, 0, tzinfo=dt.timezone.utc)


def test_digest_depends_on_the_rows_not_their_order() -> None:
    a = {("column", "public.t.a"): "integer", ("index", "public.i"): "CREATE INDEX i"}
    b = dict(reversed(list(a.items())))
    assert digest(a) == digest(b)
    assert digest(a) != digest({**a, ("column", "public.t.a"): "bigint"})


def test_a_drift_names_each_object_and_how_it_changed() -> None:
    drift = Drift(
        recorded=True,
        recorded_at=WHEN,
        recorded_by="cex-migrate on host pid 1",
        digest="d" * 64,
        added=(("column", "public.trades.note", "text"),),
        removed=(("constraint", "public.trades CHECK ((price > (0)::numeric))", "1 (c)"),),
        changed=(("function", "public.f()", "body md5 aaa", "body md5 bbb"),),
    )
    assert drift.drifted
    text = drift.describe("db")
    assert text.splitlines()[0].startswith("db: DRIFT: 3 schema object(s) changed outside")
    assert "  added    column public.trades.note: text" in text
    assert "  removed  constraint public.trades CHECK ((price > (0)::numeric)): 1 (c)" in text
    assert "  changed  function public.f(): body md5 aaa -> body md5 bbb" in text
    data = drift.to_json()
    assert data["drifted"] is True and data["recorded_at"] == WHEN.isoformat()
    (changed,) = data["changed"]
    assert (changed["name"], changed["recorded"], changed["now"]) == (
        "public.f()",
        "body md5 aaa",
        "body md5 bbb",
    )


def test_no_fingerprint_is_unknown_not_drift() -> None:
    drift = Drift(recorded=False, recorded_at=None, recorded_by=None, digest="d" * 64)
    assert not drift.drifted
    assert "drift unknown: no schema fingerprint is recorded" in drift.describe("db")
    clean = Drift(recorded=True, recorded_at=WHEN, recorded_by="x", digest="e" * 64)
    assert clean.describe("db").startswith("db: no drift: the schema matches the fingerprint")
