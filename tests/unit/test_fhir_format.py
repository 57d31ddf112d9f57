"""FHIR adapter: payloads into entries, resources checked against R4B / R5 models without ever
echoing a value, OperationOutcomes read as codes, subjects resolved into ``_subject``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cmohub.errors import ParseError
from cmohub.formats.fhir import (
    SUBJECT_KEY,
    FhirEntry,
    FhirVersion,
    PatientIndex,
    check_resource,
    describe_outcome,
    outcome_issues,
    parse_payload,
    prepare_record,
    read_fhir_records,
    validate_resource,
)
from cmohub.formats.records import FormatProblem, SubjectPolicy
from cmohub.mapping.spec import SourceSpec

CANARY_BIRTH = "1901-13-45"
CANARY_MRN = "SBX-MRN-CNRYTESTTOKEN01"
POLICY = SubjectPolicy(systems=("urn:cmohub:sandbox:mrn:*",))


def patient(
    pid: str = "p1", *, birth: str = "1901-01-02", system: str | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": "urn:other:id", "value": "OTHER-1"},
            {
                "type": {"coding": [{"code": "MR"}]},
                "system": system or "urn:cmohub:sandbox:mrn:A9991",
                "value": CANARY_MRN,
            },
        ],
        "name": [{"family": "FamCNRY", "given": ["GivCNRY"]}],
        "birthDate": birth,
    }


def procedure(
    pid: str | None = "p1", performed: str = "2026-01-30T09:59:00-05:00"
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": "pr1",
        "status": "completed",
        "performedDateTime": performed,
    }
    if pid is not None:
        out["subject"] = {"reference": f"Patient/{pid}"}
    return out


def bundle(*resources: dict[str, Any], next_url: str | None = None) -> bytes:
    entries = [
        {
            "fullUrl": f"http://fhir.invalid/r4/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "include" if r["resourceType"] == "Patient" else "match"},
        }
        for r in resources
    ]
    links = [{"relation": "self", "url": "http://fhir.invalid/r4/Procedure"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return json.dumps(
        {"resourceType": "Bundle", "type": "searchset", "total": 1, "link": links, "entry": entries}
    ).encode()


def test_a_bad_birth_date_is_reported_without_the_date() -> None:
    # pydantic (and so fhir.resources) would echo the offending input in its message.
    with pytest.raises(ParseError) as raised:
        validate_resource(patient(birth=CANARY_BIRTH), FhirVersion.R4)
    error = raised.value
    assert error.code == "PARSE_FHIR_INVALID"
    assert "birthDate (value_error)" in error.message
    for text in (str(error), repr(error), json.dumps(error.to_dict())):
        assert CANARY_BIRTH not in text and CANARY_MRN not in text
    assert error.__cause__ is None and error.__suppress_context__


def test_a_missing_element_is_reported_without_the_resource() -> None:
    problem = check_resource(procedure(pid=None, performed="2026-13-45T25:61:00"), FhirVersion.R4)
    assert isinstance(problem, FormatProblem) and problem.malformed
    assert "performedDateTime (value_error)" in problem.message
    assert "subject (missing)" in problem.message
    assert "2026-13-45" not in str(problem) and "pr1" not in str(problem)


def test_r4_and_r5_models_are_chosen_per_feed() -> None:
    r4_procedure = procedure()
    assert check_resource(r4_procedure, FhirVersion.R4) is None
    # R5 renamed performed[x] to occurrence[x]: an R4 resource does not pass the R5 model.
    r5 = check_resource(r4_procedure, FhirVersion.R5)
    assert r5 is not None and "performedDateTime (extra_forbidden)" in r5.message
    assert (
        FhirVersion.parse("4.0.1") is FhirVersion.R4 and FhirVersion.parse("R5") is FhirVersion.R5
    )


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        ({"resourceType": "Foo", "id": "x"}, "PARSE_FHIR_RESOURCE_TYPE"),
        ({"resourceType": "", "id": "x"}, "PARSE_FHIR_RESOURCE_TYPE"),
        ({"id": "x"}, "PARSE_FHIR_RESOURCE_TYPE"),
        ({"resourceType": "Patient", "name1": [{"use1": "x"}]}, "PARSE_FHIR_INVALID"),
        ({"resourceType": "Patient", "name": {"family": "x"}}, "PARSE_FHIR_INVALID"),
    ],
)
def test_unusable_resources_get_a_code(resource: dict[str, Any], code: str) -> None:
    problem = check_resource(resource, FhirVersion.R4)
    assert problem is not None and problem.code == code


def test_payload_kinds_are_recognised() -> None:
    page = parse_payload(bundle(procedure(), patient(), next_url="http://fhir.invalid/r4/next"))
    assert page.kind == "bundle" and page.next_url == "http://fhir.invalid/r4/next"
    assert [e.locator for e in page.entries] == ["entry=1", "entry=2"]
    assert [e.mode for e in page.entries] == ["match", "include"]
    lines = (json.dumps(procedure()) + "\nnot json\n" + json.dumps(patient()) + "\n").encode()
    ndjson = parse_payload(lines)
    assert ndjson.kind == "ndjson" and [e.locator for e in ndjson.entries] == [
        "line=1",
        "line=2",
        "line=3",
    ]
    assert (
        ndjson.entries[1].problem is not None
        and ndjson.entries[1].problem.code == "PARSE_FHIR_JSON"
    )
    single = parse_payload(b"\xef\xbb\xbf" + json.dumps(procedure()).encode())
    assert single.kind == "resource"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"resourceType": "Bundle", "type": "invalid-type", "entry": []}', "PARSE_FHIR_BUNDLE"),
        (b'{"resourceType": "Bundle", "type": "searchset", "entry": {}}', "PARSE_FHIR_BUNDLE"),
        (b'{"resourceType": "Patient",, }', "PARSE_FHIR_JSON"),
        (b"<Patient xmlns='http://hl7.org/fhir'/>", "PARSE_FHIR_XML"),
        (b"\xff\xfe", "PARSE_FHIR_JSON"),
    ],
)
def test_unusable_payloads_are_refused_whole(data: bytes, code: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse_payload(data)
    assert raised.value.code == code


def test_subjects_are_resolved_from_included_patients() -> None:
    page = parse_payload(bundle(procedure(), patient()))
    index = PatientIndex(POLICY)
    index.add_entries(page.entries)
    record = prepare_record(page.entries[0], index, FhirVersion.R4)
    assert isinstance(record, dict)
    assert record[SUBJECT_KEY] == {
        "system": "urn:cmohub:sandbox:mrn:A9991",
        "value": CANARY_MRN,
        "family": "FamCNRY",
        "given": "GivCNRY",
        "birthDate": "1901-01-02",
    }
    assert SUBJECT_KEY not in page.entries[0].resource  # the parsed entry is left untouched


@pytest.mark.parametrize(
    ("entry", "patients", "code"),
    [
        (procedure(pid="elsewhere"), [patient()], "IDENTITY_SUBJECT_UNRESOLVED"),
        (procedure(), [patient(system="urn:not:configured")], "IDENTITY_SYSTEM_UNCONFIGURED"),
        (
            {**procedure(), "subject": {"display": "someone"}},
            [patient()],
            "IDENTITY_SUBJECT_MISSING",
        ),
    ],
)
def test_subjects_that_cannot_be_resolved_get_a_code(
    entry: dict[str, Any], patients: list[dict[str, Any]], code: str
) -> None:
    index = PatientIndex(POLICY)
    for p in patients:
        index.add(p)
    outcome = prepare_record(FhirEntry("entry=1", entry), index, FhirVersion.R4)
    assert isinstance(outcome, FormatProblem) and outcome.code == code
    assert CANARY_MRN not in str(outcome)


def test_a_logical_subject_identifier_is_used_when_there_is_no_reference() -> None:
    entry = {
        **procedure(pid=None),
        "subject": {"identifier": {"system": "urn:cmohub:sandbox:mrn:A9990", "value": "M-7"}},
    }
    record = prepare_record(FhirEntry("entry=1", entry), PatientIndex(POLICY), FhirVersion.R4)
    assert isinstance(record, dict) and record[SUBJECT_KEY]["value"] == "M-7"


def test_operation_outcomes_become_codes_and_paths_without_diagnostics() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": f"birth date {CANARY_BIRTH} is wrong",
                "expression": ["Patient.birthDate"],
            }
        ],
    }
    text = describe_outcome(outcome_issues(outcome))
    assert text == "error/invalid at Patient.birthDate"
    assert outcome_issues({"resourceType": "Patient"}) == []


def test_the_mapping_reader_attaches_subjects_and_marks_bad_records() -> None:
    source = SourceSpec(
        format="fhir",
        resource_type="Procedure",
        options=(("subject_systems", ["urn:cmohub:sandbox:mrn:*"]),),
    )
    bad = {**procedure(), "id": "pr2", "performedDateTime": "2026-13-45T25:61:00"}
    records = list(read_fhir_records(source, bundle(procedure(), bad, patient())))
    assert [r.locator for r in records] == ["entry=1", "entry=2"]
    assert records[0].problem is None and SUBJECT_KEY in records[0].data
    assert records[1].problem is not None and records[1].problem.startswith("PARSE_FHIR_INVALID")
