"""Cold chain: custody, temperature excursions and logger gaps (pure, vectorized).

The functional core the logistics pipeline (every 15 minutes) and the nightly
reconciliation share. Values in, values out: Arrow tables and NumPy arrays, no I/O, no
clock (``as_of`` is a parameter).

=========================== ===============================================================
``assign_readings``         readings onto the legs their loggers travelled on: sorted,
                            de-duplicated (:class:`LegReadings`)
``detect_excursions``       excursion episodes (rows of the published ``excursions`` dataset)
                            and per-shipment budget use -> TEMPERATURE_EXCURSION
``detect_logger_gaps``      data gaps per leg -> LOGGER_GAP
``build_custody_ledger``    ordered custody steps and findings per shipment -> CUSTODY_GAP,
                            CUSTODY_WRONG_SITE
``to_celsius``              °F / K / °C arrays to °C; ``offset_minutes``, ``local_to_utc``
=========================== ===============================================================

The semantics are those of ``docs/sandbox.md``, "How the rules are meant to read the data".
"""

from __future__ import annotations

from cmohub.coldchain.custody import (
    CustodyLedger,
    Directory,
    SiteIds,
    build_custody_ledger,
)
from cmohub.coldchain.excursions import (
    BUDGET_SCHEMA,
    EPISODE_SCHEMA,
    ExcursionReport,
    ShipmentClass,
    class_for,
    detect_excursions,
    find_excursions,
    shipment_classes,
)
from cmohub.coldchain.gaps import GAP_SCHEMA, GapReport, detect_logger_gaps, find_logger_gaps
from cmohub.coldchain.readings import LegReadings, assign_readings
from cmohub.coldchain.units import local_to_utc, offset_minutes, offset_text, to_celsius, unit_code

__all__ = [
    "BUDGET_SCHEMA",
    "EPISODE_SCHEMA",
    "GAP_SCHEMA",
    "CustodyLedger",
    "Directory",
    "ExcursionReport",
    "GapReport",
    "LegReadings",
    "ShipmentClass",
    "SiteIds",
    "assign_readings",
    "build_custody_ledger",
    "class_for",
    "detect_excursions",
    "detect_logger_gaps",
    "find_excursions",
    "find_logger_gaps",
    "local_to_utc",
    "offset_minutes",
    "offset_text",
    "shipment_classes",
    "to_celsius",
    "unit_code",
]
