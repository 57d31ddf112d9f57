"""The chain-of-custody dossier of one COI, from a published release alone (pure).

Answers the inspector's question "show me the chain of custody for this patient's batch":
the journey's milestones; every custody event and handoff with its local time and parties;
the temperature curve of every leg against the product's class, with its excursions; the
batch record — steps with suite, operator and whether the operator was certified, reagent lots
with expiry, deviations, environmental monitoring of its suites while its steps ran; QC results
judged against the specification version in force on each test date; the release decision;
the infusion; and every open exception. Time-stamped, attributed, and without any patient
identifier (a release holds none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import pyarrow as pa
import pyarrow.compute as pc

from cmohub.errors import InputError
from cmohub.identifiers import format_coi, parse_coi
from cmohub.publish.svg import Band, Marker, Series, Span, TimeChart, render_time_chart
from cmohub.reconcile.catalog import RULES, RuleCode

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cmohub.publish", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    keep_trailing_newline=True,
)


@dataclass
class Section:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # per row: "flag" (review it), "handoff", ""
    note: str = ""

    def add(self, *cells: Any, flag: bool = False, mark: str = "") -> None:
        self.rows.append(tuple(_text(c) for c in cells))
        self.classes.append("flag" if flag else mark)


@dataclass
class DossierData:
    coi: str
    coi_display: str
    product: str
    status: str
    release: str
    facts: list[tuple[str, str]]
    sections: list[Section]
    charts: list[tuple[str, str]]  # (title, svg)
    exceptions: list[dict[str, str]]


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:g}"
    return str(value)


def _rows(table: pa.Table, column: str, values: Any) -> list[dict[str, Any]]:
    if table.num_rows == 0:
        return []
    value_set = pa.array(sorted(values) if isinstance(values, (set, list)) else [values])
    rows: list[dict[str, Any]] = table.filter(
        pc.is_in(table[column], value_set=value_set)
    ).to_pylist()
    return rows


def _local(moment: datetime | None, offset: str | None = None, zone: str | None = None) -> str:
    if moment is None:
        return "—"
    if offset:
        sign = -1 if offset.startswith("-") else 1
        hours, _, minutes = offset.lstrip("+-").partition(":")
        tz = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))
        return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M ") + offset
    if zone:
        return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
    return _text(moment)


def _certified(
    certs: list[dict[str, Any]], operator: str, step: str, cmo: str, when: datetime
) -> bool:
    day = when.astimezone(UTC).date()
    return any(
        c["operator_id"] == operator
        and c["step_code"] == step
        and c["cmo"] == cmo
        and c["certified_from"] <= day < c["certified_until"]
        for c in certs
    )


def _spec_for(
    specs: list[dict[str, Any]], product: str, test: str, day: date
) -> dict[str, Any] | None:
    for s in specs:
        if (
            s["product_code"] == product
            and s["test_code"] == test
            and s["effective_from"] <= day
            and (s["effective_to"] is None or day < s["effective_to"])
        ):
            return s
    return None


def dossier_data(coi_text: str, tables: Mapping[str, pa.Table], *, release: str) -> DossierData:
    """Gather what the dossier of ``coi_text`` shows from the tables of one release."""
    coi = str(parse_coi(coi_text))
    journey = _rows(tables["coi_journey"], "coi", coi)
    if not journey:
        raise InputError(f"COI {coi} is not in release {release}", code="DOSSIER_COI_UNKNOWN")
    j = journey[0]
    sites = {r["fin"]: r for r in tables["master.site"].to_pylist()}
    zone_of = {fin: r.get("time_zone") for fin, r in sites.items()}
    site_name = {fin: f"{fin} {r.get('site_name') or ''}".strip() for fin, r in sites.items()}
    party_name = {r.get("pgln"): fin for fin, r in sites.items() if r.get("pgln")}
    location_name = {r.get("sgln"): fin for fin, r in sites.items() if r.get("sgln")}
    sections: list[Section] = []

    milestones = Section("Journey", ("Milestone", "When (UTC)"))
    for label, key in (
        ("Ordered", "ordered_at"),
        ("Collected (apheresis)", "collected_at"),
        ("Received at CMO", "received_at_cmo"),
        ("Batch started", "batch_started_at"),
        ("Released", "released_at"),
        ("Shipped to site", "shipped_at"),
        ("Infused", "infused_at"),
    ):
        milestones.add(label, j.get(key))
    sections.append(milestones)

    collections = _rows(tables["clinical.collection"], "coi", coi)
    orders = _rows(tables["clinical.order"], "coi", coi)
    clinical = Section("Order and collection", ("Record", "ID", "Site", "When (local)", "Detail"))
    for o in orders:
        clinical.add(
            "order",
            o["order_id"],
            site_name.get(o["ordering_site"], o["ordering_site"]),
            _local(o["ordered_at"], zone=zone_of.get(o["ordering_site"])),
            o["status"],
        )
    for c in collections:
        clinical.add(
            "collection",
            c["collection_id"],
            site_name.get(c["site"], c["site"]),
            _local(c["collected_at"], zone=zone_of.get(c["site"])),
            f"DIN {c['din']}, {c.get('volume_ml') or '—'} mL",
        )
    sections.append(clinical)

    shipments = sorted(
        _rows(tables["logistics.shipment"], "coi", coi), key=lambda s: s["booked_at"]
    )
    shipment_ids = {s["shipment_id"] for s in shipments}
    legs = sorted(
        _rows(tables["logistics.shipment_leg"], "shipment_id", shipment_ids),
        key=lambda leg: (leg["shipment_id"], leg["leg_no"]),
    )
    events = sorted(
        _rows(tables["logistics.custody_event"], "coi", coi), key=lambda e: e["event_time"]
    )
    custody = Section(
        "Custody events and handoffs",
        ("When (local, as recorded)", "Step", "Where", "From", "To", "Shipment", "Disposition"),
    )
    courier_of = {s["shipment_id"]: s["courier"] for s in shipments}

    def party(uri: str | None, shipment: str | None) -> str | None:
        """A site's FIN, or the shipment's courier for a party that is not a site."""
        if uri is None or uri in party_name:
            return party_name.get(uri) if uri else None
        return f"courier {courier_of[shipment]}" if shipment in courier_of else uri

    for e in events:
        handoff = bool(e.get("source_party") and e.get("destination_party"))
        custody.add(
            _local(e["event_time"], e.get("event_time_zone_offset")),
            e["biz_step"],
            location_name.get(
                e.get("biz_location") or e.get("read_point"), e.get("biz_location") or "—"
            ),
            party(e.get("source_party"), e.get("shipment_id")),
            party(e.get("destination_party"), e.get("shipment_id")),
            e.get("shipment_id"),
            e.get("disposition"),
            mark="handoff" if handoff else "",
        )
    custody.note = "Blue rows are handoffs: possession passes from one party to another."
    sections.append(custody)

    leg_section = Section(
        "Shipment legs", ("Shipment", "Kind", "Leg", "From", "To", "Departed", "Arrived", "Logger")
    )
    kinds = {s["shipment_id"]: s["kind"] for s in shipments}
    for leg in legs:
        leg_section.add(
            leg["shipment_id"],
            kinds.get(leg["shipment_id"]),
            leg["leg_no"],
            site_name.get(leg["origin"], leg["origin"]),
            site_name.get(leg["destination"], leg["destination"]),
            _local(leg["departed_at"], zone=zone_of.get(leg["origin"])),
            _local(leg["arrived_at"], zone=zone_of.get(leg["destination"])),
            leg["logger_id"],
        )
    sections.append(leg_section)

    # Temperature curves, one per leg, against the product's class for that material.
    products = {p["product_code"]: p for p in tables["master.product"].to_pylist()}
    product = products.get(j.get("product_code") or "", {})
    excursions = [e for e in tables["excursions"].to_pylist() if e["shipment_id"] in shipment_ids]
    readings = tables["logistics.temperature_reading"]
    charts: list[tuple[str, str]] = []
    for leg in legs:
        own = readings.filter(
            pc.and_(
                pc.equal(readings["logger_id"], leg["logger_id"]),
                pc.equal(readings["shipment_id"], leg["shipment_id"]),
            )
        ).sort_by("observed_at")
        if own.num_rows == 0:
            continue
        kind = kinds.get(leg["shipment_id"])
        cls = (
            product.get(
                "finished_product_class"
                if kind == "finished_product"
                else "starting_material_class"
            )
            or {}
        )
        spans = [
            Span(e["started_at"], e["ended_at"], f"{e['duration_minutes']:g} min outside")
            for e in excursions
            if e["shipment_id"] == leg["shipment_id"] and e["leg_no"] == leg["leg_no"]
        ]
        chart = TimeChart(
            series=[
                Series(
                    f"logger {leg['logger_id']}",
                    own["observed_at"].to_pylist(),
                    own["celsius"].to_pylist(),
                )
            ],
            bands=[Band(cls.get("lower_celsius"), cls.get("upper_celsius"), cls.get("code") or "")],
            spans=spans,
            markers=[Marker(leg["departed_at"], f"departed {leg['origin']}")]
            + (
                [Marker(leg["arrived_at"], f"arrived {leg['destination']}")]
                if leg["arrived_at"]
                else []
            ),
            time_zone=zone_of.get(leg["origin"]) or "UTC",
            y_label="°C",
            height=260,
            description=f"Temperature of {leg['shipment_id']} leg {leg['leg_no']}",
        )
        charts.append(
            (f"{leg['shipment_id']} leg {leg['leg_no']} ({kind})", render_time_chart(chart))
        )

    batches = _rows(tables["manufacturing.batch"], "coi", coi)
    batch_ids = {b["batch_id"] for b in batches}
    certs = tables["master.certified_operator"].to_pylist()
    batch_section = Section(
        "Batch", ("Batch", "CMO", "DIN consumed", "Started", "Completed", "Status")
    )
    for b in batches:
        batch_section.add(
            b["batch_id"],
            site_name.get(b["cmo"], b["cmo"]),
            b["din"],
            b["started_at"],
            b["completed_at"],
            b["status"],
        )
    sections.append(batch_section)
    cmo_of = {b["batch_id"]: b["cmo"] for b in batches}
    steps = sorted(
        _rows(tables["manufacturing.batch_step"], "batch_id", batch_ids),
        key=lambda s: (s["batch_id"], s["step_no"]),
    )
    step_section = Section(
        "Batch steps", ("Step", "Code", "Suite", "Operator", "Certified", "Start", "End")
    )
    for s in steps:
        ok = _certified(
            certs, s["operator_id"], s["step_code"], cmo_of[s["batch_id"]], s["started_at"]
        )
        step_section.add(
            s["step_no"],
            s["step_code"],
            s["suite_id"],
            s["operator_id"],
            ok,
            s["started_at"],
            s["ended_at"],
            flag=not ok,
        )
    sections.append(step_section)
    materials = _rows(tables["manufacturing.material_consumption"], "batch_id", batch_ids)
    material_section = Section(
        "Reagent lots", ("Step", "Material", "Lot", "Expiry", "Used", "Quantity")
    )
    for m in sorted(materials, key=lambda m: (m["step_no"], m["material_code"])):
        expired = m["expiry_on"] < m["used_at"].astimezone(UTC).date()
        material_section.add(
            m["step_no"],
            m["material_code"],
            m["lot_number"],
            m["expiry_on"],
            m["used_at"],
            f"{m['quantity']:g} {m['unit']}",
            flag=expired,
        )
    sections.append(material_section)
    deviations = _rows(tables["manufacturing.deviation"], "batch_id", batch_ids)
    deviation_section = Section(
        "Deviations", ("ID", "Class", "Patient impact", "Category", "Opened", "Closed", "Status")
    )
    for d in deviations:
        deviation_section.add(
            d["deviation_id"],
            d["classification"],
            d["patient_impact"],
            d["category"],
            d["opened_at"],
            d["closed_at"],
            d["status"],
            flag=d["patient_impact"] and d["status"] == "open",
        )
    if not deviations:
        deviation_section.note = "No deviation was raised against this batch."
    sections.append(deviation_section)
    em = tables["manufacturing.environmental_monitoring"].to_pylist()
    em_section = Section(
        "Environmental monitoring of its suites while its steps ran",
        ("Step", "Suite", "Sample", "Kind", "Value", "Alert", "Action", "Sampled"),
    )
    for s in steps:
        for sample in em:
            if (
                sample["suite_id"] == s["suite_id"]
                and sample["cmo"] == cmo_of[s["batch_id"]]
                and s["started_at"] <= sample["sampled_at"] <= s["ended_at"]
            ):
                em_section.add(
                    s["step_no"],
                    sample["suite_id"],
                    sample["sample_id"],
                    sample["kind"],
                    f"{_text(sample['value'])} {sample['unit']}",
                    sample["alert_limit"],
                    sample["action_limit"],
                    sample["sampled_at"],
                    flag=sample["value"] > sample["action_limit"],
                )
    sections.append(em_section)

    specs = tables["specifications"].to_pylist() if "specifications" in tables else []
    qc = sorted(
        _rows(tables["quality.qc_result"], "batch_id", batch_ids),
        key=lambda q: (q["tested_at"], q["test_code"]),
    )
    qc_section = Section(
        "QC results against the specification in force",
        ("Test", "Result", "Tested", "Spec", "Limits", "Within"),
    )
    for q in qc:
        product_code = next(
            (b["product_code"] for b in batches if b["batch_id"] == q["batch_id"]), ""
        )
        spec = _spec_for(specs, product_code, q["test_code"], q["tested_at"].astimezone(UTC).date())
        shown = (
            q["value_text"] if q["value"] is None else f"{q['value']:g} {q['unit'] or ''}".strip()
        )
        if spec is None:
            qc_section.add(
                q["test_code"], shown, q["tested_at"], "—", "not in the version in force", "—"
            )
            continue
        if spec["allowed_text"] is not None:
            limits = " / ".join(spec["allowed_text"])
            within = (q["value_text"] or "").strip().lower() in spec["allowed_text"]
        else:
            low, high = spec["lower"], spec["upper"]
            limits = " and ".join(
                x
                for x in (
                    f"≥ {low:g}" if low is not None else "",
                    f"≤ {high:g}" if high is not None else "",
                )
                if x
            )
            value = q["value"]
            within = (
                value is not None
                and (low is None or value >= low)
                and (high is None or value <= high)
            )
        qc_section.add(
            q["test_code"],
            shown,
            q["tested_at"],
            f"v{spec['version']}",
            limits,
            within,
            flag=not within,
        )
    sections.append(qc_section)

    releases = _rows(tables["quality.release_decision"], "coi", coi)
    release_section = Section(
        "Release decision", ("Batch", "Decision", "When", "By (QP)", "Spec version")
    )
    for r in releases:
        release_section.add(
            r["batch_id"],
            r["decision"],
            r["decided_at"],
            r["decided_by"],
            f"v{r['spec_version']}" if r["spec_version"] else "—",
        )
    sections.append(release_section)
    infusions = _rows(tables["clinical.infusion"], "coi", coi)
    infusion_section = Section("Infusion", ("ID", "Batch", "Site", "When (local)", "Status"))
    for i in infusions:
        infusion_section.add(
            i["infusion_id"],
            i["batch_id"],
            site_name.get(i["site"], i["site"]),
            _local(i["infused_at"], zone=zone_of.get(i["site"])),
            i["status"],
        )
    sections.append(infusion_section)

    exceptions = []
    ex_table = tables["exceptions"]
    for row in ex_table.to_pylist():
        if row["coi"] == coi or row["batch_id"] in batch_ids or row["shipment_id"] in shipment_ids:
            evidence = json.loads(row["evidence_json"])
            exceptions.append(
                {
                    "severity": row["severity"],
                    "rule": row["rule_code"],
                    "title": RULES[RuleCode(row["rule_code"])].title,
                    "description": row["description"],
                    "id": row["exception_id"],
                    "key": ", ".join(
                        f"{k}={v}" for k, v in sorted(evidence.get("key", {}).items())
                    ),
                }
            )
    facts = [
        ("Product", j.get("product_code") or "—"),
        ("Status", (j.get("status") or "").replace("_", " ")),
        ("Batch", j.get("batch_id") or "—"),
        (
            "Vein-to-vein",
            f"{j['vein_to_vein_days']:g} days" if j.get("vein_to_vein_days") is not None else "—",
        ),
        ("Open exceptions", str(len(exceptions))),
        ("Release", release),
    ]
    return DossierData(
        coi=coi,
        coi_display=format_coi(parse_coi(coi)),
        product=j.get("product_code") or "",
        status=j.get("status") or "",
        release=release,
        facts=facts,
        sections=sections,
        charts=charts,
        exceptions=exceptions,
    )


def render_dossier(data: DossierData) -> str:
    """One self-contained HTML page (inline CSS and SVG, no script)."""
    return _ENV.get_template("dossier.html.j2").render(d=data)
