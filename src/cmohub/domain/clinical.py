"""Clinical records: orders, collections (apheresis), infusions. Linked to a person by COI only."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import PositiveFloat

from cmohub.domain.types import Code, CoiStr, DinStr, Fin, Ident, Record, UtcDatetime


class OrderStatus(StrEnum):
    PLACED = "placed"
    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Order(Record):
    """A therapy order: the treating site asks for one patient-specific batch."""

    order_id: Ident
    coi: CoiStr
    product_code: Code
    ordering_site: Fin
    collection_site: Fin
    ordered_at: UtcDatetime
    status: OrderStatus
    planned_collection_on: date | None = None


class Collection(Record):
    """One apheresis collection: the starting material, identified by its DIN."""

    collection_id: Ident
    coi: CoiStr
    din: DinStr
    site: Fin
    collected_at: UtcDatetime
    material_code: Code = "apheresis"
    volume_ml: PositiveFloat | None = None


class InfusionStatus(StrEnum):
    COMPLETED = "completed"
    NOT_DONE = "not-done"
    STOPPED = "stopped"


class Infusion(Record):
    """Administration of a released batch to its patient."""

    infusion_id: Ident
    coi: CoiStr
    batch_id: Ident
    site: Fin
    infused_at: UtcDatetime
    status: InfusionStatus
