"""Apply a mapping: source records in, canonical rows and issues out (pure).

:func:`apply_mapping` computes every target of every record. A record with an error issue is
rejected whole (quarantined by the caller); warnings ride along with the row. Identity fields
are left **pending** — :class:`PendingVerify` (a COI, already checked locally) or
:class:`PendingTokenize` (a subject identity wrapped in :class:`~cmohub.sensitive.Sensitive`) —
until :func:`cmohub.mapping.identity.resolve_identities` settles them in one batch through the
vault. Every row gets the lineage columns ``_feed`` (the mapping name), ``_run_id`` and
``_source_ref`` (``<payload sha256>#<locator>``).

Issue codes (an issue names the target field and the source path, never a value):

============================ ==================================================================
MAPPING_RECORD_MALFORMED     the reader could not split the record cleanly
MAPPING_UNKNOWN_FIELD        the record carries a field the mapping does not know (drift)
MAPPING_AMBIGUOUS            a path found several values where one was expected
MAPPING_TRANSFORM_FAILED     a transform could not convert the value; more precise codes:
                             MAPPING_NOT_A_NUMBER, MAPPING_NOT_A_DATETIME, MAPPING_NOT_A_DATE,
                             MAPPING_NOT_A_BOOLEAN, MAPPING_VALUE_UNMAPPED,
                             MAPPING_TIMEZONE_MISSING, MAPPING_TIME_NONEXISTENT,
                             MAPPING_UNIT_UNKNOWN, MAPPING_PATTERN_MISMATCH
COI_CHECK_INVALID            a COI is malformed or its check character is wrong (``detail``:
                             the identifier's own ID_* code)
DIN_CHECK_INVALID            the same for a DIN
IDENTITY_INCOMPLETE          a subject identity lacks its system, value or therapy event
COI_UNKNOWN                  (identity resolution) the vault never issued the COI
COI_WITHDRAWN                (identity resolution, warning) consent withdrawn for the COI
============================ ==================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

from cmohub.contracts.model import Severity
from cmohub.contracts.report import QuarantineEntry, Reason, SourceRef
from cmohub.errors import IdentifierError, MappingError
from cmohub.identifiers import parse_coi, parse_din
from cmohub.identity import Demographics, SubjectIdentity, TokenizeRequest
from cmohub.mapping.paths import Hl7Record
from cmohub.mapping.readers import PARENT, SourceRecord
from cmohub.mapping.spec import (
    CompiledMapping,
    CompiledStep,
    CompiledValue,
    DriftPolicy,
    IdentityAction,
)
from cmohub.mapping.transforms import TransformError, build_transform
from cmohub.sensitive import Sensitive

#: Fields every record of a format carries that no mapping needs to name.
_ALWAYS_KNOWN = {
    "fhir": frozenset({"resourceType", "id", "meta", "text"}),
    "epcis": frozenset({"type", "eventID", "recordTime", "@context"}),
    "hl7v2": frozenset({"MSH"}),
}


@dataclass(frozen=True, slots=True)
class MappingIssue:
    code: str
    severity: Severity
    locator: str
    field: str | None = None  # target property (or identity part), or the unknown source field
    source_path: str | None = None
    message: str = ""
    detail: str | None = None  # a finer code, e.g. ID_CHECK_CHARACTER

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "locator": self.locator,
            "field": self.field,
            "source_path": self.source_path,
            "message": self.message,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class PendingVerify:
    """A COI (data form, check character valid) the vault must still confirm."""

    coi: str


@dataclass(frozen=True, slots=True)
class PendingTokenize:
    """A subject identity the vault must turn into a COI."""

    request: TokenizeRequest

    def __repr__(self) -> str:
        return "PendingTokenize(<redacted>)"


@dataclass(frozen=True, slots=True)
class MappedRow:
    locator: str
    values: dict[str, Any]
    warnings: tuple[MappingIssue, ...] = ()

    @property
    def pending(self) -> bool:
        return any(isinstance(v, (PendingVerify, PendingTokenize)) for v in self.values.values())


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    locator: str
    issues: tuple[MappingIssue, ...]
    # The values mapped before the record was rejected. Only unclassified key values are ever
    # read from them (to name the record in quarantine); never written out as such.
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def key(self, names: Sequence[str]) -> tuple[tuple[str, Any], ...]:
        """``(name, value)`` of the ``names`` this record has plain values for."""
        return tuple(
            (name, self.values[name])
            for name in names
            if isinstance(self.values.get(name), (str, int))
            and not isinstance(self.values.get(name), bool)
        )


@dataclass(frozen=True, slots=True)
class MappingResult:
    mapping: str
    dataset: str
    source_sha256: str
    rows: tuple[MappedRow, ...]
    rejected: tuple[RejectedRecord, ...] = ()
    notes: tuple[MappingIssue, ...] = field(default=())

    @property
    def received(self) -> int:
        return len(self.rows) + len(self.rejected)

    @property
    def issues(self) -> tuple[MappingIssue, ...]:
        out: list[MappingIssue] = list(self.notes)
        for row in self.rows:
            out.extend(row.warnings)
        for rejected in self.rejected:
            out.extend(rejected.issues)
        return tuple(sorted(out, key=lambda i: _locator_key(i.locator)))

    def canonical_rows(self) -> list[dict[str, Any]]:
        """The rows, once every identity is resolved (raises otherwise)."""
        if any(row.pending for row in self.rows):
            raise MappingError(
                "identity fields are still pending: call resolve_identities first",
                code="MAPPING_IDENTITY_PENDING",
                where=self.mapping,
            )
        return [dict(row.values) for row in self.rows]

    def quarantine_entries(self, key_fields: Sequence[str] = ()) -> list[QuarantineEntry]:
        """The rejected records as quarantine entries: reason codes, source refs, and the values
        of ``key_fields`` (the caller names only unclassified keys) so a person finds them."""
        return [
            QuarantineEntry(
                dataset=self.dataset,
                source=SourceRef(self.source_sha256, rejected.locator),
                reasons=tuple(
                    Reason(issue.code, f"mapping:{self.mapping}", issue.field)
                    for issue in rejected.issues
                    if issue.severity is Severity.ERROR
                ),
                key=rejected.key(key_fields),
            )
            for rejected in self.rejected
        ]


def _locator_key(locator: str) -> tuple[str, int]:
    kind, _, number = locator.partition("=")
    return (kind, int(number)) if number.isdigit() else (locator, 0)


class _RecordIssues(Exception):
    """Internal: stop evaluating a target; the issue is already recorded."""


@dataclass(slots=True)
class _Evaluation:
    compiled: CompiledMapping
    locator: str
    record: Any
    issues: list[MappingIssue] = field(default_factory=list)

    def issue(
        self,
        code: str,
        target: str | None,
        path: str | None,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
        detail: str | None = None,
    ) -> None:
        self.issues.append(
            MappingIssue(code, severity, self.locator, target, path, message, detail)
        )

    def value(self, label: str, compiled: CompiledValue) -> Any:
        spec = compiled.spec
        first_path = spec.paths[0] if spec.paths else None
        values: list[Any] = []
        if compiled.getters:
            for _, getter in compiled.getters:
                values.extend(getter(self.record))
        elif spec.has_const:
            values = [spec.const]
        current: Any = values
        is_list = True
        for step in compiled.steps:
            if step.takes_list:
                if not is_list:
                    current = [] if current is None else [current]
                current = self._apply(step, current, label, first_path)
                is_list = False
                continue
            if is_list:
                current = self._single(current, label, first_path)
                is_list = False
            current = self._apply(step, current, label, first_path)
        if is_list:
            current = self._single(current, label, first_path)
        return current

    def _single(self, values: list[Any], label: str, path: str | None) -> Any:
        if not values:
            return None
        if len(values) > 1:
            self.issue(
                "MAPPING_AMBIGUOUS",
                label,
                path,
                f"{len(values)} values where one was expected (use first, last or join)",
            )
            raise _RecordIssues
        return values[0]

    def _apply(self, step: CompiledStep, value: Any, label: str, path: str | None) -> Any:
        try:
            transform = step.transform
            if transform is None:
                args = dict(step.step.args)
                for key, getter in step.dynamic:
                    found = getter(self.record)
                    args[key] = found[0] if found else None
                transform = build_transform(step.name, args, self.compiled.context)
            return transform(value)
        except TransformError as error:
            self.issue(error.code, label, path, f"{step.name}: {error.message}")
            raise _RecordIssues from None
        except MappingError as error:
            self.issue("MAPPING_TRANSFORM_FAILED", label, path, f"{step.name}: {error.message}")
            raise _RecordIssues from None


def _present_fields(source_format: str, record: Any) -> set[str] | None:
    if source_format == "csv" and isinstance(record, Mapping):
        return {str(k) for k, v in record.items() if k is not None and str(v or "").strip() != ""}
    if source_format in ("json", "fhir", "epcis") and isinstance(record, Mapping):
        return {str(k) for k in record if k != PARENT}
    if source_format == "xml" and isinstance(record, Element):
        return {child.tag for child in record} | {f"@{a}" for a in record.attrib}
    if source_format == "hl7v2" and isinstance(record, Hl7Record):
        return set(record.segment_ids())
    return None


def _known_fields(compiled: CompiledMapping) -> frozenset[str] | None:
    source = compiled.spec.source
    known = set(compiled.known_fields) | set(_ALWAYS_KNOWN.get(source.format, ()))
    if source.format == "xml":
        namespaces = dict(source.namespaces)
        qualified = set()
        for name in known:
            if name.startswith(("//", "*")) or name == "":
                return None  # descendant paths: children cannot be told apart; no drift check
            if name.startswith("@"):
                qualified.add(name)
                continue
            prefix, _, local = name.rpartition(":")
            qualified.add(f"{{{namespaces[prefix]}}}{local}" if prefix in namespaces else name)
        return frozenset(qualified)
    return frozenset(known)


def _verify(ev: _Evaluation, target: str, value: Any, path: str | None) -> Any:
    if value is None:
        return None
    try:
        coi = parse_coi(str(value))
    except IdentifierError as error:
        ev.issue("COI_CHECK_INVALID", target, path, f"COI: {error.message}", detail=error.code)
        raise _RecordIssues from None
    return PendingVerify(str(coi))


def _din(ev: _Evaluation, target: str, value: Any, path: str | None) -> Any:
    if value is None:
        return None
    try:
        return str(parse_din(str(value)))
    except IdentifierError as error:
        ev.issue("DIN_CHECK_INVALID", target, path, f"DIN: {error.message}", detail=error.code)
        raise _RecordIssues from None


def _tokenize(ev: _Evaluation, target: str, parts: Sequence[tuple[str, CompiledValue]]) -> Any:
    values = {name: ev.value(f"{target}.{name}", compiled) for name, compiled in parts}
    system, value, event = values.get("system"), values.get("value"), values.get("therapy_event")
    if system is None and value is None and event is None:
        return None
    missing = [
        n for n, v in (("system", system), ("value", value), ("therapy_event", event)) if v is None
    ]
    if missing:
        ev.issue(
            "IDENTITY_INCOMPLETE",
            target,
            None,
            f"subject identity lacks {', '.join(missing)}",
        )
        raise _RecordIssues
    demographics = Demographics(
        **{
            name: Sensitive(str(values[name]))
            for name in ("family_name", "given_name", "birth_date")
            if values.get(name) is not None
        }
    )
    identity = SubjectIdentity(
        system=str(system), value=Sensitive(str(value)), demographics=demographics
    )
    return PendingTokenize(TokenizeRequest(identity=identity, therapy_event=str(event)))


def _unknown_fields(
    source_format: str, record: Any, known: frozenset[str], cache: dict[Any, frozenset[str]]
) -> list[str]:
    """Fields of ``record`` the mapping does not know (CSV: only those with a value)."""
    if source_format == "csv" and type(record) is dict:
        keys = tuple(record)
        candidates = cache.get(keys)
        if candidates is None:
            candidates = cache[keys] = frozenset(k for k in keys if k is None or k not in known)
        return sorted(str(k) for k in candidates if k is not None and str(record[k] or "").strip())
    present = _present_fields(source_format, record)
    return [] if present is None else sorted(present - known)


def map_record(
    compiled: CompiledMapping,
    record: SourceRecord,
    *,
    run_id: str,
    source_sha256: str,
    known: frozenset[str] | None = None,
    cache: dict[Any, frozenset[str]] | None = None,
) -> MappedRow | RejectedRecord:
    """Map one source record (see :func:`apply_mapping`)."""
    spec = compiled.spec
    ev = _Evaluation(compiled, record.locator, record.data)
    if record.problem is not None:
        ev.issue("MAPPING_RECORD_MALFORMED", None, None, record.problem)
        return RejectedRecord(record.locator, tuple(ev.issues))
    if known is None:
        known = _known_fields(compiled)
    if known is not None:
        unknown_fields = _unknown_fields(
            spec.source.format, record.data, known, cache if cache is not None else {}
        )
        for unknown in unknown_fields:
            ev.issue(
                "MAPPING_UNKNOWN_FIELD",
                unknown,
                None,
                "the record carries a field the mapping does not know (schema drift)",
                severity=Severity.ERROR
                if spec.source.drift is DriftPolicy.QUARANTINE
                else Severity.WARNING,
            )
    values: dict[str, Any] = {}
    for target in compiled.targets:
        name = target.spec.name
        path = target.spec.value.paths[0] if target.spec.value and target.spec.value.paths else None
        try:
            if target.spec.identity is IdentityAction.TOKENIZE:
                values[name] = _tokenize(ev, name, target.tokenize)
                continue
            value = ev.value(name, target.value) if target.value is not None else None
            if target.spec.identity is IdentityAction.VERIFY:
                value = _verify(ev, name, value, path)
            elif target.spec.identity is IdentityAction.DIN:
                value = _din(ev, name, value, path)
            values[name] = value
        except _RecordIssues:
            values[name] = None
    if any(issue.severity is Severity.ERROR for issue in ev.issues):
        return RejectedRecord(record.locator, tuple(ev.issues), values)
    values["_feed"] = spec.name
    values["_run_id"] = run_id
    values["_source_ref"] = f"{source_sha256}#{record.locator}"
    return MappedRow(record.locator, values, tuple(ev.issues))


def apply_mapping(
    compiled: CompiledMapping,
    records: Iterable[SourceRecord],
    *,
    run_id: str,
    source_sha256: str,
) -> MappingResult:
    """Map every record; rows keep pending identities until they are resolved."""
    rows: list[MappedRow] = []
    rejected: list[RejectedRecord] = []
    known = _known_fields(compiled)
    cache: dict[Any, frozenset[str]] = {}
    for record in records:
        outcome = map_record(
            compiled,
            record,
            run_id=run_id,
            source_sha256=source_sha256,
            known=known,
            cache=cache,
        )
        if isinstance(outcome, MappedRow):
            rows.append(outcome)
        else:
            rejected.append(outcome)
    return MappingResult(
        mapping=compiled.spec.name,
        dataset=compiled.spec.dataset,
        source_sha256=source_sha256,
        rows=tuple(rows),
        rejected=tuple(rejected),
    )
