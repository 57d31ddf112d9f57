"""``cmohub quarantine replay`` of the EPCIS custody and sensor feeds and of logger files.

The EPCIS sync runs before the sponsor's enrollments reached the vault: every custody event
is quarantined for an unknown COI. Once the vault knows them, the data engineer replays the
run: the events come back from the query pages kept in ``raw/epcis/``, through the logistics
pipeline's own staging, and are staged once — not refused as duplicates of themselves, and
suppressed as before when a later sync brings them again. Sensor readings and logger rows
quarantined for a unit the hub did not know are staged once the hub knows it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries
from tests.unit.test_quarantine_replay import Enrolled
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.coldchain import units
from cmohub.contracts.quarantine import write_quarantine
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.errors import HubError
from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.pipelines import clinical
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import RunLedger
from cmohub.pipelines.logistics import (
    open_epcis_staging,
    stage_epcis_payload,
    sync_courier,
    sync_epcis,
)
from cmohub.pipelines.replay import list_quarantine, replay_quarantine
from cmohub.pipelines.snapshot import load_quarantine
from cmohub.sandbox.servers.courier import CourierServer
from cmohub.sandbox.servers.epcis import EpcisServer
from cmohub.sandbox.writers.epcis import CONTEXT
from cmohub.sensitive import Sensitive
from cmohub.settings import Settings, load_settings
from cmohub.sources.endpoint import SourceEndpoint
from cmohub.vault import open_vault

CUSTODY = "logistics-epcis-custody"
SENSOR = "logistics-epcis-sensor"
LOGGERS = "logistics-logger-csv"
RUN = "run-1"
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 3, 1, tzinfo=UTC)
DAY = END.date()  # the partition of the sync run (and so of its replays)


def enrolled_cois(program: Path) -> set[str]:
    lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
    return {json.loads(line)["coi"] for line in lines if line.strip()}


def context(settings: Settings, run_id: str = RUN) -> RunContext:
    return RunContext.for_interval("logistics_sync", END, END, run_id=run_id, settings=settings)


def run_epcis(
    program: Path, settings: Settings, port: Enrolled | None, run_id: str = RUN
) -> dict[str, Any]:
    server = EpcisServer(program)
    with server.running():
        return sync_epcis(
            context(settings, run_id),
            endpoint=SourceEndpoint(server.base_url),
            port=port,
            since=SINCE,
        )


def staged(settings: Settings, dataset: str) -> list[dict[str, Any]]:
    return [
        row
        for part in sorted(Path(settings.lake_root, "staged", dataset).rglob("*.parquet"))
        for row in pq.read_table(part).to_pylist()
    ]


def lines_of(settings: Settings, relative: str | None) -> list[dict[str, Any]]:
    assert relative is not None
    text = Path(settings.lake_root, relative).read_text()
    return [json.loads(line) for line in text.splitlines()]


def ledger_of(settings: Settings, relative: str | None) -> dict[str, Any]:
    assert relative is not None
    data: dict[str, Any] = json.loads(Path(settings.lake_root, relative).read_text())
    return data


def state_bytes(settings: Settings) -> dict[str, bytes]:
    folder = Path(settings.lake_root, "state", CUSTODY)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- EPCIS custody --------------------------------------------------------------------------------


def test_custody_events_of_cois_enrolled_since_are_staged_once_through_the_cli(
    sandbox_program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real vault, the real sync and the CLI: a data engineer's whole round trip."""
    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    settings = load_settings(home=home, sandbox_dir=sandbox_program)
    with open_vault(settings, initialize=True) as vault:
        vault.init(actor=Actor("test", "service"))
    synced = run_epcis(sandbox_program, settings, None)  # the enrollments are not in yet
    custody = synced["feeds"][CUSTODY]
    assert custody["valid"] == 0 and custody["quarantined"] == custody["received"] > 0
    assert {line["code"] for line in lines_of(settings, custody["quarantine"])} == {
        "COI_UNKNOWN",
        "COI_CHECK_INVALID",
    }
    state = state_bytes(settings)

    start = datetime(2026, 6, 1, tzinfo=UTC)
    enroll = RunContext("clinical_sync", "enroll", start, start, settings=settings)
    clinical.import_enrollments(enroll)  # the fix: the vault knows the COIs now
    outcome = CliRunner().invoke(
        app, ["quarantine", "replay", "--feed", CUSTODY, "--run", RUN, "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.output)

    # Every event the vault now knows is staged, once; the corrupted COI is quarantined again.
    truth = json.loads((sandbox_program / "truth.json").read_text())
    strays = {f["key"]["event_id"] for f in truth["faults"] if f["rule"] == "COI_CHECK_INVALID"}
    assert (result["received"], result["valid"], result["quarantined"]) == (
        custody["received"],
        custody["received"] - len(strays),
        len(strays),
    )
    again = lines_of(settings, result["quarantine"])
    assert {line["key"]["source_event_id"] for line in again} == strays
    assert {line["code"] for line in again} == {"COI_CHECK_INVALID"}
    assert all(line["source_locator"].startswith("event=") for line in again)
    rows = staged(settings, "logistics.custody_event")
    assert len(rows) == len({r["event_id"] for r in rows}) == result["valid"]
    assert {r["_run_id"] for r in rows} == {f"replay-{RUN}-1"}
    ledger = ledger_of(settings, result["ledger"])
    counts = ledger["counts"][CUSTODY]
    assert counts["received"] == counts["valid"] + counts["quarantined"] == custody["received"]
    assert set(ledger["counts"]) == set(ledger["mappings"]) == {CUSTODY}
    # The replay recorded nothing new: the events' keys were there since the sync.
    assert state_bytes(settings) == state

    shown = tmp_path / "shown.txt"
    shown.write_text(outcome.output)
    assert_no_canaries(
        [home, shown],
        sandbox_program / "truth.json",
        exclude=[home / "vault.sqlite", home / "keys"],
    )


def test_a_later_sync_suppresses_replayed_events_and_a_second_replay_stages_nothing(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home")
    enrolled = Enrolled(enrolled_cois(sandbox_program))
    first = run_epcis(sandbox_program, settings, Enrolled(set()))["feeds"][CUSTODY]
    replayed = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=enrolled)
    assert replayed.valid == first["received"] - 1

    # The lookback (here: a backfill of the same window) brings every event again.
    later = run_epcis(sandbox_program, settings, enrolled, run_id="run-2")["feeds"]
    assert (later[CUSTODY]["valid"], later[CUSTODY]["quarantined"]) == (0, 0)
    assert later[CUSTODY]["duplicates"] == first["received"]
    assert later[SENSOR]["valid"] == 0
    rows = staged(settings, "logistics.custody_event")
    assert len(rows) == len({r["event_id"] for r in rows}) == replayed.valid

    second = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=enrolled)
    assert (second.read_from, second.run_id) == (replayed.run_id, f"replay-{RUN}-2")
    assert (second.received, second.valid, second.quarantined) == (1, 0, 1)
    still = [
        q for q in load_quarantine(Lake(settings.lake_root), up_to=DAY) if q["feed"] == CUSTODY
    ]
    assert [(q["code"], q["run_id"]) for q in still] == [("COI_CHECK_INVALID", second.run_id)]
    assert len(staged(settings, "logistics.custody_event")) == replayed.valid


def test_an_epcis_replay_that_stopped_before_its_ledger_is_redone_in_place(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home")
    enrolled = Enrolled(enrolled_cois(sandbox_program))
    run_epcis(sandbox_program, settings, Enrolled(set()))
    first = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=enrolled)
    Path(settings.lake_root, first.ledger or "").unlink()  # as if it died before the end

    redone = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=enrolled)
    assert (redone.run_id, redone.read_from, redone.valid) == (first.run_id, RUN, first.valid)
    assert redone.parts == first.parts  # the same part rewritten, not a second one
    rows = staged(settings, "logistics.custody_event")
    assert len(rows) == len({r["event_id"] for r in rows}) == first.valid


# --- EPCIS sensor ---------------------------------------------------------------------------------


def epcis_program(sandbox_program: Path, tmp_path: Path) -> tuple[Path, list[Any]]:
    """The program's EPCIS documents, one sensor event with two reports in a unit spelling
    the hub does not know (``℃``) and one without a value; returns its reports' values."""
    program = tmp_path / "program"
    shutil.copytree(sandbox_program / "epcis", program / "epcis")
    path = sorted((program / "epcis").glob("*.jsonld"))[3]
    document = json.loads(path.read_text())
    event = next(e for e in document["epcisBody"]["eventList"] if e.get("sensorElementList"))
    reports = event["sensorElementList"][0]["sensorReport"]
    assert len(reports) >= 5
    reports[1]["uom"] = reports[2]["uom"] = "℃"
    reports[4]["value"] = "n/a"
    path.write_text(json.dumps(document))
    return program, [r["value"] for r in reports]


def test_sensor_readings_in_a_unit_learned_since_are_staged_once(
    sandbox_program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program, values = epcis_program(sandbox_program, tmp_path)
    settings = load_settings(home=tmp_path / "home")
    sensor = run_epcis(program, settings, Enrolled(enrolled_cois(sandbox_program)))["feeds"][SENSOR]
    original = lines_of(settings, sensor["quarantine"])
    assert sorted(line["code"] for line in original) == [
        "EPCIS_SENSOR_VALUE_INVALID",
        "TEMPERATURE_UNIT_UNKNOWN",
        "TEMPERATURE_UNIT_UNKNOWN",
    ]
    (event,) = {line["source_locator"].split(";")[0] for line in original}
    # The reader of a later version names one of them differently: it cannot be found.
    lost = {**original[0], "source_locator": f"{event};element=9;report=1"}
    quarantine = Path(settings.lake_root, sensor["quarantine"])
    quarantine.write_text(quarantine.read_text() + json.dumps(lost) + "\n")
    before = len(staged(settings, "logistics.temperature_reading"))

    monkeypatch.setitem(units._SPELLINGS, "℃", units.CELSIUS)  # the fix: a release knows it
    result = replay_quarantine(settings, feed=SENSOR, run_id=RUN, port=Enrolled(set()))

    assert (result.received, result.valid, result.quarantined) == (4, 2, 2)
    assert result.quarantine_codes == {
        "EPCIS_SENSOR_VALUE_INVALID": 1,
        "REPLAY_RECORD_NOT_FOUND": 1,
    }
    again = {line["source_locator"]: line["code"] for line in lines_of(settings, result.quarantine)}
    assert again[lost["source_locator"]] == "REPLAY_RECORD_NOT_FOUND"
    # Only the two readings are staged again: the event's other readings were staged by the sync.
    rows = staged(settings, "logistics.temperature_reading")
    assert len(rows) == before + 2
    sha = original[0]["source_sha256"]
    refs = [r["_source_ref"] for r in rows if r["_source_ref"].startswith(f"{sha}#{event};")]
    assert len(refs) == len(set(refs)) == len(values) - 1  # all but the one without a value
    replayed = [r for r in rows if r["_run_id"] == result.run_id]
    assert sorted(r["_source_ref"].rsplit(";", 1)[1] for r in replayed) == ["report=2", "report=3"]
    assert sorted(r["celsius"] for r in replayed) == sorted(values[1:3])  # ℃ is °C
    ledger = ledger_of(settings, result.ledger)
    assert set(ledger["counts"]) == {SENSOR}


def test_readings_of_a_sensor_event_with_a_corrupted_coi_are_quarantined_by_report(
    sandbox_program: Path, tmp_path: Path
) -> None:
    """Each reading is quarantined at the locator a good reading is staged at (the element
    and report), so a quarantine file names every reading the same way."""
    program = tmp_path / "program"
    shutil.copytree(sandbox_program / "epcis", program / "epcis")
    path = sorted((program / "epcis").glob("*.jsonld"))[3]
    document = json.loads(path.read_text())
    events = document["epcisBody"]["eventList"]
    event = next(e for e in events if e.get("sensorElementList"))
    coi = event["cmohub:coi"]
    corrupted = coi[:-1] + ("A" if coi[-1] != "A" else "B")  # any other check character
    event["cmohub:coi"], event["epcList"] = corrupted, [f"urn:cmohub:coi:{corrupted}"]
    path.write_text(json.dumps(document))
    settings = load_settings(home=tmp_path / "home")

    sensor = run_epcis(program, settings, Enrolled(enrolled_cois(sandbox_program)))["feeds"][SENSOR]

    lines = lines_of(settings, sensor["quarantine"])
    assert {line["code"] for line in lines} == {"COI_CHECK_INVALID"}
    reports = [
        (element, report)
        for element, e in enumerate(event["sensorElementList"], 1)
        for report, r in enumerate(e["sensorReport"], 1)
        if r.get("type") in ("Temperature", "gs1:Temperature")
    ]
    assert reports
    # (the event's position is its place in the query page that brought it)
    (position,) = {line["source_locator"].split(";")[0] for line in lines}
    assert [line["source_locator"] for line in lines] == [
        f"{position};element={element};report={report}" for element, report in reports
    ]
    staged_refs = [r["_source_ref"] for r in staged(settings, "logistics.temperature_reading")]
    assert staged_refs
    assert all(ref.split("#", 1)[1].count(";") == 2 for ref in staged_refs)  # the same form


# --- whole EPCIS pages ----------------------------------------------------------------------------


def quarantine_page(settings: Settings, payload: bytes, code: str) -> str:
    """A page the sync could not read (kept raw, quarantined whole under the custody feed)."""
    lake = Lake(settings.lake_root)
    ref, _ = lake.put_raw(payload, kind="epcis")
    entry = QuarantineEntry(
        "logistics.custody_event",
        SourceRef(ref.sha256, "document"),
        (Reason(code, "epcis", None),),
    )
    write_quarantine(lake, [entry], feed=CUSTODY, day=DAY, run_id=RUN)
    return ref.sha256


def test_a_page_that_still_cannot_be_read_is_quarantined_whole_again(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    sha = quarantine_page(
        settings, b'{"type": "EPCISDocument", "epcisBody": ', "PARSE_EPCIS_NOT_JSON"
    )
    result = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=Enrolled(set()))
    assert (result.received, result.valid, result.quarantined) == (1, 0, 1)
    (line,) = lines_of(settings, result.quarantine)
    assert (line["source_sha256"], line["source_locator"], line["code"]) == (
        sha,
        "document",
        "PARSE_EPCIS_NOT_JSON",
    )


def test_a_page_quarantined_whole_that_reads_now_is_staged_like_an_ingest(
    sandbox_program: Path, tmp_path: Path
) -> None:
    """Its events were never recorded: those a sync staged since are duplicates, the others
    are staged and recorded, so that no later sync stages them again."""
    settings = load_settings(home=tmp_path / "home")
    enrolled = Enrolled(enrolled_cois(sandbox_program))
    server = EpcisServer(sandbox_program)
    custody = [e.body for e in server.events if not e.body.get("sensorElementList")]
    page = {
        "@context": CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "epcisBody": {"eventList": custody[:5]},
    }
    # A sync staged the first two events meanwhile (another page brought them).
    earlier = {**page, "epcisBody": {"eventList": custody[:2]}}
    sync = context(settings, "run-0")
    ledger = RunLedger("sync_epcis")
    staging = open_epcis_staging(sync, enrolled, ledger)
    data = json.dumps(earlier).encode()
    stage_epcis_payload(data, hashlib.sha256(data).hexdigest(), staging)
    staging.custody.stage()
    staging.custody.stager.finish()
    staging.save_state()

    quarantine_page(settings, json.dumps(page).encode(), "PARSE_EPCIS_SCHEMA_VERSION")
    result = replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=enrolled)
    assert (result.received, result.valid, result.quarantined) == (5, 3, 0)
    rows = staged(settings, "logistics.custody_event")
    assert len(rows) == len({r["event_id"] for r in rows}) == 5

    # Recorded: the same events from the repository are duplicates for the next sync.
    ledger = RunLedger("sync_epcis")
    staging = open_epcis_staging(context(settings, "run-3"), enrolled, ledger)
    data = json.dumps(page).encode() + b" "
    stage_epcis_payload(data, hashlib.sha256(data).hexdigest(), staging)
    assert (staging.custody.duplicates, staging.custody.tables[0].num_rows) == (5, 0)


def test_a_page_quarantined_whole_that_now_reads_with_sensor_reports_is_refused(
    sandbox_program: Path, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home")
    events = [e.body for e in EpcisServer(sandbox_program).events]
    page = {
        "@context": CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "epcisBody": {"eventList": events[:200]},
    }
    assert any(e.get("sensorElementList") for e in events[:200])
    quarantine_page(settings, json.dumps(page).encode(), "PARSE_EPCIS_SCHEMA_VERSION")
    with pytest.raises(HubError) as refused:
        replay_quarantine(settings, feed=CUSTODY, run_id=RUN, port=Enrolled(set()))
    assert refused.value.code == "REPLAY_UNSUPPORTED"
    assert "cmohub logistics sync --since" in str(refused.value)
    assert not Path(settings.lake_root, "runs", f"replay-{RUN}-1").exists()
    assert not Path(settings.lake_root, "staged").exists()


# --- logger files ---------------------------------------------------------------------------------


def logger_program(sandbox_program: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """The program's courier API with two logger exports changed: one gives its unit per row,
    two rows in a spelling the hub does not know (``℉``) and one row with a field too many;
    the other has lost its serial column (no row can be read). Returns both file names."""
    program = tmp_path / "program"
    shutil.copytree(sandbox_program / "courier", program / "courier")
    shutil.copytree(sandbox_program / "sponsor", program / "sponsor")
    first, second = sorted((program / "courier").glob("*/loggers/*/*.csv"))[:2]
    rows = list(csv.DictReader(io.StringIO(first.read_text())))
    out = io.StringIO()
    out.write("serial,shipment,local_time,utc_offset,temp,unit\n")
    for number, row in enumerate(rows, start=1):
        unit = "℉" if number in (2, 3) else "F"
        line = f"{row['serial']},{row['shipment']},{row['local_time']},{row['utc_offset']}"
        out.write(f"{line},{row['temp_f']},{unit}" + (",extra" if number == 5 else "") + "\n")
    first.write_text(out.getvalue())
    second.write_text(second.read_text().replace("serial,", "logger,", 1))
    return program, first.name, second.name


def test_logger_rows_in_a_unit_learned_since_are_staged_once_unreadable_files_stay(
    sandbox_program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program, _, _ = logger_program(sandbox_program, tmp_path)
    settings = load_settings(home=tmp_path / "home")
    courier = CourierServer(program)
    with courier.running():
        synced = sync_courier(
            context(settings),
            endpoint=SourceEndpoint(
                courier.base_url, courier.client_id, Sensitive(courier.client_secret)
            ),
            port=Enrolled(enrolled_cois(program)),
            since=SINCE,
        )
    loggers = synced["feeds"][LOGGERS]
    original = lines_of(settings, loggers["quarantine"])
    assert sorted((line["code"], line["source_locator"]) for line in original) == [
        ("PARSE_LOGGER_CSV", "file"),
        ("RECORD_MALFORMED", "row=5"),
        ("TEMPERATURE_UNIT_UNKNOWN", "row=2"),
        ("TEMPERATURE_UNIT_UNKNOWN", "row=3"),
    ]
    before = staged(settings, "logistics.temperature_reading")

    monkeypatch.setitem(units._SPELLINGS, "℉", units.FAHRENHEIT)  # the fix
    result = replay_quarantine(settings, feed=LOGGERS, run_id=RUN, port=Enrolled(set()))
    assert (result.received, result.valid, result.quarantined) == (4, 2, 2)
    again = sorted(
        (line["code"], line["source_locator"]) for line in lines_of(settings, result.quarantine)
    )
    assert again == [("PARSE_LOGGER_CSV", "file"), ("RECORD_MALFORMED", "row=5")]

    rows = staged(settings, "logistics.temperature_reading")
    assert len(rows) == len(before) + 2
    refs = [r["_source_ref"] for r in rows]
    assert len(refs) == len(set(refs))  # no row staged twice
    replayed = sorted(r["_source_ref"].split("#")[1] for r in rows if r["_run_id"] == result.run_id)
    assert replayed == ["row=2", "row=3"]
    # Nothing left but what cannot be read: the nightly sees those two, under the replay.
    still = [
        q for q in load_quarantine(Lake(settings.lake_root), up_to=DAY) if q["feed"] == LOGGERS
    ]
    assert sorted(q["source_locator"] for q in still) == ["file", "row=5"]
    assert [
        (q.run_id, q.current) for q in list_quarantine(Lake(settings.lake_root), feed=LOGGERS)
    ] == [
        (RUN, False),
        (result.run_id, True),
    ]


def test_a_logger_replay_without_the_raw_file_fails_with_a_clear_code(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    lake = Lake(settings.lake_root)
    entry = QuarantineEntry(
        "logistics.temperature_reading",
        SourceRef("ab" * 32, "row=1"),
        (Reason("LOGGER_VALUE_INVALID", "loggers", None),),
    )
    write_quarantine(lake, [entry], feed=LOGGERS, day=DAY, run_id=RUN)
    with pytest.raises(HubError) as missing:
        replay_quarantine(settings, feed=LOGGERS, run_id=RUN, port=Enrolled(set()))
    assert missing.value.code == "RAW_NOT_KEPT"
    assert "raw/logger_csv/" in str(missing.value)
    assert not Path(settings.lake_root, "runs", f"replay-{RUN}-1").exists()
