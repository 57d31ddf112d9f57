"""EPCIS 2.0: reading events, canonical keys, bad input with codes, error declarations,
and the query client against the sandbox repository (paging, filters, faults)."""

from __future__ import annotations

import copy
import hashlib
import json
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cmohub.errors import ParseError, SourceError
from cmohub.formats.epcis import (
    mapping_record,
    parse_epcis_document,
    resolve_events,
    sensor_readings,
)
from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus
from cmohub.lake import Lake
from cmohub.sandbox.servers.base import FaultPlan
from cmohub.sandbox.servers.epcis import EpcisServer
from cmohub.sources.epcis import EpcisQuery, EpcisQueryClient
from cmohub.sources.rest import RestClient, RetryPolicy

CONTEXT = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
COI = str(Coi("A9999", "26", "EPC001"))
NO_WAIT = RetryPolicy(sleep=lambda seconds: None)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": "2026-02-01T10:00:00+01:00",
        "eventTimeZoneOffset": "+01:00",
        "eventID": "urn:uuid:0b0e0a52-0000-4000-8000-000000000001",
        "epcList": [f"urn:cmohub:coi:{COI}"],
        "action": "OBSERVE",
        "bizStep": "shipping",
        "disposition": "in_transit",
        "readPoint": {"id": "urn:epc:id:sgln:0614141.99991.0"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def document(*events: dict[str, Any], kind: str = "EPCISDocument") -> bytes:
    body: dict[str, Any] = {"eventList": list(events)}
    if kind == "EPCISQueryDocument":
        body = {"queryResults": {"resultsBody": body}}
    return json.dumps(
        {"@context": CONTEXT, "type": kind, "schemaVersion": "2.0", "epcisBody": body}
    ).encode()


def sensor_event(*reports: dict[str, Any], **fields: Any) -> dict[str, Any]:
    element = {
        "sensorMetadata": {"deviceID": "urn:epc:id:giai:0614141.LG-7"},
        "sensorReport": list(reports),
    }
    return event(
        bizStep="sensor_reporting", disposition=None, sensorElementList=[element], **fields
    )


# --- reading -------------------------------------------------------------------------------------


def test_an_event_is_read_with_utc_time_its_offset_and_cbv_short_names() -> None:
    raw = event(
        bizStep="urn:epcglobal:cbv:bizstep:receiving",
        disposition="https://ref.gs1.org/cbv/Disp-in_progress",
        sourceList=[{"type": "possessing_party", "source": "urn:epc:id:pgln:0614141.88801"}],
        destinationList=[
            {
                "type": "urn:epcglobal:cbv:sdt:possessing_party",
                "destination": "urn:epc:id:pgln:0614141.99996",
            }
        ],
        bizTransactionList=[{"type": "bol", "bizTransaction": "urn:cmohub:shipment:PLR1"}],
    )
    (read,) = parse_epcis_document(document(raw)).events
    assert read.event_time == datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
    assert read.local_time.isoformat() == "2026-02-01T10:00:00+01:00"
    assert (read.biz_step, read.disposition) == ("receiving", "in_progress")
    assert read.party("source") == "urn:epc:id:pgln:0614141.88801"
    assert read.party("destination") == "urn:epc:id:pgln:0614141.99996"
    assert (read.coi, read.shipment_id) == (COI, "PLR1")
    record = mapping_record(read)
    assert record["bizStep"] == "receiving" and record["cmohub:eventKey"] == read.key
    assert record["destinationList"][0]["type"] == "possessing_party"


def test_query_documents_and_aggregation_and_transformation_events_are_read() -> None:
    aggregation = event(
        type="AggregationEvent",
        epcList=None,
        parentID="urn:epc:id:sscc:0614141.1234567890",
        childEPCs=[f"urn:cmohub:coi:{COI}"],
        action="ADD",
    )
    transformation = event(
        type="TransformationEvent",
        epcList=None,
        action=None,
        inputEPCList=[f"urn:cmohub:coi:{COI}"],
        outputEPCList=["urn:epc:id:sgtin:0614141.107346.1"],
    )
    read = parse_epcis_document(document(aggregation, transformation, kind="EPCISQueryDocument"))
    assert read.kind == "EPCISQueryDocument"
    assert [(e.type, e.coi) for e in read.events] == [
        ("AggregationEvent", COI),
        ("TransformationEvent", COI),
    ]
    assert read.events[0].parent_id == "urn:epc:id:sscc:0614141.1234567890"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "PARSE_EPCIS_NOT_JSON"),
        (b"[1, 2]", "PARSE_EPCIS_NOT_A_DOCUMENT"),
        (
            json.dumps(
                {"type": "EPCISDocument", "schemaVersion": "1.2", "epcisBody": {"eventList": []}}
            ).encode(),
            "PARSE_EPCIS_SCHEMA_VERSION",
        ),
        (
            json.dumps({"type": "EPCISDocument", "epcisBody": {}}).encode(),
            "PARSE_EPCIS_NO_EVENT_LIST",
        ),
    ],
)
def test_documents_that_cannot_be_read_are_refused_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse_epcis_document(payload)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"eventTime": "2026-02-01T10:00:00"}, "EPCIS_TIME_OFFSET_MISSING"),
        ({"eventTimeZoneOffset": None}, "EPCIS_TIME_OFFSET_MISSING"),
        ({"eventTime": "yesterday"}, "EPCIS_TIME_INVALID"),
        ({"eventTime": None}, "EPCIS_TIME_MISSING"),
        ({"type": "MadeUpEvent"}, "EPCIS_EVENT_INVALID"),
    ],
)
def test_an_unreadable_event_is_rejected_alone_with_a_code(
    fields: dict[str, Any], code: str
) -> None:
    read = parse_epcis_document(
        document(event(**fields), event(eventID="urn:uuid:other", bizStep="departing"))
    )
    assert [(r.index, r.code) for r in read.rejected] == [(1, code)]
    assert [e.index for e in read.events] == [2]


def test_readings_without_a_unit_or_with_an_unknown_unit_are_refused_one_by_one() -> None:
    reports = [
        {
            "type": "gs1:Temperature",
            "time": "2026-02-01T10:00:00+01:00",
            "value": 5.0,
            "uom": "CEL",
        },
        {
            "type": "gs1:Temperature",
            "time": "2026-02-01T10:01:00+01:00",
            "value": 41.0,
            "uom": "FAH",
        },
        {
            "type": "gs1:Temperature",
            "time": "2026-02-01T10:02:00+01:00",
            "value": 278.15,
            "uom": "KEL",
        },
        {"type": "gs1:Temperature", "time": "2026-02-01T10:03:00+01:00", "value": 5.0},
        {
            "type": "gs1:Temperature",
            "time": "2026-02-01T10:04:00+01:00",
            "value": 5.0,
            "uom": "MTR",
        },
        {"type": "Temperature", "exception": "ALARM_CONDITION", "booleanValue": True},
        {"type": "gs1:RelativeHumidity", "value": 40.0, "uom": "P1"},
    ]
    readings = sensor_readings(parse_epcis_document(document(sensor_event(*reports))).events)
    assert readings.celsius == pytest.approx([5.0, 5.0, 5.0])
    assert readings.logger_id == ["LG-7"] * 3
    assert [code for _, code, _ in readings.rejected] == [
        "TEMPERATURE_UNIT_MISSING",
        "TEMPERATURE_UNIT_UNKNOWN",
        "EPCIS_SENSOR_ALARM_CONDITION",
    ]
    assert [c.condition for c in readings.conditions] == ["ALARM_CONDITION"]
    assert readings.other_reports == 1 and readings.received == 6


# --- duplicates and error declarations -----------------------------------------------------------


def test_the_same_event_under_two_event_ids_is_one_event() -> None:
    first = event()
    again = event(
        eventID="urn:uuid:0b0e0a52-0000-4000-8000-00000000beef", recordTime="2026-02-02T00:00:00Z"
    )
    other = event(eventID="urn:uuid:x", bizStep="departing")
    resolution = resolve_events(parse_epcis_document(document(first, again, other)).events)
    assert [e.index for e in resolution.kept] == [1, 3]
    assert [e.index for e in resolution.duplicates] == [2]


def test_an_error_declaration_retracts_the_event_and_its_correction_replaces_it() -> None:
    wrong = event(readPoint={"id": "urn:epc:id:sgln:0614141.99997.0"})
    declared = copy.deepcopy(wrong)
    declared["errorDeclaration"] = {
        "declarationTime": "2026-02-01T12:00:00+01:00",
        "reason": "incorrect_data",
        "correctiveEventIDs": ["urn:uuid:corrected"],
    }
    corrected = event(eventID="urn:uuid:corrected")
    resolution = resolve_events(parse_epcis_document(document(wrong, declared, corrected)).events)
    assert [e.index for e in resolution.kept] == [3]
    assert [e.index for e in resolution.retracted] == [1]
    (declaration,) = resolution.declarations
    assert declaration.error_declaration is not None
    assert declaration.error_declaration.corrective_event_ids == ("urn:uuid:corrected",)
    assert resolution.retracted_keys == {resolution.retracted[0].key}


class Enrolled:
    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN if c == COI else CoiStatus.UNKNOWN for c in cois]

    def tokenize_many(self, requests: Sequence[object], *, actor: Actor) -> list[object]:
        raise AssertionError("never")


def test_across_runs_duplicates_are_suppressed_retractions_applied_and_bad_cois_quarantined(
    tmp_path: Path,
) -> None:
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.ledger import RunLedger
    from cmohub.pipelines.logistics import (
        FEED_CUSTODY,
        FEED_SENSOR,
        FeedBatch,
        Retractions,
        SeenKeys,
        _EpcisStaging,
        load_logistics,
        stage_epcis_payload,
    )
    from cmohub.pipelines.stage import FeedStager
    from cmohub.settings import load_settings

    settings = load_settings(home=tmp_path)

    def run(run_id: str, payload: bytes) -> RunLedger:
        context = RunContext.for_interval(
            "logistics_sync", datetime(2026, 2, 2, tzinfo=UTC), run_id=run_id, settings=settings
        )
        ledger = RunLedger("sync_epcis")
        staging = _EpcisStaging(
            custody=FeedBatch(FeedStager(context, FEED_CUSTODY, port=Enrolled(), ledger=ledger)),
            sensor=FeedBatch(FeedStager(context, FEED_SENSOR, port=Enrolled(), ledger=ledger)),
            seen=SeenKeys(context.lake, FEED_CUSTODY),
            retractions=Retractions(context.lake),
            run_id=context.path_run_id,
        )
        stage_epcis_payload(payload, hashlib.sha256(payload).hexdigest(), staging)
        staging.custody.stage()
        staging.sensor.stage()
        staging.seen.save()
        staging.retractions.save()
        ledger.check()
        return ledger

    shipping = event()
    departing = event(
        eventID="urn:uuid:dep", bizStep="departing", eventTime="2026-02-01T10:10:00+01:00"
    )
    corrupted = event(
        eventID="urn:uuid:bad", epcList=[f"urn:cmohub:coi:{COI[:-1]}Q"], bizStep="inspecting"
    )
    unknown = event(
        eventID="urn:uuid:unknown", epcList=[f"urn:cmohub:coi:{Coi('A9999', '26', 'NOPE00')}"]
    )
    first = run("r1", document(shipping, departing, corrupted, unknown))
    assert first.counts[FEED_CUSTODY].valid == 2
    assert first.quarantine_codes == {"COI_CHECK_INVALID": 1, "COI_UNKNOWN": 1}

    declared = copy.deepcopy(departing)
    declared["errorDeclaration"] = {"declarationTime": "2026-02-01T11:00:00+01:00"}
    again = run("r2", document(shipping, declared))  # the lookback brings shipping again
    assert (again.counts[FEED_CUSTODY].valid, again.counts[FEED_CUSTODY].duplicates) == (0, 2)

    custody = load_logistics(Lake(settings.lake_root)).custody
    assert custody.column("biz_step").to_pylist() == ["shipping"]  # departing was retracted


# --- hashing never reaches the network -----------------------------------------------------------


def test_canonical_hashes_are_computed_offline_whatever_contexts_a_document_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the EPCIS adapter tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    doc = json.loads(document(event()))
    doc["@context"] = [
        *CONTEXT,
        "https://example.com/unreachable-context.jsonld",
        {"ex": "https://ex.example/"},
    ]
    (read,) = parse_epcis_document(json.dumps(doc).encode()).events
    assert read.key == parse_epcis_document(document(event())).events[0].key


# --- the query client against the sandbox repository ---------------------------------------------


def events_of(pages: list[Any]) -> list[dict[str, Any]]:
    return [
        e for p in pages for e in p.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    ]


def test_the_query_client_pages_filters_and_rides_out_faults(sandbox_program: Path) -> None:
    server = EpcisServer(
        sandbox_program,
        faults=FaultPlan(rate_limit_every=3, unavailable_every=4, malformed_paths={"/events"}),
    )
    with server.running(), httpx.Client() as http:
        client = EpcisQueryClient(RestClient(http, server.base_url, retry=NO_WAIT), page_size=150)
        since, until = datetime(2026, 1, 20, tzinfo=UTC), datetime(2026, 1, 27, tzinfo=UTC)
        pages = list(client.iter_pages(EpcisQuery(since, until, match_any_epc="urn:cmohub:coi:*")))
        got = events_of(pages)
        expected = [e for e in server.events if since <= e.at < until]
        assert len(got) == len(expected) > 150 and len(pages) > 1
        assert [e["eventID"] for e in got] == [e.body["eventID"] for e in expected]
        assert (
            server.stats.faults["429"]
            and server.stats.faults["503"]
            and server.stats.faults["malformed"]
        )
        custody_only = list(
            client.iter_pages(EpcisQuery(since, until, event_types=("ObjectEvent",)))
        )
        assert len(events_of(custody_only)) == len(got)


def test_a_page_token_used_with_another_query_is_refused(sandbox_program: Path) -> None:
    server = EpcisServer(sandbox_program)
    with server.running(), httpx.Client() as http:
        rest = RestClient(http, server.base_url, retry=NO_WAIT)
        first = rest.get("events", {"perPage": "5"})
        token = first.headers["gs1-next-page-token"]
        assert 'rel="next"' in first.headers["link"]
        with pytest.raises(SourceError) as raised:
            rest.get(
                "events",
                {"perPage": "5", "GE_eventTime": "2026-02-01T00:00:00Z", "nextPageToken": token},
            )
        assert raised.value.code == "SOURCE_HTTP_400"
