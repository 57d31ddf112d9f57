"""Stage a feed's payloads: map, resolve identities, validate, write Parquet and quarantine.

Every ingest pipeline (clinical, logistics, CMO) ends the same way, so it is written once::

    stager = FeedStager(context, mapping, port=vault, ledger=ledger)
    for payload in payloads:                      # files, pages, messages of this run
        stager.stage(payload.sha256, records)     # records: SourceRecords of that payload
    result = stager.finish()                      # quarantine file, reports, ledger counts

Each payload becomes one Parquet part under
``staged/<dataset>/feed=<mapping>/date=<day>/run=<run>/part-<sha12>.parquet`` — named by the
payload's SHA-256, so a retried task rewrites the same part instead of adding a second one.
Rejected records (mapping issues, unknown COIs, failed row rules) are collected and written
once per run to the feed's quarantine file, each with its reason codes and a source reference
(raw SHA-256 + locator) from which it can be replayed; no value of a classified field is ever
written there. The ledger gets received = valid + quarantined + duplicates for the feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.model import Contract
from cmohub.contracts.quarantine import write_quarantine
from cmohub.contracts.report import QuarantineEntry, ValidationReport
from cmohub.contracts.store import load_contract
from cmohub.contracts.validate import validate_table
from cmohub.identity import IdentityPort
from cmohub.mapping.engine import apply_mapping
from cmohub.mapping.identity import resolve_identities
from cmohub.mapping.readers import SourceRecord
from cmohub.mapping.spec import CompiledMapping, compile_mapping
from cmohub.mapping.store import load_mapping
from cmohub.pipelines.context import RunContext
from cmohub.pipelines.ledger import FeedCounts, RunLedger


@dataclass
class StageResult:
    """What a feed staged in one run (returned to the task; small, JSON-ready)."""

    feed: str
    dataset: str
    parts: list[str] = field(default_factory=list)  # lake-relative Parquet paths
    quarantine: str | None = None
    reports: list[str] = field(default_factory=list)
    counts: FeedCounts = field(default_factory=FeedCounts)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "dataset": self.dataset,
            "parts": self.parts,
            "quarantine": self.quarantine,
            "reports": self.reports,
            "received": self.counts.received,
            "valid": self.counts.valid,
            "quarantined": self.counts.quarantined,
            "duplicates": self.counts.duplicates,
            "findings": self.findings,
        }


class FeedStager:
    """Stages every payload of one feed (one mapping) for one run."""

    def __init__(
        self,
        context: RunContext,
        mapping: CompiledMapping | str,
        *,
        port: IdentityPort,
        ledger: RunLedger,
        contract: Contract | None = None,
    ) -> None:
        self.context = context
        self.compiled = (
            compile_mapping(load_mapping(mapping)) if isinstance(mapping, str) else mapping
        )
        spec = self.compiled.spec
        self.feed = spec.name
        self.contract = contract or load_contract(spec.dataset)
        self.port = port
        self.ledger = ledger
        self.result = StageResult(feed=self.feed, dataset=spec.dataset)
        self._quarantine: list[QuarantineEntry] = []
        # Unclassified primary-key properties name a quarantined record (batch_id, event_id).
        self.key_fields = self.contract.quarantine_key_fields
        ledger.mappings[self.feed] = spec.content_sha256
        ledger.contracts[self.contract.dataset] = self.contract.version

    def stage(
        self,
        source_sha256: str,
        records: Iterable[SourceRecord],
        *,
        extra: int = 0,
        upstream: Sequence[QuarantineEntry] = (),
        upstream_duplicates: int = 0,
    ) -> ValidationReport:
        """Map, resolve, validate and write one payload's records.

        ``extra`` counts records of the payload that were quarantined before mapping (a
        malformed message the format adapter could not split): they are received, too.
        ``upstream`` are records the format adapter rejected itself (with their reasons) and
        ``upstream_duplicates`` records it suppressed as duplicates; both count as received.
        """
        context = self.context
        mapped = apply_mapping(
            self.compiled, records, run_id=context.path_run_id, source_sha256=source_sha256
        )
        mapped = resolve_identities(mapped, self.port, actor=context.actor(self.feed))
        table = rows_to_table(mapped.canonical_rows(), self.contract)
        return self.stage_table(
            source_sha256,
            table,
            upstream=[*upstream, *mapped.quarantine_entries(self.key_fields)],
            upstream_duplicates=upstream_duplicates,
            extra=extra,
        )

    def stage_table(
        self,
        source_sha256: str,
        table: pa.Table,
        *,
        upstream: Sequence[QuarantineEntry] = (),
        upstream_duplicates: int = 0,
        extra: int = 0,
    ) -> ValidationReport:
        """Validate and write one payload's rows, already in canonical form.

        For feeds too large to map row by row (logger readings): the caller builds the
        canonical columns itself (with lineage) and passes the records it rejected as
        ``upstream`` quarantine entries and the duplicates it suppressed as
        ``upstream_duplicates``, so that the ledger still balances.
        """
        context = self.context
        outcome = validate_table(
            table,
            self.contract,
            run_id=context.path_run_id,
            feed=self.feed,
            as_of=context.interval_end,
            upstream=upstream,
            upstream_duplicates=upstream_duplicates,
        )
        lake = context.lake
        if outcome.valid.num_rows:
            target = (
                lake.staged_dir(
                    self.contract.dataset,
                    feed=self.feed,
                    day=context.day,
                    run_id=context.path_run_id,
                )
                / f"part-{source_sha256[:12]}.parquet"
            )
            lake.write_parquet(target, outcome.valid)
            self.result.parts.append(str(target.relative_to(lake.root)))
        self._quarantine.extend(outcome.quarantined)
        counts = outcome.report.counts
        staged = FeedCounts(
            received=counts.received + extra,
            valid=counts.valid,
            quarantined=counts.quarantined + extra,
            duplicates=counts.duplicates,
        )
        self.result.counts.add(staged)
        self.ledger.feed(self.feed).add(staged)
        self.ledger.count_quarantine(
            reason.code for entry in outcome.quarantined for reason in entry.reasons[:1]
        )
        self.result.findings.extend(
            {**asdict(f), "severity": f.severity.value, "payload": source_sha256}
            for f in outcome.report.findings
        )
        self.result.reports.append(str(save_report_for(context, outcome.report, source_sha256)))
        return outcome.report

    def quarantine_extra(self, entries: Iterable[QuarantineEntry]) -> None:
        """Add records a format adapter rejected before mapping (counted via ``extra``)."""
        entries = list(entries)
        self._quarantine.extend(entries)
        self.ledger.count_quarantine(e.reasons[0].code for e in entries if e.reasons)

    def finish(self) -> StageResult:
        """Write the run's quarantine file for this feed; return what was staged."""
        lake = self.context.lake
        path = write_quarantine(
            lake,
            self._quarantine,
            feed=self.feed,
            day=self.context.day,
            run_id=self.context.path_run_id,
        )
        if path is not None:
            self.result.quarantine = str(path.relative_to(lake.root))
        self.ledger.outputs.extend({"path": part} for part in self.result.parts)
        self.ledger.findings.extend(self.result.findings)
        return self.result


def save_report_for(context: RunContext, report: ValidationReport, source_sha256: str) -> str:
    """Save one payload's validation report in the run's folder; return its lake path."""
    lake = context.lake
    name = f"{report.dataset}.{report.feed or 'all'}.{source_sha256[:12]}.json"
    target = lake.run_dir(context.path_run_id) / "validation" / name
    lake.write_json(target, report.to_dict())
    return str(target.relative_to(lake.root))
