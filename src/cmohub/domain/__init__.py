"""Canonical records of the hub (frozen pydantic models, no I/O).

No patient identifier appears in any of them: a COI is the only link to a person. Each
canonical dataset (a table the hub owns) is one record type; :data:`DATASETS` maps the
dataset name used in contracts, mappings and the lake to its record type.
"""

from __future__ import annotations

from cmohub.domain.clinical import Collection, Infusion, InfusionStatus, Order, OrderStatus
from cmohub.domain.logistics import (
    CustodyAction,
    CustodyEvent,
    Shipment,
    ShipmentKind,
    ShipmentLeg,
    TemperatureReading,
)
from cmohub.domain.manufacturing import (
    Batch,
    BatchStatus,
    BatchStep,
    Deviation,
    DeviationClass,
    DeviationStatus,
    EnvironmentalMonitoringResult,
    MaterialConsumption,
    MonitoringKind,
)
from cmohub.domain.master import (
    CertifiedOperator,
    Product,
    ReagentLot,
    Site,
    SiteKind,
    TemperatureClass,
)
from cmohub.domain.quality import (
    Decision,
    ProductSpecification,
    QcResult,
    QcStatus,
    ReleaseDecision,
    SpecLimit,
)
from cmohub.domain.types import Record

DATASETS: dict[str, type[Record]] = {
    "clinical.order": Order,
    "clinical.collection": Collection,
    "clinical.infusion": Infusion,
    "logistics.shipment": Shipment,
    "logistics.shipment_leg": ShipmentLeg,
    "logistics.custody_event": CustodyEvent,
    "logistics.temperature_reading": TemperatureReading,
    "manufacturing.batch": Batch,
    "manufacturing.batch_step": BatchStep,
    "manufacturing.material_consumption": MaterialConsumption,
    "manufacturing.deviation": Deviation,
    "manufacturing.environmental_monitoring": EnvironmentalMonitoringResult,
    "quality.qc_result": QcResult,
    "quality.release_decision": ReleaseDecision,
    "master.site": Site,
    "master.product": Product,
    "master.certified_operator": CertifiedOperator,
    "master.reagent_lot": ReagentLot,
}

__all__ = [
    "DATASETS",
    "Batch",
    "BatchStatus",
    "BatchStep",
    "CertifiedOperator",
    "Collection",
    "CustodyAction",
    "CustodyEvent",
    "Decision",
    "Deviation",
    "DeviationClass",
    "DeviationStatus",
    "EnvironmentalMonitoringResult",
    "Infusion",
    "InfusionStatus",
    "MaterialConsumption",
    "MonitoringKind",
    "Order",
    "OrderStatus",
    "Product",
    "ProductSpecification",
    "QcResult",
    "QcStatus",
    "ReagentLot",
    "Record",
    "ReleaseDecision",
    "Shipment",
    "ShipmentKind",
    "ShipmentLeg",
    "Site",
    "SiteKind",
    "SpecLimit",
    "TemperatureClass",
    "TemperatureReading",
]
