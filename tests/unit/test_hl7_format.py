"""HL7 v2 adapter: payloads split into messages, fields read by reference, subjects resolved,
malformed input refused with a code, and ACKs that say what was wrong without quoting it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmohub.errors import ParseError
from cmohub.formats.hl7v2 import (
    DEFAULT_DELIMITERS,
    AckCode,
    Delimiters,
    MessageKind,
    build_ack,
    classify,
    escape,
    message_records,
    parse_message,
    peek_header,
    read_ack,
    read_delimiters,
    split_messages,
    subject_of,
    unescape,
)
from cmohub.formats.records import FormatProblem, SubjectFields, SubjectPolicy
from cmohub.mapping.paths import Hl7Record

POLICY = SubjectPolicy(systems=("urn:cmohub:sandbox:mrn:*",))
MSH = "MSH|^~\\&|SBX-EHR|A9992|CMOHUB|A9999|20260110123600+0000||{type}|{control}|P|2.5.1"
PID = (
    "PID|1||CANARY-MRN-1^^^SBXA9992&urn:cmohub:sandbox:mrn:A9992&URI^MR~OTHER-1^^^X&urn:x&URI^PI"
    "||Canaryfamily^Canarygiven||19010102|F"
)
ORDER = "\r".join(
    [
        MSH.format(type="OML^O21^OML_O21", control="C1"),
        PID,
        "PV1|1|O",
        "ORC|NW|PO-1^SBX-EHR||TE-1^SBX-ENROLL|||||20260110123600+0000",
        "TQ1|1||||||20260114",
        "OBR|1|PO-1^SBX-EHR||SBX-CART-01^CAR\\T\\T^L",
        "ORC|NW|PO-2^SBX-EHR||TE-2^SBX-ENROLL",
        "OBR|1|PO-2^SBX-EHR||SBX-TCR-02^TCR^L",
    ]
)


def test_fields_are_read_by_reference_with_escapes_decoded() -> None:
    message = parse_message(ORDER + "\r")
    assert isinstance(message, Hl7Record)
    assert message.get("MSH-9.1") == "OML" and message.get("MSH-10") == "C1"
    assert message.get("MSH-1") == "|" and message.get("MSH-2") == "^~\\&"
    assert message.get("PID-3.1") == "CANARY-MRN-1"
    assert message.get("PID-3[2].1") == "OTHER-1"
    assert message.get("PID-3.4.2") == "urn:cmohub:sandbox:mrn:A9992"
    assert message.get("OBR-4.2") == "CAR&T"
    assert message.get("ORC[2]-2.1") == "PO-2"
    assert message.get("PID-3[3].1") is None and message.get("ZZZ-1") is None
    assert message.get("PID-99") is None
    assert message.dedupe_key == ("SBX-EHR", "C1")


def test_one_record_per_order_sees_its_own_group_and_the_header() -> None:
    message = parse_message(ORDER)
    first, second = message.records("ORC")
    assert first.get("ORC-2.1") == "PO-1" and first.get("OBR-4.1") == "SBX-CART-01"
    assert second.get("ORC-2.1") == "PO-2" and second.get("OBR-4.1") == "SBX-TCR-02"
    assert second.get("TQ1-7") is None  # the second order has no TQ1 of its own
    assert first.get("TQ1-7") == "20260114"
    assert first.get("PID-7") == second.get("PID-7") == "19010102"
    assert first.locator == "message=1/ORC=1"


def test_the_subject_is_the_identifier_whose_system_is_configured() -> None:
    message = parse_message(ORDER)
    subject = subject_of(message, POLICY)
    assert isinstance(subject, SubjectFields)
    assert subject.system == "urn:cmohub:sandbox:mrn:A9992"
    assert (subject.value, subject.family, subject.given, subject.birth_date) == (
        "CANARY-MRN-1",
        "Canaryfamily",
        "Canarygiven",
        "19010102",
    )
    assert "CANARY" not in repr(subject)
    view = message.records("ORC", subject=subject)[0]
    assert view.get("ZSI-1") == subject.system and view.get("ZSI-2") == "CANARY-MRN-1"
    assert "ZSI" in set(view.segment_ids())
    other = subject_of(message, SubjectPolicy(systems=("urn:elsewhere",)))
    assert isinstance(other, FormatProblem) and other.code == "IDENTITY_SYSTEM_UNCONFIGURED"
    assert "CANARY" not in str(other)


def test_assigning_authority_namespaces_and_iso_oids_become_systems() -> None:
    text = "\r".join(
        [
            MSH.format(type="ADT^A04^ADT_A01", control="C2"),
            "PID|1||M1^^^HOSP^MR~M2^^^&2.16.840.1.113883.19.5&ISO^MR",
        ]
    )
    message = parse_message(text)
    by_namespace = SubjectPolicy(systems=("urn:hosp:mrn",), authorities=(("HOSP", "urn:hosp:mrn"),))
    assert subject_of(message, by_namespace) == SubjectFields("urn:hosp:mrn", "M1")
    by_oid = SubjectPolicy(systems=("urn:oid:2.16.840.1.113883.19.5",))
    chosen = subject_of(message, by_oid)
    assert isinstance(chosen, SubjectFields) and chosen.value == "M2"


def test_batches_files_and_line_endings_are_unwrapped() -> None:
    one = MSH.format(type="ADT^A08^ADT_A01", control="B1") + "\nPID|1||X\n"
    two = MSH.format(type="ADT^A08^ADT_A01", control="B2") + "\r\nPID|1||Y\r\n"
    data = ("\ufeffFHS|^~\\&\nBHS|^~\\&\n" + one + two + "BTS|2\nFTS|1\n").encode()
    split = split_messages(data)
    assert [m.number for m in split.messages] == [1, 2]
    assert not split.findings
    assert [parse_message(m).control_id for m in split.messages] == ["B1", "B2"]


def test_envelope_count_mismatches_are_findings_not_rejections() -> None:
    data = ("BHS|^~\\&\r" + MSH.format(type="ADT^A08^ADT_A01", control="B1") + "\rBTS|3\r").encode()
    split = split_messages(data)
    assert len(split.messages) == 1 and split.messages[0].problem is None
    assert [f.code for f in split.findings] == ["PARSE_HL7_ENVELOPE_COUNT"]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (
            MSH.format(type="OML^O21", control="X").replace("^~\\&", "^~}") + "\r",
            "PARSE_HL7_ENCODING",
        ),
        ("MSH|^|||||||ADT^A40|||2.8\r", "PARSE_HL7_ENCODING"),
        (MSH.format(type="OML^O21", control="X").replace("^~\\&", "^^\\&"), "PARSE_HL7_ENCODING"),
        (ORDER.replace("ORC|NW", "ORC|\x00\x00NW"), "PARSE_HL7_NUL"),
        (MSH.format(type="OML^O21", control="X") + "\r" + PID[:30], "PARSE_HL7_TRUNCATED"),
        (MSH.format(type="OML^O21", control="X") + "\r" + PID + "\r", "PARSE_HL7_STRUCTURE"),
        (MSH.format(type="ORU^R01", control="X") + "\r" + PID + "\r", "PARSE_HL7_UNSUPPORTED"),
        (MSH.format(type="OML^O21", control="") + "\r", "PARSE_HL7_MSH_INCOMPLETE"),
        (MSH.format(type="ADT^A08", control="X") + "\rpid|1\r", "PARSE_HL7_SEGMENT_ID"),
        ("EVN|A04\rPID|1||X\r", "PARSE_HL7_NO_MSH"),
    ],
)
def test_malformed_messages_are_refused_with_a_code(text: str, code: str) -> None:
    split = split_messages(text.encode())
    outcome = message_records(split.messages[0], segment="ORC", policy=POLICY)
    assert outcome.problem is not None and outcome.problem.code == code
    assert not outcome.records
    assert "CANARY" not in str(outcome.problem)


def test_orm_o01_with_rqd_instead_of_obr_is_an_order() -> None:
    # hl7apy's strict validator reads ORM^O01's OBR/RQD choice as a sequence; the hub does not.
    text = "\r".join(
        [
            MSH.format(type="ORM^O01", control="R1"),
            PID,
            "ORC|NW|PO-9^SBX-EHR||TE-9",
            "RQD|1|SBX-CART-01^CAR^L|||1",
        ]
    )
    assert classify(parse_message(text)) is MessageKind.ORDER


def test_an_empty_or_undecodable_payload_is_refused() -> None:
    with pytest.raises(ParseError) as empty:
        split_messages(b"\r\n\r\n")
    assert empty.value.code == "PARSE_HL7_EMPTY"
    with pytest.raises(ParseError) as charset:
        split_messages(b"MSH|^~\\&|\xff\xfe|x")
    assert charset.value.code == "PARSE_HL7_CHARSET"


def test_nonstandard_delimiters_are_read_from_msh() -> None:
    delimiters = read_delimiters("MSH^~|\\&^A")
    assert delimiters == Delimiters("^", "~", "|", "\\", "&")
    message = parse_message(
        "MSH^~|\\&^APP^FAC^^^20260101^^ADT~A08^C9^P^2.4\rPID^1^^M1~~~A&urn:x&URI"
    )
    assert message.get("MSH-9.2") == "A08" and message.get("PID-3.4.2") == "urn:x"


def test_truncation_character_of_v27_is_accepted() -> None:
    delimiters = read_delimiters("MSH|^~\\&#|APP")
    assert delimiters.truncation == "#"


def test_acks_accept_and_reject_with_an_err_that_quotes_nothing() -> None:
    header = peek_header(ORDER)
    accept = build_ack(header, AckCode.ACCEPT, control_id="A1", timestamp="20260110123700+0000")
    assert read_ack(accept) == ("AA", "C1", None)
    problem = FormatProblem("PARSE_HL7_ENCODING", "MSH-2 has 3 encoding characters ^~}", "MSH-2")
    reject = build_ack(
        header, AckCode.REJECT, control_id="A2", timestamp="20260110123700+0000", problem=problem
    )
    code, control, ours = read_ack(reject)
    assert (code, control, ours) == ("AR", "C1", "PARSE_HL7_ENCODING")
    text = reject.decode()
    assert "ERR|" in text and "MSH^1^2" in text and "CANARY" not in text
    assert text.endswith("\r")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_escape_and_unescape_round_trip(value: str) -> None:
    clean = value.replace("\r", " ").replace("\n", " ")
    assert unescape(escape(clean), DEFAULT_DELIMITERS) == clean


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    try:
        split = split_messages(b"MSH|^~\\&|" + data)
    except ParseError:
        return
    for raw in split.messages:
        outcome = message_records(raw, segment="ORC", policy=POLICY)
        assert outcome.problem is not None or outcome.records or outcome.kind is not None
