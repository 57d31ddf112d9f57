"""Manufacturing records from CMO MES exports: batches, steps, materials, deviations, EM."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from cmohub.domain.types import Code, CoiStr, DinStr, Fin, Ident, Record, Unit, UtcDatetime


class BatchStatus(StrEnum):
    IN_PROCESS = "in_process"
    COMPLETE = "complete"
    ABORTED = "aborted"


class Batch(Record):
    """A patient-specific batch, made from one collection (DIN) for one COI."""

    batch_id: Ident
    coi: CoiStr
    din: DinStr  # the collection the batch consumed
    cmo: Fin
    product_code: Code
    started_at: UtcDatetime
    completed_at: UtcDatetime | None = None
    status: BatchStatus


class BatchStep(Record):
    """One executed step of a batch record: where, by whom, when."""

    batch_id: Ident
    step_no: PositiveInt
    step_code: Code  # e.g. selection, activation, transduction, expansion, formulation
    suite_id: Ident
    operator_id: Ident
    started_at: UtcDatetime
    ended_at: UtcDatetime


class MaterialConsumption(Record):
    """A reagent lot used in a step."""

    batch_id: Ident
    step_no: PositiveInt
    material_code: Code
    lot_number: Ident
    expiry_on: date
    used_at: UtcDatetime
    quantity: PositiveFloat
    unit: Unit


class DeviationClass(StrEnum):
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class DeviationStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Deviation(Record):
    """A deviation raised against a batch."""

    deviation_id: Ident
    batch_id: Ident
    opened_at: UtcDatetime
    closed_at: UtcDatetime | None = None
    classification: DeviationClass
    patient_impact: bool
    status: DeviationStatus
    category: Code


class MonitoringKind(StrEnum):
    PARTICLES_0_5 = "particles_0.5um"
    PARTICLES_5_0 = "particles_5.0um"
    VIABLE_AIR = "viable_air"
    VIABLE_SURFACE = "viable_surface"


class EnvironmentalMonitoringResult(Record):
    """One environmental monitoring sample in a cleanroom suite, with its limits."""

    sample_id: Ident
    cmo: Fin
    suite_id: Ident
    sampled_at: UtcDatetime
    kind: MonitoringKind
    value: NonNegativeFloat
    unit: Unit
    alert_limit: NonNegativeFloat
    action_limit: NonNegativeFloat
