"""The nightly report: one self-contained HTML page a person reads every morning (pure).

Summary (as of when, what was reconciled, how many COIs where), exceptions ranked by severity
with their evidence and links to the excursion decision packets, the temperature curves of the
excursions against their limits, the feed scorecard, and how every dataset fared against its
contract. Inline CSS and SVG, no script, no external asset; the same inputs give the same bytes.
It names COIs, batches, shipments and loggers — never a patient identifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import pyarrow as pa

from cmohub.publish.svg import PALETTE, Bar, render_bar_chart
from cmohub.reconcile.catalog import RULES, RuleCode, Severity

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cmohub.publish", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    keep_trailing_newline=True,
)
SEVERITY_COLORS = {
    "critical": "#b3261e",
    "major": "#c26a00",
    "minor": "#7a4f9e",
    "info": "#5f6368",
}
STATUS_ORDER = (
    "infused",
    "shipped_to_site",
    "released",
    "in_manufacturing",
    "at_cmo",
    "collected",
    "ordered",
    "rejected",
    "unknown",
)


@dataclass(frozen=True)
class ExcursionView:
    title: str
    packet: str | None
    chart_svg: str
    summary: str


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M UTC"))
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:g}"
    return str(value)


def _exception_rows(
    exceptions: pa.Table, packets_by_shipment: Mapping[str, str]
) -> dict[str, list[dict[str, Any]]]:
    by_severity: dict[str, list[dict[str, Any]]] = {
        str(s): [] for s in sorted(Severity, reverse=True)
    }
    for row in exceptions.to_pylist():
        info = RULES[RuleCode(row["rule_code"])]
        evidence = json.loads(row["evidence_json"])
        by_severity[row["severity"]].append(
            {
                "id": row["exception_id"],
                "rule": row["rule_code"],
                "title": info.title,
                "description": row["description"],
                "coi": row["coi"] or "",
                "batch_id": row["batch_id"] or "",
                "shipment_id": row["shipment_id"] or "",
                "packet": packets_by_shipment.get(row["shipment_id"] or ""),
                "evidence": ", ".join(
                    f"{k}: {_fmt(v)}"
                    for k, v in sorted(evidence.items())
                    if k not in ("key", "run_id")
                    and v is not None
                    and not isinstance(v, (list, dict))
                ),
            }
        )
    return {k: v for k, v in by_severity.items() if v}


def render_report(
    *,
    release: str,
    header: Mapping[str, Any],
    datasets: Mapping[str, pa.Table],
    packets: Mapping[str, str],
    excursion_charts: Mapping[str, str] | None = None,
) -> str:
    """The report of one release. ``packets``: packet name -> path relative to the report;
    ``excursion_charts``: packet name -> its temperature chart (SVG)."""
    exceptions = datasets["exceptions"]
    journey = datasets["coi_journey"]
    packets_by_shipment = {name.split("-")[0]: path for name, path in sorted(packets.items())}
    by_rule: dict[str, int] = dict(header.get("exceptions_by_rule", {}))
    rule_bars = [
        Bar(
            RULES[RuleCode(code)].title,
            count,
            color=SEVERITY_COLORS[str(RULES[RuleCode(code)].severity)],
            note=str(RULES[RuleCode(code)].severity),
        )
        for code, count in sorted(
            by_rule.items(), key=lambda kv: (-int(RULES[RuleCode(kv[0])].severity), -kv[1], kv[0])
        )
    ]
    statuses: dict[str, int] = {}
    for status in journey.column("status").to_pylist():
        statuses[status] = statuses.get(status, 0) + 1
    status_bars = [
        Bar(s.replace("_", " "), statuses[s], color=PALETTE[0])
        for s in STATUS_ORDER
        if s in statuses
    ]
    v2v = [v for v in journey.column("vein_to_vein_days").to_pylist() if v is not None]
    v2v_bars = []
    if v2v:
        for low in range(0, int(max(v2v)) + 5, 5):
            count = sum(1 for v in v2v if low <= v < low + 5)
            if count:
                v2v_bars.append(Bar(f"{low}–{low + 5} days", count, color=PALETTE[2]))
    excursions = []
    for row in datasets["excursions"].to_pylist():
        name = next(
            (n for n in sorted(packets) if n.startswith(f"{row['shipment_id']}-{row['leg_no']}-")),
            None,
        )
        excursions.append(
            {
                "shipment_id": row["shipment_id"],
                "leg_no": row["leg_no"],
                "logger_id": row["logger_id"],
                "coi": row.get("coi") or "",
                "started_at": _fmt(row["started_at"]),
                "duration": _fmt(row["duration_minutes"]),
                "peak": _fmt(row["peak_celsius"]),
                "used": _fmt(row["budget_minutes_used"]),
                "left": _fmt(row["budget_minutes_left"]),
                "packet": packets.get(name) if name else None,
                "chart": (excursion_charts or {}).get(name or "", ""),
            }
        )
    severity_counts: dict[str, int] = dict(header.get("exceptions_by_severity", {}))
    validation = [
        {"dataset": name, **info}
        for name, info in sorted(dict(header.get("validation", {})).items())
    ]
    scorecard = datasets["feed_scorecard"].to_pylist()
    checkpoint = header.get("audit_checkpoint") or {}
    signer = header.get("signer") or {}
    facts = [
        ("As of", str(header.get("interval", {}).get("end", ""))),
        ("Interval start", str(header.get("interval", {}).get("start", ""))),
        ("COIs", str(journey.num_rows)),
        ("Infused", str(statuses.get("infused", 0))),
        ("Exceptions", str(exceptions.num_rows)),
        (
            "Critical / major",
            f"{severity_counts.get('critical', 0)} / {severity_counts.get('major', 0)}",
        ),
        (
            "Audit checkpoint",
            f"{checkpoint.get('size', '—')} events, key {str(checkpoint.get('key_id', '—'))[:16]}",
        ),
        ("Signed by", str(signer.get("fingerprint") or "not signed")[-16:]),
        ("cmohub", str(header.get("package_version", ""))),
    ]
    return _ENV.get_template("report.html.j2").render(
        release=release,
        facts=facts,
        severity_counts=severity_counts,
        rule_chart=render_bar_chart(rule_bars),
        status_chart=render_bar_chart(status_bars),
        v2v_chart=render_bar_chart(v2v_bars),
        exceptions=_exception_rows(exceptions, packets_by_shipment),
        excursions=excursions,
        scorecard=scorecard,
        validation=validation,
        recipients=header.get("recipients") or [],
        inputs=header.get("inputs") or {},
        colors=SEVERITY_COLORS,
    )
