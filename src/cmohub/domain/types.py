"""Precise field types shared by the canonical records.

COI and DIN fields validate the identifier and its check character and normalize to the
compact data form; a bad one fails with the identifier's own error code as the pydantic
error type (``ID_CHECK_CHARACTER``, ...). Timestamps must carry an offset and are stored in
UTC. Every model hides input values in its validation errors (a bad value may be a
mis-keyed patient identifier).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from cmohub.errors import IdentifierError
from cmohub.identifiers import parse_coi, parse_din


def _coi(value: Any) -> str:
    try:
        return str(parse_coi(value))
    except IdentifierError as error:
        raise PydanticCustomError(error.code, error.message) from None


def _din(value: Any) -> str:
    try:
        return str(parse_din(value))
    except IdentifierError as error:
        raise PydanticCustomError(error.code, error.message) from None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("VALUE_NOT_FINITE", "value must be a finite number")
    return value


#: A Chain of Identity identifier in its 16-character data form (15 + check character).
CoiStr = Annotated[str, BeforeValidator(_coi)]
#: A donation identification number: 13 characters + keyboard check character.
DinStr = Annotated[str, BeforeValidator(_din)]
#: An ISBT 128 facility identification number (sites, CMOs, couriers' hubs).
Fin = Annotated[str, StringConstraints(pattern=r"^[A-NP-Z][0-9]{4}$")]
#: A record identifier assigned by a source system (order number, batch ID, lot number, ...).
Ident = Annotated[
    str, StringConstraints(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/#-]*$")
]
#: A code from a code list (test codes, step codes, units are separate).
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
#: A unit of measure as a UCUM code (``Cel``, ``mL``, ``10*6/kg``, ``%``, ``[CFU]/m3``).
Unit = Annotated[str, StringConstraints(min_length=1, max_length=32)]
#: An instant with its offset, stored in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
#: A finite float (no NaN or infinity).
Finite = Annotated[float, AfterValidator(_finite)]


class Record(BaseModel):
    """Base of every canonical record: frozen, strict about unknown fields, no input echo."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        use_enum_values=False,
        str_strip_whitespace=True,
    )
