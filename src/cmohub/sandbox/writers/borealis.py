"""CMO Borealis (A9997): BatchML batch records (XML) and semicolon CSVs from its LIMS/EM/QA.

One delivery folder per Borealis local day (Europe/Oslo): ``cmo/A9997/<YYYY-MM-DD>/``:

* ``BPR_<batch>.xml`` — the executed batch record as a B2MML V0401 ``BatchProductionRecord``
  (steps, operators, rooms, material charges, deviations as ``Events`` and their closure
  signatures as ``PersonnelIdentifications``), delivered on the day of the batch's
  disposition (aborted batches: the day they were aborted);
* ``LIMS_<YYYYMMDD>.csv``, ``EM_<YYYYMMDD>.csv``, ``RELEASE_<YYYYMMDD>.csv`` — UTF-8 with
  BOM, ``;`` separated, LF, decimal comma, timestamps in UTC as ``DD.MM.YYYY HH:MM:SS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from cmohub.domain import Batch, BatchStatus, Deviation, DeviationStatus, MonitoringKind, QcResult
from cmohub.sandbox.faults import Fault, PlantedFault
from cmohub.sandbox.program import Journey
from cmohub.sandbox.sink import TreeWriter
from cmohub.sandbox.timeutil import local_date, local_iso
from cmohub.sandbox.world import BOREALIS_FIN, SITE_BY_FIN
from cmohub.sandbox.writers.common import Tally, csv_row, number
from cmohub.sandbox.writers.fhir import PRODUCT_NAMES

ZONE = SITE_BY_FIN[BOREALIS_FIN].time_zone
B2MML_NS = "http://www.wbf.org/xml/B2MML-V0401"
BOM = "\ufeff"
HEADERS: dict[str, tuple[str, ...]] = {
    "LIMS": ("BatchRef", "ResultRef", "Assay", "Value", "Unit", "ResultState", "CompletedUTC"),
    "EM": (
        "SampleRef", "Cleanroom", "SampledUTC", "Method", "Count", "Unit", "AlertLevel",
        "ActionLevel",
    ),
    "RELEASE": ("BatchRef", "COI", "Decision", "DecidedUTC", "ReleasedBy", "SpecVersion"),
}  # fmt: skip
RECIPE_ELEMENTS = {
    "selection": "SELECT",
    "activation": "ACTIVATE",
    "transduction": "TRANSDUCE",
    "expansion": "EXPAND",
    "harvest": "HARVEST",
    "formulation": "FORMULATE",
}
ASSAYS = {
    "VIAB": "VIA",
    "CD3": "CD3",
    "CD8": "CD8",
    "CARPOS": "CAR",
    "VCN": "VCN",
    "ENDO": "BET",
    "STER": "STE",
    "MYCO": "MYC",
    "RCL": "RCL",
}
UNITS = {"%": "%", "{copies}/{cell}": "cp/cell", "[EU]/mL": "EU/ml"}
EM_METHODS = {
    MonitoringKind.PARTICLES_0_5: ("PC05", "/m3"),
    MonitoringKind.PARTICLES_5_0: ("PC50", "/m3"),
    MonitoringKind.VIABLE_AIR: ("AIRV", "CFU/m3"),
}
BATCH_STATUS = {BatchStatus.COMPLETE: "COMPLETED", BatchStatus.ABORTED: "ABORTED"}


def day_folder(when: datetime) -> str:
    return f"cmo/{BOREALIS_FIN}/{local_date(when, ZONE).isoformat()}"


def csv_path(kind: str, when: datetime) -> str:
    return f"{day_folder(when)}/{kind}_{local_date(when, ZONE):%Y%m%d}.csv"


def utc_text(when: datetime) -> str:
    return f"{when.astimezone(UTC):%d.%m.%Y %H:%M:%S}"


def row(values: Iterable[str]) -> str:
    return csv_row(list(values), delimiter=";", newline="\n")


def lims_row(r: QcResult) -> list[str]:
    if r.value is not None:
        value, unit = number(r.value, decimal=","), UNITS.get(r.unit or "", r.unit or "")
    else:
        value, unit = (r.value_text or "").upper(), ""
    state = "FINAL" if r.status.value == "final" else "PRELIM"
    return [r.batch_id, r.result_id, ASSAYS[r.test_code], value, unit, state, utc_text(r.tested_at)]


def _info(name: str, value: str, *, data_type: str = "string", unit: str = "") -> str:
    uom = f"<UnitOfMeasure>{escape(unit)}</UnitOfMeasure>" if unit else "<UnitOfMeasure/>"
    return (
        f"<OtherInformation><ID>{name}</ID><Value><ValueString>{escape(value)}</ValueString>"
        f"<DataInterpretation>Constant</DataInterpretation><DataType>{data_type}</DataType>"
        f"{uom}</Value></OtherInformation>"
    )


def render_batch_record(
    batch: Batch,
    steps: Iterable[tuple[str, int, str, str, datetime, datetime, list[str]]],
    deviations: Iterable[Deviation],
    created: datetime,
) -> str:
    """A BatchProductionRecord. ``steps``: (element, step_no, room, operator, start, end,
    rendered material charge elements)."""

    def t(when: datetime) -> str:
        return local_iso(when, ZONE)

    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<BatchProductionRecord xmlns="{B2MML_NS}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n',
        f"  <ID>BPR-{batch.batch_id}</ID>\n",
        "  <ObjectType>BatchProductionRecordType</ObjectType>\n",
        f"  <Header><CreationDate>{t(created)}</CreationDate>"
        f"<LastChangedDate>{t(created)}</LastChangedDate></Header>\n",
        "  <ExecutedControlRecipes>\n    <ExecutedControlRecipe>\n",
        f"      <ID>{batch.batch_id}</ID>\n",
        "      <ObjectType>ExecutedControlRecipeType</ObjectType>\n",
        f"      <BatchID>{batch.batch_id}</BatchID>\n",
        f"      <Header><ProductID>{batch.product_code}</ProductID>"
        f"<ProductName>{escape(PRODUCT_NAMES[batch.product_code])}</ProductName></Header>\n",
        "      " + _info("ChainOfIdentity", batch.coi) + "\n",
        "      " + _info("DonationIdentificationNumber", batch.din) + "\n",
        "      " + _info("BatchStatus", BATCH_STATUS[batch.status]) + "\n",
        "      " + _info("ActualStartTime", t(batch.started_at), data_type="dateTime") + "\n",
    ]
    if batch.completed_at is not None:
        parts.append(
            "      " + _info("ActualEndTime", t(batch.completed_at), data_type="dateTime") + "\n"
        )
    procedure = f"{batch.batch_id}|Procedure"
    parts.append(
        f"      <RuntimeRecipeElement><ID>{procedure}</ID>"
        "<ObjectType>RuntimeRecipeElementType</ObjectType>"
        "<RecipeElementType>Procedure</RecipeElementType><InstanceCount>1</InstanceCount>\n"
    )
    for element, step_no, room, operator, start, end, charges in steps:
        parts.append(
            f"        <RuntimeRecipeElement><ID>{procedure}|{element}</ID>"
            "<ObjectType>RuntimeRecipeElementType</ObjectType>"
            "<RecipeElementType>Operation</RecipeElementType>"
            + _info("StepSequence", str(step_no), data_type="integer")
            + _info("Cleanroom", room)
            + _info("StartTime", t(start), data_type="dateTime")
            + "\n"
            + "".join(charges)
            + f"          <CompletionTime>{t(end)}</CompletionTime>"
            f"<Performer>{escape(operator)}</Performer><InstanceCount>1</InstanceCount>"
            "</RuntimeRecipeElement>\n"
        )
    parts.append("      </RuntimeRecipeElement>\n    </ExecutedControlRecipe>\n")
    parts.append("  </ExecutedControlRecipes>\n")
    deviations = list(deviations)
    if deviations:
        parts.append("  <Events>\n")
        for d in deviations:
            risk = "High" if d.patient_impact else "Low"
            status = "Open" if d.status is DeviationStatus.OPEN else "Closed"
            parts.append(
                f"    <Event><ID>{d.deviation_id}</ID><ObjectType>EventType</ObjectType>"
                f"<TimeStamp>{t(d.opened_at)}</TimeStamp><EventType>Deviation</EventType>"
                f'<EventSubType Risk="{risk}" Status="{status}">'
                f"{d.classification.value.capitalize()}</EventSubType>"
                f"<MessageText>Deviation ({escape(d.category)})</MessageText>"
                f"<Category>{escape(d.category)}</Category></Event>\n"
            )
        parts.append("  </Events>\n")
        closed = [d for d in deviations if d.closed_at is not None]
        if closed:
            parts.append("  <PersonnelIdentifications>\n")
            for d in closed:
                assert d.closed_at is not None
                parts.append(
                    f"    <PersonnelIdentification><ID>{d.deviation_id}|Closure</ID>"
                    "<Description>Deviation closed</Description>"
                    "<ObjectType>PersonnelIdentificationType</ObjectType>"
                    f"<TimeStamp>{t(d.closed_at)}</TimeStamp>"
                    f"<ReferencedElement>{d.deviation_id}</ReferencedElement>"
                    "<PersonName>BOR-QA-01</PersonName><Reason>Closure</Reason>"
                    "</PersonnelIdentification>\n"
                )
            parts.append("  </PersonnelIdentifications>\n")
    parts.append("</BatchProductionRecord>\n")
    return "".join(parts)


def render_charge(
    element: str,
    n: int,
    *,
    code: str,
    lot: str,
    expiry: str,
    qty: str,
    unit: str,
    used_at: datetime,
    operator: str,
) -> str:
    return (
        f"          <RuntimeRecipeElement><ID>{element}|MaterialCharge-{n}</ID>"
        "<ObjectType>RuntimeRecipeElementType</ObjectType>"
        "<RecipeElementType>Phase</RecipeElementType>"
        + _info("MaterialDefinitionID", code)
        + _info("MaterialLotID", lot)
        + _info("ExpiryDate", expiry, data_type="date")
        + _info("Quantity", qty, data_type="decimal", unit=unit)
        + f"<CompletionTime>{local_iso(used_at, ZONE)}</CompletionTime>"
        f"<Performer>{escape(operator)}</Performer><InstanceCount>1</InstanceCount>"
        "</RuntimeRecipeElement>\n"
    )


class BorealisWriter:
    def __init__(self, tree: TreeWriter, tally: Tally) -> None:
        self.tree = tree
        self.tally = tally

    def _row(self, kind: str, when: datetime, values: list[str]) -> tuple[str, int]:
        path = csv_path(kind, when)
        line = self.tree.append(path, row(values), header=BOM + row(HEADERS[kind]))
        self.tally.sources[f"cmo.{BOREALIS_FIN}.{kind.lower()}"] += 1
        return path, line + 1

    def write(self, j: Journey) -> str | None:
        """Write the journey's Borealis records; return the file of its stray batch record."""
        if j.cmo != BOREALIS_FIN:
            return None
        b = j.batch
        for _, sample in j.monitoring:
            method, unit = EM_METHODS[sample.kind]
            self._row(
                "EM",
                sample.sampled_at,
                [
                    sample.sample_id,
                    sample.suite_id,
                    utc_text(sample.sampled_at),
                    method,
                    number(sample.value, decimal=","),
                    unit,
                    number(sample.alert_limit, decimal=","),
                    number(sample.action_limit, decimal=","),
                ],
            )
        for r in j.qc:
            path, line = self._row("LIMS", r.tested_at, lims_row(r))
            if j.fault is Fault.MALFORMED_CSV_ROW and r is j.qc[0]:
                broken = self.tree.append(path, row(lims_row(r)[:3])) + 1
                self.tally.sources["cmo.malformed_rows"] += 1
                self.tally.planted.append(
                    PlantedFault(
                        Fault.MALFORMED_CSV_ROW,
                        {"file": path, "line": broken, "batch_id": b.batch_id},
                        f"row {broken} has 3 of {len(HEADERS['LIMS'])} fields (a cut-off copy "
                        f"of line {line})",
                    )
                )
        steps = []
        for step in j.steps:
            element = RECIPE_ELEMENTS[step.step_code]
            charges = [
                render_charge(
                    f"{b.batch_id}|Procedure|{element}",
                    n,
                    code=m.material_code,
                    lot=m.lot_number,
                    expiry=m.expiry_on.isoformat(),
                    qty=number(m.quantity),
                    unit=m.unit,
                    used_at=m.used_at,
                    operator=step.operator_id,
                )
                for n, m in enumerate((m for m in j.materials if m.step_no == step.step_no), 1)
            ]
            steps.append(
                (
                    element,
                    step.step_no,
                    step.suite_id,
                    step.operator_id,
                    step.started_at,
                    step.ended_at,
                    charges,
                )
            )
        rel = j.release
        self._write_record(b, steps, j.deviations, rel.decided_at)
        self.tally.sources[f"cmo.{BOREALIS_FIN}.batch_records"] += 1
        self._row(
            "RELEASE",
            rel.decided_at,
            [
                rel.batch_id,
                rel.coi,
                rel.decision.value.upper(),
                utc_text(rel.decided_at),
                rel.decided_by,
                str(rel.spec_version),
            ],
        )
        if j.stray_batch is not None:
            stray = j.stray_batch
            assert stray.completed_at is not None
            self.tally.sources[f"cmo.{BOREALIS_FIN}.batch_records"] += 1
            return self._write_record(stray, [], [], stray.completed_at)
        return None

    def _write_record(
        self,
        batch: Batch,
        steps: Iterable[tuple[str, int, str, str, datetime, datetime, list[str]]],
        deviations: Iterable[Deviation],
        delivered: datetime,
    ) -> str:
        path = f"{day_folder(delivered)}/BPR_{batch.batch_id}.xml"
        self.tree.write(path, render_batch_record(batch, steps, deviations, delivered))
        return path
