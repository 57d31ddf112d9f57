"""Readings assigned to the shipment legs they were taken on (pure, vectorized).

Every time-series rule starts the same way: put each logger reading on the leg whose logger
took it, in time order, once. :func:`assign_readings` does that for millions of readings
with one sort (skipped when the input is already in order) and one binary search:

1. each reading gets a 64-bit key ``logger code << shift | time offset`` (loggers numbered in
   the order of their IDs); already sorted input is detected and not sorted again;
2. equal keys (same logger, same microsecond) are duplicates: the first one is kept;
3. a reading belongs to the leg of its logger with the latest departure at or before it, if
   it is no later than that leg's arrival (legs still in transit have no arrival yet);
   readings before departure or after arrival (the logger on a dock) belong to no leg.

Inputs are Arrow tables with at least these columns (the staged canonical datasets have
them): readings ``logger_id``, ``observed_at`` (timestamp, UTC), ``celsius``; legs
``shipment_id``, ``leg_no``, ``logger_id``, ``departed_at``, ``arrived_at`` (nullable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cmohub.errors import InputError

Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]

OPEN_END = np.iinfo(np.int64).max  # arrival of a leg still in transit
MICROS_PER_MINUTE = 60_000_000
UTC_MICROS = pa.timestamp("us", tz="UTC")

READING_COLUMNS = ("logger_id", "observed_at", "celsius")
LEG_COLUMNS = ("shipment_id", "leg_no", "logger_id", "departed_at", "arrived_at")


def require_columns(table: pa.Table, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise InputError(
            f"{what} lack column(s) {', '.join(missing)}", code="COLDCHAIN_COLUMNS_MISSING"
        )


def micros(column: pa.ChunkedArray | pa.Array, *, fill: int | None = None) -> Int64Array:
    """A timestamp column as int64 microseconds since the epoch (UTC); nulls -> ``fill``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_timestamp(array.type):
        raise InputError("a time column is not a timestamp", code="COLDCHAIN_COLUMN_TYPE")
    if array.type.tz is None:
        raise InputError("a time column has no time zone (UTC expected)", code="COLDCHAIN_NAIVE")
    if array.type.unit != "us":
        array = array.cast(UTC_MICROS)
    ints = array.view(pa.int64()) if array.null_count == 0 else array.cast(pa.int64())
    if array.null_count:
        if fill is None:
            raise InputError("a required time is missing", code="COLDCHAIN_TIME_MISSING")
        ints = pc.fill_null(ints, fill)
    return np.asarray(ints.to_numpy(zero_copy_only=False), dtype=np.int64)


def to_timestamps(values: Int64Array, *, null: int | None = None) -> pa.Array:
    """int64 microseconds as an Arrow ``timestamp[us, UTC]`` array (``null`` marks nulls)."""
    mask = None if null is None else values == null
    return pa.array(values, type=pa.int64(), mask=mask).cast(UTC_MICROS)


def _codes(ids: pa.ChunkedArray | pa.Array, value_set: pa.Array) -> Int64Array:
    """Position of each ID in ``value_set`` (-1 when absent); dictionary arrays stay cheap."""
    array = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_dictionary(array.type):
        per_value = pc.index_in(array.dictionary.cast(pa.string()), value_set=value_set)
        lookup = np.asarray(pc.fill_null(per_value, -1).to_numpy(zero_copy_only=False))
        indices = np.asarray(array.indices.to_numpy(zero_copy_only=False))
        out: Int64Array = lookup[indices].astype(np.int64)
        if array.null_count:
            out[np.asarray(array.is_null().to_numpy(zero_copy_only=False))] = -1
        return out
    found = pc.index_in(array.cast(pa.string()), value_set=value_set)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class LegReadings:
    """Readings on legs: sorted by leg then time, one per logger and instant.

    ``legs`` is the legs table reordered (by logger, then departure); ``leg`` indexes it.
    Per leg, ``first[i]`` is the position of its first reading and ``count[i]`` how many
    it has (``first`` is -1 for a leg without readings).
    """

    legs: pa.Table
    leg: Int32Array
    at: Int64Array  # microseconds since the epoch, UTC
    celsius: FloatArray
    departed: Int64Array  # per leg
    arrived: Int64Array  # per leg; OPEN_END while in transit
    first: Int64Array
    count: Int64Array
    received: int
    duplicates: int
    unassigned: int  # readings of unknown loggers, or off any leg's window
    unusable: int  # readings without a time or a finite temperature

    @property
    def size(self) -> int:
        return int(self.at.shape[0])

    @property
    def leg_count(self) -> int:
        return int(self.departed.shape[0])


def assign_readings(readings: pa.Table, legs: pa.Table) -> LegReadings:
    """Put each reading on the leg its logger was travelling on (see the module docstring)."""
    require_columns(readings, READING_COLUMNS, "readings")
    require_columns(legs, LEG_COLUMNS, "legs")
    leg_loggers = legs["logger_id"].combine_chunks().cast(pa.string())
    loggers = pc.unique(leg_loggers).sort()
    leg_code = _codes(leg_loggers, loggers)
    departed = micros(legs["departed_at"])
    arrived = micros(legs["arrived_at"], fill=OPEN_END)
    order = np.lexsort((departed, leg_code))
    legs = legs.take(pa.array(order))
    leg_code, departed, arrived = leg_code[order], departed[order], arrived[order]

    received = readings.num_rows
    code = _codes(readings["logger_id"], loggers)
    at = micros(readings["observed_at"], fill=OPEN_END)
    celsius = np.asarray(
        pc.fill_null(readings["celsius"].combine_chunks().cast(pa.float64()), np.nan).to_numpy(
            zero_copy_only=False
        ),
        dtype=np.float64,
    )
    usable = np.isfinite(celsius) & (at != OPEN_END)
    unusable = int(received - np.count_nonzero(usable))
    known = usable & (code >= 0)
    unassigned = int(np.count_nonzero(usable) - np.count_nonzero(known))
    if not known.all():
        code, at, celsius = code[known], at[known], celsius[known]
    del known, usable

    n_legs = len(departed)
    if code.size == 0 or n_legs == 0:
        return _assigned(
            legs,
            leg=np.zeros(0, np.int32),
            at=np.zeros(0, np.int64),
            celsius=np.zeros(0, np.float64),
            departed=departed,
            arrived=arrived,
            received=received,
            duplicates=0,
            unassigned=unassigned + int(code.size),
            unusable=unusable,
        )

    origin = int(min(at.min(), departed.min()))
    span = int(max(at.max(), departed.max())) - origin
    shift = max(1, span.bit_length())
    if shift + max(1, len(loggers).bit_length()) > 62:
        raise InputError(
            "readings span too long a time to be keyed (more than 60 years?)",
            code="COLDCHAIN_TIME_SPAN",
        )
    key = code << shift
    key += at - origin
    del code, at
    if key.size > 1 and not bool(np.all(key[1:] >= key[:-1])):
        order = np.argsort(key, kind="stable")
        key = key[order]
        celsius = celsius[order]
        del order
    first_of_key = np.empty(key.size, dtype=bool)
    first_of_key[0] = True
    np.not_equal(key[1:], key[:-1], out=first_of_key[1:])
    duplicates = int(key.size - np.count_nonzero(first_of_key))
    if duplicates:
        key = key[first_of_key]
        celsius = celsius[first_of_key]
    del first_of_key

    leg_start_key = (leg_code << shift) + (departed - origin)
    index = np.searchsorted(leg_start_key, key, side="right") - 1
    low_mask = (1 << shift) - 1
    at = (key & low_mask) + origin
    on_leg = index >= 0
    safe = np.where(on_leg, index, 0)
    on_leg &= leg_code[safe] == (key >> shift)
    on_leg &= at <= arrived[safe]
    del key, safe
    off = int(index.size - np.count_nonzero(on_leg))
    if off:
        index, at, celsius = index[on_leg], at[on_leg], celsius[on_leg]
    return _assigned(
        legs,
        leg=index.astype(np.int32),
        at=at,
        celsius=celsius,
        departed=departed,
        arrived=arrived,
        received=received,
        duplicates=duplicates,
        unassigned=unassigned + off,
        unusable=unusable,
    )


def _assigned(
    legs: pa.Table,
    leg: Int32Array,
    *,
    at: Int64Array,
    celsius: FloatArray,
    departed: Int64Array,
    arrived: Int64Array,
    received: int,
    duplicates: int,
    unassigned: int,
    unusable: int,
) -> LegReadings:
    n_legs = len(departed)
    count = np.bincount(leg, minlength=n_legs).astype(np.int64)
    first = np.searchsorted(leg, np.arange(n_legs, dtype=np.int32)).astype(np.int64)
    first[count == 0] = -1
    return LegReadings(
        legs=legs,
        leg=leg,
        at=at,
        celsius=celsius,
        departed=departed,
        arrived=arrived,
        first=first,
        count=count,
        received=received,
        duplicates=duplicates,
        unassigned=unassigned,
        unusable=unusable,
    )
