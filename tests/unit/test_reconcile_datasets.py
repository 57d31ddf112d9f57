from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.contracts.validate import validate_table
from cmohub.reconcile.datasets import (
    FeedActivity,
    coi_journey_table,
    exception_id,
    exceptions_table,
    feed_scorecard_table,
)
from cmohub.reconcile.rules import evaluate_table_rules
from cmohub.sandbox.faults import Fault
from cmohub.sandbox.program import Journey, ProgramConfig
from cmohub.sandbox.tables import build_journeys, canonical_tables

AS_OF = datetime(2026, 4, 1, tzinfo=UTC)


def logistics(journeys: list[Journey]) -> dict[str, pa.Table]:
    def table(dataset: str, records: list[object]) -> pa.Table:
        rows = [
            {**r.model_dump(), "_feed": "s", "_run_id": "s", "_source_ref": "s"} for r in records
        ]  # type: ignore[attr-defined]
        return rows_to_table(rows, load_contract(dataset))

    return {
        "logistics.shipment": table(
            "logistics.shipment", [p.shipment for j in journeys for p in (j.starting, j.finished)]
        ),
        "logistics.shipment_leg": table(
            "logistics.shipment_leg",
            [leg.leg for j in journeys for p in (j.starting, j.finished) for leg in p.legs],
        ),
    }


def program(faults: frozenset[Fault]) -> tuple[dict[str, pa.Table], list[Journey]]:
    builder, journeys = build_journeys(
        ProgramConfig(patients=120, days=30, seed=5, start=date(2026, 1, 5), faults=faults)
    )
    return {**canonical_tables(builder, journeys), **logistics(journeys)}, journeys


def test_published_tables_satisfy_their_contracts_and_rank_the_worst_first() -> None:
    tables, journeys = program(frozenset(Fault))
    findings = evaluate_table_rules(tables, load_product_catalog())
    exceptions = exceptions_table(findings, as_of=AS_OF)
    journey = coi_journey_table(tables, exceptions)
    for dataset, data in (("exceptions", exceptions), ("coi_journey", journey)):
        report = validate_table(data, load_contract(dataset), run_id="t").report
        assert report.counts.quarantined == 0, (dataset, report.to_dict()["checks"])
    ranks = {"critical": 3, "major": 2, "minor": 1, "info": 0}
    severities = [ranks[s] for s in exceptions.column("severity").to_pylist()]
    assert severities == sorted(severities, reverse=True)
    assert journey.num_rows == len(journeys)
    counted = dict(
        zip(
            journey.column("coi").to_pylist(),
            journey.column("open_exception_count").to_pylist(),
            strict=True,
        )
    )
    for coi in {c for c in exceptions.column("coi").to_pylist() if c}:
        assert counted[coi] >= 1


def test_exception_ids_are_stable_across_runs() -> None:
    tables, _ = program(frozenset(Fault))
    first = evaluate_table_rules(tables, load_product_catalog())
    second = evaluate_table_rules(tables, load_product_catalog())
    assert [exception_id(f) for f in first] == [exception_id(f) for f in second]
    assert len({exception_id(f) for f in first}) == len(first)


def test_journey_milestones_are_in_order_and_vein_to_vein_is_measured() -> None:
    tables, _ = program(frozenset())
    journey = coi_journey_table(tables, exceptions_table([], as_of=AS_OF)).to_pylist()
    assert {row["status"] for row in journey} == {"infused"}
    for row in journey:
        milestones = [
            row[k]
            for k in (
                "ordered_at",
                "collected_at",
                "received_at_cmo",
                "batch_started_at",
                "released_at",
                "shipped_at",
                "infused_at",
            )
        ]
        assert milestones == sorted(milestones)
        assert 0 < row["vein_to_vein_days"] < 35


def test_a_feed_that_did_not_deliver_still_has_its_row() -> None:
    table = feed_scorecard_table(
        ["cmo-acme-batches", "cmo-borealis-batch-record"],
        [
            FeedActivity(
                "cmo-acme-batches",
                deliveries=2,
                deliveries_on_time=2,
                received=5,
                valid=4,
                quarantined=1,
            )
        ],
    ).to_pylist()
    assert [r["feed"] for r in table] == ["cmo-acme-batches", "cmo-borealis-batch-record"]
    assert table[1]["deliveries"] == 0 and table[1]["records_received"] == 0
    assert table[0]["records_quarantined"] == 1
