"""Helpers shared by the writers: CSV rows, counters, code tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmohub.sandbox.faults import PlantedFault


def csv_row(values: Sequence[str], *, delimiter: str = ",", newline: str = "\r\n") -> str:
    """One CSV record, quoted only where needed (what :mod:`csv` reads back unchanged)."""
    cells = []
    for value in values:
        quote = any(ch in value for ch in (delimiter, '"', "\n", "\r"))
        cells.append('"' + value.replace('"', '""') + '"' if quote else value)
    return delimiter.join(cells) + newline


def number(value: float, *, decimal: str = ".") -> str:
    """A number as a CMO writes it: no exponent, no trailing ``.0`` on whole numbers."""
    text = f"{value:.1f}".removesuffix(".0") if value != int(value) else str(int(value))
    return text.replace(".", decimal)


@dataclass
class Tally:
    """What the writers produced: records per source, and faults they planted themselves."""

    sources: Counter[str] = field(default_factory=Counter)
    planted: list[PlantedFault] = field(default_factory=list)
