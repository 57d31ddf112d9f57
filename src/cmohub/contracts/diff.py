"""Every change between two versions of a contract, classified breaking or not (pure).

The rule of thumb: a change is **breaking** when data that satisfied the old contract may not
satisfy the new one, when a consumer loses something it read (a property, a key, a unit), or
when privacy weakens (a classification lowered). Codes:

========================== ========= ==========================================================
DATASET_REMOVED            breaking  the dataset has no contract any more
DATASET_RENAMED            breaking  the contract describes another dataset name
DATASET_ADDED              —         a new dataset
PROPERTY_REMOVED           breaking  consumers reading it break
PROPERTY_RENAMED           breaking  same definition under another name
PROPERTY_ADDED             —/break.  optional: non-breaking; required: breaking
TYPE_CHANGED               breaking  narrowed, widened or changed logical/storage type
REQUIRED_ADDED             breaking  optional made required
REQUIRED_REMOVED           —         required made optional (consumers must accept empties)
VALUES_NARROWED            breaking  code-list values removed
VALUES_WIDENED             —         code-list values added
VALUES_ADDED / _REMOVED    break./—  a code list introduced / dropped
PATTERN_ADDED / _CHANGED   breaking  a pattern introduced or changed (treated as tightened)
PATTERN_REMOVED            —
RANGE_TIGHTENED            breaking  a bound raised/lowered inwards, or a new bound
RANGE_LOOSENED             —
LENGTH_TIGHTENED / _LOOS.  break./—  same for string lengths
UNIT_CHANGED               breaking
PRIMARY_KEY_CHANGED        breaking
CLASSIFICATION_LOWERED     breaking  a privacy break: values may now travel further
CLASSIFICATION_RAISED      —
IDENTITY_ROLE_CHANGED      breaking
RULE_ADDED / RULE_REMOVED  break./—  an error-severity row rule added; any rule removed
RULE_SEVERITY_RAISED       breaking  warning -> error
RULE_SEVERITY_LOWERED      —
RULE_CHANGED               breaking  thresholds tightened (loosened: non-breaking)
FRESHNESS_TIGHTENED / LOOS break./—
DESCRIPTION_CHANGED        —         descriptions, tags, status, business names
========================== ========= ==========================================================

A breaking change expects a new major version; :attr:`ContractDiff.version_note` says when the
version numbers disagree with the changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from cmohub.contracts.model import (
    Contract,
    LogicalType,
    PropertySpec,
    QualityRule,
    RuleKind,
    Severity,
    parse_semver,
)
from cmohub.errors import ContractError


@dataclass(frozen=True, slots=True)
class Change:
    code: str
    dataset: str
    path: str  # property name, rule id, or "" for the dataset itself
    breaking: bool
    reason: str
    waived_by: str | None = None  # the waiver's reason, when one applies

    @property
    def blocking(self) -> bool:
        return self.breaking and self.waived_by is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "dataset": self.dataset,
            "path": self.path,
            "breaking": self.breaking,
            "waived": self.waived_by is not None,
            "waiver_reason": self.waived_by,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ContractDiff:
    dataset: str
    old_version: str | None
    new_version: str | None
    changes: tuple[Change, ...]
    version_note: str | None = None

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.breaking)

    @property
    def blocking(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.blocking)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "changes": [c.to_dict() for c in self.changes],
            "breaking": len(self.breaking),
            "blocking": len(self.blocking),
            "version_note": self.version_note,
        }


@dataclass(slots=True)
class _Collector:
    dataset: str
    changes: list[Change] = field(default_factory=list)

    def add(self, code: str, path: str, breaking: bool, reason: str) -> None:
        self.changes.append(Change(code, self.dataset, path, breaking, reason))


_TYPE_WIDENINGS = {
    (LogicalType.INTEGER, LogicalType.NUMBER),
    (LogicalType.DATE, LogicalType.TIMESTAMP),
}


def _describe_type_change(old: PropertySpec, new: PropertySpec) -> str:
    pair = (old.logical_type, new.logical_type)
    if pair in _TYPE_WIDENINGS:
        how = "widened"
    elif pair[::-1] in _TYPE_WIDENINGS:
        how = "narrowed"
    else:
        how = "changed"
    return f"type {how} from {old.logical_type.value} to {new.logical_type.value}"


def _bound_change(
    low_old: float | None,
    high_old: float | None,
    low_new: float | None,
    high_new: float | None,
) -> tuple[bool, bool]:
    """(tightened, loosened) for a [low, high] interval."""
    tightened = loosened = False
    if low_old != low_new:
        if low_new is not None and (low_old is None or low_new > low_old):
            tightened = True
        else:
            loosened = True
    if high_old != high_new:
        if high_new is not None and (high_old is None or high_new < high_old):
            tightened = True
        else:
            loosened = True
    return tightened, loosened


def _fmt(low: float | None, high: float | None) -> str:
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


def _property_changes(out: _Collector, old: PropertySpec, new: PropertySpec) -> None:
    name = new.name
    if old.logical_type != new.logical_type or old.integer_format != new.integer_format:
        out.add("TYPE_CHANGED", name, True, _describe_type_change(old, new))
    elif old.timezone != new.timezone and new.logical_type is LogicalType.TIMESTAMP:
        out.add(
            "TYPE_CHANGED",
            name,
            True,
            f"timezone requirement changed from {old.timezone} to {new.timezone}",
        )
    if not old.required and new.required:
        out.add("REQUIRED_ADDED", name, True, "optional made required: empty values now fail")
    if old.required and not new.required:
        out.add(
            "REQUIRED_REMOVED", name, False, "required made optional (consumers must accept empty)"
        )
    _value_changes(out, name, old.allowed_values, new.allowed_values)
    if old.pattern != new.pattern:
        if old.pattern is None:
            out.add("PATTERN_ADDED", name, True, "a pattern now restricts the values")
        elif new.pattern is None:
            out.add("PATTERN_REMOVED", name, False, "the pattern no longer restricts the values")
        else:
            reason = "pattern changed (treated as tightened: values valid before may fail)"
            out.add("PATTERN_CHANGED", name, True, reason)
    old_low = old.minimum if old.minimum is not None else old.exclusive_minimum
    old_high = old.maximum if old.maximum is not None else old.exclusive_maximum
    new_low = new.minimum if new.minimum is not None else new.exclusive_minimum
    new_high = new.maximum if new.maximum is not None else new.exclusive_maximum
    tightened, loosened = _bound_change(old_low, old_high, new_low, new_high)
    strictness = (old.exclusive_minimum is None, old.exclusive_maximum is None) != (
        new.exclusive_minimum is None,
        new.exclusive_maximum is None,
    )
    span = f"range {_fmt(old_low, old_high)} -> {_fmt(new_low, new_high)}"
    if tightened or (strictness and not loosened):
        out.add("RANGE_TIGHTENED", name, True, span)
    elif loosened:
        out.add("RANGE_LOOSENED", name, False, span)
    low_t, low_l = _bound_change(old.min_length, old.max_length, new.min_length, new.max_length)
    lengths = f"length {_fmt(old.min_length, old.max_length)} -> "
    lengths += _fmt(new.min_length, new.max_length)
    if low_t:
        out.add("LENGTH_TIGHTENED", name, True, lengths)
    elif low_l:
        out.add("LENGTH_LOOSENED", name, False, lengths)
    if old.unit != new.unit:
        out.add("UNIT_CHANGED", name, True, f"unit {old.unit} -> {new.unit}")
    if old.classification != new.classification:
        if new.classification.rank < old.classification.rank:
            out.add(
                "CLASSIFICATION_LOWERED",
                name,
                True,
                f"privacy break: {old.classification.value} -> {new.classification.value}",
            )
        else:
            out.add(
                "CLASSIFICATION_RAISED",
                name,
                False,
                f"{old.classification.value} -> {new.classification.value}",
            )
    if old.identity_role != new.identity_role:
        out.add(
            "IDENTITY_ROLE_CHANGED",
            name,
            True,
            f"identity role {old.identity_role.value} -> {new.identity_role.value}",
        )
    if (old.description, old.tags) != (new.description, new.tags):
        out.add("DESCRIPTION_CHANGED", name, False, "description or tags changed")
    if old.children or new.children:
        _properties(out, old.children, new.children, prefix=f"{name}.")


def _value_changes(
    out: _Collector, name: str, old: tuple[str, ...] | None, new: tuple[str, ...] | None
) -> None:
    if old == new:
        return
    if old is None and new is not None:
        out.add("VALUES_ADDED", name, True, f"a code list of {len(new)} values now applies")
        return
    if new is None:
        out.add("VALUES_REMOVED", name, False, "the code list no longer applies")
        return
    assert old is not None
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    if removed:
        out.add("VALUES_NARROWED", name, True, f"values removed: {', '.join(removed)}")
    if added:
        out.add("VALUES_WIDENED", name, False, f"values added: {', '.join(added)}")


def _same_definition(a: PropertySpec, b: PropertySpec) -> bool:
    return replace(a, name="", description="", tags=()) == replace(
        b, name="", description="", tags=()
    )


def _properties(
    out: _Collector,
    old: Sequence[PropertySpec],
    new: Sequence[PropertySpec],
    *,
    prefix: str = "",
) -> None:
    old_by = {p.name: p for p in old}
    new_by = {p.name: p for p in new}
    removed = [p for p in old if p.name not in new_by]
    added = [p for p in new if p.name not in old_by]
    renamed: set[str] = set()
    for gone in removed:
        twin = next((p for p in added if p.name not in renamed and _same_definition(gone, p)), None)
        if twin is not None:
            renamed.add(twin.name)
            out.add(
                "PROPERTY_RENAMED",
                prefix + gone.name,
                True,
                f"renamed to {prefix}{twin.name}: consumers reading {gone.name} break",
            )
        else:
            out.add(
                "PROPERTY_REMOVED",
                prefix + gone.name,
                True,
                f"removed: consumers reading {gone.name} break",
            )
    for item in added:
        if item.name in renamed:
            continue
        if item.required:
            out.add(
                "PROPERTY_ADDED",
                prefix + item.name,
                True,
                "required property added: data without it now fails",
            )
        else:
            out.add("PROPERTY_ADDED", prefix + item.name, False, "optional property added")
    for prop in new:
        if prop.name in old_by:
            _property_changes(out, old_by[prop.name], prop)


def _rule_key(rule: QualityRule) -> str:
    return rule.id


def _rules(out: _Collector, old: Sequence[QualityRule], new: Sequence[QualityRule]) -> None:
    old_by = {_rule_key(r): r for r in old}
    new_by = {_rule_key(r): r for r in new}
    for key, rule in old_by.items():
        if key not in new_by and rule.kind is not RuleKind.VALUE_SET:
            out.add("RULE_REMOVED", key, False, f"{rule.kind.value} rule removed")
    for key, rule in new_by.items():
        if rule.kind is RuleKind.VALUE_SET:
            continue  # code lists are compared on the property (VALUES_*)
        before = old_by.get(key)
        if before is None:
            breaking = rule.severity is Severity.ERROR
            out.add(
                "RULE_ADDED",
                key,
                breaking,
                f"{rule.severity.value} {rule.kind.value} rule added"
                + (": data valid before may now fail" if breaking else ""),
            )
            continue
        if before.severity != rule.severity:
            raised = rule.severity is Severity.ERROR
            out.add(
                "RULE_SEVERITY_RAISED" if raised else "RULE_SEVERITY_LOWERED",
                key,
                raised,
                f"severity {before.severity.value} -> {rule.severity.value}",
            )
        tightened, loosened = _bound_change(
            before.must_be_min, before.must_be_max, rule.must_be_min, rule.must_be_max
        )
        if before.valid_values != rule.valid_values or before.pattern != rule.pattern:
            tightened = True
        if tightened:
            out.add("RULE_CHANGED", key, True, "rule thresholds or arguments tightened or changed")
        elif loosened:
            out.add("RULE_CHANGED", key, False, "rule thresholds loosened")


def version_note(old: Contract, new: Contract, has_breaking: bool, has_changes: bool) -> str | None:
    """Say when the version numbers disagree with the changes."""
    try:
        before, after = parse_semver(old.version), parse_semver(new.version)
    except ContractError:
        return "a version is not semantic (MAJOR.MINOR.PATCH)"
    if after < before:
        return f"version went backwards ({old.version} -> {new.version})"
    if has_breaking and after[0] == before[0]:
        return (
            f"breaking changes need a new major version: {old.version} -> "
            f"{before[0] + 1}.0.0, not {new.version}"
        )
    if not has_breaking and after[0] > before[0]:
        return f"major version bumped ({old.version} -> {new.version}) without a breaking change"
    if has_changes and after == before:
        return f"the contract changed but its version did not ({new.version})"
    return None


def diff_contracts(old: Contract, new: Contract) -> ContractDiff:
    """Every change from ``old`` to ``new`` (two versions of one dataset's contract)."""
    out = _Collector(dataset=new.dataset)
    if old.dataset != new.dataset:
        out.add(
            "DATASET_RENAMED",
            "",
            True,
            f"dataset {old.dataset} -> {new.dataset}: consumers of {old.dataset} break",
        )
    _properties(out, old.properties, new.properties)
    if old.primary_key != new.primary_key:
        out.add(
            "PRIMARY_KEY_CHANGED",
            "",
            True,
            f"primary key ({', '.join(old.primary_key)}) -> ({', '.join(new.primary_key)})",
        )
    _rules(out, old.rules, new.rules)
    if old.freshness != new.freshness:
        before = old.freshness.max_age if old.freshness else None
        after = new.freshness.max_age if new.freshness else None
        tighter = after is not None and (before is None or after < before)
        out.add(
            "FRESHNESS_TIGHTENED" if tighter else "FRESHNESS_LOOSENED",
            "",
            tighter,
            f"latency {before} -> {after}",
        )
    if (old.description, old.tags, old.status) != (new.description, new.tags, new.status):
        out.add("DESCRIPTION_CHANGED", "", False, "description, tags or status changed")
    has_breaking = any(c.breaking for c in out.changes)
    note = version_note(old, new, has_breaking, bool(out.changes))
    return ContractDiff(
        dataset=new.dataset,
        old_version=old.version,
        new_version=new.version,
        changes=tuple(out.changes),
        version_note=note,
    )


def diff_contract_sets(
    old: Mapping[str, Contract], new: Mapping[str, Contract]
) -> list[ContractDiff]:
    """Diffs of two sets of contracts keyed by dataset (e.g. two releases' contracts/)."""
    diffs = []
    for dataset in sorted(set(old) | set(new)):
        if dataset not in new:
            diffs.append(
                ContractDiff(
                    dataset=dataset,
                    old_version=old[dataset].version,
                    new_version=None,
                    changes=(
                        Change(
                            "DATASET_REMOVED",
                            dataset,
                            "",
                            True,
                            f"dataset {dataset} removed: its consumers break",
                        ),
                    ),
                )
            )
        elif dataset not in old:
            diffs.append(
                ContractDiff(
                    dataset=dataset,
                    old_version=None,
                    new_version=new[dataset].version,
                    changes=(Change("DATASET_ADDED", dataset, "", False, "new dataset"),),
                )
            )
        else:
            diffs.append(diff_contracts(old[dataset], new[dataset]))
    return diffs


# --- waivers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiver:
    """An agreed breaking change: matched by dataset, path and (optionally) change code."""

    dataset: str
    path: str
    reason: str
    code: str | None = None
    expires: date | None = None

    def covers(self, change: Change, today: date | None) -> bool:
        if self.expires is not None and today is not None and today > self.expires:
            return False
        return (
            self.dataset == change.dataset
            and self.path == change.path
            and (self.code is None or self.code == change.code)
        )


def parse_waivers(document: Any, *, where: str) -> tuple[Waiver, ...]:
    """``{waivers: [{dataset, path, reason, code?, expires?}, ...]}`` from a YAML file."""
    items = document.get("waivers") if isinstance(document, Mapping) else None
    if not isinstance(items, list):
        raise ContractError("expected a 'waivers' list", code="CONTRACT_WAIVERS", where=where)
    waivers = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get("reason") or "dataset" not in item:
            raise ContractError(
                "each waiver needs dataset, path and a reason",
                code="CONTRACT_WAIVERS",
                where=f"{where}#waivers/{index}",
            )
        expires = item.get("expires")
        if isinstance(expires, str):
            expires = date.fromisoformat(expires)
        waivers.append(
            Waiver(
                dataset=str(item["dataset"]),
                path=str(item.get("path", "")),
                reason=str(item["reason"]),
                code=str(item["code"]) if item.get("code") else None,
                expires=expires if isinstance(expires, date) else None,
            )
        )
    return tuple(waivers)


def apply_waivers(
    diff: ContractDiff, waivers: Sequence[Waiver], *, today: date | None = None
) -> ContractDiff:
    """Mark the breaking changes that a (not expired) waiver covers."""
    changes = []
    for change in diff.changes:
        waiver = next((w for w in waivers if change.breaking and w.covers(change, today)), None)
        changes.append(replace(change, waived_by=waiver.reason) if waiver else change)
    return replace(diff, changes=tuple(changes))
