"""The privacy officer's audit report: who re-identified whom, when and why; what changed.

Built from audit records (:meth:`cmohub.vault.Vault.audit_records`), never from the vault's
data: it contains COIs, actors, purposes and tickets, and no identifier value. Sections:

============== ===================================================================
``access``     every reveal (granted, unknown, withdrawn, decrypt failed) and every refusal
``keys``       key rotations
``withdrawal`` consent withdrawals
``merge``      identity merges and refused merges
``enrollment`` enrollment imports and conflicts
``tokenize``   tokenizations per UTC day and feed (requests, new COIs, linkage mismatches)
``export``     who read the audit log, and who backed the vault up
``restore``    restores from a backup: which file, what it replaced, how many COIs it lost
============== ===================================================================

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @``) are prefixed
with ``'``; HTML is escaped.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from jinja2 import Environment

from cmohub.vault.audit import AuditVerification
from cmohub.vault.results import AuditRecord

COLUMNS = (
    "section",
    "seq",
    "time",
    "day",
    "event",
    "actor",
    "role",
    "feed",
    "coi",
    "purpose",
    "ticket",
    "outcome",
    "code",
    "requests",
    "new",
    "details",
)
_SECTIONS = {
    "reveal": "access",
    "refuse": "access",
    "rotate": "keys",
    "withdraw": "withdrawal",
    "merge": "merge",
    "enroll": "enrollment",
    "export": "export",
    "restore": "restore",
}
SECTION_TITLES = {
    "access": "Re-identification: every reveal and every refusal",
    "keys": "Key rotations",
    "withdrawal": "Consent withdrawals",
    "merge": "Identity merges",
    "enrollment": "Enrollment imports",
    "tokenize": "Tokenizations per day and feed",
    "export": "Audit log exports and backups",
    "restore": "Restores from a backup",
}


@dataclass(frozen=True, slots=True)
class AuditReport:
    since: date
    until: date | None
    verification: AuditVerification | None
    rows: list[dict[str, Any]]

    def section(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["section"] == name]


def _details(record: AuditRecord) -> dict[str, Any]:
    try:
        data = json.loads(record.details)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def build_report(
    records: Sequence[AuditRecord],
    *,
    since: date,
    until: date | None = None,
    verification: AuditVerification | None = None,
) -> AuditReport:
    rows: list[dict[str, Any]] = []
    per_day: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"requests": 0, "new": 0, "batches": 0, "linkage_mismatches": 0}
    )
    for record in records:
        details = _details(record)
        if record.event == "tokenize":
            bucket = per_day[(record.at[:10], record.feed or record.actor)]
            bucket["batches"] += 1
            bucket["requests"] += int(details.get("requests", 0))
            bucket["new"] += int(details.get("new", 0))
            bucket["linkage_mismatches"] += int(details.get("linkage_mismatches", 0))
            continue
        section = _SECTIONS.get(record.event)
        if section is None:
            continue  # lookup / verify / init batches carry counts only; not a report item
        code = details.pop("code", None)
        rows.append(
            {
                "section": section,
                "seq": record.seq,
                "time": record.at,
                "day": record.at[:10],
                "event": record.event,
                "actor": record.actor,
                "role": record.role,
                "feed": record.feed or "",
                "coi": record.coi or "",
                "purpose": record.purpose or "",
                "ticket": record.ticket or "",
                "outcome": record.outcome,
                "code": code or "",
                "requests": "",
                "new": "",
                "details": json.dumps(details, sort_keys=True) if details else "",
            }
        )
    for (day, feed), counts in sorted(per_day.items()):
        mismatches = counts["linkage_mismatches"]
        rows.append(
            {
                "section": "tokenize",
                "seq": "",
                "time": "",
                "day": day,
                "event": "tokenize",
                "actor": "",
                "role": "",
                "feed": feed,
                "coi": "",
                "purpose": "",
                "ticket": "",
                "outcome": "",
                "code": "",
                "requests": counts["requests"],
                "new": counts["new"],
                "details": json.dumps(
                    {"batches": counts["batches"], "linkage_mismatches": mismatches},
                    sort_keys=True,
                ),
            }
        )
    return AuditReport(since, until, verification, rows)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_csv(report: AuditReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>cmohub vault audit report {{ since }}{% if until %} to {{ until }}{% endif %}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 2rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
.refused, .tampered { color: #a00; font-weight: bold; }
.intact { color: #070; font-weight: bold; }
</style></head><body>
<h1>Vault audit report</h1>
<p>Period: from {{ since }} (UTC){% if until %} to before {{ until }}{% endif %}.
{% if verification %}Audit log: <span class="{{ verification.status.value }}">
{{ verification.status.value }}</span> ({{ verification.reason }}).{% endif %}</p>
{% for name, title in sections %}
<h2>{{ title }}</h2>
{% set rows = report.section(name) %}
{% if rows %}
<table><tr>{% for c in columns[name] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in columns[name] %}
<td{% if r[c] in ("refused", "conflict", "decrypt_failed") %} class="refused"{% endif %}>
{{ r[c] }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}<p>None in this period.</p>{% endif %}
{% endfor %}
</body></html>
"""
_EVENT_COLUMNS = ["seq", "time", "actor", "role", "coi", "purpose", "ticket", "outcome", "code"]
_HTML_COLUMNS = {
    "access": _EVENT_COLUMNS,
    "keys": ["seq", "time", "actor", "role", "purpose", "outcome", "details"],
    "withdrawal": _EVENT_COLUMNS,
    "merge": ["seq", "time", "actor", "role", "feed", "purpose", "outcome", "code", "details"],
    "enrollment": ["seq", "time", "actor", "feed", "coi", "outcome", "code", "details"],
    "tokenize": ["day", "feed", "requests", "new", "details"],
    "export": ["seq", "time", "actor", "role", "details"],
    "restore": ["seq", "time", "actor", "role", "details"],
}


def render_html(report: AuditReport) -> str:
    template = Environment(autoescape=True).from_string(_HTML)
    return template.render(
        report=report,
        since=report.since.isoformat(),
        until=report.until.isoformat() if report.until else None,
        verification=report.verification,
        sections=list(SECTION_TITLES.items()),
        columns=_HTML_COLUMNS,
    )
