"""Replaying clinical quarantine: FHIR and HL7 v2 records through the clinical intake again.

A site sends subjects under an identifier system the vault does not accept yet, or a mapping
cannot map a value; the data engineer accepts the system or fixes the mapping and replays.
The records come back from the encrypted raw store, pass the same intake (patient index,
routing, duplicate keys, vault screening, contract) and are staged once — not again by a
later sync — while the still-broken ones are quarantined again with their reasons, and no
identifier shows anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.errors import HubError
from cmohub.formats.fhir import FhirVersion
from cmohub.formats.hl7v2 import RawMessage
from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.mapping.store import iter_mapping_files, load_mapping_file, load_mappings
from cmohub.pipelines import clinical
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.replay import RECORD_NOT_FOUND, list_quarantine, replay_quarantine
from cmohub.pipelines.snapshot import load_quarantine
from cmohub.settings import Settings, load_settings
from cmohub.vault import SYSTEMS_FILE, open_vault

START = datetime(2026, 6, 1, tzinfo=UTC)
RUN = "scheduled__2026-06-01"
PROCEDURES = "clinical-fhir-procedure"
ORDERS = "clinical-hl7-oml-o21"
MRN = "urn:cmohub:sandbox:mrn:"


def systems_file(settings: Settings, sites: list[str]) -> None:
    """The vault accepts the MRN systems of ``sites`` only (no prefix for the others)."""
    lines = ["systems:", *(f'  - uri: "{MRN}{site}"' for site in sites)]
    (settings.home_dir / SYSTEMS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def settings(sandbox_program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))  # for the CLI
    monkeypatch.setenv("CMOHUB_SANDBOX_DIR", str(sandbox_program))
    settings = load_settings(home=home, sandbox_dir=sandbox_program)
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor("test", "service"))
    return settings


def run_context(settings: Settings, run: str = RUN, start: datetime = START) -> RunContext:
    return RunContext("clinical_sync", run, start, start + timedelta(hours=1), settings=settings)


def staged(settings: Settings, dataset: str, feed: str) -> list[dict[str, Any]]:
    folder = Path(settings.lake_root, "staged", dataset, f"feed={feed}")
    return [row for part in folder.rglob("*.parquet") for row in pq.read_table(part).to_pylist()]


def lines(settings: Settings, relative: str | None) -> list[dict[str, Any]]:
    if relative is None:
        return []
    text = Path(settings.lake_root, relative).read_text()
    return [json.loads(line) for line in text.splitlines()]


def enrolled(sandbox_program: Path) -> set[str]:
    text = (sandbox_program / "sponsor" / "enrollments.ndjson").read_text()
    return {json.loads(line)["coi"] for line in text.splitlines() if line.strip()}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["quarantine", *args])


def no_canaries(settings: Settings, sandbox_program: Path, tmp_path: Path, *shown: str) -> None:
    printed = tmp_path / "printed.txt"
    printed.write_text("\n".join(shown))
    home = settings.home_dir
    assert_no_canaries(
        [home, printed],
        sandbox_program / "truth.json",
        exclude=[home / "vault.sqlite", home / "keys"],
    )


def test_fhir_records_the_vault_refused_are_staged_once_after_the_system_is_accepted(
    settings: Settings, sandbox_program: Path, tmp_path: Path
) -> None:
    context = run_context(settings)
    clinical.import_enrollments(context)  # the sponsor enrolled every subject
    systems_file(settings, ["A9990", "A9991", "A9992"])  # site A9993's MRNs: not yet
    synced = clinical.sync_fhir(context)["feeds"][PROCEDURES]
    first = lines(settings, synced["quarantine"])
    codes = Counter(line["code"] for line in first)
    refused = codes["VAULT_UNKNOWN_SYSTEM"]
    assert refused > 0 and codes["RECORD_MALFORMED"] == 1
    assert synced["received"] == synced["valid"] + refused + 1

    systems_file(settings, ["A9990", "A9991", "A9992", "A9993"])  # the fix
    shown = cli("replay", "--feed", PROCEDURES, "--run", RUN)
    assert shown.exit_code == 0, shown.output
    assert f"{refused + 1} received = {refused} staged + 1 quarantined again" in shown.output

    infusions = staged(settings, "clinical.infusion", PROCEDURES)
    ids = [row["infusion_id"] for row in infusions]
    assert len(ids) == len(set(ids)) == synced["valid"] + refused  # each staged once
    assert {row["coi"] for row in infusions} <= enrolled(sandbox_program)
    replayed = [r for r in infusions if r["_run_id"] == f"replay-{RUN}-1"]
    assert len(replayed) == refused
    (again,) = lines(
        settings, f"quarantine/{PROCEDURES}/date=2026-06-01/run=replay-{RUN}-1/records.jsonl"
    )
    malformed = next(line for line in first if line["code"] == "RECORD_MALFORMED")
    # Quarantined again with its reasons, naming the same batch, input and entry.
    assert {k: again[k] for k in ("code", "reasons", "source_sha256", "source_locator", "key")} == {
        k: malformed[k] for k in ("code", "reasons", "source_sha256", "source_locator", "key")
    }

    # The chain: the second replay reads what the first left, and stages nothing twice.
    second = replay_quarantine(settings, feed=PROCEDURES, run_id=RUN)
    assert (second.read_from, second.received, second.valid, second.quarantined) == (
        f"replay-{RUN}-1",
        1,
        0,
        1,
    )
    assert len(staged(settings, "clinical.infusion", PROCEDURES)) == len(ids)
    still = load_quarantine(Lake(settings.lake_root), up_to=START.date())
    mine = [line["_file"].split("/")[-2] for line in still if line["feed"] == PROCEDURES]
    assert mine == [f"run=replay-{RUN}-2"]  # what the nightly counts: once, the latest

    # A later delivery of the same resource versions (an incremental sync re-reading them)
    # suppresses them as duplicates: the replay claimed no key for itself.
    program = sandbox_program / "clinical" / "fhir"
    later = clinical.ingest_fhir_files(
        run_context(settings, "manual__later", START + timedelta(days=1)),
        [program / "Patient.ndjson", program / "Procedure.ndjson"],
        feeds=[PROCEDURES],
    )["feeds"][PROCEDURES]
    assert later["valid"] == 0 and later["duplicates"] == synced["received"]
    assert len(staged(settings, "clinical.infusion", PROCEDURES)) == len(ids)

    listed = cli("list", "--feed", PROCEDURES)
    no_canaries(settings, sandbox_program, tmp_path, shown.output, listed.output)


def broken_procedure_mapping(tmp_path: Path) -> Any:
    """The procedure mapping as it was before its fix: ``completed`` was not mapped."""
    source = next(
        Path(str(item))
        for item in iter_mapping_files()
        if Path(str(item)).name == f"{PROCEDURES}.yaml"
    )
    text = source.read_text()
    assert "completed: completed, " in text
    broken = tmp_path / f"{PROCEDURES}.yaml"
    broken.write_text(text.replace("completed: completed, ", ""))
    return load_mapping_file(broken)


def test_fhir_records_a_mapping_refused_are_staged_after_the_fix_and_lost_ones_are_named(
    settings: Settings,
    sandbox_program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shipped = load_mappings()
    broken = broken_procedure_mapping(tmp_path)
    monkeypatch.setattr(clinical, "load_mappings", lambda: {**shipped, PROCEDURES: broken})
    context = run_context(settings)
    clinical.import_enrollments(context)
    synced = clinical.sync_fhir(context)["feeds"][PROCEDURES]
    path = Path(settings.lake_root, synced["quarantine"])
    first = lines(settings, synced["quarantine"])
    unmapped = [line for line in first if line["code"] == "MAPPING_VALUE_UNMAPPED"]
    assert len(unmapped) > 1 and all(line["field"] == "status" for line in unmapped)
    # One record the payload no longer holds (its locator names an entry that is not there).
    lost = unmapped[0]
    lost["source_locator"] = lost["source_locator"].split("/")[0] + "/entry=999"
    path.write_text("".join(json.dumps(line) + "\n" for line in first))

    monkeypatch.setattr(clinical, "load_mappings", lambda: shipped)  # the fix
    result = replay_quarantine(settings, feed=PROCEDURES, run_id=RUN)

    assert (result.received, result.valid) == (len(first), len(unmapped) - 1)
    assert result.quarantine_codes == {"RECORD_MALFORMED": 1, RECORD_NOT_FOUND: 1}
    again = {line["code"]: line for line in lines(settings, result.quarantine)}
    assert again[RECORD_NOT_FOUND]["source_locator"] == lost["source_locator"]
    assert again[RECORD_NOT_FOUND]["key"] == lost["key"]  # still says which record
    ledger = json.loads(Path(settings.lake_root, result.ledger or "").read_text())
    assert ledger["counts"][PROCEDURES]["received"] == len(first)
    assert ledger["mappings"][PROCEDURES] == shipped[PROCEDURES].content_sha256
    statuses = Counter(r["status"] for r in staged(settings, "clinical.infusion", PROCEDURES))
    assert statuses["completed"] == len(unmapped) - 1
    no_canaries(settings, sandbox_program, tmp_path, json.dumps(result.to_dict()))


def copy_inbox(sandbox_program: Path, tmp_path: Path) -> Path:
    inbox = tmp_path / "hl7"
    for source in (sandbox_program / "clinical" / "hl7").rglob("*.hl7"):
        target = inbox / source.relative_to(sandbox_program / "clinical" / "hl7")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return inbox


def test_hl7_orders_the_vault_refused_are_staged_once_and_a_redo_rewrites_in_place(
    settings: Settings, sandbox_program: Path, tmp_path: Path
) -> None:
    context = run_context(settings)
    clinical.import_enrollments(context)  # the sponsor enrolled every subject
    systems_file(settings, ["A9990", "A9991", "A9993"])  # the HL7 site A9992: not yet
    synced = clinical.sync_hl7(context, inbox=copy_inbox(sandbox_program, tmp_path))
    feed = synced["feeds"][ORDERS]
    first = lines(settings, feed["quarantine"])
    refused = [line for line in first if line["code"] == "VAULT_UNKNOWN_SYSTEM"]
    assert feed["valid"] == 0 and len(refused) == feed["received"] - 3  # 3 malformed
    assert all(line["source_locator"].endswith("/ORC=1") for line in refused)  # record-level

    systems_file(settings, ["A9990", "A9991", "A9992", "A9993"])
    result = replay_quarantine(settings, feed=ORDERS, run_id=RUN)
    assert (result.received, result.valid, result.quarantined) == (len(first), len(refused), 3)
    assert result.quarantine_codes == {"RECORD_MALFORMED": 3}
    orders = staged(settings, "clinical.order", ORDERS)
    assert len(orders) == len({r["order_id"] for r in orders}) == len(refused)
    assert {r["coi"] for r in orders} <= enrolled(sandbox_program)
    # The intake feed's ADT updates were the run's: the replay neither applies nor counts them.
    ledger = json.loads(Path(settings.lake_root, result.ledger or "").read_text())
    assert set(ledger["counts"]) == {ORDERS}

    # A replay that died before its ledger is redone under the same run, rewriting its part.
    Path(settings.lake_root, result.ledger or "").unlink()
    redone = replay_quarantine(settings, feed=ORDERS, run_id=RUN)
    assert (redone.run_id, redone.parts, redone.valid) == (
        result.run_id,
        result.parts,
        result.valid,
    )
    assert len(staged(settings, "clinical.order", ORDERS)) == len(refused)

    # The same messages delivered again later are duplicates, not new orders.
    later = clinical.sync_hl7(
        run_context(settings, "manual__later", START + timedelta(days=1)),
        inbox=copy_inbox(sandbox_program, tmp_path / "again"),
        include_spool=False,
    )
    assert later["feeds"].get(ORDERS, {}).get("valid", 0) == 0
    assert len(staged(settings, "clinical.order", ORDERS)) == len(refused)
    runs = [(q.run_id, q.current) for q in list_quarantine(Lake(settings.lake_root), feed=ORDERS)]
    assert runs == [(RUN, False), (result.run_id, True)]
    no_canaries(settings, sandbox_program, tmp_path, json.dumps(redone.to_dict()))


def test_an_hl7_message_re_sent_since_is_a_duplicate_not_staged_twice(
    settings: Settings,
    sandbox_program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message the run could not parse claimed no key; the site re-sent it fixed under the
    same control ID and a later run staged it. When a parser fix lets the replay read the
    original, it is that message again: a duplicate."""
    context = run_context(settings)
    clinical.import_enrollments(context)
    inbox = copy_inbox(sandbox_program, tmp_path)
    synced = clinical.sync_hl7(context, inbox=inbox)["feeds"][ORDERS]
    nul = next(
        line
        for line in lines(settings, synced["quarantine"])
        if line["reasons"][1]["code"] == "PARSE_HL7_NUL"
    )
    (sent,) = [p for p in inbox.rglob("*.hl7") if b"\x00" in p.read_bytes()]
    fixed = tmp_path / "fixed" / sent.name
    fixed.parent.mkdir()
    fixed.write_bytes(sent.read_bytes().replace(b"\x00", b""))
    resent = clinical.ingest_hl7_files(run_context(settings, "manual__resent"), [fixed])
    assert resent["feeds"][ORDERS]["valid"] == 1
    orders = len(staged(settings, "clinical.order", ORDERS))

    real = clinical.message_records

    def tolerant(raw: RawMessage, **options: Any) -> Any:  # the parser fix
        return real(replace(raw, text=raw.text.replace("\x00", ""), problem=None), **options)

    monkeypatch.setattr(clinical, "message_records", tolerant)
    result = replay_quarantine(settings, feed=ORDERS, run_id=RUN)
    assert (result.received, result.valid, result.duplicates, result.quarantined) == (3, 0, 1, 2)
    assert nul["source_locator"] not in {
        line["source_locator"] for line in lines(settings, result.quarantine)
    }
    assert len(staged(settings, "clinical.order", ORDERS)) == orders


@pytest.mark.parametrize("feed", ["clinical-fhir", "clinical-hl7"])
def test_the_intake_feeds_are_refused_with_what_to_do(
    settings: Settings, sandbox_program: Path, tmp_path: Path, feed: str
) -> None:
    from cmohub.contracts.quarantine import write_quarantine
    from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef

    entry = QuarantineEntry(
        "clinical.intake",
        SourceRef("ab" * 32, "input=1/entry=1"),
        (Reason("FHIR_RESOURCE_UNMAPPED", "format:fhir", None),),
    )
    write_quarantine(Lake(settings.lake_root), [entry], feed=feed, day=START.date(), run_id=RUN)
    with pytest.raises(HubError) as refused:
        replay_quarantine(settings, feed=feed, run_id=RUN)
    assert refused.value.code == "REPLAY_UNSUPPORTED"
    assert feed in str(refused.value) and "re-" in str(refused.value)
    assert not Path(settings.lake_root, "runs", f"replay-{RUN}-1").exists()


def test_fhir_records_are_read_again_as_the_run_was_told_to_read_them(
    settings: Settings, sandbox_program: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mappings say R5; this run was told R4 (as an endpoint's extra tells a sync). The
    # batch manifest records that, and the replay reads the payloads as R4 too.
    def as_r5(spec: Any) -> Any:
        options = tuple(sorted({**dict(spec.source.options), "fhir_version": "R5"}.items()))
        return replace(spec, source=replace(spec.source, options=options))

    shipped = load_mappings()
    told = {n: as_r5(s) if n.startswith("clinical-fhir-") else s for n, s in shipped.items()}
    monkeypatch.setattr(clinical, "load_mappings", lambda: told)
    context = run_context(settings)
    clinical.import_enrollments(context)
    systems_file(settings, ["A9990", "A9991", "A9992"])  # site A9993's MRNs: not yet
    fhir = sandbox_program / "clinical" / "fhir"
    synced = clinical.ingest_fhir_files(
        context, [fhir / "Patient.ndjson", fhir / "Procedure.ndjson"], version=FhirVersion.R4
    )["feeds"][PROCEDURES]
    refused = Counter(line["code"] for line in lines(settings, synced["quarantine"]))
    assert refused["VAULT_UNKNOWN_SYSTEM"] > 0

    systems_file(settings, ["A9990", "A9991", "A9992", "A9993"])
    result = replay_quarantine(settings, feed=PROCEDURES, run_id=RUN)
    assert result.valid == refused["VAULT_UNKNOWN_SYSTEM"]
    assert result.quarantine_codes == {"RECORD_MALFORMED": 1}  # the planted one, as before
