"""Compile a contract into the list of checks a validation runs (pure).

Each property yields its implicit checks (type, required, pattern, length, range, timezone,
identifier check character), each explicit ``quality`` rule one more, and the contract's SLA
latency a freshness check. A :class:`Check` names the reason code written to quarantine for
the rows it rejects:

======================= ======================================================================
CONTRACT_TYPE           the value cannot be read as the property's logical type
CONTRACT_REQUIRED       a required property is empty
CONTRACT_PATTERN        a string does not match the property's pattern
CONTRACT_LENGTH         a string is shorter or longer than allowed
CONTRACT_RANGE          a number is outside [minimum, maximum]
CONTRACT_VALUE_SET      a value is not in the property's code list (values, units)
CONTRACT_TIMEZONE       a timestamp has no UTC offset
COI_CHECK_INVALID       a COI is malformed or its check character is wrong (reconcile catalog)
DIN_CHECK_INVALID       a DIN is malformed or its check character is wrong
CONTRACT_KEY_CONFLICT   two rows share a primary key but differ (exact copies are duplicates)
CONTRACT_NOT_UNIQUE     a value of a ``unique`` property repeats
FEED_ROW_COUNT          table level: the delivery has too few or too many rows
FEED_STALE              table level: the newest timestamp is older than the SLA latency
FEED_NULL_SHARE         table level: more empty values than the rule tolerates
FEED_INVALID_SHARE      table level: more invalid values than the rule tolerates
======================= ======================================================================

A quality rule may override its code with the ``cmohub.ruleCode`` custom property.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmohub.contracts.model import (
    Contract,
    IdentityRole,
    LogicalType,
    PropertySpec,
    QualityRule,
    RuleKind,
    Severity,
)
from cmohub.errors import ContractError
from cmohub.reconcile.catalog import RuleCode

_CODES = {
    RuleKind.TYPE: "CONTRACT_TYPE",
    RuleKind.REQUIRED: "CONTRACT_REQUIRED",
    RuleKind.PATTERN: "CONTRACT_PATTERN",
    RuleKind.LENGTH: "CONTRACT_LENGTH",
    RuleKind.RANGE: "CONTRACT_RANGE",
    RuleKind.VALUE_SET: "CONTRACT_VALUE_SET",
    RuleKind.TIMEZONE: "CONTRACT_TIMEZONE",
    RuleKind.UNIQUE: "CONTRACT_NOT_UNIQUE",
    RuleKind.ROW_COUNT: "FEED_ROW_COUNT",
    RuleKind.FRESHNESS: "FEED_STALE",
    RuleKind.NULL_SHARE: "FEED_NULL_SHARE",
    RuleKind.INVALID_SHARE: "FEED_INVALID_SHARE",
}
CHECK_CHARACTER_CODES = {
    IdentityRole.COI: RuleCode.COI_CHECK_INVALID.value,
    IdentityRole.DIN: "DIN_CHECK_INVALID",
}
KEY_CONFLICT = "CONTRACT_KEY_CONFLICT"
PRIMARY_KEY_CHECK = "primary_key.unique"


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a validation run. ``params`` holds its thresholds, never data values."""

    id: str
    kind: RuleKind
    column: str | None
    severity: Severity
    code: str
    description: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def row_level(self) -> bool:
        return self.kind.row_level

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


def _params(**values: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in values.items() if v is not None)


def property_checks(prop: PropertySpec) -> list[Check]:
    """The implicit checks of one top-level property."""
    name = prop.name
    checks: list[Check] = []

    def add(kind: RuleKind, description: str, code: str | None = None, **params: Any) -> None:
        checks.append(
            Check(
                id=f"{name}.{kind.value}",
                kind=kind,
                column=name,
                severity=Severity.ERROR,
                code=code or _CODES[kind],
                description=description,
                params=_params(**params),
            )
        )

    if prop.logical_type not in (LogicalType.STRING, LogicalType.OBJECT):
        add(RuleKind.TYPE, f"{name} is a {prop.logical_type.value}")
    if prop.required:
        add(RuleKind.REQUIRED, f"{name} is present")
    if prop.pattern is not None:
        add(RuleKind.PATTERN, f"{name} matches its pattern", regex=prop.pattern)
    if prop.min_length is not None or prop.max_length is not None:
        add(
            RuleKind.LENGTH,
            f"{name} has an allowed length",
            min_value=prop.min_length,
            max_value=prop.max_length,
        )
    low = prop.minimum if prop.minimum is not None else prop.exclusive_minimum
    high = prop.maximum if prop.maximum is not None else prop.exclusive_maximum
    if low is not None or high is not None:
        add(
            RuleKind.RANGE,
            f"{name} is within its range",
            min_value=low,
            max_value=high,
            strict_min=(prop.exclusive_minimum is not None and prop.minimum is None) or None,
            strict_max=(prop.exclusive_maximum is not None and prop.maximum is None) or None,
        )
    if prop.logical_type is LogicalType.TIMESTAMP and prop.timezone is not False:
        add(RuleKind.TIMEZONE, f"{name} carries a UTC offset")
    if prop.identity_role in CHECK_CHARACTER_CODES:
        role = prop.identity_role
        checks.append(
            Check(
                id=f"{name}.check_character",
                kind=RuleKind.CHECK_CHARACTER,
                column=name,
                severity=Severity.ERROR,
                code=CHECK_CHARACTER_CODES[role],
                description=f"{name} is a valid {role.value.upper()} with its check character",
                params=_params(identifier=role.value),
            )
        )
    if prop.unique and not prop.primary_key:
        add(RuleKind.UNIQUE, f"{name} values are unique")
    return checks


def rule_check(rule: QualityRule) -> Check:
    """The check of one explicit quality rule."""
    code = rule.rule_code or _CODES[rule.kind]
    params: dict[str, Any] = {}
    if rule.kind is RuleKind.VALUE_SET or rule.kind is RuleKind.INVALID_SHARE:
        params["value_set"] = rule.valid_values
        params["regex"] = rule.pattern
    if rule.kind is RuleKind.PATTERN:
        params["regex"] = rule.pattern
    if not rule.kind.row_level:
        params["min_value"] = rule.must_be_min
        params["max_value"] = rule.must_be_max
        params["unit"] = rule.unit
    return Check(
        id=rule.id,
        kind=rule.kind,
        column=rule.column,
        severity=rule.severity,
        code=code,
        description=rule.description or rule.id,
        params=_params(**params),
    )


def compile_checks(contract: Contract) -> tuple[Check, ...]:
    """Every check of ``contract``, in a stable order (properties, rules, key, freshness).

    An explicit quality rule with the id of an implicit check of the same kind replaces it
    (e.g. ``status.required`` with severity warning).
    """
    checks: dict[str, Check] = {}
    for prop in contract.properties:
        for check in property_checks(prop):
            checks[check.id] = check
    implicit = set(checks)
    for rule in contract.rules:
        check = rule_check(rule)
        if check.id in checks and (check.id not in implicit or checks[check.id].kind != check.kind):
            raise ContractError(
                f"two checks are named {check.id}; give the quality rule another id",
                code="CONTRACT_CHECK_ID",
                where=contract.source or contract.dataset,
            )
        checks[check.id] = check
        implicit.discard(check.id)
    if contract.primary_key:
        checks[PRIMARY_KEY_CHECK] = Check(
            id=PRIMARY_KEY_CHECK,
            kind=RuleKind.UNIQUE,
            column=None,
            severity=Severity.ERROR,
            code=KEY_CONFLICT,
            description=f"({', '.join(contract.primary_key)}) identifies one row",
            params=_params(columns=contract.primary_key),
        )
    if contract.freshness is not None:
        fresh = contract.freshness
        check = Check(
            id=f"{fresh.column}.freshness",
            kind=RuleKind.FRESHNESS,
            column=fresh.column,
            severity=fresh.severity,
            code=_CODES[RuleKind.FRESHNESS],
            description=f"newest {fresh.column} is at most {fresh.max_age} old",
            params=_params(max_age_seconds=fresh.max_age.total_seconds()),
        )
        checks[check.id] = check
    return tuple(checks.values())


def checks_by_id(checks: tuple[Check, ...]) -> Mapping[str, Check]:
    return {c.id: c for c in checks}
