"""The clinical sync against the sandbox program: enrollments, FHIR (search and bulk) and HL7
staged with the sponsor's COIs, malformed records quarantined with their codes, reruns exact,
later runs see duplicates, raw payloads kept only encrypted, and no identifier in the lake."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries

from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.pipelines import clinical
from cmohub.pipelines.context import RunContext
from cmohub.settings import RawClinicalPolicy, Settings, load_settings
from cmohub.sources.endpoint import SourceEndpoint
from cmohub.sources.raw_clinical import (
    RawClinicalStore,
    load_batch_manifest,
    split_input_locator,
)
from cmohub.vault import key_provider_for, open_vault

START = datetime(2026, 6, 1, tzinfo=UTC)
DATASETS = ("clinical.order", "clinical.collection", "clinical.infusion")
CLINICAL_MALFORMED = {
    "malformed_hl7_truncated",
    "malformed_hl7_nul_bytes",
    "malformed_hl7_encoding",
    "malformed_fhir_resource",
}


def make_settings(home: Path, program: Path, **overrides: Any) -> Settings:
    settings = load_settings(home=home, sandbox_dir=program, **overrides)
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor("test", "service"))
    return settings


def context(settings: Settings, start: datetime = START, run: str | None = None) -> RunContext:
    return RunContext(
        "clinical_sync",
        run or f"scheduled__{start:%Y-%m-%dT%H:%M:%S}+00:00",
        start,
        start + timedelta(hours=1),
        settings=settings,
    )


def staged_rows(lake_root: str, dataset: str, run: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(lake_root, "staged", dataset).rglob("*.parquet")):
        if run is None or f"run={run}" in str(path):
            rows.extend(pq.read_table(path).to_pylist())
    return rows


@pytest.fixture(scope="module")
def synced(sandbox_program: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = make_settings(tmp_path_factory.mktemp("clinical-home"), sandbox_program)
    ctx = context(settings)
    result = clinical.sync_clinical(ctx)
    return {"settings": settings, "context": ctx, "result": result}


def test_staged_rows_match_the_truth_and_carry_enrolled_cois(
    synced: dict[str, Any], sandbox_program: Path
) -> None:
    truth = json.loads((sandbox_program / "truth.json").read_text())
    enrolled = {
        json.loads(line)["coi"]
        for line in (sandbox_program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
    }
    lake_root = synced["settings"].lake_root
    for dataset in DATASETS:
        rows = staged_rows(lake_root, dataset)
        assert len(rows) == truth["counts"]["datasets"][dataset], dataset
        assert {r["coi"] for r in rows} <= enrolled, dataset
        assert not {"mrn", "family", "birth_date", "_subject"} & set(rows[0]), dataset
    findings = [
        f
        for task in ("sync_fhir", "sync_hl7")
        for f in Lake(lake_root).read_json(
            Lake(lake_root).run_dir(synced["context"].path_run_id) / f"{task}.json"
        )["findings"]
    ]
    assert not [f for f in findings if f["code"] == "IDENTITY_NEW_COI"]


def test_malformed_records_are_quarantined_with_their_codes(
    synced: dict[str, Any], sandbox_program: Path
) -> None:
    truth = json.loads((sandbox_program / "truth.json").read_text())
    planted = [f for f in truth["faults"] if f["fault"] in CLINICAL_MALFORMED]
    summary = synced["result"]
    assert summary["quarantine_codes"] == {"RECORD_MALFORMED": len(planted)}
    lines = [
        json.loads(line)
        for path in Path(synced["settings"].lake_root, "quarantine").rglob("records.jsonl")
        for line in path.read_text().splitlines()
    ]
    details = Counter(line["reasons"][1]["code"] for line in lines)
    expected = Counter(
        {
            "malformed_hl7_truncated": "PARSE_HL7_TRUNCATED",
            "malformed_hl7_nul_bytes": "PARSE_HL7_NUL",
            "malformed_hl7_encoding": "PARSE_HL7_ENCODING",
            "malformed_fhir_resource": "PARSE_FHIR_INVALID",
        }[f["fault"]]
        for f in planted
    )
    assert details == expected
    assert summary["received"] == summary["valid"] + summary["quarantined"] + summary["duplicates"]


def test_a_quarantined_record_is_replayed_from_the_encrypted_raw_store(
    synced: dict[str, Any], sandbox_program: Path
) -> None:
    settings = synced["settings"]
    lake = Lake(settings.lake_root)
    (path,) = Path(settings.lake_root, "quarantine", "clinical-fhir-procedure").rglob(
        "records.jsonl"
    )
    entry = json.loads(path.read_text().splitlines()[0])
    manifest = load_batch_manifest(lake, entry["source_sha256"])
    number, locator = split_input_locator(entry["source_locator"])
    raw = RawClinicalStore(lake, key_provider_for(settings), policy=settings.raw_clinical)
    page = json.loads(raw.get(manifest["inputs"][number - 1]["sha256"]))
    resource = page["entry"][int(locator.removeprefix("entry=")) - 1]["resource"]
    truth = json.loads((sandbox_program / "truth.json").read_text())
    (fault,) = [f for f in truth["faults"] if f["fault"] == "malformed_fhir_resource"]
    assert resource["id"] == fault["key"]["id"]


def test_nothing_identifying_is_left_outside_the_vault(
    synced: dict[str, Any], sandbox_program: Path
) -> None:
    home = synced["settings"].home_dir
    scanned = assert_no_canaries(
        [home], sandbox_program / "truth.json", exclude=[home / "vault.sqlite", home / "keys"]
    )
    assert scanned > 10
    raw_files = list(Path(synced["settings"].lake_root, "raw", "clinical").rglob("*"))
    assert raw_files and all(p.suffix == ".enc" for p in raw_files if p.is_file())


def test_a_rerun_of_the_same_run_stages_the_same_rows(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "home", sandbox_program)
    clinical.import_enrollments(context(settings))
    first = clinical.sync_fhir(context(settings))
    again = clinical.sync_fhir(context(settings))
    assert again["window"] == first["window"]
    assert (again["valid"], again["duplicates"]) == (first["valid"], 0)
    run = context(settings).path_run_id
    parts = sorted(Path(settings.lake_root, "staged").rglob(f"run={run}/*.parquet"))
    assert len(parts) == 3  # one part per FHIR feed with rows, rewritten in place


def test_the_next_run_counts_what_it_saw_before_as_duplicates(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "home", sandbox_program)
    clinical.import_enrollments(context(settings))
    clinical.sync_hl7(context(settings))
    clinical.sync_fhir(context(settings))
    later = context(settings, START + timedelta(hours=1))
    fhir = clinical.sync_fhir(later, lookback_seconds=400 * 86400)  # look back over everything
    assert fhir["window"]["since"] is not None
    assert fhir["valid"] == 0 and fhir["duplicates"] == fhir["received"] - fhir["quarantined"]
    hl7 = clinical.sync_hl7(later)
    assert hl7["received"] == 0 and hl7["duplicate_files"] == hl7["files"] > 0


def test_bulk_export_stages_what_search_does(sandbox_program: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", sandbox_program)
    clinical.import_enrollments(context(settings))
    result = clinical.sync_fhir(context(settings), mode="bulk")
    assert result["mode"] == "bulk"
    truth = json.loads((sandbox_program / "truth.json").read_text())
    assert len(staged_rows(settings.lake_root, "clinical.collection")) == 40
    assert (
        len(staged_rows(settings.lake_root, "clinical.infusion"))
        == truth["counts"]["datasets"]["clinical.infusion"]
    )
    assert result["quarantine_codes"] == {"RECORD_MALFORMED": 1}


def test_raw_payloads_are_not_kept_when_the_setting_says_none(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path / "home", sandbox_program, raw_clinical=RawClinicalPolicy.NONE
    )
    clinical.import_enrollments(context(settings))
    result = clinical.sync_fhir(context(settings))
    assert result["valid"] == 108
    assert not Path(settings.lake_root, "raw", "clinical").exists()
    assert any(Path(settings.lake_root, "raw", "clinical-batch").rglob("*"))


def test_linkage_mismatches_and_unconfigured_systems(sandbox_program: Path, tmp_path: Path) -> None:
    program = tmp_path / "program"
    shutil.copytree(sandbox_program / "sponsor", program / "sponsor")
    shutil.copytree(sandbox_program / "clinical", program / "clinical")
    patients = (program / "clinical" / "fhir" / "Patient.ndjson").read_text().splitlines()
    first, second = json.loads(patients[1]), json.loads(patients[2])
    first["birthDate"] = "1999-12-31"  # disagrees with the enrollment register
    second["identifier"][0]["system"] = "urn:somewhere:else"
    patients[1], patients[2] = json.dumps(first), json.dumps(second)
    (program / "clinical" / "fhir" / "Patient.ndjson").write_text("\n".join(patients) + "\n")
    settings = make_settings(tmp_path / "home", program)
    clinical.import_enrollments(context(settings))
    result = clinical.sync_fhir(context(settings))
    assert result["quarantine_codes"]["IDENTITY_SYSTEM_UNCONFIGURED"] >= 1
    ledger = Lake(settings.lake_root).read_json(
        Lake(settings.lake_root).run_dir(context(settings).path_run_id) / "sync_fhir.json"
    )
    mismatch = [f for f in ledger["findings"] if f["code"] == "IDENTITY_LINKAGE_MISMATCH"]
    assert mismatch and "birth_date" in mismatch[0]["message"]
    assert "1999-12-31" not in json.dumps(ledger)


ADT_A40 = (
    "MSH|^~\\&|SBX-EHR|A9992|CMOHUB|A9999|20260301120000+0000||ADT^A40^ADT_A39|MERGE1|P|2.5.1\r"
    "EVN|A40|20260301120000+0000\r"
    "PID|1||{survivor}^^^SBXA9992&urn:cmohub:sandbox:mrn:A9992&URI^MR||Testpatient^Merged\r"
    "MRG|{retired}^^^SBXA9992&urn:cmohub:sandbox:mrn:A9992&URI^MR\r"
)


def test_an_a40_merge_is_an_audited_identity_event(sandbox_program: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", sandbox_program)
    clinical.import_enrollments(context(settings))
    message = tmp_path / "merge.hl7"
    message.write_text(
        ADT_A40.format(survivor="SBX-MRN-A9992-900001", retired="SBX-MRN-A9992-900002")
    )
    result = clinical.ingest_hl7_files(context(settings), [message])
    intake = result["feeds"]["clinical-hl7"]
    assert intake["merges"] == 1 and intake["valid"] == 1
    with open_vault(settings) as vault:
        events = [
            r.event
            for r in vault.audit_records(
                START.date() - timedelta(days=3650), actor=Actor("t", "service")
            )
        ]
    assert "merge" in events
    again = clinical.ingest_hl7_files(context(settings, run="manual__again"), [message])
    assert again["duplicate_files"] == 1 and again["received"] == 0


def test_smart_protected_server(sandbox_program: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cmohub.sandbox.servers.fhir import FhirSandboxServer

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = make_settings(tmp_path / "home", sandbox_program)
    clinical.import_enrollments(context(settings))
    with FhirSandboxServer(
        sandbox_program, auth="smart", smart_clients={"hub": public}
    ).running() as server:
        endpoint = SourceEndpoint(
            server.fhir_base,
            login="hub",
            extra={"auth": "smart", "private_key": private, "fhir_version": "R4"},
        )
        result = clinical.sync_fhir(context(settings), endpoint=endpoint)
        assert server.tokens_issued == 1
    assert result["valid"] == 108
