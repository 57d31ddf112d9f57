"""Quality records: QC results, product release specifications, release decisions."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Self

from pydantic import PositiveInt, model_validator

from cmohub.domain.types import Code, CoiStr, Finite, Ident, Record, Unit, UtcDatetime


class QcStatus(StrEnum):
    FINAL = "final"
    PRELIMINARY = "preliminary"
    CANCELLED = "cancelled"


class QcResult(Record):
    """One QC test result for a batch (numeric, or a text result such as sterility)."""

    result_id: Ident
    batch_id: Ident
    test_code: Code
    value: Finite | None = None
    value_text: str | None = None
    unit: Unit | None = None
    tested_at: UtcDatetime
    status: QcStatus

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        if (self.value is None) == (self.value_text is None):
            raise ValueError("exactly one of value and value_text must be given")
        return self


class SpecLimit(Record):
    """The acceptance criterion of one test in a release specification."""

    test_code: Code
    unit: Unit | None = None
    lower: Finite | None = None
    upper: Finite | None = None
    allowed_text: tuple[str, ...] | None = None  # e.g. ("negative",) for sterility
    required: bool = True  # release needs a final result for this test

    @model_validator(mode="after")
    def _has_criterion(self) -> Self:
        numeric = self.lower is not None or self.upper is not None
        if numeric == (self.allowed_text is not None):
            raise ValueError("give either numeric limits or allowed_text, not both or neither")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError("lower limit above upper limit")
        return self


class ProductSpecification(Record):
    """A versioned release specification of a product, in force from ``effective_from``."""

    product_code: Code
    version: PositiveInt
    effective_from: date
    effective_to: date | None = None  # exclusive; None while in force
    limits: tuple[SpecLimit, ...]

    @model_validator(mode="after")
    def _dates(self) -> Self:
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError("effective_to must be after effective_from")
        return self


class Decision(StrEnum):
    RELEASED = "released"
    REJECTED = "rejected"
    ON_HOLD = "on_hold"


class ReleaseDecision(Record):
    """The qualified person's disposition of a batch."""

    batch_id: Ident
    coi: CoiStr
    decision: Decision
    decided_at: UtcDatetime
    decided_by: Ident  # qualified person's ID at the CMO
    spec_version: PositiveInt | None = None
