"""FHIR JSON: payloads into resources, resources checked against the FHIR models, subjects
resolved (pure). The one adapter of fhir.resources.

R4 servers are read with the R4B models (``fhir.resources.R4B``: R4B changed no element the
hub reads), R5 servers with the R5 models (the package default); the feed says which
(:class:`FhirVersion`).

Speed: a resource is parsed once with :func:`json.loads` and *checked* with its model
(:func:`check_resource`); the mapping engine then reads the plain dict. Building model
objects only to turn them back into dicts would double the cost, and fhir.resources' parse of
a whole Bundle fails as a whole when one entry is bad, while the hub must quarantine that
entry alone.

Privacy: pydantic's validation errors quote the offending input (a bad birth date would be
echoed in the message, and the whole resource for a missing element). This module never lets
one escape: it catches :class:`pydantic.ValidationError` and rebuilds the message from error
*locations and types* only (``birthDate (value_error)``), with the original exception
suppressed (``from None``), so neither its text nor its traceback carries a value.

Payloads (:func:`parse_payload`): a Bundle (entries ``entry=N``, ``link[next]``, ``total``),
NDJSON bulk output (``line=N``) or one resource (``resource=1``). A UTF-8 BOM is removed.
Patients in the payload (``_include``, bulk ``Patient.ndjson``, transaction bundles) go to a
:class:`PatientIndex`; :func:`attach_subject` adds the resolved ``_subject`` element (see
:mod:`cmohub.formats.records`) to a resource dict.

Error codes (:class:`~cmohub.errors.ParseError` / :class:`FormatProblem`):

=========================== ===================================================================
PARSE_FHIR_JSON             not JSON (or an NDJSON line is not)
PARSE_FHIR_XML              FHIR XML; the hub reads JSON (ask the server for _format=json)
PARSE_FHIR_RESOURCE_TYPE    no resourceType, or one that FHIR (this version) does not define
PARSE_FHIR_INVALID          the resource does not conform to its model (locations and error
                            types listed, never values)
PARSE_FHIR_BUNDLE           a Bundle with an unknown type or entries that are not a list
=========================== ===================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import pydantic
from fhir.resources import get_fhir_model_class as _r5_model
from fhir.resources.R4B import get_fhir_model_class as _r4b_model

from cmohub.errors import ParseError
from cmohub.formats.records import (
    SUBJECT_MISSING,
    SUBJECT_UNRESOLVED,
    FormatProblem,
    SubjectFields,
    SubjectPolicy,
    choose_identifier,
)
from cmohub.mapping.readers import SourceRecord
from cmohub.mapping.spec import SourceSpec

SUBJECT_KEY = "_subject"
BUNDLE_TYPES = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
        "subscription-notification",
    }
)
#: Where each clinical resource type names its patient (element path).
SUBJECT_PATHS: Mapping[str, tuple[str, ...]] = {
    "ServiceRequest": ("subject",),
    "Specimen": ("subject",),
    "Procedure": ("subject",),
    "MedicationAdministration": ("subject",),
    "MedicationRequest": ("subject",),
    "Observation": ("subject",),
    "BiologicallyDerivedProduct": ("collection", "source"),
    "Encounter": ("subject",),
}
MAX_ERRORS_LISTED = 8


class FhirVersion(StrEnum):
    R4 = "R4"  # read with the R4B models
    R5 = "R5"

    @classmethod
    def parse(cls, text: str | None) -> FhirVersion:
        value = (text or "R4").strip().upper()
        if value in ("R4", "R4B", "4.0", "4.0.1", "4.3.0"):
            return cls.R4
        if value in ("R5", "5.0", "5.0.0"):
            return cls.R5
        raise ParseError(
            "FHIR version must be R4 or R5", code="PARSE_FHIR_VERSION", where="fhir_version"
        )


# --- JSON --------------------------------------------------------------------------------------


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("the payload is not UTF-8", code="PARSE_FHIR_JSON") from None
    else:
        text = data
    return text.removeprefix("\ufeff")


def parse_json(data: bytes | str, *, where: str | None = None) -> Any:
    """One JSON document; ParseError PARSE_FHIR_JSON (line and column only) or PARSE_FHIR_XML."""
    text = _text(data)
    if text.lstrip().startswith("<"):
        raise ParseError(
            "the payload is FHIR XML; the hub reads FHIR JSON (request _format=json)",
            code="PARSE_FHIR_XML",
            where=where,
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ParseError(
            f"not JSON ({error.msg} at line {error.lineno}, column {error.colno})",
            code="PARSE_FHIR_JSON",
            where=where,
        ) from None


# --- models ------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def model_class(resource_type: str, version: FhirVersion) -> Any:
    """The fhir.resources model of ``resource_type``; ParseError PARSE_FHIR_RESOURCE_TYPE."""
    if not resource_type or not resource_type.isalpha() or not resource_type[0].isupper():
        raise ParseError("the resource has no valid resourceType", code="PARSE_FHIR_RESOURCE_TYPE")
    try:
        return (_r4b_model if version is FhirVersion.R4 else _r5_model)(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        raise ParseError(
            f"resourceType {resource_type} is not a FHIR {version.value} resource",
            code="PARSE_FHIR_RESOURCE_TYPE",
            where="resourceType",
        ) from None


def _location(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(resource)"


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """``N problem(s): loc (type); ...`` from locations and error types only — no input."""
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    shown = [f"{_location(p['loc'])} ({p['type']})" for p in problems[:MAX_ERRORS_LISTED]]
    more = len(problems) - len(shown)
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{len(problems)} problem(s): " + "; ".join(shown) + suffix


def _empty_elements(node: Any, path: str, out: list[str]) -> None:
    """FHIR JSON forbids empty arrays, empty objects, empty strings and null properties
    (fhir.resources accepts them); collect where they are."""
    if isinstance(node, dict):
        if not node:
            out.append(f"{path or '(resource)'} (empty_object)")
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if value is None:
                out.append(f"{child} (null)")
            elif value in ("", [], {}):
                out.append(f"{child} (empty)")
            else:
                _empty_elements(value, child, out)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _empty_elements(item, f"{path}[{index}]", out)


def validate_resource(resource: Mapping[str, Any], version: FhirVersion) -> None:
    """Check ``resource`` against its model; ParseError (codes above) without any value."""
    if not isinstance(resource, Mapping):
        raise ParseError("the entry is not a JSON object", code="PARSE_FHIR_INVALID")
    resource_type = resource.get("resourceType")
    cls = model_class(resource_type if isinstance(resource_type, str) else "", version)
    empty: list[str] = []
    _empty_elements(resource, "", empty)
    if empty:
        shown = "; ".join(empty[:MAX_ERRORS_LISTED])
        raise ParseError(
            f"{resource_type} does not conform to FHIR JSON: {len(empty)} problem(s): {shown}",
            code="PARSE_FHIR_INVALID",
        )
    try:
        cls.model_validate(resource)
    except pydantic.ValidationError as error:
        raise ParseError(
            f"{resource_type} does not conform to FHIR {version.value}: "
            + describe_validation_error(error),
            code="PARSE_FHIR_INVALID",
        ) from None
    except (ValueError, TypeError, KeyError):
        # fhir.resources raises plain errors for some shapes (e.g. a list where an object
        # belongs); their text may quote input, so only the kind is kept.
        raise ParseError(
            f"{resource_type} does not conform to FHIR {version.value} (structure)",
            code="PARSE_FHIR_INVALID",
        ) from None


def check_resource(resource: Any, version: FhirVersion) -> FormatProblem | None:
    """:func:`validate_resource` as a value: None when the resource conforms."""
    try:
        validate_resource(resource, version)
    except ParseError as error:
        return FormatProblem(error.code, error.message, error.where)
    return None


# --- payloads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FhirEntry:
    """One resource of a payload, where it was, and how a search returned it."""

    locator: str
    resource: dict[str, Any] | None
    full_url: str | None = None
    mode: str | None = None  # search.mode: match, include, outcome
    problem: FormatProblem | None = None

    @property
    def resource_type(self) -> str | None:
        if self.resource is None:
            return None
        value = self.resource.get("resourceType")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class FhirPayload:
    """The entries of a Bundle page, NDJSON file or single resource."""

    kind: str  # bundle, ndjson, resource
    entries: tuple[FhirEntry, ...]
    bundle_type: str | None = None
    next_url: str | None = None
    total: int | None = None
    links: Mapping[str, str] = field(default_factory=dict)


def _entry_of(locator: str, raw: Any) -> FhirEntry:
    if not isinstance(raw, dict):
        return FhirEntry(
            locator, None, problem=FormatProblem("PARSE_FHIR_INVALID", "the entry is not an object")
        )
    resource = raw.get("resource")
    search = raw.get("search")
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    found = search.get("mode") if isinstance(search, dict) else None
    mode = found if isinstance(found, str) else None
    if not isinstance(resource, dict):
        return FhirEntry(
            locator,
            None,
            full_url,
            mode,
            FormatProblem("PARSE_FHIR_INVALID", "the entry has no resource"),
        )
    return FhirEntry(locator, resource, full_url, mode)


def parse_ndjson(data: bytes | str) -> FhirPayload:
    """NDJSON bulk output: one resource per line; a bad line is an entry with its problem."""
    entries = []
    for number, line in enumerate(_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        locator = f"line={number}"
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as error:
            entries.append(
                FhirEntry(
                    locator,
                    None,
                    problem=FormatProblem(
                        "PARSE_FHIR_JSON", f"line is not JSON ({error.msg})", locator
                    ),
                )
            )
            continue
        if not isinstance(resource, dict):
            entries.append(
                FhirEntry(
                    locator,
                    None,
                    problem=FormatProblem("PARSE_FHIR_INVALID", "line is not a JSON object"),
                )
            )
            continue
        entries.append(FhirEntry(locator, resource))
    return FhirPayload("ndjson", tuple(entries))


def _looks_like_ndjson(text: str) -> bool:
    lines = text.strip().split("\n", 2)
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def parse_payload(data: bytes | str, *, ndjson: bool | None = None) -> FhirPayload:
    """A Bundle, NDJSON or one resource; ParseError when the payload as a whole is unusable.

    ``ndjson`` says what the caller knows (bulk output: True); None guesses from the text.
    """
    text = _text(data)
    if ndjson or (ndjson is None and _looks_like_ndjson(text)):
        return parse_ndjson(text)
    document = parse_json(text)
    if not isinstance(document, dict):
        raise ParseError("the payload is not a JSON object", code="PARSE_FHIR_INVALID")
    if document.get("resourceType") != "Bundle":
        return FhirPayload("resource", (FhirEntry("resource=1", document),))
    bundle_type = document.get("type")
    if bundle_type not in BUNDLE_TYPES:
        raise ParseError(
            "Bundle.type is not a FHIR bundle type", code="PARSE_FHIR_BUNDLE", where="type"
        )
    raw_entries = document.get("entry")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise ParseError("Bundle.entry is not a list", code="PARSE_FHIR_BUNDLE", where="entry")
    links = {
        str(link.get("relation")): str(link.get("url"))
        for link in document.get("link") or []
        if isinstance(link, dict) and link.get("relation") and link.get("url")
    }
    total = document.get("total")
    return FhirPayload(
        "bundle",
        tuple(_entry_of(f"entry={i}", e) for i, e in enumerate(raw_entries, start=1)),
        bundle_type=bundle_type,
        next_url=links.get("next"),
        total=total if isinstance(total, int) else None,
        links=links,
    )


# --- OperationOutcome --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str
    code: str
    expression: tuple[str, ...] = ()


def outcome_issues(resource: Any) -> list[OutcomeIssue]:
    """The issues of an OperationOutcome: severity, code, element paths (diagnostics dropped:
    servers put free text there, which may quote the request)."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "OperationOutcome":
        return []
    out = []
    for issue in resource.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        expression = issue.get("expression") or issue.get("location") or []
        out.append(
            OutcomeIssue(
                str(issue.get("severity") or "error"),
                str(issue.get("code") or "unknown"),
                tuple(str(e) for e in expression if isinstance(e, str))[:4],
            )
        )
    return out


def describe_outcome(issues: Sequence[OutcomeIssue]) -> str:
    """``error/not-found at Patient.x; ...`` (codes and paths only)."""
    if not issues:
        return "no OperationOutcome issues"
    parts = []
    for issue in issues[:MAX_ERRORS_LISTED]:
        where = f" at {', '.join(issue.expression)}" if issue.expression else ""
        parts.append(f"{issue.severity}/{issue.code}{where}")
    return "; ".join(parts)


# --- subjects ----------------------------------------------------------------------------------


def _reference_key(reference: str) -> str:
    """``Patient/<id>`` of a relative or absolute reference (version suffix dropped)."""
    text = reference.split("/_history/", 1)[0].rstrip("/")
    parts = text.split("/")
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return text


def _patient_subject(
    patient: Mapping[str, Any], policy: SubjectPolicy
) -> SubjectFields | FormatProblem:
    candidates: list[tuple[str | None, str | None, str | None]] = []
    for identifier in patient.get("identifier") or []:
        if not isinstance(identifier, Mapping):
            continue
        kind = identifier.get("type")
        codings = kind.get("coding") or [] if isinstance(kind, Mapping) else []
        type_code = next(
            (str(c["code"]) for c in codings if isinstance(c, Mapping) and c.get("code")), None
        )
        system, value = identifier.get("system"), identifier.get("value")
        candidates.append(
            (
                system if isinstance(system, str) else None,
                value if isinstance(value, str) else None,
                type_code,
            )
        )
    chosen = choose_identifier(candidates, policy)
    if isinstance(chosen, FormatProblem):
        return FormatProblem(chosen.code, chosen.message, "Patient.identifier")
    family = given = None
    names = patient.get("name") or []
    if names and isinstance(names[0], Mapping):
        first = names[0]
        family = first.get("family") if isinstance(first.get("family"), str) else None
        given_list = first.get("given") or []
        given = given_list[0] if given_list and isinstance(given_list[0], str) else None
    birth = patient.get("birthDate")
    return SubjectFields(
        chosen[0], chosen[1], family, given, birth if isinstance(birth, str) else None
    )


class PatientIndex:
    """Patients of a payload (or a run), found by ``Patient/<id>`` or by their fullUrl.

    With a ``version``, a Patient is checked against its model the first time a record names
    it: a record whose subject does not conform is as malformed as the record itself.
    """

    def __init__(self, policy: SubjectPolicy, version: FhirVersion | None = None) -> None:
        self.policy = policy
        self.version = version
        self._patients: dict[str, Mapping[str, Any]] = {}
        self._resolved: dict[int, SubjectFields | FormatProblem] = {}

    def __len__(self) -> int:
        return len({id(p) for p in self._patients.values()})

    def add(self, resource: Mapping[str, Any], full_url: str | None = None) -> None:
        resource_id = resource.get("id")
        if isinstance(resource_id, str) and resource_id:
            self._patients[f"Patient/{resource_id}"] = resource
        if full_url:
            self._patients[full_url] = resource
            self._patients.setdefault(_reference_key(full_url), resource)

    def add_entries(self, entries: Sequence[FhirEntry]) -> None:
        for entry in entries:
            if entry.resource is not None and entry.resource_type == "Patient":
                self.add(entry.resource, entry.full_url)

    def __contains__(self, reference: str) -> bool:
        return reference in self._patients or _reference_key(reference) in self._patients

    def resolve(self, reference: str) -> SubjectFields | FormatProblem:
        patient = self._patients.get(reference) or self._patients.get(_reference_key(reference))
        if patient is None:
            return FormatProblem(
                SUBJECT_UNRESOLVED,
                "the subject reference points at no Patient the source returned",
                "subject.reference",
            )
        known = self._resolved.get(id(patient))
        if known is None:
            problem = check_resource(patient, self.version) if self.version else None
            if problem is not None:
                known = FormatProblem(problem.code, f"the subject {problem.message}", "subject")
            else:
                known = _patient_subject(patient, self.policy)
            self._resolved[id(patient)] = known
        return known


def subject_reference(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Reference naming the resource's patient (``subject``, BDP ``collection.source``)."""
    path = SUBJECT_PATHS.get(str(resource.get("resourceType")), ("subject",))
    node: Any = resource
    for step in path:
        node = node.get(step) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def subject_of(resource: Mapping[str, Any], index: PatientIndex) -> SubjectFields | FormatProblem:
    """The resource's subject: through its reference, or its logical identifier."""
    reference = subject_reference(resource)
    if reference is None:
        return FormatProblem(SUBJECT_MISSING, "the resource names no subject", "subject")
    target = reference.get("reference")
    if isinstance(target, str) and target:
        if target.startswith("#"):
            for contained in resource.get("contained") or []:
                if (
                    isinstance(contained, Mapping)
                    and contained.get("resourceType") == "Patient"
                    and f"#{contained.get('id')}" == target
                ):
                    return _patient_subject(contained, index.policy)
        return index.resolve(target)
    identifier = reference.get("identifier")
    if isinstance(identifier, Mapping):
        chosen = choose_identifier(
            [(identifier.get("system"), identifier.get("value"), None)], index.policy
        )
        if isinstance(chosen, FormatProblem):
            return FormatProblem(chosen.code, chosen.message, "subject.identifier")
        return SubjectFields(chosen[0], chosen[1])
    return FormatProblem(SUBJECT_MISSING, "the subject has neither reference nor identifier")


def attach_subject(resource: Mapping[str, Any], subject: SubjectFields) -> dict[str, Any]:
    """A copy of ``resource`` with the ``_subject`` element the mappings read."""
    out = dict(resource)
    out[SUBJECT_KEY] = subject.as_fhir_element()
    return out


# --- the mapping engine's reader ---------------------------------------------------------------


def prepare_record(
    entry: FhirEntry,
    index: PatientIndex,
    version: FhirVersion,
    *,
    validate: Callable[[Any, FhirVersion], FormatProblem | None] = check_resource,
) -> dict[str, Any] | FormatProblem:
    """Check one entry's resource and attach its subject: the mapping record, or a problem."""
    if entry.problem is not None or entry.resource is None:
        return entry.problem or FormatProblem("PARSE_FHIR_INVALID", "the entry has no resource")
    problem = validate(entry.resource, version)
    if problem is not None:
        return problem
    subject = subject_of(entry.resource, index)
    if isinstance(subject, FormatProblem):
        return subject
    return attach_subject(entry.resource, subject)


def read_fhir_records(source: SourceSpec, data: bytes) -> Iterator[SourceRecord]:
    """Mapping reader: resources of ``source.resource_type`` with ``_subject`` resolved from
    the Patients in the same payload (``source.options``: ``fhir_version``, subject policy).
    A resource that fails its model or has no resolvable subject gives a malformed record."""
    options = dict(source.options)
    version = FhirVersion.parse(options.get("fhir_version"))
    policy = SubjectPolicy.from_options(options)
    payload = parse_payload(data)
    index = PatientIndex(policy, version)
    index.add_entries(payload.entries)
    for entry in payload.entries:
        wrong_type = source.resource_type and entry.resource_type != source.resource_type
        if wrong_type and entry.problem is None:
            continue
        outcome = prepare_record(entry, index, version)
        if isinstance(outcome, FormatProblem):
            yield SourceRecord(entry.locator, entry.resource, str(outcome))
        else:
            yield SourceRecord(entry.locator, outcome)
