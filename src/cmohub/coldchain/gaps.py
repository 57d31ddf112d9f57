"""Logger data gaps per shipment leg (pure, vectorized).

The reading of the rule (``docs/sandbox.md``, LOGGER_GAP): per leg, two consecutive
readings more than ``max_gap_minutes`` (10) apart, or the first reading more than that after
departure, or the last more than that before arrival. A leg with no reading at all is one
gap from departure to arrival. While a leg is in transit (no arrival yet) only its start and
the gaps between readings are judged; with ``as_of`` the silence since the last reading is
judged too (``kind`` ``open``).

Each gap is a row of :data:`GAP_SCHEMA`; :attr:`GapReport.legs` says, per leg with at least
one gap, how many and the longest — one LOGGER_GAP exception per leg.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from cmohub.coldchain.readings import (
    MICROS_PER_MINUTE,
    OPEN_END,
    Int64Array,
    LegReadings,
    assign_readings,
    micros,
    to_timestamps,
)
from cmohub.errors import InputError

START = "start"  # first reading late after departure
BETWEEN = "between"  # two consecutive readings too far apart
END = "end"  # last reading too early before arrival
NO_DATA = "no_data"  # the leg has no reading at all
OPEN = "open"  # in transit, silent since the last reading (only with as_of)

GAP_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("leg_no", pa.int64(), nullable=False),
        pa.field("logger_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("gap_start", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("gap_end", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("gap_minutes", pa.float64(), nullable=False),
    ]
)

LEG_GAP_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("leg_no", pa.int64(), nullable=False),
        pa.field("logger_id", pa.string(), nullable=False),
        pa.field("gaps", pa.int64(), nullable=False),
        pa.field("longest_gap_minutes", pa.float64(), nullable=False),
        pa.field("readings", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class GapReport:
    gaps: pa.Table  # one row per gap
    legs: pa.Table  # one row per leg with a gap (one LOGGER_GAP exception each)
    max_gap_minutes: float

    def loggers(self) -> list[str]:
        return sorted(str(v) for v in self.legs.column("logger_id").to_pylist())


def find_logger_gaps(
    leg_readings: LegReadings, *, max_gap_minutes: float = 10.0, as_of: datetime | None = None
) -> GapReport:
    """Gaps in the readings of every leg (see the module docstring)."""
    if max_gap_minutes <= 0:
        raise InputError("max_gap_minutes must be positive", code="COLDCHAIN_INTERVAL")
    if as_of is not None and as_of.tzinfo is None:
        raise InputError("as_of must carry a UTC offset", code="COLDCHAIN_NAIVE")
    lr = leg_readings
    limit = round(max_gap_minutes * MICROS_PER_MINUTE)
    n_legs = lr.leg_count
    legs_idx: list[Int64Array] = []
    kinds: list[np.ndarray] = []
    starts: list[Int64Array] = []
    stops: list[Int64Array] = []

    def add(leg: Int64Array, kind: str, start: Int64Array, stop: Int64Array) -> None:
        if leg.size:
            legs_idx.append(leg.astype(np.int64))
            kinds.append(np.full(leg.size, kind, dtype=object))
            starts.append(start.astype(np.int64))
            stops.append(stop.astype(np.int64))

    # Between consecutive readings of the same leg.
    if lr.size > 1:
        same = lr.leg[1:] == lr.leg[:-1]
        step = lr.at[1:] - lr.at[:-1]
        hit = np.flatnonzero(same & (step > limit))
        add(lr.leg[hit].astype(np.int64), BETWEEN, lr.at[hit], lr.at[hit + 1])

    has = lr.count > 0
    with_data = np.flatnonzero(has)
    first_at = lr.at[lr.first[with_data]]
    last_at = lr.at[lr.first[with_data] + lr.count[with_data] - 1]
    late = first_at - lr.departed[with_data] > limit
    add(with_data[late], START, lr.departed[with_data][late], first_at[late])
    arrived = lr.arrived[with_data]
    early = (arrived != OPEN_END) & (arrived - last_at > limit)
    add(with_data[early], END, last_at[early], arrived[early])
    cutoff: int | None = None
    if as_of is not None:
        cutoff = int(micros(pa.array([as_of], pa.timestamp("us", "UTC")))[0])
        silent = (arrived == OPEN_END) & (cutoff - last_at > limit)
        add(with_data[silent], OPEN, last_at[silent], np.full(int(silent.sum()), cutoff))

    empty = np.flatnonzero(~has)
    if empty.size:
        departed = lr.departed[empty]
        ends = lr.arrived[empty].copy()
        if cutoff is not None:
            ends = np.where(ends == OPEN_END, cutoff, ends)
        known = (ends != OPEN_END) & (ends - departed > limit)
        add(empty[known], NO_DATA, departed[known], ends[known])

    legs = lr.legs
    shipment_ids = legs["shipment_id"].to_pylist()
    leg_nos = legs["leg_no"].to_pylist()
    loggers = legs["logger_id"].to_pylist()
    if legs_idx:
        leg_all = np.concatenate(legs_idx)
        kind_all = np.concatenate(kinds)
        start_all = np.concatenate(starts)
        stop_all = np.concatenate(stops)
        order = np.lexsort((start_all, leg_all))
        leg_all, kind_all = leg_all[order], kind_all[order]
        start_all, stop_all = start_all[order], stop_all[order]
    else:
        leg_all = np.zeros(0, np.int64)
        kind_all = np.zeros(0, dtype=object)
        start_all = stop_all = np.zeros(0, np.int64)
    minutes = (stop_all - start_all).astype(np.float64) / MICROS_PER_MINUTE
    idx = leg_all.tolist()
    gaps = pa.table(
        {
            "shipment_id": pa.array([shipment_ids[i] for i in idx], pa.string()),
            "leg_no": pa.array([leg_nos[i] for i in idx], pa.int64()),
            "logger_id": pa.array([loggers[i] for i in idx], pa.string()),
            "kind": pa.array(kind_all.tolist(), pa.string()),
            "gap_start": to_timestamps(start_all),
            "gap_end": to_timestamps(stop_all),
            "gap_minutes": pa.array(minutes, pa.float64()),
        },
        schema=GAP_SCHEMA,
    )
    per_leg = np.bincount(leg_all, minlength=n_legs)
    longest = np.zeros(n_legs)
    if leg_all.size:
        np.maximum.at(longest, leg_all, minutes)
    flagged = np.flatnonzero(per_leg).tolist()
    leg_table = pa.table(
        {
            "shipment_id": pa.array([shipment_ids[i] for i in flagged], pa.string()),
            "leg_no": pa.array([leg_nos[i] for i in flagged], pa.int64()),
            "logger_id": pa.array([loggers[i] for i in flagged], pa.string()),
            "gaps": pa.array(per_leg[flagged], pa.int64()),
            "longest_gap_minutes": pa.array(longest[flagged], pa.float64()),
            "readings": pa.array(lr.count[flagged], pa.int64()),
        },
        schema=LEG_GAP_SCHEMA,
    ).sort_by([("shipment_id", "ascending"), ("leg_no", "ascending")])
    return GapReport(gaps=gaps, legs=leg_table, max_gap_minutes=max_gap_minutes)


def detect_logger_gaps(
    readings: pa.Table,
    legs: pa.Table,
    *,
    max_gap_minutes: float = 10.0,
    as_of: datetime | None = None,
) -> GapReport:
    """Logger gaps of every leg (``readings`` and ``legs`` as for ``detect_excursions``)."""
    return find_logger_gaps(
        assign_readings(readings, legs), max_gap_minutes=max_gap_minutes, as_of=as_of
    )
