"""The run ledger: every record that enters ends staged, quarantined or suppressed, and the
counts add up (DESIGN.md, data flow). Each task writes its ledger to ``runs/<run_id>/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cmohub import __version__
from cmohub.errors import LedgerImbalance
from cmohub.pipelines.context import RunContext


@dataclass
class FeedCounts:
    """Counts of one feed (or one dataset of a feed) in one run."""

    received: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates: int = 0
    files: int = 0
    duplicate_files: int = 0

    def add(self, other: FeedCounts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def balanced(self) -> bool:
        return self.received == self.valid + self.quarantined + self.duplicates


@dataclass
class RunLedger:
    """What one task of one run received, kept, quarantined and wrote."""

    task: str
    counts: dict[str, FeedCounts] = field(default_factory=dict)
    quarantine_codes: dict[str, int] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # raw refs, snapshot IDs
    outputs: list[dict[str, Any]] = field(default_factory=list)  # paths, rows, sha256
    findings: list[dict[str, Any]] = field(default_factory=list)  # feed-level findings
    mappings: dict[str, str] = field(default_factory=dict)  # mapping id -> content hash
    contracts: dict[str, str] = field(default_factory=dict)  # contract id -> version

    def feed(self, name: str) -> FeedCounts:
        return self.counts.setdefault(name, FeedCounts())

    def count_quarantine(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.quarantine_codes[code] = self.quarantine_codes.get(code, 0) + 1

    def check(self) -> None:
        """Raise :class:`LedgerImbalance` when any feed's counts do not add up."""
        for name, counts in sorted(self.counts.items()):
            if not counts.balanced:
                raise LedgerImbalance(
                    f"received {counts.received} != valid {counts.valid} + quarantined "
                    f"{counts.quarantined} + duplicates {counts.duplicates}",
                    where=f"feed {name}",
                )

    def totals(self) -> FeedCounts:
        total = FeedCounts()
        for counts in self.counts.values():
            total.add(counts)
        return total

    def to_dict(self, context: RunContext) -> dict[str, Any]:
        return {
            "task": self.task,
            "dag_id": context.dag_id,
            "run_id": context.run_id,
            "interval_start": context.interval_start.isoformat(),
            "interval_end": context.interval_end.isoformat(),
            "package_version": __version__,
            "counts": {k: asdict(v) for k, v in sorted(self.counts.items())},
            "quarantine_codes": dict(sorted(self.quarantine_codes.items())),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "findings": self.findings,
            "mappings": dict(sorted(self.mappings.items())),
            "contracts": dict(sorted(self.contracts.items())),
        }

    def save(self, context: RunContext) -> str:
        """Check the balance and write the ledger; return its lake-relative path."""
        self.check()
        lake = context.lake
        target = lake.run_dir(context.path_run_id) / f"{self.task}.json"
        lake.write_json(target, self.to_dict(context))
        return f"runs/{context.path_run_id}/{self.task}.json"

    def summary(self) -> dict[str, Any]:
        """The small result a task returns (XCom): counts, never records."""
        total = self.totals()
        return {"task": self.task, **asdict(total), "quarantine_codes": self.quarantine_codes}
