"""Split a received payload into the source records a mapping reads (pure: bytes in).

=========== =====================================================================================
csv         one record per data row (dict column -> text); delimiter, quote character and
            encoding from the mapping (a UTF-8 byte-order mark is always removed); ``row=N``
json        the list at ``record_path``, a top-level list, one object, or JSON Lines; ``record=N``
            (``line=N`` for JSON Lines)
fhir        the resources of a Bundle (``entry=N``), NDJSON bulk output (``line=N``) or one
            resource; only ``resource_type`` is kept
epcis       the events of an EPCISDocument or EPCISQueryDocument (``event=N``); only
            ``event_type`` is kept when given
xml         the elements at ``record_path`` (``element=N``), parsed with defusedxml: DTDs,
            entity declarations and external references are refused, never expanded;
            records below the root remember their ancestors (``ancestor::`` paths)
hl7v2       needs a reader from ``cmohub.formats.hl7v2`` passed in ``extra_readers``: records
            answer :class:`~cmohub.mapping.paths.Hl7Record`
=========== =====================================================================================

A locator says where the record is in the payload; with the payload's SHA-256 it is the
record's source reference (``<sha256>#row=12``), so a quarantined record can be replayed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from cmohub.errors import MappingError
from cmohub.mapping.paths import XmlRecord, compile_path
from cmohub.mapping.spec import SourceSpec


@dataclass(frozen=True, slots=True)
class SourceRecord:
    locator: str
    data: Any
    problem: str | None = None  # a reason the record is malformed (reader-level)


Reader = Callable[[SourceSpec, bytes], Iterator[SourceRecord]]


def _decode(data: bytes, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise MappingError(
            f"the payload is not valid {encoding}", code="MAPPING_SOURCE_ENCODING"
        ) from None
    return text.removeprefix("\ufeff")


def read_csv(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    text = _decode(data, source.encoding)
    lines = io.StringIO(text, newline="")
    for _ in range(source.skip_rows):
        lines.readline()
    reader = csv.reader(lines, delimiter=source.delimiter, quotechar=source.quotechar)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [name.strip() for name in header]
    if len(set(header)) != len(header):
        raise MappingError("the CSV header repeats a column name", code="MAPPING_SOURCE_INVALID")
    number = 0
    try:
        for row in reader:
            if not row or all(cell.strip() == "" for cell in row):
                continue
            number += 1
            problem = None
            if len(row) != len(header):
                problem = f"{len(row)} fields where the header has {len(header)}"
            yield SourceRecord(f"row={number}", dict(zip(header, row, strict=False)), problem)
    except csv.Error:
        raise MappingError(
            f"the CSV cannot be read after data row {number}", code="MAPPING_SOURCE_INVALID"
        ) from None


def _json_document(text: str) -> tuple[Any, bool]:
    """The parsed document, and whether it was JSON Lines."""
    try:
        return json.loads(text), False
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise MappingError("the payload is not JSON", code="MAPPING_SOURCE_INVALID") from None
        try:
            return [json.loads(line) for line in lines], True
        except json.JSONDecodeError:
            raise MappingError(
                "the payload is neither JSON nor JSON Lines", code="MAPPING_SOURCE_INVALID"
            ) from None


PARENT = "^"


def explode(document: Any, record_path: str) -> Iterator[tuple[str, Any]]:
    """Records at a path of keys and ``[*]`` steps (``operators[*].certifications[*]``).

    Each record keeps the object holding its list under the key ``^`` (for a top-level list,
    the document), so a mapping reads parent fields as ``^.operator_id`` (``^.^.x`` two
    levels up). Locators name
    the position: ``path=operators[2].certifications[1]`` (1-based).
    """
    steps = [s for s in record_path.removeprefix("$").strip(".").split(".") if s]

    def walk(node: Any, index: int, parent: Any, where: str) -> Iterator[tuple[str, Any]]:
        if index == len(steps):
            if isinstance(node, Mapping) and parent is not None:
                node = {**node, PARENT: parent}
            yield where, node
            return
        step = steps[index]
        each = step.endswith("[*]")
        key = step.removesuffix("[*]")
        child = node.get(key) if isinstance(node, Mapping) and key else node
        label = f"{where}.{key}" if where else key
        if not each:
            yield from walk(child, index + 1, parent, label)
            return
        for number, item in enumerate(child if isinstance(child, list) else (), start=1):
            # The item's parent is the object holding the list (the document itself for a
            # top-level list), carrying its own parent so that ^.^ reaches two levels up.
            if isinstance(node, Mapping):
                up: Any = {**node, PARENT: parent} if parent is not None else node
            else:
                up = parent
            yield from walk(item, index + 1, up, f"{label}[{number}]")

    yield from walk(document, 0, None, "")


def read_json(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    document, lines = _json_document(_decode(data, source.encoding))
    if source.record_path and "[*]" in source.record_path:
        for where, item in explode(document, source.record_path):
            problem = None if isinstance(item, Mapping) else "a record is not a JSON object"
            yield SourceRecord(f"path={where}", item, problem)
        return
    if source.record_path:
        items = compile_path("json", source.record_path)(document)
    elif isinstance(document, list):
        items = document
    else:
        items = [document]
    label = "line" if lines and not source.record_path else "record"
    for index, item in enumerate(items, start=1):
        problem = None if isinstance(item, Mapping) else "a record is not a JSON object"
        yield SourceRecord(f"{label}={index}", item, problem)


def read_fhir(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    document, lines = _json_document(_decode(data, source.encoding))
    if lines:
        entries = [(f"line={i}", r) for i, r in enumerate(document, start=1)]
    elif isinstance(document, Mapping) and document.get("resourceType") == "Bundle":
        entries = [
            (f"entry={i}", (e or {}).get("resource"))
            for i, e in enumerate(document.get("entry") or (), start=1)
        ]
    elif isinstance(document, list):
        entries = [(f"line={i}", r) for i, r in enumerate(document, start=1)]
    else:
        entries = [("resource=1", document)]
    for locator, resource in entries:
        if not isinstance(resource, Mapping):
            yield SourceRecord(locator, resource, "an entry has no resource")
            continue
        if source.resource_type and resource.get("resourceType") != source.resource_type:
            continue
        yield SourceRecord(locator, resource)


def read_epcis(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    document, lines = _json_document(_decode(data, source.encoding))
    events: list[Any]
    if source.record_path:
        events = compile_path("epcis", source.record_path)(document)
    elif lines or isinstance(document, list):
        events = list(document)
    else:
        body = (document.get("epcisBody") if isinstance(document, Mapping) else None) or {}
        found = body.get("eventList")
        if found is None:
            results = (body.get("queryResults") or {}).get("resultsBody") or {}
            found = results.get("eventList")
        events = list(found or ())
    for index, event in enumerate(events, start=1):
        if not isinstance(event, Mapping):
            yield SourceRecord(f"event={index}", event, "an event is not a JSON object")
            continue
        if source.event_type and event.get("type") != source.event_type:
            continue
        yield SourceRecord(f"event={index}", event)


def parse_xml(data: bytes) -> Element:
    """Parse untrusted XML: no DTD, no entity declarations, no external references."""
    try:
        root: Element = SafeElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException:
        raise MappingError(
            "the XML declares a DTD or entities, which are refused",
            code="MAPPING_SOURCE_UNSAFE_XML",
        ) from None
    except SafeElementTree.ParseError as error:
        line = getattr(error, "position", (0, 0))[0]
        raise MappingError(
            f"the XML is not well-formed (line {line})", code="MAPPING_SOURCE_INVALID"
        ) from None
    return root


def read_xml(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    root = parse_xml(data)
    path = source.record_path or "."
    namespaces = dict(source.namespaces)
    if path in (".", ""):
        records = [root]
    else:
        records = root.findall(path, namespaces)
        if not records and _matches_root(root, path, namespaces):
            records = [root]
    parents: dict[Element, Element] | None = None
    for index, found in enumerate(records, start=1):
        element = found
        if element is not root:
            if parents is None:
                parents = {child: parent for parent in root.iter() for child in parent}
            chain: list[Element] = []
            node = element
            while node in parents:
                node = parents[node]
                chain.append(node)
            element = XmlRecord.wrap(element, tuple(chain))
        yield SourceRecord(f"element={index}", element)


def _matches_root(root: Element, path: str, namespaces: Mapping[str, str]) -> bool:
    name = path.strip("/").split("/")[-1]
    if ":" in name:
        prefix, local = name.split(":", 1)
        name = f"{{{namespaces.get(prefix, '')}}}{local}"
    return root.tag == name


READERS: dict[str, Reader] = {
    "csv": read_csv,
    "json": read_json,
    "fhir": read_fhir,
    "epcis": read_epcis,
    "xml": read_xml,
}


def read_records(
    source: SourceSpec, data: bytes, *, extra_readers: Mapping[str, Reader] | None = None
) -> Iterator[SourceRecord]:
    """The records of ``data`` for a mapping's ``source`` section."""
    readers = {**READERS, **(extra_readers or {})}
    reader = readers.get(source.format)
    if reader is None:
        raise MappingError(
            f"no reader for {source.format} payloads here; pass the format adapter's reader "
            "(cmohub.formats) or give the engine parsed records",
            code="MAPPING_READER_MISSING",
        )
    return reader(source, data)
