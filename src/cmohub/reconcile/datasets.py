"""Build the published datasets from findings and canonical tables (pure).

* ``exceptions`` — one row per finding: a deterministic ID (rule + keys), rule code, severity,
  COI / batch / shipment, a sentence, the evidence as JSON, and the run's ``as_of`` time.
* ``coi_journey`` — one row per COI: the milestones of its journey, vein-to-vein days, where
  it stands, and how many exceptions are open on it.
* ``feed_scorecard`` — one row per configured feed: deliveries, on time, records received,
  valid, quarantined, duplicates (a feed that delivered nothing still has its row of zeros).

Rows are sorted so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from cmohub.reconcile.rules import RuleFinding

EXCEPTION_SCHEMA = pa.schema(
    [
        ("exception_id", pa.string()),
        ("rule_code", pa.string()),
        ("severity", pa.string()),
        ("coi", pa.string()),
        ("batch_id", pa.string()),
        ("shipment_id", pa.string()),
        ("description", pa.string()),
        ("evidence_json", pa.string()),
        ("detected_at", pa.timestamp("us", tz="UTC")),
    ]
)


def exception_id(finding: RuleFinding) -> str:
    """Stable across runs: the same fault keeps its ID night after night."""
    text = json.dumps([finding.rule.value, [list(k) for k in finding.key]], default=str)
    return "EXC-" + hashlib.sha256(text.encode()).hexdigest()[:16].upper()


def exceptions_table(findings: Sequence[RuleFinding], *, as_of: datetime) -> pa.Table:
    """The ``exceptions`` dataset, worst first (severity, then rule, then ID)."""
    rows = [
        {
            "exception_id": exception_id(f),
            "rule_code": f.rule.value,
            "severity": str(f.severity),
            "coi": f.coi,
            "batch_id": f.batch_id,
            "shipment_id": f.shipment_id,
            "description": f.description,
            "evidence_json": f.evidence_json(),
            "detected_at": as_of,
            "_rank": -int(f.severity),
        }
        for f in findings
    ]
    unique = {r["exception_id"]: r for r in rows}
    ordered = sorted(unique.values(), key=lambda r: (r["_rank"], r["rule_code"], r["exception_id"]))
    for row in ordered:
        del row["_rank"]
    return pa.Table.from_pylist(ordered, schema=EXCEPTION_SCHEMA)


JOURNEY_SQL = """
WITH cois AS (
    SELECT coi FROM orders UNION SELECT coi FROM collections UNION SELECT coi FROM batches
    UNION SELECT coi FROM shipments UNION SELECT coi FROM infusions UNION SELECT coi FROM releases
),
o AS (SELECT coi, min(ordered_at) AS ordered_at, min(product_code) AS product_code
      FROM orders GROUP BY coi),
c AS (SELECT coi, min(collected_at) AS collected_at FROM collections GROUP BY coi),
b AS (SELECT coi, arg_max(batch_id, started_at) AS batch_id, min(started_at) AS started_at,
             min(product_code) AS product_code
      FROM batches GROUP BY coi),
r AS (SELECT coi, min(decided_at) FILTER (WHERE decision = 'released') AS released_at,
             bool_or(decision = 'rejected') AS rejected
      FROM releases GROUP BY coi),
last_leg AS (SELECT l.shipment_id, arg_max(l.arrived_at, l.leg_no) AS arrived_at
             FROM legs l GROUP BY l.shipment_id),
first_leg AS (SELECT l.shipment_id, arg_min(l.departed_at, l.leg_no) AS departed_at
              FROM legs l GROUP BY l.shipment_id),
sm AS (SELECT s.coi, min(ll.arrived_at) AS received_at_cmo
       FROM shipments s JOIN last_leg ll USING (shipment_id)
       WHERE s.kind = 'starting_material' GROUP BY s.coi),
fp AS (SELECT s.coi, min(fl.departed_at) AS shipped_at
       FROM shipments s JOIN first_leg fl USING (shipment_id)
       WHERE s.kind = 'finished_product' GROUP BY s.coi),
i AS (SELECT coi, min(infused_at) FILTER (WHERE status = 'completed') AS infused_at
      FROM infusions GROUP BY coi),
e AS (SELECT coi, count(*) AS open_exceptions FROM exceptions WHERE coi IS NOT NULL GROUP BY coi)
SELECT cois.coi,
       coalesce(o.product_code, b.product_code) AS product_code,
       b.batch_id,
       o.ordered_at, c.collected_at, sm.received_at_cmo, b.started_at AS batch_started_at,
       r.released_at, fp.shipped_at, i.infused_at,
       round(epoch(i.infused_at - c.collected_at) / 86400.0, 2) AS vein_to_vein_days,
       CASE
         WHEN i.infused_at IS NOT NULL THEN 'infused'
         WHEN fp.shipped_at IS NOT NULL THEN 'shipped_to_site'
         WHEN r.released_at IS NOT NULL THEN 'released'
         WHEN coalesce(r.rejected, false) THEN 'rejected'
         WHEN b.started_at IS NOT NULL THEN 'in_manufacturing'
         WHEN sm.received_at_cmo IS NOT NULL THEN 'at_cmo'
         WHEN c.collected_at IS NOT NULL THEN 'collected'
         WHEN o.ordered_at IS NOT NULL THEN 'ordered'
         ELSE 'unknown'
       END AS status,
       coalesce(e.open_exceptions, 0) AS open_exception_count
FROM cois
LEFT JOIN o USING (coi) LEFT JOIN c USING (coi) LEFT JOIN b USING (coi) LEFT JOIN r USING (coi)
LEFT JOIN sm USING (coi) LEFT JOIN fp USING (coi) LEFT JOIN i USING (coi) LEFT JOIN e USING (coi)
ORDER BY cois.coi
"""

JOURNEY_VIEWS = {
    "clinical.order": "orders",
    "clinical.collection": "collections",
    "clinical.infusion": "infusions",
    "manufacturing.batch": "batches",
    "quality.release_decision": "releases",
    "logistics.shipment": "shipments",
    "logistics.shipment_leg": "legs",
}


def coi_journey_table(tables: Mapping[str, pa.Table], exceptions: pa.Table) -> pa.Table:
    """The ``coi_journey`` dataset: one row per COI seen in any canonical table."""
    con = duckdb.connect(database=":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        for dataset, view in JOURNEY_VIEWS.items():
            con.register(view, tables[dataset])
        con.register("exceptions", exceptions)
        return con.sql(JOURNEY_SQL).to_arrow_table()
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class FeedActivity:
    """What one feed did in the period: from the run ledgers and the file registry."""

    feed: str
    deliveries: int = 0
    deliveries_on_time: int = 0
    received: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates: int = 0


SCORECARD_SCHEMA = pa.schema(
    [
        ("feed", pa.string()),
        ("deliveries", pa.int64()),
        ("deliveries_on_time", pa.int64()),
        ("records_received", pa.int64()),
        ("records_valid", pa.int64()),
        ("records_quarantined", pa.int64()),
        ("records_duplicate", pa.int64()),
    ]
)


def feed_scorecard_table(configured: Sequence[str], activity: Sequence[FeedActivity]) -> pa.Table:
    """One row per configured feed (and per active feed not configured), by feed name."""
    merged: dict[str, FeedActivity] = {name: FeedActivity(name) for name in configured}
    for item in activity:
        seen = merged.get(item.feed, FeedActivity(item.feed))
        merged[item.feed] = FeedActivity(
            item.feed,
            seen.deliveries + item.deliveries,
            seen.deliveries_on_time + item.deliveries_on_time,
            seen.received + item.received,
            seen.valid + item.valid,
            seen.quarantined + item.quarantined,
            seen.duplicates + item.duplicates,
        )
    rows = [
        {
            "feed": a.feed,
            "deliveries": a.deliveries,
            "deliveries_on_time": a.deliveries_on_time,
            "records_received": a.received,
            "records_valid": a.valid,
            "records_quarantined": a.quarantined,
            "records_duplicate": a.duplicates,
        }
        for _, a in sorted(merged.items())
    ]
    return pa.Table.from_pylist(rows, schema=SCORECARD_SCHEMA)
