"""Logistics records: shipments and their legs, custody events, temperature readings."""

from __future__ import annotations

from enum import StrEnum

from pydantic import PositiveInt

from cmohub.domain.types import Code, CoiStr, Fin, Finite, Ident, Record, UtcDatetime


class ShipmentKind(StrEnum):
    STARTING_MATERIAL = "starting_material"  # apheresis product: collection site -> CMO
    FINISHED_PRODUCT = "finished_product"  # released batch: CMO -> treating site


class Shipment(Record):
    """A cryogenic (or controlled-temperature) shipment of one COI's material."""

    shipment_id: Ident
    coi: CoiStr
    kind: ShipmentKind
    product_code: Code
    origin: Fin
    destination: Fin
    courier: Code
    booked_at: UtcDatetime


class ShipmentLeg(Record):
    """One leg of a shipment: a single courier handoff-to-handoff movement with one logger."""

    shipment_id: Ident
    leg_no: PositiveInt
    origin: Fin
    destination: Fin
    shipper_id: Ident  # the dry shipper / dewar
    logger_id: Ident
    departed_at: UtcDatetime
    arrived_at: UtcDatetime | None = None
    max_silence_minutes: PositiveInt = 60  # longest gap between custody events the lane allows


class CustodyAction(StrEnum):
    ADD = "ADD"
    OBSERVE = "OBSERVE"
    DELETE = "DELETE"


class CustodyEvent(Record):
    """A custody event (EPCIS ObjectEvent) for the material of one COI."""

    event_id: str  # EPCIS eventID (ni:///sha-256;... canonical hash) or the source's own ID
    source_event_id: str | None = None  # the eventID the capturing system declared, if any
    coi: CoiStr
    shipment_id: Ident | None = None
    event_time: UtcDatetime
    event_time_zone_offset: str  # as recorded, e.g. "+01:00"; event_time itself is UTC
    action: CustodyAction
    biz_step: Code  # CBV short name: commissioning, shipping, departing, arriving, receiving, ...
    disposition: Code | None = None
    read_point: str | None = None
    biz_location: str | None = None
    source_party: str | None = None  # possessing party handing over
    destination_party: str | None = None  # possessing party taking over


class TemperatureReading(Record):
    """One logger reading, converted to degrees Celsius."""

    logger_id: Ident
    shipment_id: Ident | None = None
    observed_at: UtcDatetime
    celsius: Finite
