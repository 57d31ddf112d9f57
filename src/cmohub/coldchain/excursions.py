"""Temperature excursions against each product's class and budget (pure, vectorized).

The reading of the rule (``docs/sandbox.md``, TEMPERATURE_EXCURSION): per shipment, the
number of readings outside the temperature class of the material it carries — the
product's ``starting_material_class`` on a starting-material shipment, its
``finished_product_class`` on a finished-product shipment — times the logging interval (one
minute) is the time spent outside; more than the product's ``excursion_budget_minutes`` is
an exception. Missing minutes do not count as outside (a silent logger is a LOGGER_GAP).

An **episode** is a maximal run of consecutive readings outside the class on one leg:

``started_at``        the first reading outside
``ended_at``          the first reading back inside (empty if none came)
``last_outside_at``   the last reading outside
``duration_minutes``  readings outside × ``reading_minutes``
``peak_celsius``      the warmest reading of an episode above the class, the coldest below
``budget_minutes_used``  minutes outside on the shipment up to the end of this episode
``budget_minutes_left``  the product's budget minus that (negative once exceeded)
``state``             ``open`` while no reading came back inside and the leg has not
                      arrived (by ``as_of``); otherwise ``closed``

Episodes are the rows of the published ``excursions`` dataset; the per-shipment budget use
(:attr:`ExcursionReport.shipments`) is what the nightly reconciliation turns into
TEMPERATURE_EXCURSION exceptions (``exceeded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cmohub.coldchain.readings import (
    OPEN_END,
    FloatArray,
    Int64Array,
    LegReadings,
    assign_readings,
    micros,
    require_columns,
    to_timestamps,
)
from cmohub.domain.logistics import ShipmentKind
from cmohub.domain.master import Product, TemperatureClass
from cmohub.errors import InputError

SHIPMENT_COLUMNS = ("shipment_id", "coi", "kind", "product_code")
ABOVE = "above"
BELOW = "below"
OPEN = "open"
CLOSED = "closed"

EPISODE_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("leg_no", pa.int64(), nullable=False),
        pa.field("logger_id", pa.string(), nullable=False),
        pa.field("coi", pa.string()),
        pa.field("product_code", pa.string()),
        pa.field("material", pa.string()),
        pa.field("class_code", pa.string()),
        pa.field("lower_celsius", pa.float64()),
        pa.field("upper_celsius", pa.float64()),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),
        pa.field("last_outside_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("duration_minutes", pa.float64(), nullable=False),
        pa.field("readings_outside", pa.int64(), nullable=False),
        pa.field("peak_celsius", pa.float64(), nullable=False),
        pa.field("direction", pa.string(), nullable=False),
        pa.field("budget_minutes", pa.float64()),
        pa.field("budget_minutes_used", pa.float64(), nullable=False),
        pa.field("budget_minutes_left", pa.float64(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
    ]
)

BUDGET_SCHEMA = pa.schema(
    [
        pa.field("shipment_id", pa.string(), nullable=False),
        pa.field("coi", pa.string()),
        pa.field("product_code", pa.string()),
        pa.field("material", pa.string()),
        pa.field("class_code", pa.string()),
        pa.field("lower_celsius", pa.float64()),
        pa.field("upper_celsius", pa.float64()),
        pa.field("budget_minutes", pa.float64()),
        pa.field("minutes_outside", pa.float64(), nullable=False),
        pa.field("budget_minutes_left", pa.float64()),
        pa.field("exceeded", pa.bool_(), nullable=False),
        pa.field("episodes", pa.int64(), nullable=False),
        pa.field("readings", pa.int64(), nullable=False),
        pa.field("legs", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ShipmentClass:
    """The limits a shipment is held to: its material's class and its product's budget."""

    class_code: str
    lower_celsius: float | None
    upper_celsius: float | None
    budget_minutes: float


def class_for(product: Product, kind: ShipmentKind | str) -> TemperatureClass:
    """The temperature class of the material a shipment carries."""
    if ShipmentKind(kind) is ShipmentKind.STARTING_MATERIAL:
        return product.starting_material_class
    return product.finished_product_class


def shipment_classes(
    shipments: pa.Table, products: Mapping[str, Product]
) -> dict[str, ShipmentClass]:
    """Class and budget per shipment ID; shipments of unknown products are left out."""
    require_columns(shipments, SHIPMENT_COLUMNS, "shipments")
    out: dict[str, ShipmentClass] = {}
    for row in shipments.select(["shipment_id", "kind", "product_code"]).to_pylist():
        product = products.get(row["product_code"])
        if product is None or row["kind"] not in ShipmentKind._value2member_map_:
            continue
        cls = class_for(product, row["kind"])
        out[row["shipment_id"]] = ShipmentClass(
            cls.code,
            cls.lower_celsius,
            cls.upper_celsius,
            float(product.excursion_budget_minutes),
        )
    return out


@dataclass(frozen=True)
class ExcursionReport:
    """Episodes (rows of the ``excursions`` dataset) and budget use per shipment."""

    episodes: pa.Table
    shipments: pa.Table
    readings: LegReadings
    legs_without_class: int  # legs of shipments whose product or kind is unknown

    def exceeded(self) -> list[str]:
        """Shipment IDs whose minutes outside exceed the budget (TEMPERATURE_EXCURSION)."""
        rows = self.shipments.filter(pc.field("exceeded")).column("shipment_id").to_pylist()
        return sorted(str(r) for r in rows)


def _segment_reduce(
    ufunc: np.ufunc, values: FloatArray, starts: Int64Array, stops: Int64Array
) -> FloatArray:
    """``ufunc.reduce`` over each ``values[starts[i]:stops[i]]`` (non-empty, disjoint)."""
    edges = np.empty(2 * starts.size, dtype=np.int64)
    edges[0::2] = starts
    edges[1::2] = stops
    padded = np.append(values, values[-1:])  # reduceat needs every index < len
    return np.asarray(ufunc.reduceat(padded, edges)[0::2], dtype=np.float64)


def find_excursions(
    leg_readings: LegReadings,
    shipments: pa.Table,
    products: Mapping[str, Product],
    *,
    reading_minutes: float = 1.0,
    as_of: datetime | None = None,
) -> ExcursionReport:
    """Excursion episodes and budget use from readings already on their legs."""
    if reading_minutes <= 0:
        raise InputError("reading_minutes must be positive", code="COLDCHAIN_INTERVAL")
    if as_of is not None and as_of.tzinfo is None:
        raise InputError("as_of must carry a UTC offset", code="COLDCHAIN_NAIVE")
    lr = leg_readings
    legs = lr.legs
    classes = shipment_classes(shipments, products)
    leg_shipment = legs["shipment_id"].to_pylist()
    n_legs = lr.leg_count
    lower = np.full(n_legs, -np.inf)
    upper = np.full(n_legs, np.inf)
    has_class = np.zeros(n_legs, dtype=bool)
    for i, shipment_id in enumerate(leg_shipment):
        cls = classes.get(shipment_id)
        if cls is None:
            continue
        has_class[i] = True
        if cls.lower_celsius is not None:
            lower[i] = cls.lower_celsius
        if cls.upper_celsius is not None:
            upper[i] = cls.upper_celsius

    # Outside the class: compare per leg segment against that leg's limits (readings are
    # grouped by leg, so the limits are repeated per segment instead of gathered per row).
    counts = lr.count
    outside = (lr.celsius < np.repeat(lower, counts)) | (lr.celsius > np.repeat(upper, counts))
    if not has_class.all():
        outside &= np.repeat(has_class, counts)

    leg = lr.leg
    n = lr.size
    same_leg_next = np.zeros(n, dtype=bool)  # reading i+1 is on the same leg as reading i
    if n > 1:
        np.equal(leg[1:], leg[:-1], out=same_leg_next[:-1])
    continues = np.zeros(n, dtype=bool)  # reading i+1 carries on the run of reading i
    if n > 1:
        continues[:-1] = outside[:-1] & outside[1:] & same_leg_next[:-1]
    starts_mask = outside.copy()
    starts_mask[1:] &= ~continues[:-1]
    starts = np.flatnonzero(starts_mask).astype(np.int64)
    ends = np.flatnonzero(outside & ~continues).astype(np.int64)
    del starts_mask, continues

    ep_leg = leg[starts].astype(np.int64) if starts.size else np.zeros(0, np.int64)
    n_out = ends - starts + 1
    if starts.size:
        warmest = _segment_reduce(np.maximum, lr.celsius, starts, ends + 1)
        coldest = _segment_reduce(np.minimum, lr.celsius, starts, ends + 1)
    else:
        warmest = coldest = np.zeros(0)
    above = (warmest - upper[ep_leg]) >= (lower[ep_leg] - coldest)
    peak = np.where(above, warmest, coldest)
    back_inside = np.zeros(starts.size, dtype=bool)
    if starts.size:
        back_inside = same_leg_next[ends]
    ended = np.where(back_inside, lr.at[np.minimum(ends + 1, max(lr.size - 1, 0))], OPEN_END)
    cutoff = OPEN_END if as_of is None else micros(pa.array([as_of], pa.timestamp("us", "UTC")))[0]
    arrived = lr.arrived[ep_leg] <= cutoff
    is_open = ~back_inside & ~arrived
    duration = n_out.astype(np.float64) * reading_minutes

    # Shipment of each leg, and cumulative minutes per shipment in start order.
    ship_ids = pa.array(leg_shipment, pa.string())
    unique_ships = pc.unique(ship_ids).sort()
    leg_ship = np.asarray(pc.index_in(ship_ids, value_set=unique_ships).to_numpy(), np.int64)
    ep_ship = leg_ship[ep_leg]
    ep_start = lr.at[starts] if starts.size else np.zeros(0, np.int64)
    order = np.lexsort((ep_start, ep_ship))
    cumulative = np.zeros(starts.size)
    if starts.size:
        ordered = duration[order]
        running = np.cumsum(ordered)
        group_start = np.ones(order.size, dtype=bool)
        group_start[1:] = ep_ship[order][1:] != ep_ship[order][:-1]
        base = np.maximum.accumulate(np.where(group_start, running - ordered, 0.0))
        cumulative[order] = running - base

    ship_list = unique_ships.to_pylist()
    ship_budget = np.array(
        [classes[s].budget_minutes if s in classes else np.nan for s in ship_list], np.float64
    )
    budget = ship_budget[ep_ship]
    left = budget - cumulative

    info = _shipment_info(shipments)
    ep_ship_ids = [ship_list[i] for i in ep_ship.tolist()]
    legs_no = legs["leg_no"].to_pylist()
    loggers = legs["logger_id"].to_pylist()
    episodes = pa.table(
        {
            "shipment_id": pa.array(ep_ship_ids, pa.string()),
            "leg_no": pa.array([legs_no[i] for i in ep_leg.tolist()], pa.int64()),
            "logger_id": pa.array([loggers[i] for i in ep_leg.tolist()], pa.string()),
            "coi": pa.array([info.get(s, {}).get("coi") for s in ep_ship_ids], pa.string()),
            "product_code": pa.array(
                [info.get(s, {}).get("product_code") for s in ep_ship_ids], pa.string()
            ),
            "material": pa.array([info.get(s, {}).get("kind") for s in ep_ship_ids], pa.string()),
            "class_code": pa.array(
                [classes[s].class_code if s in classes else None for s in ep_ship_ids],
                pa.string(),
            ),
            "lower_celsius": _limits(lower[ep_leg]),
            "upper_celsius": _limits(upper[ep_leg]),
            "started_at": to_timestamps(ep_start),
            "ended_at": to_timestamps(ended.astype(np.int64), null=OPEN_END),
            "last_outside_at": to_timestamps(lr.at[ends] if ends.size else np.zeros(0, np.int64)),
            "duration_minutes": pa.array(duration, pa.float64()),
            "readings_outside": pa.array(n_out, pa.int64()),
            "peak_celsius": pa.array(np.round(peak, 3), pa.float64()),
            "direction": pa.array(np.where(above, ABOVE, BELOW).tolist(), pa.string()),
            "budget_minutes": pa.array(budget, pa.float64(), from_pandas=True),
            "budget_minutes_used": pa.array(cumulative, pa.float64()),
            "budget_minutes_left": pa.array(np.nan_to_num(left, nan=0.0), pa.float64()),
            "state": pa.array(np.where(is_open, OPEN, CLOSED).tolist(), pa.string()),
        },
        schema=EPISODE_SCHEMA,
    )
    episodes = episodes.sort_by([("shipment_id", "ascending"), ("started_at", "ascending")])

    ship_minutes = np.bincount(ep_ship, weights=duration, minlength=len(ship_list))
    ship_episodes = np.bincount(ep_ship, minlength=len(ship_list))
    ship_readings = np.bincount(leg_ship, weights=counts, minlength=len(ship_list))
    ship_legs = np.bincount(leg_ship, minlength=len(ship_list))
    shipments_out = pa.table(
        {
            "shipment_id": pa.array(ship_list, pa.string()),
            "coi": pa.array([info.get(s, {}).get("coi") for s in ship_list], pa.string()),
            "product_code": pa.array(
                [info.get(s, {}).get("product_code") for s in ship_list], pa.string()
            ),
            "material": pa.array([info.get(s, {}).get("kind") for s in ship_list], pa.string()),
            "class_code": pa.array(
                [classes[s].class_code if s in classes else None for s in ship_list], pa.string()
            ),
            "lower_celsius": pa.array(
                [classes[s].lower_celsius if s in classes else None for s in ship_list],
                pa.float64(),
            ),
            "upper_celsius": pa.array(
                [classes[s].upper_celsius if s in classes else None for s in ship_list],
                pa.float64(),
            ),
            "budget_minutes": pa.array(ship_budget, pa.float64(), from_pandas=True),
            "minutes_outside": pa.array(ship_minutes, pa.float64()),
            "budget_minutes_left": pa.array(
                ship_budget - ship_minutes, pa.float64(), from_pandas=True
            ),
            "exceeded": pa.array(ship_minutes > np.nan_to_num(ship_budget, nan=np.inf)),
            "episodes": pa.array(ship_episodes, pa.int64()),
            "readings": pa.array(ship_readings.astype(np.int64), pa.int64()),
            "legs": pa.array(ship_legs, pa.int64()),
        },
        schema=BUDGET_SCHEMA,
    )
    return ExcursionReport(
        episodes=episodes,
        shipments=shipments_out,
        readings=lr,
        legs_without_class=int(n_legs - np.count_nonzero(has_class)),
    )


def _limits(values: FloatArray) -> pa.Array:
    finite = np.isfinite(values)
    return pa.array(np.where(finite, values, 0.0), pa.float64(), mask=~finite)


def _shipment_info(shipments: pa.Table) -> dict[str, dict[str, str | None]]:
    rows = shipments.select(list(SHIPMENT_COLUMNS)).to_pylist()
    return {str(r["shipment_id"]): r for r in rows}


def detect_excursions(
    readings: pa.Table,
    legs: pa.Table,
    shipments: pa.Table,
    products: Mapping[str, Product],
    *,
    reading_minutes: float = 1.0,
    as_of: datetime | None = None,
) -> ExcursionReport:
    """Excursion episodes and per-shipment budget use (see the module docstring).

    ``readings``: ``logger_id``, ``observed_at``, ``celsius``; ``legs``: ``shipment_id``,
    ``leg_no``, ``logger_id``, ``departed_at``, ``arrived_at``; ``shipments``:
    ``shipment_id``, ``coi``, ``kind``, ``product_code``; ``products``: product code ->
    :class:`~cmohub.domain.master.Product` (``load_product_catalog()``).
    """
    return find_excursions(
        assign_readings(readings, legs),
        shipments,
        products,
        reading_minutes=reading_minutes,
        as_of=as_of,
    )


def minutes_between(start: Int64Array, stop: Int64Array) -> npt.NDArray[np.float64]:
    """Minutes from ``start`` to ``stop`` (int64 microseconds)."""
    return (stop - start).astype(np.float64) / 60_000_000.0
