"""Master data: sites, products and their temperature classes, operators, reagent lots."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Self

from pydantic import NonNegativeInt, PositiveInt, model_validator

from cmohub.domain.types import Code, Fin, Finite, Ident, Record


class SiteKind(StrEnum):
    CLINICAL = "clinical"  # collects apheresis and infuses
    CMO = "cmo"
    COURIER_HUB = "courier_hub"


class Site(Record):
    fin: Fin
    site_name: str
    kind: SiteKind
    time_zone: str  # IANA name, e.g. "Europe/Berlin"
    sgln: str | None = None  # GS1 location identifier (EPCIS readPoint / bizLocation)
    pgln: str | None = None  # GS1 party identifier (EPCIS possessing / owning party)


class TemperatureClass(Record):
    """An allowed temperature range, e.g. cryogenic (<= -150 °C) or 2-8 °C."""

    code: Code
    lower_celsius: Finite | None = None
    upper_celsius: Finite | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.lower_celsius is None and self.upper_celsius is None:
            raise ValueError("a temperature class needs at least one limit")
        if (
            self.lower_celsius is not None
            and self.upper_celsius is not None
            and self.lower_celsius >= self.upper_celsius
        ):
            raise ValueError("lower limit must be below upper limit")
        return self


class Product(Record):
    """A product and the logistics limits that apply to its material."""

    product_code: Code
    product_name: str
    starting_material_class: TemperatureClass  # how the apheresis product travels
    finished_product_class: TemperatureClass  # how the batch travels to the site
    excursion_budget_minutes: NonNegativeInt  # cumulative minutes outside class per shipment
    vein_to_vein_target_days: PositiveInt


class CertifiedOperator(Record):
    """An operator's certification for one manufacturing step at one CMO."""

    operator_id: Ident
    cmo: Fin
    step_code: Code
    certified_from: date
    certified_until: date  # exclusive


class ReagentLot(Record):
    material_code: Code
    lot_number: Ident
    supplier: str
    expiry_on: date
