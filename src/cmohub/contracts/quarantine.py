"""Write quarantined records and validation reports to the lake (I/O).

Quarantine files are JSON Lines under ``Lake.quarantine_dir(feed=, day=, run_id=)``, one line
per rejected record::

    {"run_id": ..., "feed": ..., "dataset": ..., "code": "COI_CHECK_INVALID",
     "rule": "coi.check_character", "field": "coi", "reasons": [...],
     "source_sha256": "<raw file>", "source_locator": "row=12", "key": {"batch_id": "B-1"}}

A line never holds a value of a classified property: ``key`` keeps only public/internal key
properties, and the record itself is replayed from ``raw/`` through its source reference.
Validation reports are saved as JSON under ``runs/<run_id>/validation/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from upath import UPath

from cmohub.contracts.report import QuarantineEntry, ValidationReport
from cmohub.lake import Lake


def quarantine_path(lake: Lake, *, feed: str, day: date, run_id: str) -> UPath:
    """The feed's quarantine file for one run (a feed maps into one dataset)."""
    return lake.quarantine_dir(feed=feed, day=day, run_id=run_id) / "records.jsonl"


def write_quarantine(
    lake: Lake,
    entries: Sequence[QuarantineEntry],
    *,
    feed: str,
    day: date,
    run_id: str,
) -> UPath | None:
    """Write ``entries`` as JSON Lines; return the file written (None when nothing to write)."""
    if not entries:
        return None
    target = quarantine_path(lake, feed=feed, day=day, run_id=run_id)
    lake.write_jsonl(target, [entry.to_dict(run_id=run_id, feed=feed) for entry in entries])
    return target


def report_path(lake: Lake, report: ValidationReport) -> UPath:
    feed = report.feed or "all"
    return lake.run_dir(report.run_id) / "validation" / f"{report.dataset}.{feed}.json"


def save_report(lake: Lake, report: ValidationReport) -> UPath:
    """Save ``report`` as JSON in the run's folder; return its path."""
    target = report_path(lake, report)
    lake.write_json(target, report.to_dict())
    return target
