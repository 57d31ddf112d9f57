"""Applying mappings: rows and issues out, identities resolved in one batch, nothing leaked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from tests.unit.test_mapping_paths import ORU, TinyHl7

from cmohub.contracts.model import Severity
from cmohub.errors import MappingError
from cmohub.identifiers import Coi, Din
from cmohub.identity import Actor, CoiStatus, TokenizeRequest
from cmohub.mapping import (
    MappingResult,
    PendingTokenize,
    PendingVerify,
    SourceRecord,
    apply_mapping,
    compile_mapping,
    parse_mapping,
    read_records,
    resolve_identities,
)
from cmohub.mapping.store import mapping_schema

SHA = "cd" * 32
COI = str(Coi("A9990", "26", "AB12C3"))
OTHER = str(Coi("A9991", "26", "QW3RT7"))
DIN = str(Din("A9993", "26", "000019"))
ACTOR = Actor(name="pipeline:test", role="service", feed="test")
CANARY = "CANARY-MRN-55501"


def mapping(text: str) -> Any:
    return compile_mapping(parse_mapping(yaml.safe_load(text), mapping_schema(), origin="test"))


def run(compiled: Any, data: bytes) -> MappingResult:
    records = read_records(compiled.spec.source, data)
    return apply_mapping(compiled, records, run_id="run-1", source_sha256=SHA)


BATCHES = """
mapping: test-batches
version: 1.0.0
description: test
produces: {{dataset: manufacturing.batch, contract_version: "1"}}
source:
  format: csv
  time_zone: America/New_York
  drift: {drift}
  fields: [{{name: Lot}}, {{name: COI, classification: confidential}}, {{name: DIN}},
           {{name: Start}}, {{name: Status}}, {{name: Notes}}]
targets:
  batch_id: Lot
  coi: {{from: COI, identity: verify}}
  din: {{from: DIN, identity: din}}
  cmo: {{const: A9996}}
  product_code: {{const: SBX-CART-01}}
  started_at: {{from: Start, transforms: [{{parse_datetime: {{format: "%Y-%m-%d %H:%M"}}}}]}}
  status: {{from: Status, transforms: [{{map_values: {{table: {{Done: complete}}}}}}]}}
"""


def batches(drift: str = "quarantine") -> Any:
    return mapping(BATCHES.format(drift=drift))


def csv(*rows: str, header: str = "Lot,COI,DIN,Start,Status,Notes") -> bytes:
    return ("\ufeff" + header + "\r\n" + "".join(r + "\r\n" for r in rows)).encode()


def test_rows_carry_canonical_values_and_lineage() -> None:
    result = run(batches(), csv(f"B1,{COI.lower()},={DIN},2026-01-11 17:29,Done,"))
    (row,) = result.rows
    assert row.values["batch_id"] == "B1" and row.values["cmo"] == "A9996"
    assert row.values["coi"] == PendingVerify(COI)  # normalized data form, checked locally
    assert row.values["din"] == DIN
    assert row.values["started_at"] == datetime(2026, 1, 11, 22, 29, tzinfo=UTC)
    assert row.values["_source_ref"] == f"{SHA}#row=1"
    assert (row.values["_feed"], row.values["_run_id"]) == ("test-batches", "run-1")


def test_a_record_with_any_error_is_rejected_whole_with_codes_and_fields() -> None:
    bad_coi = COI[:-1] + ("A" if COI[-1] != "A" else "B")
    result = run(
        batches(),
        csv(
            f"B1,{COI},{DIN},2026-01-11 17:29,Done,",
            f"B2,{bad_coi},{DIN},2026-01-11 17:29,Done,",
            f"B3,{COI},{DIN},yesterday,Paused,",
            f"B4,{COI},{DIN}",
        ),
    )
    assert [r.locator for r in result.rows] == ["row=1"]
    rejected = {r.locator: [(i.code, i.field) for i in r.issues] for r in result.rejected}
    assert rejected["row=2"] == [("COI_CHECK_INVALID", "coi")]
    assert rejected["row=3"] == [
        ("MAPPING_NOT_A_DATETIME", "started_at"),
        ("MAPPING_VALUE_UNMAPPED", "status"),
    ]
    assert rejected["row=4"] == [("MAPPING_RECORD_MALFORMED", None)]
    detail = next(i for i in result.issues if i.code == "COI_CHECK_INVALID").detail
    assert detail == "ID_CHECK_CHARACTER"
    entries = result.quarantine_entries()
    assert [(e.source.locator, e.code) for e in entries if e.source] == [
        ("row=2", "COI_CHECK_INVALID"),
        ("row=3", "MAPPING_NOT_A_DATETIME"),
        ("row=4", "MAPPING_RECORD_MALFORMED"),
    ]
    assert bad_coi not in json.dumps([i.to_dict() for i in result.issues])


def test_unknown_source_fields_quarantine_or_warn_by_policy() -> None:
    header = "Lot,COI,DIN,Start,Status,Notes,Patient Name"
    rows = (
        f"B1,{COI},{DIN},2026-01-11 17:29,Done,,{CANARY}",
        f"B2,{COI},{DIN},2026-01-11 17:29,Done,,",  # the new column is empty here: no drift
    )
    strict = run(batches("quarantine"), csv(*rows, header=header))
    assert [r.locator for r in strict.rejected] == ["row=1"]
    issue = strict.rejected[0].issues[0]
    assert (issue.code, issue.field, issue.severity) == (
        "MAPPING_UNKNOWN_FIELD",
        "Patient Name",
        Severity.ERROR,
    )
    lenient = run(batches("warn"), csv(*rows, header=header))
    assert len(lenient.rows) == 2 and lenient.rows[0].warnings[0].severity is Severity.WARNING
    assert "Patient Name" not in lenient.rows[0].values
    assert CANARY not in json.dumps([i.to_dict() for i in lenient.issues])


class FakeVault:
    """An IdentityPort that records its calls."""

    def __init__(self, statuses: dict[str, CoiStatus] | None = None) -> None:
        self.statuses = statuses or {}
        self.calls: list[tuple[str, int]] = []
        self.requests: list[TokenizeRequest] = []

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        self.calls.append(("tokenize", len(requests)))
        self.requests.extend(requests)
        return [Coi("A9999", "26", f"TOK{i:03d}") for i in range(len(requests))]

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        self.calls.append(("verify", len(cois)))
        return [self.statuses.get(c, CoiStatus.KNOWN) for c in cois]


def test_cois_are_verified_in_one_batch_and_unknown_ones_rejected() -> None:
    result = run(
        batches(),
        csv(
            f"B1,{COI},{DIN},2026-01-11 17:29,Done,",
            f"B2,{OTHER},{DIN},2026-01-11 17:29,Done,",
            f"B3,{COI},{DIN},2026-01-11 17:29,Done,",
        ),
    )
    vault = FakeVault({OTHER: CoiStatus.UNKNOWN})
    with pytest.raises(MappingError, match="pending"):
        result.canonical_rows()
    resolved = resolve_identities(result, vault, actor=ACTOR)
    assert vault.calls == [("verify", 2)]  # distinct COIs, one call
    assert [r["batch_id"] for r in resolved.canonical_rows()] == ["B1", "B3"]
    assert resolved.rejected[0].issues[0].code == "COI_UNKNOWN"
    assert resolved.received == 3


def test_withdrawn_cois_stay_with_a_warning() -> None:
    result = run(batches(), csv(f"B1,{COI},{DIN},2026-01-11 17:29,Done,"))
    resolved = resolve_identities(result, FakeVault({COI: CoiStatus.WITHDRAWN}), actor=ACTOR)
    assert resolved.rows[0].values["coi"] == COI
    assert [i.code for i in resolved.issues] == ["COI_WITHDRAWN"]


ORDERS = """
mapping: test-fhir-orders
version: 1.0.0
description: test
produces: {dataset: clinical.order, contract_version: "1"}
source:
  format: fhir
  resource_type: ServiceRequest
  fields: [{name: contained}, {name: authoredOn}, {name: status}, {name: requisition}]
targets:
  order_id: requisition.value
  coi:
    identity:
      tokenize:
        system: {from: "contained[0].identifier[0].system"}
        value: {from: "contained[0].identifier[0].value", transforms: [strip]}
        therapy_event: {from: requisition.value}
        demographics:
          birth_date: {from: "contained[0].birthDate"}
  product_code: {const: SBX-CART-01}
  ordering_site: {const: A9990}
  collection_site: {const: A9990}
  ordered_at: {from: authoredOn, transforms: [parse_datetime]}
  status: {from: status, transforms: [{map_values: {table: {active: placed}}}]}
"""


def service_request(n: int, mrn: str | None) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "birthDate": "1980-01-01"}
    if mrn is not None:
        patient["identifier"] = [{"system": "urn:oid:1.2.3.4", "value": mrn}]
    return {
        "resourceType": "ServiceRequest",
        "contained": [patient],
        "requisition": {"value": f"ORD-{n}"},
        "status": "active",
        "authoredOn": "2026-01-05T09:00:00+01:00",
    }


def bundle(*resources: dict[str, Any]) -> bytes:
    entries = [{"resource": r} for r in resources] + [{"resource": {"resourceType": "Patient"}}]
    return json.dumps({"resourceType": "Bundle", "entry": entries}).encode()


def test_subject_identities_are_tokenized_in_one_batch_and_never_exposed() -> None:
    compiled = mapping(ORDERS)
    result = run(compiled, bundle(service_request(1, f" {CANARY} "), service_request(2, None)))
    pending = result.rows[0].values["coi"]
    assert isinstance(pending, PendingTokenize)
    assert CANARY not in repr(result) and CANARY not in str(pending)
    assert [i.code for i in result.issues] == ["IDENTITY_INCOMPLETE"]
    vault = FakeVault()
    resolved = resolve_identities(result, vault, actor=ACTOR)
    assert vault.calls == [("tokenize", 1)]
    request = vault.requests[0]
    assert request.identity.value.reveal() == CANARY  # stripped, wrapped in Sensitive
    assert request.identity.demographics.birth_date is not None
    assert request.therapy_event == "ORD-1"
    rows = resolved.canonical_rows()
    assert rows[0]["coi"] == "CHA999926TOK000" + Coi("A9999", "26", "TOK000").check
    assert CANARY not in json.dumps(rows, default=str)


def test_several_values_where_one_is_expected_are_ambiguous() -> None:
    compiled = mapping(
        ORDERS.replace("order_id: requisition.value", "order_id: contained.resourceType")
    )
    request = service_request(1, "X")
    request["contained"].append({"resourceType": "Practitioner"})
    result = run(compiled, bundle(request))
    assert [i.code for i in result.rejected[0].issues] == ["MAPPING_AMBIGUOUS"]


READINGS = """
mapping: test-logger
version: 1.0.0
description: test
produces: {dataset: logistics.temperature_reading, contract_version: "1"}
source:
  format: json
  record_path: "shipments[*].readings[*]"
  fields: [{name: t}, {name: v}, {name: u}]
targets:
  logger_id: {from: ^.logger}
  shipment_id: {from: ^.id}
  observed_at: {from: t, transforms: [parse_datetime]}
  celsius: {from: v, transforms: [{celsius_from: {unit: {from: u}}}]}
"""


def test_nested_records_read_parent_fields_and_per_record_units() -> None:
    document = {
        "shipments": [
            {
                "id": "SHP-1",
                "logger": "LG-7",
                "readings": [
                    {"t": "2026-03-01T10:00:00Z", "v": -292, "u": "F"},
                    {"t": "2026-03-01T10:01:00Z", "v": -180, "u": "C"},
                    {"t": "2026-03-01T10:02:00Z", "v": 1, "u": "parsec"},
                ],
            }
        ]
    }
    result = run(mapping(READINGS), json.dumps(document).encode())
    assert [r.values["celsius"] for r in result.rows] == [-180.0, -180.0]
    assert result.rows[0].values["logger_id"] == "LG-7"
    assert result.rows[0].values["_source_ref"] == f"{SHA}#path=shipments[1].readings[1]"
    assert result.rejected[0].issues[0].code == "MAPPING_UNIT_UNKNOWN"


LAB = """
mapping: test-hl7
version: 1.0.0
description: test
produces: {dataset: quality.qc_result, contract_version: "1"}
source:
  format: hl7v2
  segment: OBX
  time_zone: Europe/Berlin
  fields: [{name: PID, classification: restricted, description: not read by this feed}]
targets:
  result_id: {from: MSH-10}
  batch_id: {from: OBR-2}
  test_code: {from: OBX-3}
  value: {from: OBX-5, transforms: [to_float]}
  unit: {from: OBX-6}
  tested_at: {from: OBR-7, transforms: [parse_hl7_ts]}
  status: {const: final}
"""


def test_hl7_records_are_read_through_the_record_protocol() -> None:
    compiled = mapping(LAB)
    records = [SourceRecord("message=1", TinyHl7(ORU))]
    result = apply_mapping(compiled, records, run_id="r", source_sha256=SHA)
    assert not result.rejected, result.issues
    values = result.rows[0].values
    assert (values["test_code"], values["value"], values["unit"]) == ("VIAB", 88.5, "%")
    assert values["tested_at"] == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


def test_hl7_needs_a_format_adapter_reader() -> None:
    with pytest.raises(MappingError) as raised:
        list(read_records(mapping(LAB).spec.source, ORU.encode()))
    assert raised.value.code == "MAPPING_READER_MISSING"


XML_MAPPING = """
mapping: test-xml
version: 1.0.0
description: test
produces: {dataset: manufacturing.batch, contract_version: "1"}
source:
  format: xml
  record_path: b:BatchRecord
  namespaces: {b: "http://www.mesa.org/xml/B2MML"}
  time_zone: Europe/Berlin
targets:
  batch_id: b:BatchID
  coi: {from: "b:Parameter[b:ID='COI']/b:Value", identity: verify}
  din: {from: "b:Parameter[b:ID='DIN']/b:Value", identity: din}
  cmo: {const: A9997}
  product_code: {const: SBX-TCR-02}
  started_at: {from: "b:Parameter[b:ID='START']/b:Value", transforms: [parse_datetime]}
  status: {const: complete}
"""


def test_xml_records_map_and_entities_are_refused() -> None:
    compiled = mapping(XML_MAPPING)
    document = f"""<?xml version="1.0"?>
<BatchInformation xmlns="http://www.mesa.org/xml/B2MML">
  <BatchRecord><BatchID>BOR1</BatchID>
    <Parameter><ID>COI</ID><Value>{COI}</Value></Parameter>
    <Parameter><ID>DIN</ID><Value>{DIN}</Value></Parameter>
    <Parameter><ID>START</ID><Value>2026-01-11T17:29:00</Value></Parameter>
  </BatchRecord>
</BatchInformation>""".encode()
    result = run(compiled, document)
    assert result.rows[0].values["started_at"] == datetime(2026, 1, 11, 16, 29, tzinfo=UTC)
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><BatchInformation>&lol2;</BatchInformation>'
    )
    with pytest.raises(MappingError) as raised:
        run(compiled, laughs)
    assert raised.value.code == "MAPPING_SOURCE_UNSAFE_XML"


EVENTS = """
mapping: test-epcis
version: 1.0.0
description: test
produces: {dataset: logistics.custody_event, contract_version: "1"}
source:
  format: epcis
  event_type: ObjectEvent
  drift: warn
targets:
  event_id: {from: eventID}
  coi: {from: "epcList[0]", transforms: [{split: {sep: ".", index: 1}}], identity: verify}
  event_time: {from: eventTime, transforms: [parse_datetime]}
  event_time_zone_offset: eventTimeZoneOffset
  action: action
  biz_step: bizStep
"""


def test_epcis_documents_yield_their_events_of_one_type() -> None:
    document = {
        "type": "EPCISDocument",
        "epcisBody": {
            "eventList": [
                {
                    "type": "ObjectEvent",
                    "eventID": "ni:///sha-256;abc",
                    "eventTime": "2026-03-01T10:00:00.000+01:00",
                    "eventTimeZoneOffset": "+01:00",
                    "epcList": [f"urn:epc:id:giai:0614141.{COI}"],
                    "action": "OBSERVE",
                    "bizStep": "shipping",
                },
                {"type": "AggregationEvent", "eventID": "x"},
            ]
        },
    }
    result = run(mapping(EVENTS), json.dumps(document).encode())
    assert len(result.rows) == 1 and result.rows[0].values["coi"] == PendingVerify(COI)
    assert result.rows[0].values["_source_ref"].endswith("#event=1")
