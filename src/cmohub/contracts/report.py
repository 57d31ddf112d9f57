"""Validation reports and quarantine entries: plain, JSON-ready values (pure).

A :class:`ValidationReport` is what a data steward reads for each delivery: the dataset and
contract version, the run, one :class:`CheckResult` per check (counts only), the record counts
(received = valid + quarantined + duplicates) and feed-level :class:`Finding` values. It never
carries a data value: checks report how many rows failed and the quarantine file says which
rows (by source reference), not what they contained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cmohub.contracts.model import Severity

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check over the rows validated."""

    check_id: str
    rule: str  # the hub's rule kind (required, pattern, range, check_character, ...)
    expectation: str  # the GX expectation type, or "cmohub" for checks the hub runs itself
    column: str | None
    severity: Severity
    level: str  # "row" or "table"
    code: str  # reason code (quarantine) or finding code (table level)
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    evaluated: bool = True  # False when it could not run (e.g. freshness without a run time)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A feed-level observation: table-level rules, missing or unexpected columns."""

    code: str
    severity: Severity
    message: str  # names columns, rules and counts; never data values
    check_id: str | None = None
    column: str | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    received: int
    valid: int
    quarantined: int
    duplicates: int

    @property
    def balanced(self) -> bool:
        return self.received == self.valid + self.quarantined + self.duplicates


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The result of validating one delivery (or table) against its contract."""

    dataset: str
    contract_id: str
    contract_version: str
    contract_sha256: str
    run_id: str
    feed: str | None
    counts: Counts
    checks: tuple[CheckResult, ...]
    findings: tuple[Finding, ...] = ()
    quarantine_reasons: tuple[tuple[str, int], ...] = ()  # reason code -> rows
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        """No error-severity check failed and no error finding."""
        return not self.errors

    @property
    def errors(self) -> tuple[str, ...]:
        failed = [c.check_id for c in self.checks if not c.success and c.severity is Severity.ERROR]
        failed += [f.code for f in self.findings if f.severity is Severity.ERROR]
        return tuple(failed)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["counts"]["balanced"] = self.counts.balanced
        data["quarantine_reasons"] = dict(self.quarantine_reasons)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationReport:
        counts = dict(data["counts"])
        counts.pop("balanced", None)
        return cls(
            dataset=data["dataset"],
            contract_id=data["contract_id"],
            contract_version=data["contract_version"],
            contract_sha256=data["contract_sha256"],
            run_id=data["run_id"],
            feed=data.get("feed"),
            counts=Counts(**counts),
            checks=tuple(
                CheckResult(**{**c, "severity": Severity(c["severity"])}) for c in data["checks"]
            ),
            findings=tuple(
                Finding(**{**f, "severity": Severity(f["severity"])})
                for f in data.get("findings", ())
            ),
            quarantine_reasons=tuple(sorted(dict(data.get("quarantine_reasons", {})).items())),
            schema_version=int(data.get("schema_version", REPORT_SCHEMA_VERSION)),
        )


@dataclass(frozen=True, slots=True)
class Reason:
    code: str  # stable reason code (CONTRACT_*, COI_*, MAPPING_*, ...)
    rule: str  # the check or mapping step that failed
    field: str | None  # field path in the canonical row (or the source)


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from: the raw file's SHA-256 and the record's locator in it."""

    sha256: str
    locator: str

    def __str__(self) -> str:
        return f"{self.sha256}#{self.locator}"

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        sha, _, locator = text.partition("#")
        return cls(sha256=sha, locator=locator)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One rejected record: replayable from raw/ through ``source``; no classified values.

    ``key`` holds the values of unclassified (public/internal) primary-key properties only, so
    a person can find the record; everything else is read back from the raw store.
    """

    dataset: str
    source: SourceRef | None
    reasons: tuple[Reason, ...]
    key: tuple[tuple[str, Any], ...] = ()

    @property
    def code(self) -> str:
        return self.reasons[0].code if self.reasons else "INPUT_INVALID"

    def to_dict(self, *, run_id: str, feed: str | None) -> dict[str, Any]:
        first = self.reasons[0] if self.reasons else Reason("INPUT_INVALID", "", None)
        return {
            "run_id": run_id,
            "feed": feed,
            "dataset": self.dataset,
            "code": first.code,
            "rule": first.rule,
            "field": first.field,
            "reasons": [asdict(r) for r in self.reasons],
            "source_sha256": self.source.sha256 if self.source else None,
            "source_locator": self.source.locator if self.source else None,
            "key": dict(self.key),
        }


def count_reasons(entries: Sequence[QuarantineEntry]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.code] = counts.get(entry.code, 0) + 1
    return tuple(sorted(counts.items()))
