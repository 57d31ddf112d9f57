"""Every public FHIR and HL7 v2 sample in ../shared/corpus goes through the clinical intake:
each record is staged, quarantined with a code, or suppressed as a duplicate; nothing crashes
a run, the ledger balances, and the known-broken files are refused for the right reason."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmohub.errors import ParseError
from cmohub.formats.fhir import parse_payload
from cmohub.formats.hl7v2 import split_messages
from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.pipelines import clinical
from cmohub.pipelines.context import RunContext
from cmohub.settings import Settings, load_settings
from cmohub.sources.raw_clinical import load_batch_manifest, split_input_locator
from cmohub.vault import open_vault

pytestmark = pytest.mark.corpus

#: Files whose breakage is documented in SOURCES.md, and the code each must be refused with.
EXPECTED_FHIR = {
    "fhirtc-bad-json-close-1.json": "PARSE_FHIR_JSON",
    "fhirtc-json-comma-bad-1.json": "PARSE_FHIR_JSON",
    "msfhir-r5-Bundle-TransactionWithInvalidBundleEntry.json": "PARSE_FHIR_JSON",
    "msfhir-Bundle-InvalidBundleType.json": "PARSE_FHIR_BUNDLE",
    "msfhir-PatientMissingResourceType.json": "PARSE_FHIR_RESOURCE_TYPE",
    "msfhir-ObservationWithInvalidStatus.json": "PARSE_FHIR_INVALID",
    "fhirtc-empty-array.json": "PARSE_FHIR_INVALID",
    "biologicallyderivedproduct-example-autologousHCT.xml": "PARSE_FHIR_XML",
    "biologicallyderivedproduct-example-HCTcollection-servicerequest.xml": "PARSE_FHIR_XML",
    "msfhir-Import-InvalidPatient.ndjson": "PARSE_FHIR_JSON",
}
EXPECTED_HL7 = {
    "hapi_bar_p01_bad_encoding_chars.hl7": "PARSE_HL7_ENCODING",
    "nhapi_fuzz_stackoverflow1.hl7": "PARSE_HL7_ENCODING",
    "nhapi_fuzz_nul_bytes_id000146.hl7": "PARSE_HL7_NUL",
    "python-hl7_bad_batch_missing_msh.hl7": "PARSE_HL7_NO_MSH",
    "python-hl7_bad_batch_nested_bhs.hl7": "PARSE_HL7_ENVELOPE",
    "python-hl7_bad_file_nested_fhs.hl7": "PARSE_HL7_ENVELOPE",  # and the orphans: NO_MSH
    "hapi_oml_o21_v25_utf8_no_datetime_no_ctrlid.hl7": "PARSE_HL7_MSH_INCOMPLETE",
    "hapi_oru_r01_v22_obx_inline_malformed.hl7": "PARSE_HL7_UNSUPPORTED",
    "hl7apy_zdt_z01_custom_message.hl7": "PARSE_HL7_UNSUPPORTED",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    value = load_settings(home=tmp_path_factory.mktemp("corpus-home"))
    with open_vault(value, initialize=True) as vault:
        vault.init(actor=Actor("test", "service"))
    return value


def run(settings: Settings, name: str) -> RunContext:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    return RunContext("corpus", name, now, now, settings=settings)


def codes_by_file(settings: Settings, result: dict[str, Any]) -> dict[str, set[str]]:
    """Every quarantine reason code, by the corpus file its record came from."""
    lake = Lake(settings.lake_root)
    out: dict[str, set[str]] = defaultdict(set)
    manifests: dict[str, dict[str, Any]] = {}
    for feed in result["feeds"].values():
        if not feed.get("quarantine"):
            continue
        for line in lake.path(feed["quarantine"]).read_text().splitlines():
            entry = json.loads(line)
            sha = entry["source_sha256"]
            manifest = manifests.setdefault(sha, load_batch_manifest(lake, sha))
            number, _ = split_input_locator(entry["source_locator"])
            out[manifest["inputs"][number - 1]["source"]].update(
                r["code"] for r in entry["reasons"]
            )
    return out


def test_every_fhir_sample_is_ingested_or_refused_with_a_code(
    corpus: Path, settings: Settings
) -> None:
    files = sorted(
        p
        for p in (corpus / "fhir").rglob("*")
        if p.is_file() and p.suffix in {".json", ".ndjson", ".xml"}
    )
    assert len(files) >= 30
    result = clinical.ingest_fhir_files(run(settings, "corpus-fhir"), files)
    assert result["received"] == result["valid"] + result["quarantined"] + result["duplicates"]
    by_file = codes_by_file(settings, result)
    for name, code in EXPECTED_FHIR.items():
        assert code in by_file[name], (name, by_file.get(name))
        assert "RECORD_MALFORMED" in by_file[name], name
    # Everything the hub cannot use says why; nothing is silently dropped.
    codes = Counter(result["quarantine_codes"])
    assert set(codes) <= {
        "RECORD_MALFORMED",
        "FHIR_RESOURCE_UNMAPPED",
        "IDENTITY_SUBJECT_MISSING",
        "IDENTITY_SUBJECT_UNRESOLVED",
        "IDENTITY_SYSTEM_UNCONFIGURED",
        "PARSE_FHIR_RESOURCE_TYPE",
    }
    assert codes["RECORD_MALFORMED"] >= len(EXPECTED_FHIR)
    # Every resource of every file is accounted for (Patients are identity context, not records).
    resources = 0
    for path in files:
        try:
            payload = parse_payload(path.read_bytes())
        except ParseError:
            resources += 1
            continue
        resources += sum(1 for e in payload.entries if e.resource_type != "Patient")
    assert result["received"] == resources


def test_every_hl7_sample_is_ingested_or_refused_with_a_code(
    corpus: Path, settings: Settings
) -> None:
    files = sorted((corpus / "hl7v2").glob("*.hl7"))
    assert len(files) >= 25
    result = clinical.ingest_hl7_files(run(settings, "corpus-hl7"), files)
    assert result["received"] == result["valid"] + result["quarantined"] + result["duplicates"]
    by_file = codes_by_file(settings, result)
    for name, code in EXPECTED_HL7.items():
        assert code in by_file[name], (name, by_file.get(name))
    # Every message of every file is accounted for: staged, applied, quarantined or a duplicate.
    messages = 0
    for path in files:
        try:
            messages += len(split_messages(path.read_bytes()).messages)
        except ParseError:
            messages += 1
    assert result["received"] == messages
    intake = result["feeds"]["clinical-hl7"]
    assert intake["updates"] + intake["merges"] == intake["valid"]
