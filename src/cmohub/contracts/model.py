"""The hub's own view of a data contract (pure).

ODCS documents are parsed by :mod:`cmohub.contracts.odcs` (the one adapter of the
``open-data-contract-standard`` package) into these frozen values; everything else in the hub —
Arrow compilation, the Great Expectations suite, diffs, lint, mappings — reads only these.

Classification scale (ODCS ``classification`` of every property), lowest to highest:

============= ===============================================================================
public        may be published to anyone (code lists, units, product codes)
internal      business data of the program: batch and shipment IDs, timestamps, results
confidential  pseudonymous identifiers that link records to one person: COI, DIN
restricted    direct patient identifiers (names, MRNs, birth dates...): only inside the vault
============= ===============================================================================

Values of *classified* properties (confidential or restricted) never appear in validation
reports, quarantine files or issues. Canonical and published datasets hold nothing restricted.

``customProperties`` the hub reads (all other custom properties are kept and ignored):

=========================== =======================================================================
on the contract
``cmohub.dataset``          canonical or published dataset name (``manufacturing.batch``)
``cmohub.datasetKind``      ``canonical`` (a table the hub stages) or ``published``
on a property
``cmohub.identityRole``     ``coi``, ``din``, ``subject`` or ``none`` (default ``none``)
``cmohub.unit``             UCUM code of the property's values (``Cel``, ``min``, ``d``)
``cmohub.lineage``          ``true`` for lineage columns every staged row carries (``_feed``...)
``cmohub.recordKey``        ``true``: besides the primary key, names a quarantined record (the
                            source's own ID of it); only unclassified properties are used
on a quality rule
``cmohub.ruleCode``         reason code written to quarantine for failing rows (default per rule)
=========================== =======================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from cmohub.errors import ContractError

CUSTOM_DATASET = "cmohub.dataset"
CUSTOM_DATASET_KIND = "cmohub.datasetKind"
CUSTOM_IDENTITY_ROLE = "cmohub.identityRole"
CUSTOM_UNIT = "cmohub.unit"
CUSTOM_LINEAGE = "cmohub.lineage"
CUSTOM_RULE_CODE = "cmohub.ruleCode"
CUSTOM_RECORD_KEY = "cmohub.recordKey"
#: Every ``cmohub.*`` custom property name the hub understands; lint rejects any other.
KNOWN_CUSTOM_PROPERTIES = frozenset(
    {
        CUSTOM_DATASET,
        CUSTOM_DATASET_KIND,
        CUSTOM_IDENTITY_ROLE,
        CUSTOM_UNIT,
        CUSTOM_LINEAGE,
        CUSTOM_RULE_CODE,
        CUSTOM_RECORD_KEY,
    }
)

#: Lineage columns every staged (canonical) row carries, in this order.
LINEAGE_COLUMNS = ("_feed", "_run_id", "_source_ref")


class Classification(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        return _CLASSIFICATION_RANK[self]

    @property
    def classified(self) -> bool:
        """Confidential or restricted: values never leave the data itself."""
        return self.rank >= _CLASSIFICATION_RANK[Classification.CONFIDENTIAL]


_CLASSIFICATION_RANK = {
    Classification.PUBLIC: 0,
    Classification.INTERNAL: 1,
    Classification.CONFIDENTIAL: 2,
    Classification.RESTRICTED: 3,
}


class IdentityRole(StrEnum):
    COI = "coi"  # Chain of Identity identifier (ISBT 128, check character)
    DIN = "din"  # donation identification number (ISBT 128, check character)
    SUBJECT = "subject"  # a direct subject identifier (MRN, study ID): vault only
    NONE = "none"


class LogicalType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    OBJECT = "object"


class Severity(StrEnum):
    ERROR = "error"  # rows are quarantined / the dataset fails
    WARNING = "warning"  # reported only

    @classmethod
    def parse(cls, text: str | None, *, where: str) -> Severity:
        if text is None:
            return cls.ERROR
        lowered = text.lower()
        if lowered in ("error", "critical", "fatal"):
            return cls.ERROR
        if lowered in ("warning", "warn", "info"):
            return cls.WARNING
        raise ContractError(
            f"unknown severity {text!r}; use error or warning",
            code="CONTRACT_SEVERITY",
            where=where,
        )


class DatasetKind(StrEnum):
    CANONICAL = "canonical"
    PUBLISHED = "published"


class RuleKind(StrEnum):
    """What a check tests. Row-level kinds can quarantine rows; table-level ones cannot."""

    TYPE = "type"  # the value has the property's logical type
    REQUIRED = "required"  # not null
    PATTERN = "pattern"
    LENGTH = "length"
    RANGE = "range"
    VALUE_SET = "value_set"  # in a code list
    TIMEZONE = "timezone"  # timestamp carries an offset
    CHECK_CHARACTER = "check_character"  # COI / DIN check character valid
    UNIQUE = "unique"  # primary key unique (duplicates)
    ROW_COUNT = "row_count"  # table level
    FRESHNESS = "freshness"  # table level, from SLA latency
    NULL_SHARE = "null_share"  # table level: tolerated share of nulls
    INVALID_SHARE = "invalid_share"  # table level: tolerated share of invalid values

    @property
    def row_level(self) -> bool:
        return self not in _TABLE_LEVEL


_TABLE_LEVEL = frozenset(
    {RuleKind.ROW_COUNT, RuleKind.FRESHNESS, RuleKind.NULL_SHARE, RuleKind.INVALID_SHARE}
)


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One column of a dataset, with everything checks and diffs need."""

    name: str
    logical_type: LogicalType
    required: bool
    classification: Classification
    description: str
    primary_key: bool = False
    primary_key_position: int = -1
    unique: bool = False
    identity_role: IdentityRole = IdentityRole.NONE
    unit: str | None = None
    lineage: bool = False
    record_key: bool = False  # names a quarantined record besides the primary key
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    integer_format: str | None = None
    timezone: bool | None = None  # timestamps: True = an offset is required
    allowed_values: tuple[str, ...] | None = None  # from an invalidValues/validValues rule
    tags: tuple[str, ...] = ()
    children: tuple[PropertySpec, ...] = ()  # logical type object

    @property
    def classified(self) -> bool:
        return self.classification.classified


@dataclass(frozen=True, slots=True)
class QualityRule:
    """An explicit ODCS ``quality`` entry, normalized."""

    id: str
    kind: RuleKind
    severity: Severity
    column: str | None  # None: table level
    description: str = ""
    valid_values: tuple[Any, ...] | None = None
    pattern: str | None = None
    must_be_min: float | None = None  # bounds on the metric (rows, percent, count)
    must_be_max: float | None = None
    unit: str | None = None  # "rows" or "percent"
    rule_code: str | None = None

    @property
    def row_level(self) -> bool:
        return self.kind.row_level


@dataclass(frozen=True, slots=True)
class Freshness:
    """SLA ``latency``: the newest ``column`` value must be within ``max_age`` of the run time."""

    column: str
    max_age: timedelta
    severity: Severity = Severity.WARNING


@dataclass(frozen=True, slots=True)
class Contract:
    """A parsed, checked data contract for one dataset."""

    id: str
    version: str
    api_version: str
    status: str
    dataset: str
    kind: DatasetKind
    description: str
    properties: tuple[PropertySpec, ...]
    rules: tuple[QualityRule, ...] = ()
    freshness: Freshness | None = None
    tags: tuple[str, ...] = ()
    content_sha256: str = ""
    source: str = ""  # where it was read from (for messages)
    sla: tuple[tuple[str, Any, str | None], ...] = field(default=())  # property, value, unit

    def prop(self, name: str) -> PropertySpec:
        for prop in self.properties:
            if prop.name == name:
                return prop
        raise ContractError(
            f"contract {self.dataset} has no property {name!r}",
            code="CONTRACT_PROPERTY_UNKNOWN",
            where=self.source or None,
        )

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties)

    @property
    def primary_key(self) -> tuple[str, ...]:
        keyed = sorted(
            (p for p in self.properties if p.primary_key), key=lambda p: p.primary_key_position
        )
        return tuple(p.name for p in keyed)

    @property
    def major_version(self) -> int:
        return parse_semver(self.version)[0]

    @property
    def quarantine_key_fields(self) -> tuple[str, ...]:
        """Unclassified primary-key and record-key properties: what names a quarantined record."""
        keys = [*self.primary_key, *(p.name for p in self.properties if p.record_key)]
        return tuple(dict.fromkeys(n for n in keys if not self.prop(n).classified))

    def classified_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.properties if p.classified)

    def iter_identity_properties(self) -> Iterator[PropertySpec]:
        for prop in self.properties:
            if prop.identity_role is not IdentityRole.NONE:
                yield prop


_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:[-+].*)?$")


def parse_semver(version: str) -> tuple[int, int, int]:
    match = _SEMVER.fullmatch(version)
    if not match:
        raise ContractError(
            "contract version must be semantic (MAJOR.MINOR.PATCH)", code="CONTRACT_VERSION"
        )
    return int(match[1]), int(match[2]), int(match[3])


_DURATION_UNITS = {
    "m": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "minute": timedelta(minutes=1),
    "minutes": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "hr": timedelta(hours=1),
    "hour": timedelta(hours=1),
    "hours": timedelta(hours=1),
    "d": timedelta(days=1),
    "day": timedelta(days=1),
    "days": timedelta(days=1),
    "y": timedelta(days=365),
    "yr": timedelta(days=365),
    "year": timedelta(days=365),
    "years": timedelta(days=365),
}


def parse_duration(value: Any, unit: str | None, *, where: str) -> timedelta:
    """An ODCS SLA value + unit (``4`` + ``d``) as a timedelta."""
    step = _DURATION_UNITS.get((unit or "d").lower())
    if step is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(
            "SLA duration needs a number and a unit (m, h, d, y)",
            code="CONTRACT_SLA_INVALID",
            where=where,
        )
    return step * float(value)
