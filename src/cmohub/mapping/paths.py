"""Source paths: how a mapping points at a value inside one source record (pure).

Each source format has its own small path language, compiled once into a function
``record -> list of values`` (zero, one or many values):

* **csv** — the column name, exactly: ``BATCH_NO``, ``Start Time``.
* **json**, **epcis** — dotted keys, ``[n]``, ``[*]`` and filters ``[?key=='value']``; a
  leading ``$.`` is allowed; stepping into a list maps over its items:
  ``batch.id``, ``steps[0].code``, ``identifier[?system=='urn:x'].value``,
  ``sensorElementList[*].sensorReport[*].value``.
* **fhir** — FHIR element paths: dotted elements with an optional leading resource type,
  ``[n]``, ``.where(key='value')`` and ``.first()``:
  ``Patient.identifier.where(system='urn:x').value``, ``Observation.valueQuantity.value``.
* **xml** — an ElementTree path (the XPath subset: steps, ``//``, ``[@a='v']``,
  ``[tag='v']``, ``[n]``) relative to the record element, ending optionally in ``/@attribute``
  or ``/text()``; prefixes come from the mapping's ``namespaces``: ``b2mml:BatchID``,
  ``.//b2mml:Parameter[b2mml:ID='T']/b2mml:Value``, ``Material/@id``. Two XPath forms reach
  outside the record: a leading ``ancestor::name/...`` starts at the nearest enclosing element
  of that name (``ancestor::b2mml:ExecutedControlRecipe/b2mml:BatchID``), and a predicate
  ``[tag=current()/path]`` compares with a value of the record itself (a join inside one
  document: ``ancestor::b2mml:BatchProductionRecord/b2mml:PersonnelIdentifications/
  b2mml:PersonnelIdentification[b2mml:ReferencedElement=current()/b2mml:ID]/b2mml:TimeStamp``).
* **hl7v2** — field references ``SEG-field``, a repeat ``[n]`` (1-based), component and
  subcomponent numbers: ``PID-3.1``, ``PID-3[2].1``, ``OBR-7``, ``OBX-5``, ``PID-5.1.1``.

Missing elements give no value (an empty list), never an error. JSON and FHIR filters compare
the element's value as text. Nothing is ever evaluated as code.

Records are what the readers (:mod:`cmohub.mapping.readers`) or the format adapters yield:
dicts for csv/json/fhir/epcis, :class:`xml.etree.ElementTree.Element` for xml, and any object
with ``get(ref) -> str | None`` (:class:`Hl7Record`) for HL7 v2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from xml.etree.ElementTree import Element

from cmohub.errors import MappingError

Getter = Callable[[Any], list[Any]]


@runtime_checkable
class Hl7Record(Protocol):
    """What the engine needs from one parsed HL7 v2 record (a message, or one repeat of the
    mapping's record segment inside it): field values by reference, and the segment IDs present
    (for schema-drift checks). ``formats/hl7v2.py`` provides it; tests use a tiny splitter."""

    def get(self, ref: str) -> str | None:
        """The value at ``ref`` (``PID-3.1``, ``PID-3[2].1``, ``OBX-5``) or None when absent."""
        ...

    def segment_ids(self) -> Iterable[str]:
        """The IDs of the segments in the record (``MSH``, ``PID``, ``OBR``, ``OBX``, ...)."""
        ...


# --- JSON / FHIR / EPCIS ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    name: str


@dataclass(frozen=True, slots=True)
class _Index:
    index: int  # 0-based


@dataclass(frozen=True, slots=True)
class _All:
    pass


@dataclass(frozen=True, slots=True)
class _Filter:
    key: str
    value: str


_Step = _Key | _Index | _All | _Filter

_JSON_TOKEN = re.compile(
    r"""
    (?P<key>\^|[A-Za-z_@$][A-Za-z0-9_@:$-]*)
    | \[(?P<index>\d+)\]
    | \[(?P<all>\*)\]
    | \[\?\s*(?:@\.)?(?P<fkey>[A-Za-z_][A-Za-z0-9_]*)\s*==\s*(?P<q>['"])(?P<fval>.*?)(?P=q)\s*\]
    | (?P<dot>\.)
    """,
    re.VERBOSE,
)
_FHIR_WHERE = re.compile(
    r"""where\(\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<q>['"])(?P<value>.*?)(?P=q)\s*\)"""
)


def _parse_json_steps(path: str, *, where: str) -> list[_Step]:
    text = path.strip()
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    steps: list[_Step] = []
    position = 0
    expect_key = True
    while position < len(text):
        match = _JSON_TOKEN.match(text, position)
        if match is None:
            raise MappingError(
                f"JSON path {path!r}: cannot read from character {position + 1}",
                code="MAPPING_PATH_INVALID",
                where=where,
            )
        position = match.end()
        if match["dot"]:
            expect_key = True
            continue
        if match["key"] is not None:
            if not expect_key:
                raise MappingError(
                    f"JSON path {path!r}: missing '.' before {match['key']!r}",
                    code="MAPPING_PATH_INVALID",
                    where=where,
                )
            steps.append(_Key(match["key"]))
        elif match["index"] is not None:
            steps.append(_Index(int(match["index"])))
        elif match["all"] is not None:
            steps.append(_All())
        else:
            steps.append(_Filter(match["fkey"], match["fval"]))
        expect_key = False
    if not steps:
        raise MappingError("empty JSON path", code="MAPPING_PATH_INVALID", where=where)
    return steps


def _parse_fhir_steps(path: str, *, where: str) -> list[_Step]:
    steps: list[_Step] = []
    parts = _split_fhir(path, where=where)
    if parts and parts[0][:1].isupper() and not parts[0].startswith("where("):
        parts = parts[1:]  # the leading resource type names the record itself
    for part in parts:
        where_match = _FHIR_WHERE.fullmatch(part)
        if where_match:
            steps.append(_Filter(where_match["key"], where_match["value"]))
        elif part == "first()":
            steps.append(_Index(0))
        else:
            steps.extend(_parse_json_steps(part, where=where))
    if not steps:
        raise MappingError("empty FHIR path", code="MAPPING_PATH_INVALID", where=where)
    return steps


def _split_fhir(path: str, *, where: str) -> list[str]:
    """Split on dots outside parentheses and quotes."""
    parts, current, depth, quote = [], "", 0, ""
    for ch in path.strip():
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == "(":
            depth += 1
            current += ch
        elif ch == ")":
            depth -= 1
            current += ch
        elif ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth or quote:
        raise MappingError(
            f"FHIR path {path!r}: unbalanced parentheses or quotes",
            code="MAPPING_PATH_INVALID",
            where=where,
        )
    parts.append(current)
    if any(not p for p in parts):
        raise MappingError(
            f"FHIR path {path!r}: empty element", code="MAPPING_PATH_INVALID", where=where
        )
    return parts


def _navigate(values: list[Any], step: _Step) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(step, _Key):
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, Mapping) and step.name in item:
                    found = item[step.name]
                    if found is not None:
                        out.append(found)
        elif isinstance(step, _Index):
            if isinstance(value, list):
                if step.index < len(value):
                    out.append(value[step.index])
            elif step.index == 0:
                out.append(value)
        elif isinstance(step, _All):
            out.extend(value if isinstance(value, list) else [value])
        else:
            items = value if isinstance(value, list) else [value]
            out.extend(
                item
                for item in items
                if isinstance(item, Mapping) and _text(item.get(step.key)) == step.value
            )
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(value, list):
            out.extend(v for v in value if v is not None)
        else:
            out.append(value)
    return out


def _compile_steps(steps: list[_Step]) -> Getter:
    def get(record: Any) -> list[Any]:
        values = [record]
        for step in steps:
            values = _navigate(values, step)
            if not values:
                return []
        return _flatten(values)

    return get


# --- XML ---------------------------------------------------------------------------------------

_XML_TAIL = re.compile(r"^(?P<path>.*?)(?:/?@(?P<attr>[A-Za-z_][\w:.-]*)|/text\(\))?$")


def _qualify(name: str, namespaces: Mapping[str, str], *, where: str) -> str:
    if ":" not in name:
        return name
    prefix, local = name.split(":", 1)
    if prefix not in namespaces:
        raise MappingError(
            f"namespace prefix {prefix!r} is not declared in source.namespaces",
            code="MAPPING_PATH_INVALID",
            where=where,
        )
    return f"{{{namespaces[prefix]}}}{local}"


class XmlRecord(Element):
    """A record element that remembers its ancestors (nearest first), for ``ancestor::`` paths.

    The XML reader yields these when a mapping's ``record_path`` selects elements below the
    document root; the record shares its children with the parsed document.
    """

    ancestors: tuple[Element, ...] = ()

    @classmethod
    def wrap(cls, element: Element, ancestors: tuple[Element, ...]) -> XmlRecord:
        record = cls(element.tag, element.attrib)
        record.text, record.tail = element.text, element.tail
        record.extend(list(element))
        record.ancestors = ancestors
        return record


_XML_ANCESTOR = re.compile(
    r"^ancestor::(?P<name>[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?)(?:/(?P<rest>.*))?$"
)
_XML_CURRENT = re.compile(r"current\(\)/(?P<path>[^\]=]+?)\s*(?=\])")
_XmlGetter = Callable[[Element, Element], list[Any]]


def _quoted(value: str) -> str | None:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _xml_getter(path: str, namespaces: Mapping[str, str], *, where: str) -> _XmlGetter:
    """A getter ``(context element, current record) -> values`` for one XML path."""
    text = path.strip()
    ancestor = _XML_ANCESTOR.match(text)
    if ancestor is not None:
        name = _qualify(ancestor["name"], namespaces, where=where)
        inner = _xml_getter(ancestor["rest"] or ".", namespaces, where=where)

        def from_ancestor(context: Element, current: Element) -> list[Any]:
            for element in getattr(context, "ancestors", ()):
                if element.tag == name:
                    return inner(element, current)
            return []

        return from_ancestor
    match = _XML_TAIL.match(text)
    if match is None:  # pragma: no cover - the pattern matches every string
        raise MappingError(f"XML path {path!r}", code="MAPPING_PATH_INVALID", where=where)
    element_path = match["path"].rstrip("/") or "."
    attribute = match["attr"]
    attribute_name = _qualify(attribute, namespaces, where=where) if attribute else None
    currents = [
        (m.group(0), _xml_getter(m["path"], namespaces, where=where))
        for m in _XML_CURRENT.finditer(element_path)
    ]
    probe_path = _XML_CURRENT.sub("'probe'", element_path)
    if any(token in probe_path for token in ("(", "::")) and "text()" not in probe_path:
        raise MappingError(
            f"XML path {path!r}: only the ElementTree subset of XPath is supported "
            "(steps, //, [@a='v'], [tag='v'], [tag=current()/path], [n], a leading "
            "ancestor::name, a final @attribute or text())",
            code="MAPPING_PATH_INVALID",
            where=where,
        )
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", probe_path)
    for prefix in re.findall(r"([A-Za-z_][\w.-]*):(?=[A-Za-z_*])", unquoted):
        _qualify(f"{prefix}:x", namespaces, where=where)
    probe = Element("probe")
    try:
        probe.findall(probe_path, dict(namespaces))
    except (SyntaxError, KeyError) as error:
        raise MappingError(
            f"XML path {path!r} is not valid ({type(error).__name__})",
            code="MAPPING_PATH_INVALID",
            where=where,
        ) from None
    spaces = dict(namespaces)

    def get(context: Element, current: Element) -> list[Any]:
        concrete = element_path
        for token, getter in currents:
            values = getter(current, current)
            quoted = _quoted(str(values[0])) if values else None
            if quoted is None:
                return []
            concrete = concrete.replace(token, quoted, 1)
        found = [context] if concrete == "." else context.findall(concrete, spaces)
        if attribute_name is not None:
            return [e.get(attribute_name) for e in found if e.get(attribute_name) is not None]
        return [(e.text or "").strip() for e in found if (e.text or "").strip() != ""]

    return get


def _compile_xml(path: str, namespaces: Mapping[str, str], *, where: str) -> Getter:
    getter = _xml_getter(path, namespaces, where=where)

    def get(record: Any) -> list[Any]:
        if not isinstance(record, Element):
            return []
        return getter(record, record)

    return get


# --- HL7 v2 ------------------------------------------------------------------------------------

HL7_REF = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<segment_repeat>\d+)\])?"
    r"-(?P<field>\d+)(?:\[(?P<repeat>\d+|\*)\])?(?:\.(?P<component>\d+)(?:\.(?P<sub>\d+))?)?$"
)


def _compile_hl7(ref: str, *, where: str) -> Getter:
    if not HL7_REF.match(ref.strip()):
        raise MappingError(
            f"HL7 field reference {ref!r} must look like PID-3.1, PID-3[2].1 or OBR-7",
            code="MAPPING_PATH_INVALID",
            where=where,
        )
    text = ref.strip()

    def get(record: Any) -> list[Any]:
        if not isinstance(record, Hl7Record):
            return []
        value = record.get(text)
        return [] if value is None or value == "" else [value]

    return get


# --- CSV ---------------------------------------------------------------------------------------


def _compile_column(name: str) -> Getter:
    def get(record: Any) -> list[Any]:
        if type(record) is not dict and not isinstance(record, Mapping):
            return []
        value = record.get(name)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return []
        return [value]

    return get


SOURCE_FORMATS = ("csv", "json", "xml", "fhir", "hl7v2", "epcis")


def compile_path(
    source_format: str, path: str, *, namespaces: Mapping[str, str] | None = None, where: str = ""
) -> Getter:
    """Compile ``path`` in the path language of ``source_format``."""
    if source_format == "csv":
        return _compile_column(path)
    if source_format in ("json", "epcis"):
        return _compile_steps(_parse_json_steps(path, where=where))
    if source_format == "fhir":
        return _compile_steps(_parse_fhir_steps(path, where=where))
    if source_format == "xml":
        return _compile_xml(path, namespaces or {}, where=where)
    if source_format == "hl7v2":
        return _compile_hl7(path, where=where)
    raise MappingError(
        f"unknown source format {source_format!r}; use one of {', '.join(SOURCE_FORMATS)}",
        code="MAPPING_SOURCE_FORMAT",
        where=where,
    )


def top_field(source_format: str, path: str) -> str:
    """The first element a path reads (a column, key, element, or HL7 segment ID).

    Used for schema-drift checks and to match paths against declared source fields.
    """
    text = path.strip()
    if source_format == "csv":
        return text
    if source_format == "hl7v2":
        match = HL7_REF.match(text)
        return match["segment"] if match else text
    if source_format == "xml":
        first = text.lstrip("./").split("/")[0]
        return first.split("[")[0]
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    parts = _split_fhir(text, where="") if source_format == "fhir" else [text]
    if source_format == "fhir" and len(parts) > 1 and parts[0][:1].isupper():
        parts = parts[1:]
    head = parts[0]
    return re.split(r"[.\[]", head, maxsplit=1)[0]


def field_path(source_format: str, path: str) -> str:
    """A normalized form of ``path`` used to compare it with declared classified fields."""
    text = path.strip()
    if source_format == "hl7v2":
        match = HL7_REF.match(text)
        if match:
            return f"{match['segment']}-{match['field']}"
    if source_format == "fhir":
        parts = [p for p in _split_fhir(text, where="") if not p.startswith(("where(", "first("))]
        if len(parts) > 1 and parts[0][:1].isupper():
            parts = parts[1:]  # the resource type
        return ".".join(re.sub(r"\[.*?\]", "", p) for p in parts)
    return re.sub(r"\[.*?\]", "", text.removeprefix("$").lstrip("."))
