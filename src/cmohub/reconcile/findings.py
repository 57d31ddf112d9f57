"""Findings that do not come from the table rules (pure).

* cold chain — :mod:`cmohub.coldchain` computes excursion budgets, logger gaps and the custody
  ledger; each exceeded budget, gappy leg and broken custody chain becomes one finding;
* ingest — every quarantined record becomes a finding: a COI whose check character is wrong
  (``COI_CHECK_INVALID``), a COI the vault never issued (``COI_UNKNOWN``), anything else that
  could not be used (``RECORD_MALFORMED``); every re-delivered file (same SHA-256) becomes a
  ``FILE_DUPLICATE``. Quarantine entries carry no classified values, so neither do these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from cmohub.coldchain.custody import CustodyLedger
from cmohub.coldchain.excursions import ExcursionReport
from cmohub.coldchain.gaps import GapReport
from cmohub.reconcile.catalog import RuleCode
from cmohub.reconcile.rules import RuleFinding, finding_key


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def excursion_findings(report: ExcursionReport) -> list[RuleFinding]:
    """One TEMPERATURE_EXCURSION per shipment whose minutes outside exceed its budget."""
    findings = []
    episodes = report.episodes.to_pylist()
    for row in report.shipments.to_pylist():
        if not row["exceeded"]:
            continue
        own = [e for e in episodes if e["shipment_id"] == row["shipment_id"]]
        peak = max((e["peak_celsius"] for e in own), key=abs, default=None)
        findings.append(
            RuleFinding(
                RuleCode.TEMPERATURE_EXCURSION,
                finding_key(shipment_id=row["shipment_id"]),
                f"{row['minutes_outside']:.0f} min outside {row['class_code']} on shipment "
                f"{row['shipment_id']} ({row['material']}), budget {row['budget_minutes']:.0f} min",
                {
                    "minutes_outside": row["minutes_outside"],
                    "budget_minutes": row["budget_minutes"],
                    "class_code": row["class_code"],
                    "lower_celsius": row["lower_celsius"],
                    "upper_celsius": row["upper_celsius"],
                    "episodes": row["episodes"],
                    "peak_celsius": peak,
                    "legs": sorted({e["leg_no"] for e in own}),
                },
                coi=row["coi"],
                shipment_id=row["shipment_id"],
            )
        )
    return findings


def logger_gap_findings(report: GapReport, cois: Mapping[str, str]) -> list[RuleFinding]:
    """One LOGGER_GAP per leg whose logger fell silent for longer than allowed."""
    return [
        RuleFinding(
            RuleCode.LOGGER_GAP,
            finding_key(
                shipment_id=row["shipment_id"], leg_no=row["leg_no"], logger_id=row["logger_id"]
            ),
            f"logger {row['logger_id']} on leg {row['leg_no']} of shipment {row['shipment_id']}: "
            f"{row['gaps']} gap(s), the longest {row['longest_gap_minutes']:.0f} min "
            f"(limit {report.max_gap_minutes:.0f} min)",
            {
                "gaps": row["gaps"],
                "longest_gap_minutes": row["longest_gap_minutes"],
                "readings": row["readings"],
            },
            coi=cois.get(row["shipment_id"]),
            shipment_id=row["shipment_id"],
        )
        for row in report.legs.to_pylist()
    ]


def custody_findings(ledger: CustodyLedger) -> list[RuleFinding]:
    """One finding per shipment and custody rule (CUSTODY_GAP, CUSTODY_WRONG_SITE)."""
    by_shipment: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in ledger.findings.to_pylist():
        if row["rule"] in (RuleCode.CUSTODY_GAP.value, RuleCode.CUSTODY_WRONG_SITE.value):
            by_shipment.setdefault((row["rule"], row["shipment_id"]), []).append(row)
    findings = []
    for (rule, shipment_id), rows in sorted(by_shipment.items()):
        findings.append(
            RuleFinding(
                RuleCode(rule),
                finding_key(shipment_id=shipment_id),
                f"shipment {shipment_id}: " + "; ".join(r["detail"] for r in rows),
                {
                    "findings": [
                        {
                            "code": r["code"],
                            "leg_no": r["leg_no"],
                            "at": _iso(r["at"]),
                            "event_id": r["event_id"],
                        }
                        for r in rows
                    ]
                },
                coi=rows[0]["coi"],
                shipment_id=shipment_id,
            )
        )
    return findings


_INGEST_RULES = {
    "COI_CHECK_INVALID": RuleCode.COI_CHECK_INVALID,
    "COI_UNKNOWN": RuleCode.COI_UNKNOWN,
}


#: How a person calls a record of each dataset.
RECORD_NAMES = {
    "logistics.custody_event": "custody event",
    "logistics.temperature_reading": "temperature reading",
    "logistics.shipment": "shipment",
    "logistics.shipment_leg": "shipment leg",
    "manufacturing.batch": "batch record",
    "manufacturing.batch_step": "batch step",
    "manufacturing.material_consumption": "material consumption",
    "manufacturing.deviation": "deviation",
    "manufacturing.environmental_monitoring": "EM sample",
    "quality.qc_result": "QC result",
    "quality.release_decision": "release decision",
    "clinical.order": "order",
    "clinical.collection": "collection",
    "clinical.infusion": "infusion",
}
#: Why, in words, for the codes a quality person sees most.
REASONS = {
    "COI_CHECK_INVALID": "its COI's check character does not match (corrupted in transit?)",
    "COI_UNKNOWN": "its COI was never issued by the sponsor's vault",
}


def quarantine_findings(
    entries: Iterable[Mapping[str, Any]], file_names: Mapping[str, str]
) -> list[RuleFinding]:
    """One finding per quarantined record; ``file_names`` maps a payload SHA-256 to its name."""
    findings = []
    for entry in entries:
        codes = [r["code"] for r in entry.get("reasons", [])] or [entry["code"]]
        rule = next(
            (_INGEST_RULES[c] for c in codes if c in _INGEST_RULES), RuleCode.RECORD_MALFORMED
        )
        sha = entry.get("source_sha256")
        file = file_names.get(sha, sha[:12] if sha else None) if sha else None
        key = dict(entry.get("key") or {})
        plain = {k: v for k, v in key.items() if isinstance(v, (str, int))}
        dataset = str(entry.get("dataset") or "")
        # The most human name first: the source's own ID, then the record's key.
        ident = next(
            (str(plain[k]) for k in ("source_event_id", "control_id", "id") if k in plain), None
        )
        ident = ident or next((str(v) for k, v in sorted(plain.items()) if k != "event_id"), None)
        locator = str(entry.get("source_locator") or "")
        where = f"{locator} of {file}" if file in file_names.values() else locator
        what = RECORD_NAMES.get(dataset, f"{dataset} record")
        why = REASONS.get(rule.value) or "could not be read (" + ", ".join(codes) + ")"
        findings.append(
            RuleFinding(
                rule,
                finding_key(
                    feed=entry.get("feed"),
                    source=sha,
                    locator=entry.get("source_locator"),
                    file=file,
                    **plain,
                ),
                f"{what} {ident + ' ' if ident else ''}({where}, feed {entry.get('feed')}) "
                f"quarantined: {why}",
                {
                    "dataset": dataset,
                    "codes": codes,
                    "field": entry.get("field"),
                    "rule": entry.get("rule"),
                    "locator": entry.get("source_locator"),
                },
                batch_id=key.get("batch_id") if isinstance(key.get("batch_id"), str) else None,
            )
        )
    return findings


def duplicate_file_findings(deliveries: Sequence[Mapping[str, Any]]) -> list[RuleFinding]:
    """One FILE_DUPLICATE per later sighting of a file already registered.

    ``deliveries`` are sightings ``{sha256, feed, name, seen_at, first_name}`` in time order.
    """
    first: dict[str, Mapping[str, Any]] = {}
    findings = []
    for sighting in deliveries:
        sha = sighting["sha256"]
        if sha not in first:
            first[sha] = sighting
            continue
        original = first[sha]
        if sighting["name"] == original["name"] and sighting.get("run_id") == original.get(
            "run_id"
        ):
            continue  # the same delivery read twice in one run is not a re-delivery
        findings.append(
            RuleFinding(
                RuleCode.FILE_DUPLICATE,
                finding_key(file=sighting["name"], sha256=sha),
                f"{sighting['name']} from {sighting['feed']} has the same content as "
                f"{original['name']} (received {_iso(original['seen_at'])}); registered once",
                {
                    "original": original["name"],
                    "seen_at": _iso(sighting["seen_at"]),
                    "first_seen_at": _iso(original["seen_at"]),
                },
            )
        )
    return findings


def key_of(evidence_json: str) -> dict[str, Any]:
    """The identifying keys of an ``exceptions`` row (stored in its evidence)."""
    data = json.loads(evidence_json)
    return dict(data.get("key", {})) if isinstance(data, dict) else {}


def shipment_cois(shipments: pa.Table) -> dict[str, str]:
    return {
        str(r["shipment_id"]): str(r["coi"])
        for r in shipments.select(["shipment_id", "coi"]).to_pylist()
        if r["coi"]
    }
