"""Data-logger CSV exports, read in columns (pure, vectorized with Arrow).

The courier's loggers export one CSV per leg (``courier/<COURIER>/loggers/<day>/<logger>.csv``
in the sandbox)::

    serial,shipment,local_time,utc_offset,temp_f
    CWY0000001,CWY-00000001,2026-01-29 07:21:00,+01:00,-299.9

``local_time`` is the logger's wall clock and ``utc_offset`` pins it to an instant (the
logger keeps the offset it had at departure, so a DST change during a leg changes nothing).
The temperature column names its unit: ``temp_f`` (°F), ``temp_c`` (°C) or ``temp_k`` (K);
a ``unit`` column instead gives the unit per row. :func:`parse_logger_csv` returns the
readings in canonical form (°C, UTC) and the rows it rejects, each with the locator
``row=N`` (data rows counted from 1, blank lines skipped — the mapping engine's CSV
locators) and a code:

============================ ==============================================================
PARSE_LOGGER_CSV             the file is not UTF-8 CSV, or lacks a required column (all rows
                             of the file are lost: raised, not returned)
RECORD_MALFORMED             a row with the wrong number of fields
LOGGER_TIME_INVALID          ``local_time`` is not ``YYYY-MM-DD HH:MM:SS``
TIME_OFFSET_MISSING          no ``utc_offset`` (a local time without offset is not an instant)
TIME_OFFSET_INVALID          ``utc_offset`` is not ``±HH:MM``
TEMPERATURE_UNIT_MISSING     no unit (neither a unit column nor a unit in the column name)
TEMPERATURE_UNIT_UNKNOWN     a unit that is not a temperature unit
LOGGER_VALUE_INVALID         the temperature is not a finite number
LOGGER_ID_MISSING            no logger serial
============================ ==============================================================
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cmohub.coldchain.units import offset_minutes, to_celsius, unit_code
from cmohub.errors import InputError, ParseError

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
UNIT_COLUMNS = {"temp_f": "FAH", "temp_c": "CEL", "temp_k": "KEL"}
REQUIRED = ("serial", "local_time")


@dataclass
class LoggerCsv:
    """Readings of one logger file in canonical form, and what was rejected."""

    logger_id: pa.Array
    shipment_id: pa.Array
    observed_at: pa.Array  # timestamp[us, UTC]
    celsius: pa.Array  # float64
    row: np.ndarray  # data-row number of each reading (1-based)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # row, code, message

    @property
    def received(self) -> int:
        return len(self.row) + len(self.rejected)

    def locators(self) -> list[str]:
        return [f"row={n}" for n in self.row.tolist()]


def _data_lines(text: str) -> list[str]:
    lines = [line.rstrip("\r") for line in text.split("\n")]
    return [line for line in lines[1:] if line.strip()]


def parse_logger_csv(data: bytes) -> LoggerCsv:
    """Readings of one logger CSV export (see the module docstring)."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ParseError("the logger file is not UTF-8", code="PARSE_LOGGER_CSV") from None
    header_line = text.split("\n", 1)[0].rstrip("\r")
    header = [h.strip() for h in next(csv.reader([header_line]), [])]
    missing = [name for name in REQUIRED if name not in header]
    temp_column = next((c for c in header if c in UNIT_COLUMNS or c == "temp"), None)
    if temp_column is None:
        missing.append("temp_f|temp_c|temp_k|temp")
    if missing:
        # Without these no row can be read; a missing utc_offset is judged row by row below.
        raise ParseError(
            "the logger file lacks column(s) " + ", ".join(missing), code="PARSE_LOGGER_CSV"
        )
    assert temp_column is not None
    bad_rows: list[str] = []

    def skip(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row.text)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode()),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        raise ParseError("the logger file is not CSV", code="PARSE_LOGGER_CSV") from None

    total = table.num_rows + len(bad_rows)
    rows = np.arange(1, total + 1, dtype=np.int64)
    rejected: list[tuple[int, str, str]] = []
    if bad_rows:
        lines = _data_lines(text)
        wanted = list(bad_rows)
        bad_numbers: list[int] = []
        for line_number, line in enumerate(lines, start=1):
            if wanted and line == wanted[0]:
                bad_numbers.append(line_number)
                wanted.pop(0)
        rejected.extend(
            (n, "RECORD_MALFORMED", "the row has the wrong number of fields") for n in bad_numbers
        )
        rows = np.setdiff1d(rows, np.asarray(bad_numbers, dtype=np.int64))

    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    reasons: dict[int, tuple[str, str]] = {}

    def reject(mask: np.ndarray, code: str, message: str) -> None:
        for index in np.flatnonzero(mask & keep).tolist():
            reasons[index] = (code, message)
        keep[mask] = False

    serial = pc.utf8_trim_whitespace(table["serial"]).combine_chunks()
    reject(_mask(pc.equal(serial, "")), "LOGGER_ID_MISSING", "no logger serial")
    local = pc.strptime(
        pc.utf8_trim_whitespace(table["local_time"]),
        format=TIME_FORMAT,
        unit="us",
        error_is_null=True,
    ).combine_chunks()
    reject(_mask(local.is_null()), "LOGGER_TIME_INVALID", "local_time is not YYYY-MM-DD HH:MM:SS")

    offsets = np.zeros(n, dtype=np.int64)
    if "utc_offset" in header:
        for value, mask in _each_distinct(table["utc_offset"]):
            try:
                offsets[mask] = offset_minutes(value)
            except InputError as error:
                reject(mask, error.code, error.message)
    else:
        reject(np.ones(n, dtype=bool), "TIME_OFFSET_MISSING", "the file has no utc_offset column")

    values = _floats(table[temp_column])
    number = np.asarray(
        pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64
    )
    reject(~np.isfinite(number), "LOGGER_VALUE_INVALID", "the temperature is not a number")

    celsius = np.full(n, np.nan)
    if temp_column in UNIT_COLUMNS:
        celsius = to_celsius(number, UNIT_COLUMNS[temp_column])
    elif "unit" in header:
        for value, mask in _each_distinct(table["unit"]):
            try:
                celsius[mask] = to_celsius(number[mask], unit_code(value))
            except InputError as error:
                reject(mask, error.code, error.message)
    else:
        reject(np.ones(n, dtype=bool), "TEMPERATURE_UNIT_MISSING", "no temperature unit given")

    rejected.extend((int(rows[i]), code, message) for i, (code, message) in reasons.items())
    rejected.sort()
    local_us = np.asarray(
        pc.fill_null(local.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    utc = local_us - offsets * 60_000_000
    kept = np.flatnonzero(keep)
    shipment = (
        pc.utf8_trim_whitespace(table["shipment"]).combine_chunks()
        if "shipment" in header
        else pa.nulls(n, pa.string())
    )
    shipment = pc.if_else(pc.equal(shipment, ""), pa.scalar(None, pa.string()), shipment)
    index = pa.array(kept, pa.int64())
    return LoggerCsv(
        logger_id=serial.take(index),
        shipment_id=shipment.take(index),
        observed_at=pa.array(utc[kept], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        celsius=pa.array(np.round(celsius[kept], 6), pa.float64()),
        row=rows[kept],
        rejected=rejected,
    )


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, True).to_numpy(zero_copy_only=False), dtype=bool)


def _each_distinct(column: pa.ChunkedArray) -> Iterator[tuple[str, np.ndarray]]:
    """Each distinct value of a text column (trimmed), with the mask of the rows that hold it."""
    text = pc.utf8_trim_whitespace(column).combine_chunks()
    distinct = pc.unique(text).to_pylist()
    codes = pc.index_in(text, value_set=pa.array(distinct, pa.string())).to_numpy()
    for position, value in enumerate(distinct):
        yield value, codes == position


def _floats(column: pa.ChunkedArray) -> pa.Array:
    """Text as float64; anything that is not a number becomes null."""
    text = pc.utf8_trim_whitespace(column).combine_chunks()
    numeric = pc.match_substring_regex(text, r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
    cleaned = pc.if_else(numeric, text, pa.scalar(None, pa.string()))
    return cleaned.cast(pa.float64())
