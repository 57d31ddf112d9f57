"""Path languages per source kind: what a mapping can point at in each format."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from cmohub.errors import MappingError
from cmohub.mapping.paths import HL7_REF, Hl7Record, compile_path, field_path, top_field
from cmohub.mapping.readers import parse_xml


class TinyHl7:
    """A minimal pure HL7 v2 splitter standing in for formats/hl7v2.py in tests."""

    def __init__(self, message: str) -> None:
        self.segments = [s.split("|") for s in message.strip("\r\n").split("\r") if s]

    def segment_ids(self) -> Iterable[str]:
        return [s[0] for s in self.segments]

    def get(self, ref: str) -> str | None:
        match = HL7_REF.match(ref)
        assert match is not None
        wanted = int(match["segment_repeat"] or 1)
        found = [s for s in self.segments if s[0] == match["segment"]]
        if len(found) < wanted:
            return None
        fields = found[wanted - 1]
        number = int(match["field"]) - (1 if match["segment"] == "MSH" else 0)
        if number >= len(fields):
            return None
        repeats = fields[number].split("~")
        index = int(match["repeat"] or 1) - 1
        if index >= len(repeats):
            return None
        value = repeats[index]
        if match["component"]:
            parts = value.split("^")
            c = int(match["component"]) - 1
            value = parts[c] if c < len(parts) else ""
            if match["sub"]:
                subs = value.split("&")
                sc = int(match["sub"]) - 1
                value = subs[sc] if sc < len(subs) else ""
        return value or None


ORU = (
    "MSH|^~\\&|LIS|A9990|HUB|SPONSOR|20260301101500+0100||ORU^R01|MSG1|P|2.5.1\r"
    "PID|1||MRN123^^^HOSP^MR~SUBJ-9^^^STUDY^RI||DOE^JANE||19800101|F\r"
    "OBR|1|ORD-1||VIAB|||20260301093000\r"
    "OBX|1|NM|VIAB||88.5|%\r"
    "OBX|2|ST|STER||negative\r"
)


def test_tiny_splitter_satisfies_the_record_protocol() -> None:
    assert isinstance(TinyHl7(ORU), Hl7Record)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("PID-3.1", ["MRN123"]),
        ("PID-3[2].1", ["SUBJ-9"]),
        ("PID-3[2].4", ["STUDY"]),
        ("PID-5.2", ["JANE"]),
        ("OBR-7", ["20260301093000"]),
        ("OBX-5", ["88.5"]),
        ("OBX[2]-5", ["negative"]),
        ("MSH-9.1", ["ORU"]),
        ("PID-30", []),
    ],
)
def test_hl7_field_references(ref: str, expected: list[str]) -> None:
    assert compile_path("hl7v2", ref)(TinyHl7(ORU)) == expected


@pytest.mark.parametrize("ref", ["PID3", "pid-3", "PID-3.x", "PID-", "PID-3..1"])
def test_bad_hl7_references_are_refused_at_compile_time(ref: str) -> None:
    with pytest.raises(MappingError) as raised:
        compile_path("hl7v2", ref)
    assert raised.value.code == "MAPPING_PATH_INVALID"


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "urn:oid:1.2.3.mrn", "value": "MRN123"},
        {"system": "urn:oid:1.2.3.study", "value": "SUBJ-9"},
    ],
    "name": [{"family": "Doe", "given": ["Jane", "Q"]}],
    "birthDate": "1980-01-01",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Patient.identifier.where(system='urn:oid:1.2.3.study').value", ["SUBJ-9"]),
        ('identifier.where(system = "urn:oid:1.2.3.mrn").value', ["MRN123"]),
        ("Patient.name.given", ["Jane", "Q"]),
        ("Patient.name.first().given[0]", ["Jane"]),
        ("Patient.identifier.value", ["MRN123", "SUBJ-9"]),
        ("Patient.telecom.value", []),
    ],
)
def test_fhir_element_paths(path: str, expected: list[str]) -> None:
    assert compile_path("fhir", path)(PATIENT) == expected


EVENT = {
    "type": "ObjectEvent",
    "eventTime": "2026-03-01T10:00:00.000+01:00",
    "epcList": ["urn:epc:id:giai:0614141.CHA999026AB12C3G"],
    "bizStep": "shipping",
    "sensorElementList": [
        {"sensorReport": [{"type": "Temperature", "value": -180.5, "uom": "CEL"}]},
        {"sensorReport": [{"type": "Temperature", "value": -181.0, "uom": "CEL"}]},
    ],
    "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:1"}],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("bizStep", ["shipping"]),
        ("$.epcList[0]", ["urn:epc:id:giai:0614141.CHA999026AB12C3G"]),
        ("sensorElementList[*].sensorReport[*].value", [-180.5, -181.0]),
        ("sensorElementList[1].sensorReport[0].value", [-181.0]),
        ("sourceList[?type=='owning_party'].source", ["urn:epc:id:pgln:1"]),
        ("sourceList[?(@.type=='x')].source", None),
        ("missing.deeper", []),
    ],
)
def test_json_and_epcis_paths(path: str, expected: list[object] | None) -> None:
    if expected is None:
        with pytest.raises(MappingError):
            compile_path("epcis", path)
        return
    assert compile_path("epcis", path)(EVENT) == expected
    assert compile_path("json", path)(EVENT) == expected


B2MML = b"""<?xml version="1.0"?>
<BatchInformation xmlns="http://www.mesa.org/xml/B2MML">
  <BatchRecord id="BR-1">
    <BatchID>BOR2600001</BatchID>
    <Parameter><ID>COI</ID><Value>CHA999726AB12C3X</Value></Parameter>
    <Parameter><ID>START</ID><Value>2026-01-11T17:29:00+01:00</Value></Parameter>
  </BatchRecord>
</BatchInformation>"""
NS = {"b": "http://www.mesa.org/xml/B2MML"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("b:BatchID", ["BOR2600001"]),
        ("b:BatchID/text()", ["BOR2600001"]),
        ("@id", ["BR-1"]),
        (".//b:Parameter[b:ID='START']/b:Value", ["2026-01-11T17:29:00+01:00"]),
        ("b:Parameter[2]/b:ID", ["START"]),
        ("b:Missing", []),
    ],
)
def test_xml_paths_with_namespaces(path: str, expected: list[str]) -> None:
    record = parse_xml(B2MML).find("b:BatchRecord", NS)
    assert compile_path("xml", path, namespaces=NS)(record) == expected


def test_xml_paths_need_declared_prefixes_and_the_elementtree_subset() -> None:
    with pytest.raises(MappingError, match="not declared"):
        compile_path("xml", "x:BatchID", namespaces=NS)
    with pytest.raises(MappingError, match="subset"):
        compile_path("xml", "b:Parameter[contains(b:ID, 'S')]", namespaces=NS)


def test_csv_columns_are_exact_and_empty_cells_give_nothing() -> None:
    record = {"Lot Number": "ACM-1", "End Time": "  "}
    assert compile_path("csv", "Lot Number")(record) == ["ACM-1"]
    assert compile_path("csv", "End Time")(record) == []
    assert compile_path("csv", "lot number")(record) == []


@pytest.mark.parametrize(
    ("fmt", "path", "top", "normalized"),
    [
        ("hl7v2", "PID-3[2].1", "PID", "PID-3"),
        ("fhir", "Patient.identifier.where(system='x').value", "identifier", "identifier.value"),
        ("json", "$.subject.identifier[0].value", "subject", "subject.identifier.value"),
        ("csv", "MRN", "MRN", "MRN"),
        ("xml", "b:BatchID/text()", "b:BatchID", "b:BatchID/text()"),
    ],
)
def test_top_fields_and_normalized_paths(fmt: str, path: str, top: str, normalized: str) -> None:
    assert top_field(fmt, path) == top
    assert field_path(fmt, path) == normalized


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(MappingError, match=re.escape("csv, json, xml")):
        compile_path("yaml", "x")
