"""CMO Acme (A9996): MES, LIMS, EM and release CSV exports in Acme's own vocabulary.

One delivery folder per Acme local day: ``cmo/A9996/<YYYY-MM-DD>/ACME_<KIND>_<YYYYMMDD>.csv``.
Comma-separated, CRLF, a header row, timestamps in Acme's local time with offset
(``2026-01-20T08:15:00-05:00``). The column names and code values are Acme's; the tables
below map them to the canonical ones (``docs/sandbox.md`` repeats them for parser authors).
"""

from __future__ import annotations

from datetime import datetime

from cmohub.domain import Batch, BatchStatus, DeviationStatus, MonitoringKind, QcResult
from cmohub.sandbox.faults import Fault, PlantedFault
from cmohub.sandbox.program import Journey
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_date, local_iso
from cmohub.sandbox.world import ACME_FIN, SITE_BY_FIN
from cmohub.sandbox.writers.common import Tally, csv_row, number

ZONE = SITE_BY_FIN[ACME_FIN].time_zone
HEADERS: dict[str, tuple[str, ...]] = {
    "BATCHES": (
        "Lot Number", "Chain of Identity", "Donation ID", "Product Code", "Start Time",
        "End Time", "Batch Status",
    ),
    "STEPS": (
        "Lot Number", "Step Seq", "Operation", "Room", "Operator Badge", "Start Time", "End Time",
    ),
    "MATERIALS": (
        "Lot Number", "Step Seq", "Item Code", "Item Lot", "Item Expiry", "Issued At", "Qty", "UoM",
    ),
    "DEVIATIONS": (
        "Deviation No", "Lot Number", "Opened", "Closed", "Class", "Patient Impact", "State",
        "Category",
    ),
    "LIMS": (
        "Sample ID", "Lot Number", "Test", "Result", "Units", "Result Status", "Tested At",
    ),
    "EM": (
        "Sample ID", "Room", "Sampled At", "Parameter", "Result", "Units", "Alert Limit",
        "Action Limit",
    ),
    "RELEASE": (
        "Lot Number", "Chain of Identity", "Disposition", "Disposition Time", "QP Badge",
        "Spec Version",
    ),
}  # fmt: skip
OPERATIONS = {
    "selection": "Cell Selection",
    "activation": "T-Cell Activation",
    "transduction": "Transduction",
    "expansion": "Expansion",
    "harvest": "Harvest",
    "formulation": "Formulation & Fill",
}
TESTS = {
    "VIAB": "Viability",
    "CD3": "CD3+",
    "CD8": "CD8+",
    "CARPOS": "CAR+",
    "VCN": "VCN",
    "ENDO": "Endotoxin",
    "STER": "Sterility",
    "MYCO": "Mycoplasma",
    "RCL": "RCL",
}
UNITS = {"%": "%", "{copies}/{cell}": "copies/cell", "[EU]/mL": "EU/mL"}
TEXT_RESULTS = {
    "negative": "Negative",
    "positive": "Positive",
    "not detected": "Not Detected",
    "detected": "Detected",
}
EM_PARAMETERS = {
    MonitoringKind.PARTICLES_0_5: ("NVP 0.5um", "particles/m3"),
    MonitoringKind.PARTICLES_5_0: ("NVP 5.0um", "particles/m3"),
    MonitoringKind.VIABLE_AIR: ("Active Air", "CFU/m3"),
}
BATCH_STATUS = {BatchStatus.COMPLETE: "Complete", BatchStatus.ABORTED: "Aborted"}


def file_path(kind: str, when: datetime) -> str:
    day = local_date(when, ZONE)
    return f"cmo/{ACME_FIN}/{day.isoformat()}/ACME_{kind}_{day:%Y%m%d}.csv"


def ts(when: datetime | None) -> str:
    return local_iso(when, ZONE) if when is not None else ""


def batch_row(b: Batch) -> list[str]:
    return [
        b.batch_id,
        b.coi,
        b.din,
        b.product_code,
        ts(b.started_at),
        ts(b.completed_at),
        BATCH_STATUS[b.status],
    ]


def lims_row(r: QcResult) -> list[str]:
    if r.value is not None:
        result, units = number(r.value), UNITS.get(r.unit or "", r.unit or "")
    else:
        result, units = TEXT_RESULTS[r.value_text or ""], ""
    status = "Final" if r.status.value == "final" else "Preliminary"
    return [r.result_id, r.batch_id, TESTS[r.test_code], result, units, status, ts(r.tested_at)]


class AcmeWriter:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally

    def _row(self, kind: str, when: datetime, values: list[str]) -> tuple[str, int]:
        path = file_path(kind, when)
        line = self.tree.append(path, csv_row(values), header=csv_row(HEADERS[kind]))
        self.tally.sources[f"cmo.{ACME_FIN}.{kind.lower()}"] += 1
        return path, line + 1  # +1: the header is line 1

    def write(self, j: Journey) -> str | None:
        """Write the journey's Acme records; return the file holding its stray batch row."""
        if j.cmo != ACME_FIN:
            return None
        b = j.batch
        assert b.completed_at is not None
        for step in j.steps:
            self._row(
                "STEPS",
                step.ended_at,
                [
                    step.batch_id,
                    str(step.step_no),
                    OPERATIONS[step.step_code],
                    step.suite_id,
                    step.operator_id,
                    ts(step.started_at),
                    ts(step.ended_at),
                ],
            )
        for m in j.materials:
            self._row(
                "MATERIALS",
                m.used_at,
                [
                    m.batch_id,
                    str(m.step_no),
                    m.material_code,
                    m.lot_number,
                    m.expiry_on.isoformat(),
                    ts(m.used_at),
                    number(m.quantity),
                    m.unit,
                ],
            )
        for _, sample in j.monitoring:
            parameter, unit = EM_PARAMETERS[sample.kind]
            self._row(
                "EM",
                sample.sampled_at,
                [
                    sample.sample_id,
                    sample.suite_id,
                    ts(sample.sampled_at),
                    parameter,
                    number(sample.value),
                    unit,
                    number(sample.alert_limit),
                    number(sample.action_limit),
                ],
            )
        self._row("BATCHES", b.completed_at, batch_row(b))
        stray_path = None
        if j.stray_batch is not None:
            assert j.stray_batch.completed_at is not None
            stray_path, _ = self._row(
                "BATCHES", j.stray_batch.completed_at, batch_row(j.stray_batch)
            )
        for r in j.qc:
            path, line = self._row("LIMS", r.tested_at, lims_row(r))
            if j.fault is Fault.MALFORMED_CSV_ROW and r is j.qc[0]:
                self._broken_row(path, line, lims_row(r))
        rel = j.release
        for d in j.deviations:
            self._row(
                "DEVIATIONS",
                rel.decided_at,
                [
                    d.deviation_id,
                    d.batch_id,
                    ts(d.opened_at),
                    ts(d.closed_at),
                    d.classification.value.capitalize(),
                    "Y" if d.patient_impact else "N",
                    "Open" if d.status is DeviationStatus.OPEN else "Closed",
                    d.category,
                ],
            )
        self._row(
            "RELEASE",
            rel.decided_at,
            [
                rel.batch_id,
                rel.coi,
                rel.decision.value.upper(),
                ts(rel.decided_at),
                rel.decided_by,
                str(rel.spec_version),
            ],
        )
        return stray_path

    def _broken_row(self, path: str, after_line: int, values: list[str]) -> None:
        """A truncated copy of the row just written: three of its seven fields."""
        line = self.tree.append(path, csv_row(values[:3]), header=csv_row(HEADERS["LIMS"])) + 1
        self.tally.sources["cmo.malformed_rows"] += 1
        self.tally.planted.append(
            PlantedFault(
                Fault.MALFORMED_CSV_ROW,
                {"file": path, "line": line, "batch_id": values[1]},
                f"row {line} has 3 of {len(HEADERS['LIMS'])} fields (a cut-off copy of line "
                f"{after_line})",
            )
        )
