"""Validation against a contract: the split into valid, quarantined and duplicate rows."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cmohub.contracts import gx
from cmohub.contracts.checks import compile_checks
from cmohub.contracts.quarantine import quarantine_path, save_report, write_quarantine
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef, ValidationReport
from cmohub.contracts.store import load_contract
from cmohub.contracts.validate import validate_table
from cmohub.identifiers import Coi, Din
from cmohub.lake import Lake

SHA = "ab" * 32
COI = str(Coi("A9990", "26", "AB12C3"))
OTHER_COI = str(Coi("A9991", "26", "ZZ9Y8X"))
DIN = str(Din("A9993", "26", "000019"))
AS_OF = datetime(2026, 3, 2, tzinfo=UTC)
# Canaries: values that must never show up in a report or a quarantine file.
CANARY_COI = "CHA999026CANARYQ"  # right shape, wrong check character
CANARY_TEXT = "CANARY-PATIENT-7731"


def batch_row(n: int, **changes: Any) -> dict[str, Any]:
    row = {
        "batch_id": f"ACM-26-{n:05d}",
        "coi": COI,
        "din": DIN,
        "cmo": "A9996",
        "product_code": "SBX-CART-01",
        "started_at": "2026-01-11T17:29:00-05:00",
        "completed_at": "2026-01-19T22:31:00-05:00",
        "status": "complete",
        "_feed": "cmo-acme-batches",
        "_run_id": "run-1",
        "_source_ref": f"{SHA}#row={n}",
    }
    row.update(changes)
    return row


def validate_batches(rows: list[dict[str, Any]], **kwargs: Any) -> Any:
    return validate_table(
        pd.DataFrame(rows), load_contract("manufacturing.batch"), run_id="run-1", **kwargs
    )


def test_clean_rows_are_all_valid_and_typed_by_the_arrow_schema() -> None:
    outcome = validate_batches([batch_row(1), batch_row(2)])
    assert outcome.report.passed
    assert outcome.report.counts.valid == 2 and not outcome.quarantined
    assert outcome.valid.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    first = outcome.valid.to_pylist()[0]
    assert first["started_at"] == datetime(2026, 1, 11, 22, 29, tzinfo=UTC)


def test_each_failing_row_is_quarantined_with_every_reason_and_its_source() -> None:
    rows = [
        batch_row(1),
        batch_row(2, coi=CANARY_COI),  # check character wrong
        batch_row(3, status="weird", started_at="2026-01-11T17:29:00"),  # code list + naive
        batch_row(4, started_at="not a time"),
        batch_row(5, din=None),
    ]
    outcome = validate_batches(rows)
    report = outcome.report
    assert (report.counts.received, report.counts.valid, report.counts.quarantined) == (5, 1, 4)
    assert report.counts.balanced and not report.passed
    by_locator = {e.source.locator: e for e in outcome.quarantined if e.source}
    assert by_locator["row=2"].code == "COI_CHECK_INVALID"
    assert [r.code for r in by_locator["row=3"].reasons] == [
        "CONTRACT_TIMEZONE",
        "CONTRACT_VALUE_SET",
    ]
    assert by_locator["row=4"].code == "CONTRACT_TYPE"
    assert by_locator["row=5"].reasons[0] == Reason("CONTRACT_REQUIRED", "din.required", "din")
    assert by_locator["row=2"].source == SourceRef(SHA, "row=2")
    assert dict(report.quarantine_reasons) == {
        "COI_CHECK_INVALID": 1,
        "CONTRACT_TIMEZONE": 1,
        "CONTRACT_TYPE": 1,
        "CONTRACT_REQUIRED": 1,
    }
    failed = {c.check_id: c.unexpected_count for c in report.checks if not c.success}
    assert failed["coi.check_character"] == 1 and failed["status.value_set"] == 1


def test_exact_copies_are_duplicates_and_differing_rows_with_one_key_conflict() -> None:
    rows = [
        batch_row(1),
        batch_row(2, _source_ref=f"{SHA}#row=2"),
        batch_row(1, _source_ref=f"{SHA}#row=3"),  # the same batch again: a duplicate
        batch_row(7, _source_ref=f"{SHA}#row=4"),
        batch_row(7, status="aborted", _source_ref=f"{SHA}#row=5"),  # same key, new content
    ]
    outcome = validate_batches(rows)
    counts = outcome.report.counts
    assert (counts.received, counts.valid, counts.quarantined, counts.duplicates) == (5, 2, 2, 1)
    assert {e.code for e in outcome.quarantined} == {"CONTRACT_KEY_CONFLICT"}
    assert {e.key for e in outcome.quarantined} == {(("batch_id", "ACM-26-00007"),)}


def test_rejected_upstream_records_count_in_the_same_report() -> None:
    upstream = [
        QuarantineEntry(
            "manufacturing.batch",
            SourceRef(SHA, "row=9"),
            (Reason("MAPPING_RECORD_MALFORMED", "mapping:cmo-acme-batches", None),),
        )
    ]
    outcome = validate_batches([batch_row(1)], upstream=upstream, upstream_duplicates=2)
    counts = outcome.report.counts
    assert (counts.received, counts.valid, counts.quarantined, counts.duplicates) == (4, 1, 1, 2)
    assert counts.balanced


def test_columns_outside_the_contract_are_never_staged() -> None:
    outcome = validate_batches([batch_row(1, patient_name=CANARY_TEXT)])
    assert "patient_name" not in outcome.valid.column_names
    finding = next(f for f in outcome.report.findings if f.code == "CONTRACT_COLUMN_UNEXPECTED")
    assert finding.column == "patient_name"
    assert CANARY_TEXT not in outcome.report.to_json()


def test_a_missing_required_column_fails_the_delivery() -> None:
    rows = [{k: v for k, v in batch_row(1).items() if k != "product_code"}]
    outcome = validate_batches(rows)
    assert not outcome.report.passed
    assert any(f.code == "CONTRACT_COLUMN_MISSING" for f in outcome.report.findings)
    assert outcome.report.counts.valid == 0


def readings(n: int, *, start: datetime = datetime(2026, 3, 1, tzinfo=UTC)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "logger_id": ["LG-1"] * n,
            "shipment_id": [None] * n,
            "observed_at": pd.Series([start + timedelta(minutes=i) for i in range(n)]),
            "celsius": np.full(n, -180.0, dtype="float32"),
            "_feed": ["courier"] * n,
            "_run_id": ["run-1"] * n,
            "_source_ref": [f"{SHA}#row={i + 1}" for i in range(n)],
        }
    )


def test_float32_values_are_range_checked_and_staged_as_float64() -> None:
    frame = readings(4)
    frame.loc[2, "celsius"] = np.float32(99.5)
    outcome = validate_table(
        frame, load_contract("logistics.temperature_reading"), run_id="run-1", as_of=AS_OF
    )
    assert outcome.report.counts.quarantined == 1
    assert outcome.quarantined[0].code == "CONTRACT_RANGE"
    assert outcome.valid.schema.field("celsius").type == pa.float64()


def test_table_level_rules_become_feed_findings_not_quarantine() -> None:
    contract = load_contract("logistics.temperature_reading")
    stale = validate_table(readings(3), contract, run_id="run-1", as_of=AS_OF + timedelta(days=5))
    assert [f.code for f in stale.report.findings] == ["FEED_STALE"]
    assert stale.report.counts.valid == 3  # freshness is a warning: rows still stage
    assert stale.report.passed
    empty = validate_table(readings(0), contract, run_id="run-1", as_of=AS_OF)
    assert "FEED_ROW_COUNT" in [f.code for f in empty.report.findings]
    unknown_time = validate_table(readings(2), contract, run_id="run-1")
    fresh = next(c for c in unknown_time.report.checks if c.rule == "freshness")
    assert not fresh.evaluated


def test_dates_booleans_and_integers_are_read_from_text() -> None:
    contract = load_contract("manufacturing.deviation")
    row = {
        "deviation_id": "DEV-1",
        "batch_id": "ACM-26-00001",
        "opened_at": "2026-02-08T17:24:00-05:00",
        "closed_at": None,
        "classification": "minor",
        "patient_impact": "N",
        "status": "open",
        "category": "material",
        "_feed": "f",
        "_run_id": "r",
        "_source_ref": f"{SHA}#row=1",
    }
    bad = {**row, "deviation_id": "DEV-2", "patient_impact": "maybe", "_source_ref": f"{SHA}#row=2"}
    outcome = validate_table(pd.DataFrame([row, bad]), contract, run_id="r")
    assert outcome.valid.to_pylist()[0]["patient_impact"] is False
    assert outcome.quarantined[0].code == "CONTRACT_TYPE"
    lots = validate_table(
        pd.DataFrame(
            [
                {
                    "material_code": "MAT-1",
                    "lot_number": "L1",
                    "supplier": "S",
                    "expiry_on": "2026-04-05",
                    "_feed": "f",
                    "_run_id": "r",
                    "_source_ref": f"{SHA}#row=1",
                }
            ]
        ),
        load_contract("master.reagent_lot"),
        run_id="r",
    )
    assert lots.valid.to_pylist()[0]["expiry_on"] == date(2026, 4, 5)


def test_validation_results_never_carry_values_of_classified_columns() -> None:
    rows = [
        batch_row(1, coi=CANARY_COI, din="A99932600CANARY"),
        batch_row(2, batch_id="ACM 26 bad", status=CANARY_TEXT),
        batch_row(3, coi=CANARY_TEXT),
    ]
    outcome = validate_batches(rows)
    written = outcome.report.to_json() + json.dumps(
        [e.to_dict(run_id="run-1", feed="f") for e in outcome.quarantined]
    )
    for canary in (CANARY_COI, CANARY_TEXT, "CANARY"):
        assert canary not in written
    # Great Expectations' own result object, under the result format the hub uses.
    frame = pd.DataFrame(rows)
    raw = json.dumps(
        gx.raw_results_for_test(frame, compile_checks(load_contract("manufacturing.batch")))
    )
    assert "CANARY" not in raw
    assert "partial_unexpected_list" not in raw


def test_gx_default_result_format_would_leak_the_canary() -> None:
    # Why the hub overrides the result format: under SUMMARY, GX returns unexpected values.
    frame = pd.DataFrame([batch_row(1, coi=CANARY_COI)])
    checks = [c for c in compile_checks(load_contract("manufacturing.batch")) if c.column == "coi"]
    leaky = dict(gx.RESULT_FORMAT, result_format="SUMMARY", partial_unexpected_count=20)
    leaky.pop("exclude_unexpected_values")
    original = dict(gx.RESULT_FORMAT)
    try:
        gx.RESULT_FORMAT.clear()
        gx.RESULT_FORMAT.update(leaky)
        raw = json.dumps(gx.raw_results_for_test(frame, checks))
    finally:
        gx.RESULT_FORMAT.clear()
        gx.RESULT_FORMAT.update(original)
    assert CANARY_COI in raw


def test_report_round_trips_through_json_and_is_saved_per_run(tmp_path: Path) -> None:
    outcome = validate_batches([batch_row(1), batch_row(2, coi=CANARY_COI)], feed="cmo-acme")
    again = ValidationReport.from_dict(json.loads(outcome.report.to_json()))
    assert again == outcome.report
    lake = Lake(tmp_path)
    saved = save_report(lake, outcome.report)
    assert json.loads(saved.read_text())["counts"]["balanced"] is True
    written = write_quarantine(
        lake, outcome.quarantined, feed="cmo-acme", day=date(2026, 1, 20), run_id="run-1"
    )
    assert written == quarantine_path(lake, feed="cmo-acme", day=date(2026, 1, 20), run_id="run-1")
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert lines == [
        {
            "run_id": "run-1",
            "feed": "cmo-acme",
            "dataset": "manufacturing.batch",
            "code": "COI_CHECK_INVALID",
            "rule": "coi.check_character",
            "field": "coi",
            "reasons": [
                {"code": "COI_CHECK_INVALID", "rule": "coi.check_character", "field": "coi"}
            ],
            "source_sha256": SHA,
            "source_locator": "row=2",
            "key": {"batch_id": "ACM-26-00002"},
        }
    ]
    assert CANARY_COI not in written.read_text()
    assert write_quarantine(lake, [], feed="f", day=date(2026, 1, 20), run_id="run-1") is None


def test_arrow_tables_are_accepted_as_input() -> None:
    table = pa.Table.from_pylist([batch_row(1)])
    outcome = validate_table(table, load_contract("manufacturing.batch"), run_id="r")
    assert outcome.report.counts.valid == 1


def test_as_of_must_be_timezone_aware() -> None:
    from cmohub.errors import ContractError

    with pytest.raises(ContractError, match="as_of"):
        validate_batches([batch_row(1)], as_of=datetime(2026, 3, 1))  # noqa: DTZ001


def test_dropping_rows_keeps_order_with_slices_or_one_filtered_copy() -> None:
    from cmohub.contracts.validate import without_rows

    table = pa.table({"n": list(range(10_000))})
    few = np.zeros(10_000, dtype=bool)
    few[[0, 5000, 9999]] = True
    sliced = without_rows(table, few)
    assert sliced["n"].num_chunks > 1  # zero-copy slices of the staged table
    assert sliced["n"].to_pylist() == [n for n in range(10_000) if n not in (0, 5000, 9999)]
    every_other = np.arange(10_000) % 2 == 0
    filtered = without_rows(table, every_other)
    assert filtered["n"].to_pylist() == list(range(1, 10_000, 2))
    assert without_rows(table, np.ones(10_000, dtype=bool)).num_rows == 0
    assert without_rows(table, np.zeros(10_000, dtype=bool)) is table
