"""The generated tree: determinism, truth.json, and what each feed may and may not carry."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cmohub.errors import ConfigError
from cmohub.identifiers import validate_coi
from cmohub.reconcile.catalog import RuleCode
from cmohub.sandbox.faults import Fault
from cmohub.sandbox.generate import generate_program

PATIENTS = 40


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sandbox") / "program"
    generate_program(out, patients=PATIENTS, days=20, seed=5)
    return out


@pytest.fixture(scope="module")
def truth(program: Path) -> dict[str, Any]:
    return json.loads((program / "truth.json").read_text())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def faults_of(truth: dict[str, Any], rule: RuleCode) -> list[dict[str, Any]]:
    return [f for f in truth["faults"] if f["rule"] == rule.value]


def csv_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    delimiter = ";" if "/A9997/" in str(path) else ","
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def files_under(root: Path, *folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from (p for p in sorted((root / folder).rglob("*")) if p.is_file())


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(
    program: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    generate_program(again, patients=PATIENTS, days=20, seed=5)
    assert tree_digest(again) == tree_digest(program)
    other = tmp_path / "other"
    generate_program(other, patients=PATIENTS, days=20, seed=6)
    assert tree_digest(other) != tree_digest(program)


def test_truth_names_a_catalog_rule_and_a_key_for_every_fault(truth: dict[str, Any]) -> None:
    assert truth["faults"], "the default program plants faults"
    for fault in truth["faults"]:
        assert Fault(fault["fault"])
        assert RuleCode(fault["rule"])
        assert fault["key"] and fault["detail"]
    planted = {f["fault"] for f in truth["faults"]}
    assert planted == {f.value for f in Fault}, "40 patients host every fault once"
    assert sum(truth["faults_by_rule"].values()) == len(truth["faults"])
    assert truth["not_planted"] == {}


def test_enrollment_register_has_one_valid_coi_per_therapy_event(
    program: Path, truth: dict[str, Any]
) -> None:
    records = [json.loads(line) for line in lines(program / "sponsor/enrollments.ndjson")]
    assert len(records) == PATIENTS == truth["counts"]["patients"]
    cois = [r["coi"] for r in records]
    assert len(set(cois)) == PATIENTS and all(validate_coi(c) is None for c in cois)
    assert len({r["therapy_event"] for r in records}) == PATIENTS
    assert all(r["subject"]["value"].startswith("SBX-MRN-") for r in records)
    unknown = {f["key"]["coi"] for f in faults_of(truth, RuleCode.COI_UNKNOWN)}
    assert unknown and not unknown & set(cois)


def test_feeds_carry_the_identifier_their_side_knows(program: Path) -> None:
    records = [json.loads(line) for line in lines(program / "sponsor/enrollments.ndjson")]
    cois = {r["coi"] for r in records}
    mrns = {r["subject"]["value"] for r in records}
    clinical = "".join(p.read_text(errors="replace") for p in files_under(program, "clinical"))
    assert not any(c in clinical for c in cois), "clinical feeds carry MRNs, not COIs"
    assert all(m in clinical for m in mrns)
    manufacturing = "".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in files_under(program, "cmo", "courier", "epcis")
    )
    assert "SBX-MRN-" not in manufacturing and "Testpatient" not in manufacturing
    assert all(c in manufacturing for c in cois)


def test_canaries_appear_only_where_patient_identifiers_belong(
    program: Path, truth: dict[str, Any]
) -> None:
    tokens = [t for c in truth["canaries"] for t in c["tokens"].values()]
    assert len(truth["canaries"]) >= 2 and tokens
    for path in program.rglob("*"):
        if not path.is_file() or path.name == "truth.json":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        allowed = str(path.relative_to(program)).startswith(("clinical/", "sponsor/"))
        leaked = [t for t in tokens if t in text]
        assert allowed or not leaked, f"canary in {path}"
    clinical = "".join(p.read_text(errors="replace") for p in files_under(program, "clinical"))
    enrollments = (program / "sponsor/enrollments.ndjson").read_text()
    for canary in truth["canaries"]:
        t = canary["tokens"]
        assert t["mrn"] in clinical and t["family"] in clinical and t["email"] in clinical
        assert t["mrn"] in enrollments and t["birth_date"] in enrollments


def test_each_reading_comes_from_exactly_one_source(program: Path, truth: dict[str, Any]) -> None:
    legs = {}
    for path in files_under(program, "courier"):
        if path.suffix == ".json":
            for shipment in json.loads(path.read_text())["shipments"]:
                for leg in shipment["legs"]:
                    legs[leg["logger"]] = leg["logger_data"]
    in_epcis: dict[str, int] = {}
    for path in files_under(program, "epcis"):
        for event in json.loads(path.read_text())["epcisBody"]["eventList"]:
            if event["bizStep"] == "sensor_reporting":
                logger = event["cmohub:loggerId"]
                reports = event["sensorElementList"][0]["sensorReport"]
                in_epcis[logger] = in_epcis.get(logger, 0) + len(reports)
    in_csv = {
        p.stem: len(lines(p)) - 1 for p in files_under(program, "courier") if p.suffix == ".csv"
    }
    assert not set(in_epcis) & set(in_csv)
    assert {k for k, v in legs.items() if v == "epcis"} == set(in_epcis)
    assert {k for k, v in legs.items() if v == "csv"} == set(in_csv)
    total = sum(in_epcis.values()) + sum(in_csv.values())
    assert total == truth["counts"]["datasets"]["logistics.temperature_reading"]
    assert len(legs) == truth["counts"]["datasets"]["logistics.shipment_leg"]


def test_source_counts_in_truth_match_the_files(program: Path, truth: dict[str, Any]) -> None:
    sources = truth["counts"]["sources"]
    for kind in ("Patient", "ServiceRequest", "Specimen", "Procedure"):
        assert len(lines(program / f"clinical/fhir/{kind}.ndjson")) == sources[f"fhir.{kind}"]
    hl7 = list(files_under(program, "clinical/hl7"))
    assert len(hl7) == sources["hl7.OML_O21"] + sources["hl7.ADT_A08"] + sources["hl7.malformed"]
    assert sources["fhir.ServiceRequest"] + sources["hl7.OML_O21"] == PATIENTS
    shipments = sum(
        len(json.loads(p.read_text())["shipments"])
        for p in files_under(program, "courier")
        if p.suffix == ".json"
    )
    assert shipments == 2 * PATIENTS == truth["counts"]["datasets"]["logistics.shipment"]
    files = truth["counts"]["files"]
    for folder, count in files.items():
        assert len(list(files_under(program, folder))) == count, folder


def test_malformed_records_are_where_truth_says(program: Path, truth: dict[str, Any]) -> None:
    malformed = faults_of(truth, RuleCode.RECORD_MALFORMED)
    assert {f["fault"] for f in malformed} == {
        f.value for f in Fault if f.value.startswith("malformed_")
    }
    for fault in malformed:
        key = fault["key"]
        path = program / key["file"]
        if fault["fault"] == "malformed_csv_row":
            rows = csv_rows(path)
            assert len(rows[key["line"] - 1]) < len(rows[0])
            assert all(len(r) == len(rows[0]) for i, r in enumerate(rows) if i != key["line"] - 1)
        elif fault["fault"] == "malformed_fhir_resource":
            resource = json.loads(lines(path)[key["line"] - 1])
            assert resource["id"] == key["id"] and "subject" not in resource
        else:
            raw = path.read_bytes()
            assert (
                b"\x00" in raw
                or not raw.startswith(b"MSH|^~\\&|")
                or (b"\rORC|" not in raw and not raw.endswith(b"\r"))
            )


def test_duplicate_files_are_the_same_bytes_under_another_name(
    program: Path, truth: dict[str, Any]
) -> None:
    duplicates = faults_of(truth, RuleCode.FILE_DUPLICATE)
    assert duplicates
    for fault in duplicates:
        copy, original = fault["key"]["file"], fault["key"]["original"]
        assert copy != original and Path(copy).name != Path(original).name
        assert (program / copy).read_bytes() == (program / original).read_bytes()
        assert Path(copy).parent.name > Path(original).parent.name  # a later delivery day


def test_coi_faults_point_at_the_file_that_carries_them(
    program: Path, truth: dict[str, Any]
) -> None:
    corrupted = faults_of(truth, RuleCode.COI_CHECK_INVALID)
    unknown = faults_of(truth, RuleCode.COI_UNKNOWN)
    assert corrupted and unknown
    for fault in corrupted + unknown:
        assert fault["key"]["coi"] in (program / fault["key"]["file"]).read_text("utf-8-sig")
    for fault in corrupted:
        assert validate_coi(fault["key"]["coi"]).code == "ID_CHECK_CHARACTER"  # type: ignore[union-attr]


def test_fhir_pages_link_through_every_resource(program: Path) -> None:
    for kind in ("Patient", "ServiceRequest", "Specimen", "Procedure"):
        ids = [json.loads(line)["id"] for line in lines(program / f"clinical/fhir/{kind}.ndjson")]
        seen: list[str] = []
        page = program / f"clinical/fhir/pages/{kind}/page-00001.json"
        while True:
            bundle = json.loads(page.read_text())
            assert bundle["type"] == "searchset" and bundle["total"] == len(ids)
            seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                break
            number = int(nxt[0].rsplit("_page=", 1)[1])
            page = page.with_name(f"page-{number:05d}.json")
        assert seen == ids


def test_cmo_csvs_have_their_documented_headers(program: Path) -> None:
    from cmohub.sandbox.writers import acme, borealis

    for path in files_under(program, "cmo"):
        if path.suffix != ".csv":
            continue
        kind = path.name.split("_")[1] if "/A9996/" in str(path) else path.name.split("_")[0]
        headers = acme.HEADERS if "/A9996/" in str(path) else borealis.HEADERS
        assert tuple(csv_rows(path)[0]) == headers[kind], path


def test_refuses_to_replace_a_folder_that_is_not_a_sandbox(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="SANDBOX_OUT_NOT_EMPTY"):
        generate_program(tmp_path, patients=2, days=1, seed=1)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_no_faults_means_an_empty_fault_list(tmp_path: Path) -> None:
    generate_program(tmp_path / "clean", patients=12, days=5, seed=2, faults=frozenset())
    truth = json.loads((tmp_path / "clean/truth.json").read_text())
    assert truth["faults"] == [] and truth["faults_by_rule"] == {}
    assert truth["counts"]["quarantined"] == {} and truth["counts"]["duplicate_files"] == 0


def test_refuses_a_start_before_the_products_have_specifications(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_START"):
        generate_program(tmp_path / "early", patients=2, days=1, seed=1, start=date(2025, 3, 1))
    assert not (tmp_path / "early").exists()
