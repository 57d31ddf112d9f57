"""EPCIS 2.0 JSON / JSON-LD documents and query results (pure; the one adapter of
``epcis-event-hash-generator``).

:func:`parse_epcis_document` reads an ``EPCISDocument`` or an ``EPCISQueryDocument`` (the
body of ``GET /events``), with the standard or the simple ``@context``, into
:class:`EpcisEvent` values: ObjectEvent, AggregationEvent, TransformationEvent,
TransactionEvent and AssociationEvent, with their what (EPCs, parent and child EPCs, input
and output EPCs, quantities), when (``eventTime`` as a UTC instant plus the offset it was
recorded in), where (read point, business location), why (business step and disposition as
CBV short names, business transactions, source and destination lists with possessing and
owning parties), ILMD, user extensions, sensor data and error declarations.

Every event gets a **key** under which duplicates are recognised:

* the GS1 canonical event hash (``ni:///sha-256;…?ver=CBV2.0``, computed with
  ``epcis-event-hash-generator`` — the CBV 2.0 pre-hash algorithm) for every event without
  sensor data, whatever ``eventID`` the source gave it: the same event sent twice under two
  UUIDs is one event;
* for sensor events, a digest of the event's content (``sha256:…``, excluding ``eventID``,
  ``recordTime`` and ``errorDeclaration``) unless ``gs1_sensor_hashes=True``: the GS1
  hash costs about 0.2 ms per sensor report in pure Python, which would make it most of the
  ingest time of a logger trace, and readings are de-duplicated by (logger, instant) anyway.

:func:`resolve_events` then keeps the first event of each key, counts the others as
duplicates, and applies **error declarations**: an event carrying ``errorDeclaration``
retracts the event with the same key (its corrective events, listed in
``correctiveEventIDs``, arrive as ordinary events and replace it).

:func:`sensor_readings` turns the temperature reports of sensor events into columns (°C,
UTC), ready for an Arrow table; a report without ``time`` is taken at its sensor metadata's
``time``, else at ``eventTime``; other report types are counted, alarm and error conditions
are returned as conditions, interval summaries (min/max/mean) as summaries.

Document-level problems raise :class:`~cmohub.errors.ParseError`; problems of one event or
one report reject only that record. Codes:

================================== ============================================================
PARSE_EPCIS_NOT_JSON               the payload is not JSON (or not UTF-8)
PARSE_EPCIS_NOT_A_DOCUMENT         ``type`` is not EPCISDocument / EPCISQueryDocument
PARSE_EPCIS_SCHEMA_VERSION         ``schemaVersion`` is not 2.x
PARSE_EPCIS_NO_EVENT_LIST          no ``epcisBody.eventList`` (nor query results)
EPCIS_EVENT_INVALID                an event is not a JSON object, or has an unknown ``type``
EPCIS_TIME_MISSING                 no ``eventTime``
EPCIS_TIME_INVALID                 ``eventTime`` is not an ISO 8601 date-time
EPCIS_TIME_OFFSET_MISSING          ``eventTime`` has no UTC offset (or no
                                   ``eventTimeZoneOffset``)
EPCIS_HASH_FAILED                  the canonical hash could not be computed
EPCIS_DUPLICATE                    the same event again (suppressed, not quarantined)
EPCIS_RETRACTED                    retracted by an error declaration (suppressed)
EPCIS_NO_COI                       (custody) the event names no COI: not material of this hub
TEMPERATURE_UNIT_MISSING           a temperature report without ``uom``
TEMPERATURE_UNIT_UNKNOWN           a ``uom`` that is no temperature unit
EPCIS_SENSOR_DEVICE_MISSING        a report with no device (logger) identifier
EPCIS_SENSOR_VALUE_INVALID         a report value that is not a finite number
EPCIS_SENSOR_ALARM_CONDITION       a temperature report raising an alarm condition (no value)
EPCIS_SENSOR_ERROR_CONDITION       a temperature report raising a sensor error (no value)
================================== ============================================================
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

from epcis_event_hash_generator import hash_generator, json_to_py
from epcis_event_hash_generator import json_xml_model_mismatch_correction as correction
from epcis_event_hash_generator.file_document_loader import file_document_loader
from pyld import jsonld  # type: ignore[import-untyped]  # pyld ships no type information

from cmohub.coldchain.units import offset_minutes, offset_text, unit_code
from cmohub.errors import InputError, ParseError
from cmohub.mapping.readers import SourceRecord
from cmohub.mapping.spec import SourceSpec

STANDARD_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
#: Context URLs treated as the standard one (older published location).
STANDARD_CONTEXTS = frozenset(
    {STANDARD_CONTEXT, "https://gs1.github.io/EPCIS/epcis-context.jsonld"}
)
#: The alternate "simple" context: same vocabulary with plain JSON terms.
SIMPLE_CONTEXTS = frozenset(
    {
        "https://gs1.github.io/EPCIS/epcis-context-simple.jsonld",
        "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context-simple.jsonld",
    }
)
EVENT_TYPES = frozenset(
    {
        "ObjectEvent",
        "AggregationEvent",
        "TransformationEvent",
        "TransactionEvent",
        "AssociationEvent",
    }
)
COI_EPC_PREFIX = "urn:cmohub:coi:"
SHIPMENT_URI_PREFIX = "urn:cmohub:shipment:"
CMOHUB_COI = "cmohub:coi"
CMOHUB_SHIPMENT = "cmohub:shipmentId"
CMOHUB_LEG = "cmohub:legNo"
CMOHUB_LOGGER = "cmohub:loggerId"
TEMPERATURE_TYPES = frozenset({"Temperature", "gs1:Temperature", "https://gs1.org/voc/Temperature"})
POSSESSING = "possessing_party"
OWNING = "owning_party"
LOCATION = "location"

# CBV 2.0 vocabulary spellings: bare name, CBV 1.x URN, Web URI.
_CBV_PREFIXES = (
    "urn:epcglobal:cbv:bizstep:",
    "urn:epcglobal:cbv:disp:",
    "urn:epcglobal:cbv:sdt:",
    "urn:epcglobal:cbv:btt:",
    "urn:epcglobal:cbv:er:",
    "https://ref.gs1.org/cbv/BizStep-",
    "https://ref.gs1.org/cbv/Disp-",
    "https://ref.gs1.org/cbv/SDT-",
    "https://ref.gs1.org/cbv/BTT-",
    "https://ref.gs1.org/cbv/ER-",
    "gs1:",
    "cbv:",
)


def cbv_name(value: Any) -> str | None:
    """The short CBV name of a vocabulary value (``shipping`` for every spelling of it)."""
    if value is None:
        return None
    text = str(value).strip()
    for prefix in _CBV_PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            return rest.split("-", 1)[1] if prefix.startswith("gs1:") and "-" in rest else rest
    return text


# --- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorReport:
    """One ``sensorReport`` entry (values as received; the unit as its code)."""

    type: str | None
    time: datetime | None
    value: float | None
    min_value: float | None
    max_value: float | None
    mean_value: float | None
    uom: str | None
    exception: str | None
    device_id: str | None
    component: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SensorElement:
    device_id: str | None
    time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    reports: tuple[SensorReport, ...]


@dataclass(frozen=True, slots=True)
class ErrorDeclaration:
    declaration_time: datetime | None
    reason: str | None
    corrective_event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EpcisEvent:
    """One EPCIS event, read; ``raw`` is the event object as received."""

    index: int  # 1-based position in the document's event list
    type: str
    key: str  # canonical hash (or content digest for sensor events): duplicates share it
    event_id: str | None
    event_time: datetime  # UTC
    event_time_zone_offset: str
    record_time: datetime | None
    action: str | None
    biz_step: str | None
    disposition: str | None
    read_point: str | None
    biz_location: str | None
    epcs: tuple[str, ...]
    parent_id: str | None
    biz_transactions: tuple[tuple[str | None, str], ...]
    sources: tuple[tuple[str | None, str], ...]
    destinations: tuple[tuple[str | None, str], ...]
    ilmd: Mapping[str, Any]
    extensions: Mapping[str, Any]
    sensor_elements: tuple[SensorElement, ...]
    error_declaration: ErrorDeclaration | None
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def locator(self) -> str:
        return f"event={self.index}"

    def sensor_reports(self) -> Iterator[tuple[str, SensorElement, SensorReport]]:
        """Each sensor report with its locator, ``event=N;element=E;report=R`` (1-based)."""
        for e_number, element in enumerate(self.sensor_elements, start=1):
            for r_number, report in enumerate(element.reports, start=1):
                yield f"event={self.index};element={e_number};report={r_number}", element, report

    @property
    def temperature_locators(self) -> list[str]:
        """The locators of the event's temperature reports (the sensor feed's records)."""
        return [locator for locator, _, r in self.sensor_reports() if r.type in TEMPERATURE_TYPES]

    def party(self, kind: str, role: str = POSSESSING) -> str | None:
        """The ``role`` party of the source (``kind="source"``) or destination list."""
        entries = self.sources if kind == "source" else self.destinations
        return next((uri for t, uri in entries if cbv_name(t) == role), None)

    @property
    def coi(self) -> str | None:
        """The COI the event is about: its ``urn:cmohub:coi:`` EPC, else ``cmohub:coi``."""
        for epc in self.epcs:
            if epc.startswith(COI_EPC_PREFIX):
                return epc[len(COI_EPC_PREFIX) :]
        value = self.extensions.get(CMOHUB_COI)
        return str(value) if value is not None else None

    @property
    def shipment_id(self) -> str | None:
        for kind, uri in self.biz_transactions:
            if uri.startswith(SHIPMENT_URI_PREFIX) and cbv_name(kind) in (None, "bol"):
                return uri[len(SHIPMENT_URI_PREFIX) :]
        value = self.extensions.get(CMOHUB_SHIPMENT)
        return str(value) if value is not None else None

    @property
    def is_sensor_event(self) -> bool:
        return bool(self.sensor_elements)

    @property
    def local_time(self) -> datetime:
        """``event_time`` on the clock it was recorded on."""
        minutes = offset_minutes(self.event_time_zone_offset)
        return self.event_time.astimezone(timezone(timedelta(minutes=minutes)))


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    index: int
    code: str
    message: str
    sensor: bool = False  # the event carried sensor data (its records are readings)

    @property
    def locator(self) -> str:
        return f"event={self.index}"


@dataclass(frozen=True)
class EpcisDocument:
    """A parsed document: its kind, context, header fields and events."""

    kind: str  # EPCISDocument or EPCISQueryDocument
    context: str  # "standard", "simple", "custom" or "none"
    schema_version: str | None
    creation_date: datetime | None
    events: tuple[EpcisEvent, ...]
    rejected: tuple[RejectedEvent, ...]
    namespaces: Mapping[str, str]

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected)


# --- parsing -----------------------------------------------------------------------------------


def _time(value: Any, code: str = "EPCIS_TIME_INVALID") -> datetime:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("a date-time is missing", code="EPCIS_TIME_MISSING")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise InputError("not an ISO 8601 date-time", code=code) from None
    if parsed.tzinfo is None:
        raise InputError("a date-time has no UTC offset", code="EPCIS_TIME_OFFSET_MISSING")
    return parsed.astimezone(UTC)


def _optional_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return _time(value)
    except InputError:
        return None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        value = item.get("epc") or item.get("@value") if isinstance(item, Mapping) else item
        if value is not None:
            out.append(str(value))
    return tuple(out)


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value is not None else None


def _pairs(value: Any, id_key: str) -> tuple[tuple[str | None, str], ...]:
    out: list[tuple[str | None, str]] = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, Mapping) and item.get(id_key) is not None:
            kind = item.get("type")
            out.append((cbv_name(kind), str(item[id_key])))
    return tuple(out)


def _sensor_elements(value: Any) -> tuple[SensorElement, ...]:
    elements = []
    for element in value if isinstance(value, list) else ():
        if not isinstance(element, Mapping):
            continue
        meta = element.get("sensorMetadata") or {}
        meta = meta if isinstance(meta, Mapping) else {}
        reports = []
        for report in element.get("sensorReport") or ():
            if not isinstance(report, Mapping):
                continue
            reports.append(
                SensorReport(
                    type=report.get("type"),
                    time=_optional_time(report.get("time")),
                    value=_number(report.get("value")),
                    min_value=_number(report.get("minValue")),
                    max_value=_number(report.get("maxValue")),
                    mean_value=_number(report.get("meanValue")),
                    uom=report.get("uom"),
                    exception=cbv_name(report.get("exception")),
                    device_id=report.get("deviceID"),
                    component=report.get("component"),
                    raw=report,
                )
            )
        elements.append(
            SensorElement(
                device_id=meta.get("deviceID"),
                time=_optional_time(meta.get("time")),
                start_time=_optional_time(meta.get("startTime")),
                end_time=_optional_time(meta.get("endTime")),
                reports=tuple(reports),
            )
        )
    return tuple(elements)


_STANDARD_FIELDS = frozenset(
    {
        "type",
        "eventID",
        "eventTime",
        "eventTimeZoneOffset",
        "recordTime",
        "action",
        "bizStep",
        "disposition",
        "readPoint",
        "bizLocation",
        "epcList",
        "parentID",
        "childEPCs",
        "inputEPCList",
        "outputEPCList",
        "quantityList",
        "childQuantityList",
        "inputQuantityList",
        "outputQuantityList",
        "transformationID",
        "bizTransactionList",
        "sourceList",
        "destinationList",
        "sensorElementList",
        "persistentDisposition",
        "errorDeclaration",
        "certificationInfo",
        "ilmd",
        "@context",
    }
)


def _event(raw: Mapping[str, Any], index: int, key: str) -> EpcisEvent:
    event_time = _time(raw.get("eventTime"))
    offset = raw.get("eventTimeZoneOffset")
    if offset is None:
        raise InputError("no eventTimeZoneOffset", code="EPCIS_TIME_OFFSET_MISSING")
    try:
        offset = offset_text(offset_minutes(str(offset)))
    except InputError:
        raise InputError("eventTimeZoneOffset is not ±HH:MM", code="EPCIS_TIME_INVALID") from None
    declaration = raw.get("errorDeclaration")
    error = None
    if isinstance(declaration, Mapping):
        error = ErrorDeclaration(
            declaration_time=_optional_time(declaration.get("declarationTime")),
            reason=cbv_name(declaration.get("reason")),
            corrective_event_ids=_strings(declaration.get("correctiveEventIDs")),
        )
    epcs = (
        _strings(raw.get("epcList"))
        + _strings(raw.get("childEPCs"))
        + _strings(raw.get("inputEPCList"))
        + _strings(raw.get("outputEPCList"))
    )
    ilmd = raw.get("ilmd")
    return EpcisEvent(
        index=index,
        type=str(raw["type"]),
        key=key,
        event_id=str(raw["eventID"]) if raw.get("eventID") is not None else None,
        event_time=event_time,
        event_time_zone_offset=offset,
        record_time=_optional_time(raw.get("recordTime")),
        action=str(raw["action"]) if raw.get("action") is not None else None,
        biz_step=cbv_name(raw.get("bizStep")),
        disposition=cbv_name(raw.get("disposition")),
        read_point=_id(raw.get("readPoint")),
        biz_location=_id(raw.get("bizLocation")),
        epcs=epcs,
        parent_id=str(raw["parentID"]) if raw.get("parentID") is not None else None,
        biz_transactions=_pairs(raw.get("bizTransactionList"), "bizTransaction"),
        sources=_pairs(raw.get("sourceList"), "source"),
        destinations=_pairs(raw.get("destinationList"), "destination"),
        ilmd=dict(ilmd) if isinstance(ilmd, Mapping) else {},
        extensions={k: v for k, v in raw.items() if k not in _STANDARD_FIELDS and ":" in k},
        sensor_elements=_sensor_elements(raw.get("sensorElementList")),
        error_declaration=error,
        raw=raw,
    )


def load_json(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """The document as a JSON object (bytes are decoded as UTF-8, a BOM is dropped)."""
    if isinstance(data, Mapping):
        return data
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = json.loads(text.removeprefix("\ufeff"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ParseError("the payload is not JSON", code="PARSE_EPCIS_NOT_JSON") from None
    if not isinstance(document, Mapping):
        raise ParseError("the payload is not a JSON object", code="PARSE_EPCIS_NOT_A_DOCUMENT")
    return document


def event_list(document: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The document's kind and its raw event list (query results included)."""
    kind = document.get("type")
    if kind not in ("EPCISDocument", "EPCISQueryDocument"):
        raise ParseError(
            "not an EPCIS document (type must be EPCISDocument or EPCISQueryDocument)",
            code="PARSE_EPCIS_NOT_A_DOCUMENT",
        )
    version = document.get("schemaVersion")
    if version is not None and not str(version).startswith("2"):
        raise ParseError(
            "only EPCIS 2.x documents are read here", code="PARSE_EPCIS_SCHEMA_VERSION"
        )
    body = document.get("epcisBody")
    if not isinstance(body, Mapping):
        raise ParseError("no epcisBody", code="PARSE_EPCIS_NO_EVENT_LIST")
    events = body.get("eventList")
    if events is None and isinstance(body.get("queryResults"), Mapping):
        results = body["queryResults"].get("resultsBody")
        events = results.get("eventList") if isinstance(results, Mapping) else None
    if events is None and isinstance(body.get("event"), Mapping):
        events = [body["event"]]
    if not isinstance(events, list):
        raise ParseError("no event list in epcisBody", code="PARSE_EPCIS_NO_EVENT_LIST")
    return str(kind), events


def context_kind(document: Mapping[str, Any]) -> str:
    context = document.get("@context")
    urls = [c for c in (context if isinstance(context, list) else [context]) if isinstance(c, str)]
    if any(u in SIMPLE_CONTEXTS for u in urls):
        return "simple"
    if any(u in STANDARD_CONTEXTS for u in urls):
        return "standard"
    return "custom" if urls else "none"


def namespaces_of(document: Mapping[str, Any]) -> dict[str, str]:
    context = document.get("@context")
    out: dict[str, str] = {}
    for item in context if isinstance(context, list) else [context]:
        if isinstance(item, Mapping):
            out.update({str(k): str(v) for k, v in item.items() if isinstance(v, str)})
    return out


def parse_epcis_document(
    data: bytes | str | Mapping[str, Any], *, gs1_sensor_hashes: bool = False
) -> EpcisDocument:
    """Read an EPCIS 2.0 document or query result (see the module docstring)."""
    document = load_json(data)
    kind, raw_events = event_list(document)
    context = context_kind(document)
    usable: list[tuple[int, Mapping[str, Any]]] = []
    rejected: list[RejectedEvent] = []
    for index, raw in enumerate(raw_events, start=1):
        if not isinstance(raw, Mapping) or raw.get("type") not in EVENT_TYPES:
            rejected.append(
                RejectedEvent(
                    index,
                    "EPCIS_EVENT_INVALID",
                    "not an EPCIS event object",
                    isinstance(raw, Mapping) and bool(raw.get("sensorElementList")),
                )
            )
            continue
        usable.append((index, raw))
    keys = event_keys(document, [raw for _, raw in usable], gs1_sensor_hashes=gs1_sensor_hashes)
    events: list[EpcisEvent] = []
    for (index, raw), key in zip(usable, keys, strict=True):
        sensor = bool(raw.get("sensorElementList"))
        if isinstance(key, InputError):
            rejected.append(RejectedEvent(index, key.code, key.message, sensor))
            continue
        try:
            events.append(_event(raw, index, key))
        except InputError as error:
            rejected.append(RejectedEvent(index, error.code, error.message, sensor))
    return EpcisDocument(
        kind=kind,
        context=context,
        schema_version=str(document["schemaVersion"]) if "schemaVersion" in document else None,
        creation_date=_optional_time(document.get("creationDate")),
        events=tuple(events),
        rejected=tuple(sorted(rejected, key=lambda r: r.index)),
        namespaces=namespaces_of(document),
    )


# --- keys: canonical hashes ----------------------------------------------------------------------

_SKIP_IN_PROBE = frozenset(
    {"time", "value", "minValue", "maxValue", "meanValue", "sDev", "percRank", "percValue"}
)
_NOT_IN_DIGEST = frozenset({"eventID", "recordTime", "errorDeclaration"})


def content_digest(raw: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the event's canonical JSON, without ID, record time and error
    declaration (the fields the GS1 hash leaves out too)."""
    body = {k: v for k, v in raw.items() if k not in _NOT_IN_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def event_keys(
    document: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    *,
    gs1_sensor_hashes: bool = False,
) -> list[str | InputError]:
    """The duplicate key of each event (see the module docstring); an error where none
    could be computed."""
    keys: list[str | InputError] = []
    hashed: list[int] = []
    for position, raw in enumerate(events):
        if raw.get("sensorElementList") and not gs1_sensor_hashes:
            keys.append(content_digest(raw))
        else:
            keys.append("")
            hashed.append(position)
    if hashed:
        try:
            hashes = gs1_event_hashes(document, [events[i] for i in hashed])
        except InputError as error:
            for position in hashed:
                keys[position] = error
        else:
            for position, value in zip(hashed, hashes, strict=True):
                keys[position] = value
    return keys


def gs1_event_hashes(document: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[str]:
    """GS1 canonical event hashes (``ni:///sha-256;…?ver=CBV2.0``) of ``events``, which come
    from ``document`` (its ``@context`` decides how bare CBV terms expand)."""
    if not events:
        return []
    context = _hash_context(document)
    events_copy = [copy.deepcopy(dict(e)) for e in events]
    hashing_doc = {
        "@context": context,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "epcisBody": {"eventList": events_copy},
    }
    probe = {**hashing_doc, "epcisBody": {"eventList": [_probe(e) for e in events_copy]}}
    options = {"documentLoader": _offline_loader}
    try:
        try:
            expanded = jsonld.expand(probe, options=dict(options))
        except jsonld.JsonLdError:
            # A custom context redefining a protected GS1 term (some published examples do):
            # the GS1 vocabulary alone decides how CBV terms expand.
            hashing_doc["@context"] = [STANDARD_CONTEXT]
            probe["@context"] = [STANDARD_CONTEXT]
            expanded = jsonld.expand(probe, options=dict(options))
        values: list[str] = []
        json_to_py._find_expanded_values(expanded, values)
        vocabulary = {
            v
            for v in values
            if v.startswith("https://ref.gs1.org/cbv") or v.startswith("https://gs1.org/voc")
        }
        replaced = json_to_py._replace_bare_string_values(hashing_doc, vocabulary)
        # The library keeps namespace prefixes in a module global between documents: reset
        # it per call (so hashing is not thread-safe; pipelines hash from one thread).
        json_to_py._namespaces.clear()
        json_to_py._collect_namespaces_from_jsonld_context(replaced["@context"])
        tree = (
            "EventList",
            "",
            [
                correction.deep_structure_correction(json_to_py._json_to_py(e))
                for e in replaced["epcisBody"]["eventList"]
            ],
        )
        hashes = hash_generator.epcis_hashes_from_events(tree)
    except (jsonld.JsonLdError, KeyError, TypeError, ValueError, AttributeError):
        raise InputError(
            "the canonical event hash could not be computed", code="EPCIS_HASH_FAILED"
        ) from None
    if len(hashes) != len(events):
        # The library logs and skips an event it cannot pre-hash; never guess which.
        raise InputError("the canonical event hash could not be computed", code="EPCIS_HASH_FAILED")
    return [str(h) for h in hashes]


def _hash_context(document: Mapping[str, Any]) -> list[Any]:
    """The standard GS1 context and the document's inline namespace definitions.

    The simple context defines the same vocabulary; remote contexts are never fetched (the
    functional core does no I/O), so only inline definitions are kept beside the GS1 one.
    """
    context = document.get("@context")
    items = context if isinstance(context, list) else [context]
    return [STANDARD_CONTEXT, *[dict(c) for c in items if isinstance(c, Mapping)]]


def _probe(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with its sensor reports reduced to one per distinct vocabulary: expanding
    the JSON-LD of every reading costs much and adds no vocabulary term."""
    out = dict(event)
    elements = out.get("sensorElementList")
    if isinstance(elements, list):
        reduced = []
        for element in elements:
            if not isinstance(element, Mapping):
                reduced.append(element)
                continue
            seen: list[dict[str, Any]] = []
            for report in element.get("sensorReport") or ():
                if isinstance(report, Mapping):
                    kept = {k: v for k, v in report.items() if k not in _SKIP_IN_PROBE}
                    if kept not in seen:
                        seen.append(kept)
            reduced.append({**element, "sensorReport": seen})
        out["sensorElementList"] = reduced
    return out


@cache
def _bundled_context(url: str) -> dict[str, Any]:
    """The GS1 context the hash library ships for ``url`` (read once)."""
    with warnings.catch_warnings():
        # epcis-event-hash-generator 1.9 reads its bundled contexts with
        # importlib.resources.open_text, deprecated since Python 3.11 (still works).
        warnings.filterwarnings("ignore", message=".*open_text", category=DeprecationWarning)
        loaded: dict[str, Any] = file_document_loader()(url, {})
    return loaded


def _offline_loader(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Serve the GS1 contexts the hash library ships; refuse every other URL (no network)."""
    if url in STANDARD_CONTEXTS:
        return copy.deepcopy(_bundled_context(url))
    raise jsonld.JsonLdError(
        "remote JSON-LD contexts are not fetched",
        "jsonld.LoadDocumentError",
        code="loading document failed",
    )


# --- de-duplication and error declarations -------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """Events after de-duplication and error declarations."""

    kept: tuple[EpcisEvent, ...]
    duplicates: tuple[EpcisEvent, ...]
    declarations: tuple[EpcisEvent, ...]  # the error declarations themselves
    retracted: tuple[EpcisEvent, ...]  # events they retracted (present in this batch)
    retracted_keys: frozenset[str]  # every key a declaration retracts (maybe seen earlier)


def resolve_events(events: Iterable[EpcisEvent]) -> Resolution:
    """Keep one event per key, drop what error declarations retract (see module docstring)."""
    ordered = list(events)
    retracting = {e.key for e in ordered if e.error_declaration is not None}
    kept: list[EpcisEvent] = []
    duplicates: list[EpcisEvent] = []
    declarations: list[EpcisEvent] = []
    retracted: list[EpcisEvent] = []
    seen: set[str] = set()
    for event in ordered:
        if event.error_declaration is not None:
            declarations.append(event)
            continue
        if event.key in seen:
            duplicates.append(event)
            continue
        seen.add(event.key)
        if event.key in retracting:
            retracted.append(event)
        else:
            kept.append(event)
    return Resolution(
        kept=tuple(kept),
        duplicates=tuple(duplicates),
        declarations=tuple(declarations),
        retracted=tuple(retracted),
        retracted_keys=frozenset(retracting),
    )


# --- sensor data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorCondition:
    """An alarm or error condition a sensor raised (no value)."""

    event_index: int
    locator: str
    logger_id: str | None
    shipment_id: str | None
    type: str | None
    condition: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class SensorSummary:
    """An interval summary (min / max / mean over ``start``..``end``) of one sensor."""

    event_index: int
    locator: str
    logger_id: str | None
    type: str | None
    start: datetime | None
    end: datetime | None
    minimum: float | None
    maximum: float | None
    mean: float | None
    uom: str | None


@dataclass
class SensorReadings:
    """Temperature readings of sensor events as columns (°C, UTC microseconds)."""

    logger_id: list[str] = field(default_factory=list)
    shipment_id: list[str | None] = field(default_factory=list)
    observed_at: list[int] = field(default_factory=list)  # µs since the epoch, UTC
    celsius: list[float] = field(default_factory=list)
    locator: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # locator, code, message
    conditions: list[SensorCondition] = field(default_factory=list)
    summaries: list[SensorSummary] = field(default_factory=list)
    other_reports: int = 0  # reports of other quantities (humidity, speed, ...)

    @property
    def received(self) -> int:
        """Temperature reports seen: readings + rejected (conditions included)."""
        return len(self.celsius) + len(self.rejected)


def logger_id_of(device_id: str | None) -> str | None:
    """A logger's serial from its device ID: the asset reference of a GIAI EPC URI
    (``urn:epc:id:giai:0614141.PLR-LG-000001`` -> ``PLR-LG-000001``), else the ID itself."""
    if device_id is None:
        return None
    text = str(device_id).strip()
    if text.startswith("urn:epc:id:giai:") and "." in text:
        return text[len("urn:epc:id:giai:") :].split(".", 1)[1]
    return text or None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def sensor_readings(
    events: Iterable[EpcisEvent], *, into: SensorReadings | None = None
) -> SensorReadings:
    """The temperature readings of ``events`` (see the module docstring)."""
    out = into if into is not None else SensorReadings()
    unit_cache: dict[str | None, str | InputError] = {}
    for event in events:
        explicit_logger = event.extensions.get(CMOHUB_LOGGER)
        shipment = event.shipment_id
        for locator, element, report in event.sensor_reports():
            if report.type not in TEMPERATURE_TYPES:
                out.other_reports += 1
                continue
            logger = logger_id_of(
                str(explicit_logger)
                if explicit_logger is not None
                else report.device_id or element.device_id
            )
            moment = report.time or element.time or event.event_time
            if report.exception is not None:
                condition = report.exception.upper()
                code = (
                    "EPCIS_SENSOR_ALARM_CONDITION"
                    if "ALARM" in condition
                    else "EPCIS_SENSOR_ERROR_CONDITION"
                )
                out.conditions.append(
                    SensorCondition(
                        event.index,
                        locator,
                        logger,
                        shipment,
                        report.type,
                        condition,
                        moment or event.event_time,
                    )
                )
                out.rejected.append((locator, code, f"the sensor reported {condition}"))
                continue
            if report.value is None:
                if report.min_value is not None or report.max_value is not None:
                    out.summaries.append(
                        SensorSummary(
                            event.index,
                            locator,
                            logger,
                            report.type,
                            element.start_time,
                            element.end_time,
                            report.min_value,
                            report.max_value,
                            report.mean_value,
                            report.uom,
                        )
                    )
                    continue
                out.rejected.append(
                    (locator, "EPCIS_SENSOR_VALUE_INVALID", "no finite reading value")
                )
                continue
            unit = unit_cache.get(report.uom)
            if unit is None:
                try:
                    unit = unit_code(report.uom)
                except InputError as error:
                    unit = error
                unit_cache[report.uom] = unit
            if isinstance(unit, InputError):
                out.rejected.append((locator, unit.code, unit.message))
                continue
            if logger is None:
                out.rejected.append(
                    (locator, "EPCIS_SENSOR_DEVICE_MISSING", "the reading names no logger")
                )
                continue
            value = report.value
            if unit == "FAH":
                value = (value - 32.0) * (5.0 / 9.0)
            elif unit == "KEL":
                value = value - 273.15
            out.logger_id.append(logger)
            out.shipment_id.append(shipment)
            out.observed_at.append(_micros(moment))
            out.celsius.append(round(value, 6))
            out.locator.append(locator)
    return out


# --- records for the mapping engine ---------------------------------------------------------------

EVENT_KEY_FIELD = "cmohub:eventKey"


def mapping_record(event: EpcisEvent) -> dict[str, Any]:
    """The event as the custody mapping reads it: as received, with CBV values in their short
    form (``bizStep``, ``disposition``, source/destination and transaction types, whatever
    spelling the source used) and its duplicate key under ``cmohub:eventKey``."""
    record = dict(event.raw)
    for name in ("bizStep", "disposition"):
        if record.get(name) is not None:
            record[name] = cbv_name(record[name])
    for name, id_key in (
        ("sourceList", "source"),
        ("destinationList", "destination"),
        ("bizTransactionList", "bizTransaction"),
    ):
        items = record.get(name)
        if isinstance(items, list):
            record[name] = [
                {**item, "type": cbv_name(item.get("type"))}
                if isinstance(item, Mapping) and id_key in item
                else item
                for item in items
            ]
    record[EVENT_KEY_FIELD] = event.key
    return record


def read_epcis_records(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    """Custody records of an EPCIS payload for the mapping engine (``format: epcis``).

    Events are read and resolved first (canonical keys, duplicates and error declarations
    suppressed); sensor events are left to the sensor feed; events that cannot be read or
    name no COI come as records with a problem (quarantined as malformed by the engine —
    the logistics pipeline quarantines them with their own codes instead).
    """
    document = parse_epcis_document(data)
    problems = {r.index: f"{r.code}: {r.message}" for r in document.rejected}
    resolution = resolve_events(document.events)
    kept = {e.index: e for e in resolution.kept}
    raw_events = event_list(load_json(data))[1]
    for index in range(1, len(raw_events) + 1):
        if index in problems:
            yield SourceRecord(f"event={index}", raw_events[index - 1], problems[index])
            continue
        event = kept.get(index)
        if event is None or event.is_sensor_event:
            continue
        if source.event_type and event.type != source.event_type:
            continue
        if event.coi is None:
            yield SourceRecord(
                event.locator, mapping_record(event), "EPCIS_NO_COI: the event names no COI"
            )
            continue
        yield SourceRecord(event.locator, mapping_record(event))
