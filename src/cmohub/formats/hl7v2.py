"""HL7 v2 wire format: files into messages, messages into records, acknowledgements (pure).

This is the one adapter of hl7apy. hl7apy's full parse is about forty times slower than
splitting on the delimiters, and its strict validator rejects valid messages (it reads the
OBR/RQD choice of ORM^O01 as a sequence), so the hub reads messages itself and uses hl7apy
where it adds value without gating: checking encoding characters, and building ACKs whose
structure hl7apy knows.

Reading a payload (a file, an MLLP frame)::

    split = split_messages(data)                 # envelopes, line endings, BOM, NUL bytes
    for raw in split.messages:
        message = parse_message(raw)             # ParseError with a PARSE_HL7_* code
        kind = classify(message)                 # order / update / merge, or unsupported
        record = message.records("ORC")[0]       # Hl7Record views for the mapping engine

Normalization: a UTF-8 byte-order mark is removed; CR LF and LF become CR; blank lines
between messages are ignored; batch and file envelopes (FHS/BHS … BTS/FTS) are unwrapped
and their counts checked (a mismatch is a finding, not a rejection). Each message keeps its own
delimiters (MSH-1, MSH-2), including the v2.7 truncation character (``^~\\&#``).

Records: :class:`Hl7Message` answers :class:`cmohub.mapping.paths.Hl7Record` for the whole
message; :meth:`Hl7Message.records` gives one view per repeat of a segment (one per ORC:
each order of a multi-order message), in which segments of that repeat's group win over the
message header's. ``get`` decodes escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\``)
and reads ``""`` (explicit null) as absent. A resolved subject appears as the synthesized
segment ``ZSI`` (see :mod:`cmohub.formats.records`).

Error codes (:class:`~cmohub.errors.ParseError`; messages name segments and fields, never a
value):

========================== ===================================================================
PARSE_HL7_EMPTY            the payload holds no segment
PARSE_HL7_CHARSET          the payload is not text in UTF-8 (or Latin-1 when MSH-18 says so)
PARSE_HL7_NUL              NUL bytes inside a message
PARSE_HL7_NO_MSH           segments outside any message (no MSH before them)
PARSE_HL7_ENCODING         MSH-1/MSH-2 are not valid delimiters (e.g. ``^~}``)
PARSE_HL7_SEGMENT_ID       a segment does not start with a three-character segment ID
PARSE_HL7_ENVELOPE         a batch or file header inside an open message
PARSE_HL7_MSH_INCOMPLETE   MSH-9 (message type) or MSH-10 (control ID) is empty
PARSE_HL7_TRUNCATED        the message stops early: required segments are missing and the
                           last segment has no terminator
PARSE_HL7_STRUCTURE        a segment the message type requires is missing
PARSE_HL7_UNSUPPORTED      a message type the hub does not take
========================== ===================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from hl7apy import check_encoding_chars
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException, InvalidEncodingChars

from cmohub.errors import ParseError
from cmohub.formats.records import (
    SUBJECT_MISSING,
    FormatProblem,
    SubjectFields,
    SubjectPolicy,
    choose_identifier,
)
from cmohub.mapping.paths import HL7_REF
from cmohub.mapping.readers import SourceRecord
from cmohub.mapping.spec import SourceSpec

SEGMENT_END = "\r"
ZSI = "ZSI"
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_ESCAPE_CODES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition"}


# --- delimiters --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        return (
            self.component
            + self.repetition
            + self.escape
            + self.subcomponent
            + (self.truncation or "")
        )


DEFAULT_DELIMITERS = Delimiters()


def read_delimiters(msh: str) -> Delimiters:
    """The delimiters an MSH segment declares; ParseError PARSE_HL7_ENCODING if invalid."""
    if len(msh) < 4 or not msh.startswith("MSH"):
        raise ParseError("the message does not start with MSH", code="PARSE_HL7_NO_MSH")
    separator = msh[3]
    end = msh.find(separator, 4)
    encoding = msh[4:] if end < 0 else msh[4:end]
    problem = _encoding_problem(separator, encoding)
    if problem is not None:
        raise ParseError(problem, code="PARSE_HL7_ENCODING", where="MSH-2")
    return Delimiters(
        field=separator,
        component=encoding[0],
        repetition=encoding[1],
        escape=encoding[2],
        subcomponent=encoding[3],
        truncation=encoding[4] if len(encoding) == 5 else None,
    )


def _encoding_problem(separator: str, encoding: str) -> str | None:
    if separator.isalnum() or separator.isspace():
        return "MSH-1 (field separator) must be a printable non-alphanumeric character"
    if len(encoding) not in (4, 5):
        return (
            f"MSH-2 has {len(encoding)} encoding characters; it needs component, repetition, "
            "escape and subcomponent characters (and optionally truncation)"
        )
    if any(ch.isalnum() or ch.isspace() or not ch.isprintable() for ch in encoding):
        return "MSH-2 encoding characters must be printable and not letters or digits"
    chars = {
        "FIELD": separator,
        "COMPONENT": encoding[0],
        "REPETITION": encoding[1],
        "ESCAPE": encoding[2],
        "SUBCOMPONENT": encoding[3],
    }
    try:
        check_encoding_chars(chars)
    except InvalidEncodingChars:
        return "MSH-1/MSH-2 delimiters must all differ"
    if len(encoding) == 5 and encoding[4] in chars.values():
        return "MSH-2 truncation character repeats another delimiter"
    return None


# --- splitting a payload into messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message's text as found in a payload (segments joined by CR), or why it is not one."""

    number: int  # 1-based position in the payload
    text: str
    terminated: bool  # its last segment ended with a segment terminator
    problem: FormatProblem | None = None

    @property
    def locator(self) -> str:
        return f"message={self.number}"


@dataclass(frozen=True, slots=True)
class SplitPayload:
    messages: tuple[RawMessage, ...]
    findings: tuple[FormatProblem, ...] = ()  # envelope count mismatches (not rejections)


def decode_payload(data: bytes) -> str:
    """Text of an HL7 payload: BOM removed, UTF-8 (Latin-1 if MSH-18 names 8859/1)."""
    body = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        if b"8859/1" in body[:2048]:
            return body.decode("latin-1")
        raise ParseError(
            "the payload is not UTF-8 and declares no other character set (MSH-18)",
            code="PARSE_HL7_CHARSET",
        ) from None


def normalize_line_endings(text: str) -> str:
    """CR LF and lone LF become CR, the HL7 segment terminator."""
    if "\n" not in text:
        return text
    return text.replace("\r\n", "\r").replace("\n", "\r")


class _Splitter:
    def __init__(self) -> None:
        self.messages: list[RawMessage] = []
        self.findings: list[FormatProblem] = []
        self.current: list[str] | None = None
        self.current_problem: FormatProblem | None = None
        self.orphans: list[str] = []
        self.batch_messages: int | None = None  # messages seen in the open batch
        self.file_batches: int | None = None  # batches seen in the open file

    def close(self, *, terminated: bool = True) -> None:
        if self.orphans:
            self.messages.append(
                RawMessage(
                    len(self.messages) + 1,
                    SEGMENT_END.join(self.orphans),
                    True,
                    FormatProblem(
                        "PARSE_HL7_NO_MSH",
                        f"{len(self.orphans)} segment(s) outside any message (no MSH before them)",
                        f"segment {self.orphans[0][:3]}",
                    ),
                )
            )
            self.orphans = []
        if self.current is not None:
            self.messages.append(
                RawMessage(
                    len(self.messages) + 1,
                    SEGMENT_END.join(self.current),
                    terminated,
                    self.current_problem,
                )
            )
            if self.batch_messages is not None:
                self.batch_messages += 1
            self.current = None
            self.current_problem = None

    def envelope(self, segment: str) -> None:
        kind = segment[:3]
        if self.current is not None and kind in ("FHS", "BHS"):
            self.current_problem = FormatProblem(
                "PARSE_HL7_ENVELOPE", f"a {kind} header interrupts the message", f"segment {kind}"
            )
        self.close()
        if kind == "FHS":
            self.file_batches = 0
        elif kind == "BHS":
            if self.batch_messages is not None:
                self.findings.append(
                    FormatProblem(
                        "PARSE_HL7_ENVELOPE", "a batch opens without BTS closing the last"
                    )
                )
            self.batch_messages = 0
            if self.file_batches is not None:
                self.file_batches += 1
        elif kind == "BTS":
            self._check_count(segment, self.batch_messages, "BTS-1", "messages in the batch")
            self.batch_messages = None
        elif kind == "FTS":
            self._check_count(segment, self.file_batches, "FTS-1", "batches in the file")
            self.file_batches = None

    def _check_count(self, segment: str, seen: int | None, where: str, what: str) -> None:
        separator = segment[3:4]
        declared = segment.split(separator)[1] if separator and separator in segment else ""
        if declared.strip().isdigit() and seen is not None and int(declared) != seen:
            self.findings.append(
                FormatProblem(
                    "PARSE_HL7_ENVELOPE_COUNT",
                    f"{where} declares {int(declared)} {what}, the payload holds {seen}",
                    where,
                )
            )


def split_messages(data: bytes | str) -> SplitPayload:
    """Every message in a payload (single message, batch or file), in order."""
    text = decode_payload(data) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    text = normalize_line_endings(text)
    segments = [s for s in text.split(SEGMENT_END) if s.strip()]
    if not segments:
        raise ParseError("the payload holds no HL7 segment", code="PARSE_HL7_EMPTY")
    ends_terminated = text.rstrip(" \t").endswith(SEGMENT_END)
    splitter = _Splitter()
    for segment in segments:
        kind = segment[:3]
        if kind in _ENVELOPE and (len(segment) == 3 or not segment[3].isalnum()):
            splitter.envelope(segment)
        elif kind == "MSH":
            splitter.close()
            splitter.current = [segment]
        elif splitter.current is not None:
            splitter.current.append(segment)
        else:
            splitter.orphans.append(segment)
    splitter.close(terminated=ends_terminated)
    return SplitPayload(tuple(splitter.messages), tuple(splitter.findings))


# --- messages and records ----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _ref(ref: str) -> tuple[str, int, int, int, int, int]:
    """(segment, segment repeat, field, field repeat, component, subcomponent); 0 = not given."""
    match = HL7_REF.match(ref.strip())
    if match is None:
        raise ParseError("not an HL7 field reference", code="PARSE_HL7_REFERENCE", where=ref)
    repeat = match["repeat"]
    return (
        match["segment"],
        int(match["segment_repeat"] or 0),
        int(match["field"]),
        0 if repeat in (None, "*") else int(repeat),
        int(match["component"] or 0),
        int(match["sub"] or 0),
    )


class Hl7Message:
    """One well-formed message: segments split on the field separator once, read on demand."""

    __slots__ = ("_index", "delimiters", "number", "segments", "terminated")

    def __init__(
        self, segments: list[list[str]], delimiters: Delimiters, *, number: int, terminated: bool
    ) -> None:
        self.segments = segments
        self.delimiters = delimiters
        self.number = number
        self.terminated = terminated
        index: dict[str, list[int]] = {}
        for position, parts in enumerate(segments):
            index.setdefault(parts[0], []).append(position)
        self._index = index

    def __repr__(self) -> str:
        return f"Hl7Message(number={self.number}, type={self.message_type!r})"

    @property
    def locator(self) -> str:
        return f"message={self.number}"

    # Hl7Record --------------------------------------------------------------------------

    def get(self, ref: str) -> str | None:
        segment, segment_repeat, number, repeat, component, sub = _ref(ref)
        positions = self._index.get(segment)
        if not positions:
            return None
        index = (segment_repeat or 1) - 1
        if index >= len(positions):
            return None
        return self.value_at(positions[index], number, repeat, component, sub)

    def segment_ids(self) -> Iterable[str]:
        return self._index.keys()

    # reading ----------------------------------------------------------------------------

    def positions(self, segment: str) -> list[int]:
        return self._index.get(segment, [])

    def value_at(
        self, position: int, number: int, repeat: int = 0, component: int = 0, sub: int = 0
    ) -> str | None:
        """A field (repeat, component, subcomponent) of the segment at ``position``, decoded."""
        parts = self.segments[position]
        d = self.delimiters
        if parts[0] == "MSH":
            if number == 1:
                return d.field
            if number == 2:
                return d.encoding_characters
            number -= 1
        if number >= len(parts):
            return None
        raw = parts[number]
        if not raw:
            return None
        if d.repetition in raw:
            repeats = raw.split(d.repetition)
            index = repeat - 1 if repeat else 0
            if index >= len(repeats):
                return None
            raw = repeats[index]
        elif repeat > 1:
            return None
        if component:
            pieces = raw.split(d.component)
            if component > len(pieces):
                return None
            raw = pieces[component - 1]
            if sub:
                subs = raw.split(d.subcomponent)
                if sub > len(subs):
                    return None
                raw = subs[sub - 1]
        if not raw or raw == '""':
            return None
        return unescape(raw, d) if d.escape in raw else raw

    def repeats(self, position: int, number: int) -> int:
        """How many repetitions field ``number`` of the segment at ``position`` has."""
        parts = self.segments[position]
        index = number - 1 if parts[0] == "MSH" else number
        if index >= len(parts) or not parts[index]:
            return 0
        return parts[index].count(self.delimiters.repetition) + 1

    @property
    def message_code(self) -> str:
        return self.get("MSH-9.1") or ""

    @property
    def trigger(self) -> str:
        return self.get("MSH-9.2") or ""

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}"

    @property
    def control_id(self) -> str | None:
        return self.get("MSH-10")

    @property
    def sending_application(self) -> str:
        return self.get("MSH-3.1") or self.get("MSH-3") or ""

    @property
    def dedupe_key(self) -> tuple[str, str]:
        """Sending application + message control ID: one message, however often it arrives."""
        return (self.sending_application.strip(), (self.control_id or "").strip())

    def records(
        self, segment: str | None = None, *, subject: SubjectFields | None = None
    ) -> list[Hl7RecordView]:
        """One record per repeat of ``segment`` (or the whole message when None)."""
        if segment is None:
            return [Hl7RecordView(self, 0, len(self.segments), self.locator, subject)]
        starts = self.positions(segment)
        views = []
        for number, start in enumerate(starts, start=1):
            end = starts[number] if number < len(starts) else len(self.segments)
            locator = f"{self.locator}/{segment}={number}"
            views.append(Hl7RecordView(self, start, end, locator, subject, header_end=starts[0]))
        return views


class Hl7RecordView:
    """A message seen from one segment group: that group's segments first, then the header's
    (the segments before the first group: MSH, PID, PV1, ...), never another group's."""

    __slots__ = ("end", "header_end", "locator", "message", "start", "subject")

    def __init__(
        self,
        message: Hl7Message,
        start: int,
        end: int,
        locator: str,
        subject: SubjectFields | None = None,
        *,
        header_end: int | None = None,
    ) -> None:
        self.message = message
        self.start = start
        self.end = end
        self.locator = locator
        self.subject = subject
        self.header_end = start if header_end is None else header_end

    def __repr__(self) -> str:
        return f"Hl7RecordView({self.locator!r})"

    def get(self, ref: str) -> str | None:
        segment, segment_repeat, number, repeat, component, sub = _ref(ref)
        if segment == ZSI:
            if self.subject is None or number > 5 or repeat > 1 or component > 1:
                return None
            return self.subject.zsi_field(number)
        positions = self.message.positions(segment)
        if not positions:
            return None
        inside = [p for p in positions if self.start <= p < self.end]
        if inside:
            index = (segment_repeat or 1) - 1
            if index >= len(inside):
                return None
            chosen = inside[index]
        else:
            header = [p for p in positions if p < self.header_end]
            index = (segment_repeat or 1) - 1
            if index >= len(header):
                return None
            chosen = header[index]
        return self.message.value_at(chosen, number, repeat, component, sub)

    def segment_ids(self) -> Iterable[str]:
        ids = set(self.message.segment_ids())
        if self.subject is not None:
            ids.add(ZSI)
        return ids


def unescape(text: str, d: Delimiters) -> str:
    """Decode HL7 escape sequences; formatting sequences (``\\.br\\``, ``\\H\\``) are dropped."""
    esc = d.escape
    out: list[str] = []
    position = 0
    while True:
        start = text.find(esc, position)
        if start < 0:
            out.append(text[position:])
            break
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[position:])
            break
        out.append(text[position:start])
        code = text[start + 1 : end]
        if code in _ESCAPE_CODES:
            out.append(getattr(d, _ESCAPE_CODES[code]))
        elif code == "E":
            out.append(esc)
        elif code.startswith("X") and len(code) % 2 == 1:
            try:
                out.append(bytes.fromhex(code[1:]).decode("latin-1"))
            except ValueError:
                out.append("")
        position = end + 1
    return "".join(out)


def escape(text: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Encode delimiters in ``text`` as escape sequences (for values written into messages)."""
    out = text.replace(d.escape, f"{d.escape}E{d.escape}")
    for code, name in _ESCAPE_CODES.items():
        out = out.replace(getattr(d, name), f"{d.escape}{code}{d.escape}")
    return out.replace("\r", " ").replace("\n", " ")


def parse_message(raw: RawMessage | str, *, number: int = 1) -> Hl7Message:
    """Split one message into segments and fields; ParseError (PARSE_HL7_*) if malformed."""
    if isinstance(raw, RawMessage):
        if raw.problem is not None:
            raise ParseError(raw.problem.message, code=raw.problem.code, where=raw.problem.where)
        text, number, terminated = raw.text, raw.number, raw.terminated
    else:
        text = normalize_line_endings(raw.removeprefix("\ufeff"))
        terminated = text.endswith(SEGMENT_END)
    if "\x00" in text:
        segment = next((s[:3] for s in text.split(SEGMENT_END) if "\x00" in s), "?")
        raise ParseError(
            "the message contains NUL bytes", code="PARSE_HL7_NUL", where=f"segment {segment}"
        )
    lines = [s for s in text.split(SEGMENT_END) if s.strip()]
    if not lines:
        raise ParseError("the message holds no segment", code="PARSE_HL7_EMPTY")
    delimiters = read_delimiters(lines[0])
    separator = delimiters.field
    segments: list[list[str]] = []
    for position, line in enumerate(lines, start=1):
        parts = line.split(separator)
        if not _SEGMENT_ID.fullmatch(parts[0]):
            raise ParseError(
                "a segment does not start with a three-character segment ID",
                code="PARSE_HL7_SEGMENT_ID",
                where=f"segment {position}",
            )
        segments.append(parts)
    message = Hl7Message(segments, delimiters, number=number, terminated=terminated)
    missing = [ref for ref in ("MSH-9.1", "MSH-9.2", "MSH-10") if not message.get(ref)]
    if missing:
        raise ParseError(
            f"MSH is incomplete: {', '.join(missing)} empty",
            code="PARSE_HL7_MSH_INCOMPLETE",
            where=missing[0],
        )
    return message


def peek_header(text: str) -> dict[str, str]:
    """MSH-3, MSH-9 and MSH-10 of a message that may not parse (for ACKs and counters).

    Reads with the declared field separator and ``^`` as a fallback component separator, so
    a message with broken encoding characters can still be answered by control ID.
    """
    first = normalize_line_endings(text.removeprefix("\ufeff")).split(SEGMENT_END, 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return {}
    parts = first.split(first[3])
    component = parts[1][0] if len(parts) > 1 and parts[1] else "^"

    def part(number: int) -> str:
        index = number - 1
        return parts[index].replace("\x00", "") if index < len(parts) else ""

    kind = part(9).split(component)
    return {
        "sending_application": part(3).split(component)[0].strip(),
        "sending_facility": part(4).split(component)[0].strip(),
        "message_code": kind[0] if kind else "",
        "trigger": kind[1] if len(kind) > 1 else "",
        "control_id": part(10).strip(),
        "version": part(12).split(component)[0].strip(),
    }


# --- what the hub does with a message ---------------------------------------------------------


class MessageKind(StrEnum):
    ORDER = "order"  # OML^O21, ORM^O01, OMB^O27: canonical order rows
    UPDATE = "update"  # ADT^A01/A04/A08: demographic (linkage) updates, no canonical row
    MERGE = "merge"  # ADT^A40: an identity event for the vault


#: Message type -> (kind, segments required, groups of which one segment is required).
SUPPORTED: Mapping[tuple[str, str], tuple[MessageKind, tuple[str, ...], tuple[str, ...]]] = {
    ("OML", "O21"): (MessageKind.ORDER, ("PID", "ORC", "OBR"), ()),
    # ORM^O01 orders carry OBR or RQD (or another detail segment): a choice, not a sequence.
    ("ORM", "O01"): (MessageKind.ORDER, ("PID", "ORC"), ("OBR", "RQD", "RQ1", "RXO", "ODS")),
    ("OMB", "O27"): (MessageKind.ORDER, ("PID", "ORC", "BPO"), ()),
    ("ADT", "A01"): (MessageKind.UPDATE, ("PID",), ()),
    ("ADT", "A04"): (MessageKind.UPDATE, ("PID",), ()),
    ("ADT", "A08"): (MessageKind.UPDATE, ("PID",), ()),
    ("ADT", "A40"): (MessageKind.MERGE, ("PID", "MRG"), ()),
}


def classify(message: Hl7Message) -> MessageKind:
    """What the message is to the hub; ParseError if unsupported, incomplete or truncated."""
    entry = SUPPORTED.get((message.message_code, message.trigger))
    if entry is None:
        raise ParseError(
            f"message type {message.message_type} is not taken by the hub (orders OML^O21, "
            "ORM^O01, OMB^O27; ADT^A01/A04/A08 updates; ADT^A40 merges)",
            code="PARSE_HL7_UNSUPPORTED",
            where="MSH-9",
        )
    kind, required, choice = entry
    present = set(message.segment_ids())
    missing = [s for s in required if s not in present]
    if choice and not present.intersection(choice):
        missing.append("/".join(choice))
    if missing:
        truncated = not message.terminated
        raise ParseError(
            f"{message.message_type} "
            + ("stops before" if truncated else "lacks")
            + f" required segment(s) {', '.join(missing)}",
            code="PARSE_HL7_TRUNCATED" if truncated else "PARSE_HL7_STRUCTURE",
            where=f"segment {missing[0]}",
        )
    return kind


# --- subjects --------------------------------------------------------------------------------


def _cx_candidates(
    message: Hl7Message, position: int, number: int, policy: SubjectPolicy
) -> list[tuple[str | None, str | None, str | None]]:
    out: list[tuple[str | None, str | None, str | None]] = []
    for repeat in range(1, message.repeats(position, number) + 1):
        value = message.value_at(position, number, repeat, 1)
        namespace = message.value_at(position, number, repeat, 4, 1)
        universal = message.value_at(position, number, repeat, 4, 2)
        universal_type = (message.value_at(position, number, repeat, 4, 3) or "").upper()
        type_code = message.value_at(position, number, repeat, 5)
        system: str | None = None
        if universal:
            oid = universal.removeprefix("urn:oid:")
            if universal_type == "ISO" or (_OID.fullmatch(oid) and universal_type != "URI"):
                system = f"urn:oid:{oid}"
            else:
                system = universal
        elif namespace:
            system = policy.authority_system(namespace)
        out.append((system, value, type_code))
    return out


def subject_of(
    message: Hl7Message, policy: SubjectPolicy, *, segment: str = "PID", number: int = 3
) -> SubjectFields | FormatProblem:
    """The subject a message names in PID-3 (or MRG-1): identifier by policy, demographics."""
    positions = message.positions(segment)
    if not positions:
        return FormatProblem(SUBJECT_MISSING, f"the message has no {segment}", segment)
    position = positions[0]
    chosen = choose_identifier(_cx_candidates(message, position, number, policy), policy)
    if isinstance(chosen, FormatProblem):
        return FormatProblem(chosen.code, chosen.message, f"{segment}-{number}")
    system, value = chosen
    if segment != "PID":
        return SubjectFields(system, value)
    return SubjectFields(
        system,
        value,
        family=message.value_at(position, 5, 1, 1, 1),
        given=message.value_at(position, 5, 1, 2),
        birth_date=message.value_at(position, 7, 1, 1),
    )


# --- the mapping engine's reader ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageRecords:
    """What one message gives a mapping: records, or the reason it gives none."""

    message: Hl7Message | None
    records: tuple[SourceRecord, ...] = ()
    problem: FormatProblem | None = None
    kind: MessageKind | None = None
    locator: str = ""
    header: Mapping[str, str] = field(default_factory=dict)


def message_records(
    raw: RawMessage,
    *,
    segment: str | None,
    policy: SubjectPolicy,
    locator_prefix: str = "",
) -> MessageRecords:
    """Parse, classify and resolve the subject of one message; records carry ``ZSI``."""
    locator = f"{locator_prefix}{raw.locator}"
    header = peek_header(raw.text) if raw.problem is None else {}
    try:
        message = parse_message(raw)
        kind = classify(message)
    except ParseError as error:
        return MessageRecords(
            None,
            problem=FormatProblem(error.code, error.message, error.where),
            locator=locator,
            header=header or peek_header(raw.text),
        )
    subject = subject_of(message, policy)
    if isinstance(subject, FormatProblem):
        return MessageRecords(message, problem=subject, kind=kind, locator=locator, header=header)
    records = tuple(
        SourceRecord(f"{locator_prefix}{view.locator}", view)
        for view in message.records(segment, subject=subject)
    )
    return MessageRecords(message, records, None, kind, locator, header)


def _message_types(options: Mapping[str, object]) -> frozenset[tuple[str, str]] | None:
    wanted = options.get("message_types")
    if not wanted:
        return None
    items = [wanted] if isinstance(wanted, str) else list(wanted)  # type: ignore[call-overload]
    out = set()
    for item in items:
        code, _, trigger = str(item).partition("^")
        out.add((code, trigger))
    return frozenset(out)


def read_hl7_records(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    """Mapping reader: one record per ``source.segment`` repeat of each wanted message.

    ``source.options``: ``message_types`` (e.g. ``[OML^O21]``; others are skipped) and the
    subject policy (``subject_systems``, ``assigning_authorities``). A message that cannot be
    read gives one record with its problem (the engine rejects it as malformed).
    """
    options = dict(source.options)
    wanted = _message_types(options)
    policy = SubjectPolicy.from_options(options)
    for raw in split_messages(data).messages:
        header = peek_header(raw.text)
        if (
            wanted is not None
            and raw.problem is None
            and (header.get("message_code", ""), header.get("trigger", "")) not in wanted
        ):
            continue
        outcome = message_records(raw, segment=source.segment, policy=policy)
        if outcome.problem is not None:
            yield SourceRecord(outcome.locator, None, str(outcome.problem))
            continue
        yield from outcome.records


# --- acknowledgements --------------------------------------------------------------------------


class AckCode(StrEnum):
    ACCEPT = "AA"  # stored durably
    ERROR = "AE"  # the message is wrong: do not resend it unchanged
    REJECT = "AR"  # we cannot take it (unsupported type, storage down): may be resent


#: Our codes -> HL7 table 0357 (message error condition codes).
_HL7_ERROR = {
    "PARSE_HL7_UNSUPPORTED": ("200", "Unsupported message type"),
    "PARSE_HL7_STRUCTURE": ("100", "Segment sequence error"),
    "PARSE_HL7_TRUNCATED": ("100", "Segment sequence error"),
    "PARSE_HL7_MSH_INCOMPLETE": ("101", "Required field missing"),
    "IDENTITY_SUBJECT_MISSING": ("101", "Required field missing"),
    "IDENTITY_SYSTEM_UNCONFIGURED": ("103", "Table value not found"),
}


def _location(where: str | None) -> str:
    """ERR-2 (segment^sequence^field) from a location like ``MSH-2`` or ``segment ORC``."""
    if not where:
        return ""
    text = where.removeprefix("segment ").strip()
    match = re.fullmatch(r"([A-Z][A-Z0-9]{2})(?:-(\d+))?.*", text)
    if match is None:
        return ""
    return f"{match[1]}^1" + (f"^{match[2]}" if match[2] else "")


def _clean(text: str) -> str:
    """Text safe inside an ACK field: no delimiters, no control characters, bounded length."""
    kept = "".join(ch if ch.isprintable() and ch not in "|^~\\&#" else " " for ch in text)
    return " ".join(kept.split())[:200]


def build_ack(
    original: Mapping[str, str],
    code: AckCode,
    *,
    control_id: str,
    timestamp: str,
    problem: FormatProblem | None = None,
    application: str = "CMOHUB",
    facility: str = "A9999",
) -> bytes:
    """An ACK (built with hl7apy) for a message whose header is ``original`` (peek_header).

    ``timestamp`` is MSH-7 (the caller's clock, as ``YYYYMMDDHHMMSS+ZZZZ``); with a
    ``problem`` the ERR segment names the HL7 error condition, our code, and where (segment
    and field) — never a value from the message. Returns UTF-8 bytes, segments ending in CR.
    """
    try:
        ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.TOLERANT)
        ack.msh.msh_3 = _clean(application)
        ack.msh.msh_4 = _clean(facility)
        ack.msh.msh_5 = _clean(original.get("sending_application", ""))
        ack.msh.msh_6 = _clean(original.get("sending_facility", ""))
        ack.msh.msh_7 = _clean(timestamp)
        trigger = _clean(original.get("trigger", ""))
        ack.msh.msh_9 = f"ACK^{trigger}^ACK" if trigger else "ACK"
        ack.msh.msh_10 = _clean(control_id)
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = code.value
        ack.msa.msa_2 = _clean(original.get("control_id", ""))
        if problem is not None:
            hl7_code, hl7_text = _HL7_ERROR.get(problem.code, ("207", "Application internal error"))
            err = ack.add_segment("ERR")
            location = _location(problem.where)
            if location:
                err.err_2 = location
            err.err_3 = f"{hl7_code}^{hl7_text}^HL70357"
            err.err_4 = "E"
            err.err_7 = _clean(problem.code)
            err.err_8 = _clean(f"{problem.code}: {problem.message}")
        text: str = ack.to_er7()
    except HL7apyException as error:  # pragma: no cover - the values above are all valid
        raise ParseError(
            f"cannot build the acknowledgement ({type(error).__name__})", code="PARSE_HL7_ACK"
        ) from None
    return (text + SEGMENT_END).encode("utf-8")


def read_ack(data: bytes) -> tuple[str, str, str | None]:
    """(MSA-1 code, MSA-2 control ID, ERR-7 our code) of an acknowledgement."""
    message = parse_message(decode_payload(data))
    return (message.get("MSA-1") or "", message.get("MSA-2") or "", message.get("ERR-7"))
