"""Temperature units and UTC offsets, vectorized (pure).

Loggers and EPCIS sensor reports name their unit in several spellings: UN/CEFACT Rec. 20
codes (``CEL``, ``FAH``, ``KEL`` — what EPCIS ``uom`` uses), UCUM (``Cel``, ``[degF]``,
``K``) and plain symbols (``°C``, ``F``). :func:`unit_code` folds them to one of ``CEL``,
``FAH``, ``KEL``; :func:`to_celsius` converts a NumPy array in one pass.

Error codes (:class:`~cmohub.errors.InputError`; a record carrying one is quarantined):

========================== ==========================================================
TEMPERATURE_UNIT_MISSING   a reading names no unit (°C and °F differ by a factor of 1.8:
                           a temperature without a unit cannot be trusted)
TEMPERATURE_UNIT_UNKNOWN   the unit is not a temperature unit this module knows
TIME_OFFSET_MISSING        a local time comes without its UTC offset
TIME_OFFSET_INVALID        an offset is not ``±HH:MM`` (or ``Z``) within ±14:00
========================== ==========================================================
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from cmohub.errors import InputError

CELSIUS = "CEL"
FAHRENHEIT = "FAH"
KELVIN = "KEL"

_SPELLINGS: dict[str, str] = {
    # UN/CEFACT Rec. 20 (EPCIS uom), UCUM, symbols and words; compared case-insensitively.
    "cel": CELSIUS,
    "c": CELSIUS,
    "°c": CELSIUS,
    "degc": CELSIUS,
    "deg c": CELSIUS,
    "celsius": CELSIUS,
    "fah": FAHRENHEIT,
    "f": FAHRENHEIT,
    "°f": FAHRENHEIT,
    "[degf]": FAHRENHEIT,
    "degf": FAHRENHEIT,
    "deg f": FAHRENHEIT,
    "fahrenheit": FAHRENHEIT,
    "kel": KELVIN,
    "k": KELVIN,
    "kelvin": KELVIN,
}

FloatArray = npt.NDArray[np.float64]


def unit_code(unit: str | None) -> str:
    """``CEL``, ``FAH`` or ``KEL`` for any known spelling of a temperature unit."""
    if unit is None or not str(unit).strip():
        raise InputError("the reading names no temperature unit", code="TEMPERATURE_UNIT_MISSING")
    code = _SPELLINGS.get(str(unit).strip().lower())
    if code is None:
        raise InputError(
            "the unit is not a temperature unit (known: CEL, FAH, KEL and their UCUM and "
            "symbol spellings)",
            code="TEMPERATURE_UNIT_UNKNOWN",
        )
    return code


def to_celsius(values: npt.ArrayLike, unit: str | None) -> FloatArray:
    """``values`` in ``unit`` as degrees Celsius (float64), element-wise."""
    code = unit_code(unit)
    array = np.asarray(values, dtype=np.float64)
    if code == CELSIUS:
        return array.copy()
    if code == FAHRENHEIT:
        return (array - 32.0) * (5.0 / 9.0)
    return array - 273.15


def from_celsius(values: npt.ArrayLike, unit: str) -> FloatArray:
    """The inverse of :func:`to_celsius` (for display and tests)."""
    code = unit_code(unit)
    array = np.asarray(values, dtype=np.float64)
    if code == CELSIUS:
        return array.copy()
    if code == FAHRENHEIT:
        return array * (9.0 / 5.0) + 32.0
    return array + 273.15


_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2})$")
MAX_OFFSET_MINUTES = 14 * 60


def offset_minutes(text: str | None) -> int:
    """Minutes east of UTC for an offset written ``+01:00``, ``-0500`` or ``Z``."""
    if text is None or not str(text).strip():
        raise InputError("a local time comes without its UTC offset", code="TIME_OFFSET_MISSING")
    value = str(text).strip()
    if value in ("Z", "z"):
        return 0
    match = _OFFSET.match(value)
    if match is None:
        raise InputError("the UTC offset is not ±HH:MM", code="TIME_OFFSET_INVALID")
    minutes = int(match["hours"]) * 60 + int(match["minutes"])
    if int(match["minutes"]) >= 60 or minutes > MAX_OFFSET_MINUTES:
        raise InputError("the UTC offset is out of range", code="TIME_OFFSET_INVALID")
    return -minutes if match["sign"] == "-" else minutes


def offset_text(minutes: int) -> str:
    """``+01:00`` for 60, ``-05:00`` for -300."""
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(int(minutes)), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


def local_to_utc(
    local: npt.NDArray[np.datetime64], offsets: npt.ArrayLike
) -> npt.NDArray[np.datetime64]:
    """Naive local wall-clock times and their offsets (minutes east of UTC) as UTC instants.

    ``local`` is ``datetime64`` of any unit; the result has the same unit. Subtracting the
    offset is all it takes: the offset pins the instant, whatever the zone's rules are.
    """
    minutes = np.asarray(offsets, dtype=np.int64).astype("timedelta64[m]")
    utc: npt.NDArray[np.datetime64] = np.subtract(local, minutes)
    return utc
