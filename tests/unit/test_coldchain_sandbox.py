"""The cold-chain rules on a generated program, read from its files: exactly truth.json's
TEMPERATURE_EXCURSION, LOGGER_GAP and CUSTODY_GAP faults, and nothing on a clean program.

The files go through the same parsers and mappings as the logistics pipeline (EPCIS
documents, courier shipment JSON, logger CSVs in °F with local times), without a lake or a
vault: COIs are checked against the sponsor's enrollment register instead.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from cmohub.coldchain import (
    Directory,
    SiteIds,
    build_custody_ledger,
    detect_excursions,
    detect_logger_gaps,
)
from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.store import load_contract, load_product_catalog
from cmohub.contracts.validate import validate_table
from cmohub.formats.epcis import (
    mapping_record,
    parse_epcis_document,
    resolve_events,
    sensor_readings,
)
from cmohub.formats.loggers import parse_logger_csv
from cmohub.identity import Actor, CoiStatus
from cmohub.mapping import SourceRecord, apply_mapping, compile_mapping, read_records
from cmohub.mapping.identity import resolve_identities
from cmohub.mapping.store import load_mapping
from cmohub.sandbox.generate import generate_program

ACTOR = Actor("test", "service")
RULES = ("TEMPERATURE_EXCURSION", "LOGGER_GAP", "CUSTODY_GAP")
UTC_US = pa.timestamp("us", tz="UTC")


class Register:
    """COIs the sponsor enrolled are known; any other is unknown."""

    def __init__(self, program: Path) -> None:
        lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
        self.cois = {json.loads(line)["coi"] for line in lines if line.strip()}

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN if c in self.cois else CoiStatus.UNKNOWN for c in cois]

    def tokenize_many(self, requests: Sequence[object], *, actor: Actor) -> list[object]:
        raise AssertionError("logistics feeds never tokenize")


@dataclass
class ProgramTables:
    shipments: pa.Table
    legs: pa.Table
    custody: pa.Table
    readings: pa.Table
    directory: Directory
    quarantined: dict[str, int]


def _mapped(
    name: str, payloads: list[tuple[bytes, list[SourceRecord]]], port: Register
) -> pa.Table:
    compiled = compile_mapping(load_mapping(name))
    rows: list[dict[str, object]] = []
    for number, (_, records) in enumerate(payloads):
        result = apply_mapping(compiled, records, run_id="t", source_sha256=f"{number:064x}")
        rows.extend(resolve_identities(result, port, actor=ACTOR).canonical_rows())
    return rows_to_table(rows, load_contract(compiled.spec.dataset))


def read_program(program: Path) -> ProgramTables:
    port = Register(program)
    quarantined: dict[str, int] = {}
    custody_payloads: list[tuple[bytes, list[SourceRecord]]] = []
    columns: dict[str, list[object]] = {
        "logger_id": [],
        "shipment_id": [],
        "observed_at": [],
        "celsius": [],
    }
    compiled = compile_mapping(load_mapping("logistics-epcis-custody"))
    for path in sorted((program / "epcis").glob("*.jsonld")):
        document = parse_epcis_document(path.read_bytes())
        assert not document.rejected
        kept = resolve_events(document.events).kept
        records = [
            SourceRecord(e.locator, mapping_record(e)) for e in kept if not e.is_sensor_event
        ]
        result = resolve_identities(
            apply_mapping(compiled, records, run_id="t", source_sha256="0" * 64), port, actor=ACTOR
        )
        for rejected in result.rejected:
            code = rejected.issues[0].code
            quarantined[code] = quarantined.get(code, 0) + 1
        custody_payloads.append((b"", [SourceRecord(r.locator, r.values) for r in result.rows]))
        readings = sensor_readings([e for e in kept if e.is_sensor_event])
        columns["logger_id"] += readings.logger_id
        columns["shipment_id"] += readings.shipment_id
        columns["observed_at"] += readings.observed_at
        columns["celsius"] += readings.celsius
    custody_rows = [dict(r.data) for _, records in custody_payloads for r in records]
    custody = rows_to_table(custody_rows, load_contract("logistics.custody_event"))
    tables = [
        pa.table(
            {
                "logger_id": pa.array(columns["logger_id"], pa.string()),
                "shipment_id": pa.array(columns["shipment_id"], pa.string()),
                "observed_at": pa.array(columns["observed_at"], pa.int64()).cast(UTC_US),
                "celsius": pa.array(columns["celsius"], pa.float64()),
            }
        )
    ]
    for path in sorted((program / "courier").glob("*/loggers/*/*.csv")):
        parsed = parse_logger_csv(path.read_bytes())
        assert not parsed.rejected
        tables.append(
            pa.table(
                {
                    "logger_id": parsed.logger_id,
                    "shipment_id": parsed.shipment_id,
                    "observed_at": parsed.observed_at,
                    "celsius": parsed.celsius,
                }
            )
        )
    shipment_payloads = []
    leg_payloads = []
    for path in sorted((program / "courier").glob("*/shipments/*.json")):
        data = path.read_bytes()
        shipment_payloads.append(
            (data, list(read_records(load_mapping("logistics-courier-shipments").source, data)))
        )
        leg_payloads.append(
            (data, list(read_records(load_mapping("logistics-courier-legs").source, data)))
        )
    with (program / "master" / "sites.csv").open(encoding="utf-8") as handle:
        sites = {
            row["fin"]: SiteIds(
                row["fin"], row["sgln"], row["pgln"], row["site_name"], row["time_zone"]
            )
            for row in csv.DictReader(handle)
        }
    return ProgramTables(
        shipments=_mapped("logistics-courier-shipments", shipment_payloads, port),
        legs=_mapped("logistics-courier-legs", leg_payloads, port),
        custody=custody,
        readings=pa.concat_tables(tables),
        directory=Directory(sites),
        quarantined=quarantined,
    )


def found(tables: ProgramTables) -> set[tuple[str, str]]:
    products = {code: entry.product for code, entry in load_product_catalog().items()}
    excursions = detect_excursions(tables.readings, tables.legs, tables.shipments, products)
    gaps = detect_logger_gaps(tables.readings, tables.legs)
    ledger = build_custody_ledger(tables.custody, tables.shipments, tables.legs, tables.directory)
    return (
        {("TEMPERATURE_EXCURSION", s) for s in excursions.exceeded()}
        | {("LOGGER_GAP", logger) for logger in gaps.loggers()}
        | {("CUSTODY_GAP", s) for s in ledger.exceptions("CUSTODY_GAP")}
        | {("CUSTODY_WRONG_SITE", s) for s in ledger.exceptions("CUSTODY_WRONG_SITE")}
    )


def planted(truth: dict[str, object]) -> set[tuple[str, str]]:
    out = set()
    for fault in truth["faults"]:  # type: ignore[attr-defined]
        key = fault["key"]
        if fault["rule"] in ("TEMPERATURE_EXCURSION", "CUSTODY_GAP"):
            out.add((fault["rule"], key["shipment_id"]))
        elif fault["rule"] == "LOGGER_GAP":
            out.add((fault["rule"], key["logger_id"]))
    return out


@pytest.fixture(scope="module")
def program_tables(sandbox_program: Path) -> ProgramTables:
    return read_program(sandbox_program)


def test_the_rules_find_exactly_the_planted_cold_chain_faults(
    sandbox_program: Path, program_tables: ProgramTables
) -> None:
    truth = json.loads((sandbox_program / "truth.json").read_text())
    expected = planted(truth)
    assert {rule for rule, _ in expected} == set(RULES)  # every rule is exercised
    assert found(program_tables) == expected  # precision and recall 1.0


def test_files_read_into_exactly_the_rows_truth_counts(
    sandbox_program: Path, program_tables: ProgramTables
) -> None:
    counts = json.loads((sandbox_program / "truth.json").read_text())["counts"]
    datasets = counts["datasets"]
    assert program_tables.custody.num_rows == datasets["logistics.custody_event"]
    assert program_tables.readings.num_rows == datasets["logistics.temperature_reading"]
    assert program_tables.shipments.num_rows == datasets["logistics.shipment"]
    assert program_tables.legs.num_rows == datasets["logistics.shipment_leg"]
    assert program_tables.quarantined == {
        "COI_CHECK_INVALID": counts["quarantined"]["COI_CHECK_INVALID"]
    }


def test_the_excursion_episode_is_a_valid_row_of_the_published_dataset(
    sandbox_program: Path, program_tables: ProgramTables
) -> None:
    truth = json.loads((sandbox_program / "truth.json").read_text())
    fault = next(f for f in truth["faults"] if f["rule"] == "TEMPERATURE_EXCURSION")
    products = {code: entry.product for code, entry in load_product_catalog().items()}
    report = detect_excursions(
        program_tables.readings, program_tables.legs, program_tables.shipments, products
    )
    (episode,) = report.episodes.to_pylist()
    key = fault["key"]
    assert (episode["shipment_id"], episode["leg_no"], episode["logger_id"], episode["coi"]) == (
        key["shipment_id"],
        key["leg_no"],
        key["logger_id"],
        key["coi"],
    )
    minutes = int(fault["detail"].split(" minutes")[0])
    assert episode["duration_minutes"] == minutes and episode["state"] == "closed"
    assert episode["budget_minutes_left"] == episode["budget_minutes"] - minutes < 0
    outcome = validate_table(report.episodes, load_contract("excursions"), run_id="t")
    assert outcome.report.counts.valid == 1, [
        c.check_id for c in outcome.report.checks if not c.success
    ]


def test_a_clean_program_breaks_no_cold_chain_rule(tmp_path: Path) -> None:
    program = tmp_path / "clean"
    generate_program(
        program, patients=40, days=30, seed=3, start=date(2026, 1, 5), faults=frozenset()
    )
    assert found(read_program(program)) == set()
