"""Master data (``master/``) and the sponsor's enrollment register (``sponsor/``)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from cmohub.sandbox.program import Journey
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_iso
from cmohub.sandbox.world import (
    COURIER_HUB_FIN,
    COURIERS,
    MATERIAL_BY_CODE,
    SITES,
    OperatorRoster,
    SandboxLot,
)
from cmohub.sandbox.writers.common import Tally, csv_row

ENROLLMENTS = "sponsor/enrollments.ndjson"
SITE_HEADER = ("fin", "site_name", "kind", "time_zone", "sgln", "pgln")
COURIER_HEADER = ("courier", "courier_name", "pgln", "hub_fin", "logger_data")
LOT_HEADER = (
    "material_code",
    "material_name",
    "lot_number",
    "supplier",
    "manufactured_on",
    "expiry_on",
)


def render_enrollment(j: Journey) -> str:
    p = j.patient
    record = {
        "therapy_event": j.therapy_event,
        "subject": {"system": p.mrn_system, "value": p.mrn},
        "demographics": {
            "family": p.family,
            "given": p.given,
            "birth_date": p.birth_date.isoformat(),
        },
        "coi": j.coi,
        "product_code": j.product,
        "site": j.site.fin,
        "enrolled_at": local_iso(j.enrolled_at, j.site.time_zone),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_master(
    tree: TreeWriter,
    tally: Tally,
    lots: Iterable[SandboxLot],
    rosters: Iterable[OperatorRoster],
) -> None:
    sites = [csv_row(SITE_HEADER, newline="\n")]
    for s in SITES:
        sites.append(
            csv_row([s.fin, s.name, s.kind.value, s.time_zone, s.sgln, s.pgln], newline="\n")
        )
    tree.write("master/sites.csv", "".join(sites))
    tally.sources["master.sites"] += len(sites) - 1
    couriers = [csv_row(COURIER_HEADER, newline="\n")]
    for c in COURIERS:
        couriers.append(
            csv_row([c.code, c.name, c.pgln, COURIER_HUB_FIN, c.logger_export], newline="\n")
        )
    tree.write("master/couriers.csv", "".join(couriers))
    lines = [csv_row(LOT_HEADER, newline="\n")]
    for lot in lots:
        r = lot.record
        lines.append(
            csv_row(
                [
                    r.material_code,
                    MATERIAL_BY_CODE[r.material_code].name,
                    r.lot_number,
                    r.supplier,
                    lot.manufactured_on.isoformat(),
                    r.expiry_on.isoformat(),
                ],
                newline="\n",
            )
        )
    tree.write("master/reagent_lots.csv", "".join(lines))
    tally.sources["master.reagent_lots"] += len(lines) - 1
    operators = []
    for roster in rosters:
        for operator in (*roster.operators, *roster.trainees):
            certs = [c for c in roster.certifications if c.operator_id == operator]
            operators.append(
                {
                    "operator_id": operator,
                    "cmo": roster.cmo,
                    "role": "trainee" if operator in roster.trainees else "operator",
                    "certifications": [
                        {
                            "step_code": c.step_code,
                            "certified_from": c.certified_from.isoformat(),
                            "certified_until": c.certified_until.isoformat(),
                        }
                        for c in certs
                    ],
                }
            )
            tally.sources["master.certifications"] += len(certs)
    tree.write("master/operators.json", json.dumps({"operators": operators}, indent=1) + "\n")
