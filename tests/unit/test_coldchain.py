"""Excursions, logger gaps, units and offsets: the vectorized core against plain references.

Property-based: hypothesis draws legs of readings (in class, above, below, missing minutes,
duplicates, shuffled order) and the vectorized functions must agree with a few lines of
obvious Python that read the rules of docs/sandbox.md literally.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmohub.coldchain import (
    assign_readings,
    detect_excursions,
    detect_logger_gaps,
    local_to_utc,
    offset_minutes,
    offset_text,
    to_celsius,
    unit_code,
)
from cmohub.coldchain.units import from_celsius
from cmohub.domain.master import Product, TemperatureClass
from cmohub.errors import InputError
from cmohub.formats.loggers import parse_logger_csv

T0 = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # the night Europe's clocks go forward
UTC_US = pa.timestamp("us", tz="UTC")
COLD = Product(
    product_code="P-COLD",
    product_name="cold",
    starting_material_class=TemperatureClass(code="2-8C", lower_celsius=2.0, upper_celsius=8.0),
    finished_product_class=TemperatureClass(code="cryogenic", upper_celsius=-150.0),
    excursion_budget_minutes=30,
    vein_to_vein_target_days=28,
)
PRODUCTS = {"P-COLD": COLD}
LEVEL = {"in": 5.0, "above": 11.0, "below": 0.5}


def legs_table(rows: list[tuple[str, int, str, int, int | None]]) -> pa.Table:
    """(shipment, leg, logger, departure minute, arrival minute or None)."""
    return pa.table(
        {
            "shipment_id": [r[0] for r in rows],
            "leg_no": pa.array([r[1] for r in rows], pa.int64()),
            "logger_id": [r[2] for r in rows],
            "departed_at": pa.array([T0 + timedelta(minutes=r[3]) for r in rows], UTC_US),
            "arrived_at": pa.array(
                [None if r[4] is None else T0 + timedelta(minutes=r[4]) for r in rows], UTC_US
            ),
        }
    )


def shipments_table(ids: list[str], kind: str = "starting_material") -> pa.Table:
    return pa.table(
        {
            "shipment_id": ids,
            "coi": ["CHA999926AAAAAAB"] * len(ids),
            "kind": [kind] * len(ids),
            "product_code": ["P-COLD"] * len(ids),
        }
    )


def readings_table(rows: list[tuple[str, int, float]]) -> pa.Table:
    return pa.table(
        {
            "logger_id": [r[0] for r in rows],
            "observed_at": pa.array([T0 + timedelta(minutes=r[1]) for r in rows], UTC_US),
            "celsius": pa.array([r[2] for r in rows], pa.float64()),
        }
    )


# --- strategies -----------------------------------------------------------------------------------

segment = st.tuples(st.sampled_from(["in", "above", "below", "gap"]), st.integers(1, 25))


@st.composite
def leg_trace(draw: st.DrawFn) -> tuple[list[tuple[str, int, float]], int]:
    """One logger's readings on a leg from minute 0: runs in class, above, below, missing."""
    minute = 0
    rows: list[tuple[str, int, float]] = []
    for kind, length in draw(st.lists(segment, min_size=1, max_size=8)):
        for _ in range(length):
            if kind != "gap":
                rows.append(("LG-1", minute, LEVEL[kind] + draw(st.sampled_from([0.0, 0.2]))))
            minute += 1
    return rows, minute


def reference_episodes(
    rows: list[tuple[str, int, float]],
) -> list[tuple[int, int | None, int, float]]:
    """(start, first minute back in class or None, readings outside, peak) on one leg."""
    seen: dict[int, float] = {}
    for _, minute, value in rows:  # the first reading of a minute wins
        seen.setdefault(minute, value)
    episodes = []
    current: list[tuple[int, float]] = []
    for minute in sorted(seen):
        value = seen[minute]
        if value < 2.0 or value > 8.0:
            current.append((minute, value))
            continue
        if current:
            episodes.append(_episode(current, minute))
            current = []
    if current:
        episodes.append(_episode(current, None))
    return episodes


def _episode(run: list[tuple[int, float]], back: int | None) -> tuple[int, int | None, int, float]:
    values = [v for _, v in run]
    warm, cold = max(values), min(values)
    peak = warm if warm - 8.0 >= 2.0 - cold else cold
    return run[0][0], back, len(run), peak


# --- excursions ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(trace=leg_trace(), seed=st.integers(0, 2**16), duplicates=st.integers(0, 10))
def test_episodes_and_budget_match_the_literal_reading(
    trace: tuple[list[tuple[str, int, float]], int], seed: int, duplicates: int
) -> None:
    rows, length = trace
    rng = random.Random(seed)
    shuffled = list(rows)
    for _ in range(duplicates if rows else 0):
        shuffled.append(rng.choice(rows))  # the same reading delivered again
    rng.shuffle(shuffled)
    # Out-of-order delivery must not change which copy is "first": make copies identical.
    report = detect_excursions(
        readings_table(shuffled),
        legs_table([("S1", 1, "LG-1", 0, length)]),
        shipments_table(["S1"]),
        PRODUCTS,
    )
    expected = reference_episodes(rows)
    got = [
        (
            int((e["started_at"] - T0).total_seconds() // 60),
            None if e["ended_at"] is None else int((e["ended_at"] - T0).total_seconds() // 60),
            e["readings_outside"],
            e["peak_celsius"],
        )
        for e in report.episodes.to_pylist()
    ]
    assert got == [(s, b, n, pytest.approx(p)) for s, b, n, p in expected]
    outside = sum(n for _, _, n, _ in expected)
    (shipment,) = report.shipments.to_pylist()
    assert shipment["minutes_outside"] == outside
    assert shipment["exceeded"] is (outside > 30)
    assert report.readings.duplicates == len(shuffled) - len({m for _, m, _ in rows})
    used = np.cumsum([n for _, _, n, _ in expected]).tolist()
    assert report.episodes.column("budget_minutes_used").to_pylist() == used


def test_budget_adds_up_over_the_legs_of_a_shipment_in_time_order() -> None:
    readings = [("LG-A", m, 10.0 if 5 <= m < 25 else 5.0) for m in range(0, 60)]
    readings += [("LG-B", m, 10.0 if 100 <= m < 115 else 5.0) for m in range(90, 150)]
    report = detect_excursions(
        readings_table(readings),
        legs_table([("S1", 2, "LG-B", 90, 150), ("S1", 1, "LG-A", 0, 60)]),
        shipments_table(["S1"]),
        PRODUCTS,
    )
    episodes = report.episodes.to_pylist()
    assert [(e["leg_no"], e["duration_minutes"], e["budget_minutes_used"]) for e in episodes] == [
        (1, 20.0, 20.0),
        (2, 15.0, 35.0),
    ]
    assert [e["budget_minutes_left"] for e in episodes] == [10.0, -5.0]
    assert report.exceeded() == ["S1"]


def test_finished_product_is_held_to_its_own_one_sided_class() -> None:
    readings = [("LG-1", m, -180.0 if not 10 <= m < 50 else -120.0) for m in range(0, 60)]
    report = detect_excursions(
        readings_table(readings),
        legs_table([("S9", 1, "LG-1", 0, 60)]),
        shipments_table(["S9"], kind="finished_product"),
        PRODUCTS,
    )
    (episode,) = report.episodes.to_pylist()
    assert (episode["class_code"], episode["lower_celsius"], episode["upper_celsius"]) == (
        "cryogenic",
        None,
        -150.0,
    )
    assert (episode["direction"], episode["peak_celsius"], episode["duration_minutes"]) == (
        "above",
        -120.0,
        40.0,
    )
    assert report.exceeded() == ["S9"]


def test_an_excursion_still_running_in_transit_is_open_until_it_ends_or_the_leg_arrives() -> None:
    readings = [("LG-1", m, 5.0 if m < 30 else 9.5) for m in range(0, 45)]
    args = (legs_table([("S1", 1, "LG-1", 0, None)]), shipments_table(["S1"]), PRODUCTS)
    report = detect_excursions(readings_table(readings), *args, as_of=T0 + timedelta(minutes=45))
    (episode,) = report.episodes.to_pylist()
    assert (episode["state"], episode["ended_at"]) == ("open", None)
    arrived = (legs_table([("S1", 1, "LG-1", 0, 44)]), shipments_table(["S1"]), PRODUCTS)
    (closed,) = detect_excursions(readings_table(readings), *arrived).episodes.to_pylist()
    assert (closed["state"], closed["ended_at"]) == ("closed", None)  # arrived still outside


def test_readings_off_the_leg_or_of_unknown_loggers_count_nowhere() -> None:
    readings = [("LG-1", m, 12.0) for m in (-5, -1, 61, 70)]  # on the dock, before and after
    readings += [("LG-1", m, 5.0) for m in range(0, 61)] + [("LG-X", 3, 30.0)]
    assigned = assign_readings(readings_table(readings), legs_table([("S1", 1, "LG-1", 0, 60)]))
    assert (assigned.size, assigned.unassigned, assigned.duplicates) == (61, 5, 0)
    report = detect_excursions(
        readings_table(readings),
        legs_table([("S1", 1, "LG-1", 0, 60)]),
        shipments_table(["S1"]),
        PRODUCTS,
    )
    assert report.episodes.num_rows == 0


def test_a_logger_reused_on_a_later_leg_gives_each_leg_its_own_readings() -> None:
    readings = [("LG-1", m, 5.0) for m in range(0, 30)] + [
        ("LG-1", m, 9.0) for m in range(100, 135)
    ]
    report = detect_excursions(
        readings_table(readings),
        legs_table([("S1", 1, "LG-1", 0, 29), ("S2", 1, "LG-1", 100, 134)]),
        shipments_table(["S1", "S2"]),
        PRODUCTS,
    )
    assert report.exceeded() == ["S2"]
    assert report.shipments.column("readings").to_pylist() == [30, 35]


def test_unknown_products_are_counted_not_guessed() -> None:
    shipments = shipments_table(["S1"]).set_column(3, "product_code", pa.array(["NOPE"]))
    report = detect_excursions(
        readings_table([("LG-1", m, 40.0) for m in range(0, 60)]),
        legs_table([("S1", 1, "LG-1", 0, 60)]),
        shipments,
        PRODUCTS,
    )
    assert report.episodes.num_rows == 0 and report.legs_without_class == 1


# --- logger gaps --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    minutes=st.lists(st.integers(0, 300), min_size=0, max_size=80),
    arrival=st.integers(0, 320),
)
def test_logger_gaps_match_the_literal_reading(minutes: list[int], arrival: int) -> None:
    readings = [("LG-1", m, 5.0) for m in minutes if m <= arrival]
    report = detect_logger_gaps(
        readings_table(readings), legs_table([("S1", 1, "LG-1", 0, arrival)])
    )
    times = sorted({m for _, m, _ in readings})
    expected = []
    if not times:
        if arrival > 10:
            expected.append(("no_data", 0, arrival))
    else:
        if times[0] > 10:
            expected.append(("start", 0, times[0]))
        expected += [("between", a, b) for a, b in itertools.pairwise(times) if b - a > 10]
        if arrival - times[-1] > 10:
            expected.append(("end", times[-1], arrival))
    got = [
        (
            g["kind"],
            int((g["gap_start"] - T0).total_seconds() // 60),
            int((g["gap_end"] - T0).total_seconds() // 60),
        )
        for g in report.gaps.to_pylist()
    ]
    assert sorted(got, key=lambda g: g[1]) == sorted(expected, key=lambda g: g[1])
    assert report.loggers() == (["LG-1"] if expected else [])


def test_a_silent_logger_in_transit_is_an_open_gap_only_when_judged_as_of_now() -> None:
    readings = readings_table([("LG-1", m, 5.0) for m in range(0, 20)])
    legs = legs_table([("S1", 1, "LG-1", 0, None)])
    assert detect_logger_gaps(readings, legs).gaps.num_rows == 0
    report = detect_logger_gaps(readings, legs, as_of=T0 + timedelta(minutes=45))
    assert report.gaps.select(["kind", "gap_minutes"]).to_pylist() == [
        {"kind": "open", "gap_minutes": 26.0}
    ]


# --- units and offsets --------------------------------------------------------------------------


@given(
    value=st.floats(-300, 400, allow_nan=False),
    unit=st.sampled_from(["CEL", "FAH", "KEL", "Cel", "[degF]", "K", "°F", "celsius"]),
)
def test_conversion_to_celsius_and_back_is_the_identity(value: float, unit: str) -> None:
    back = from_celsius(to_celsius(np.array([value]), unit), unit)
    assert back[0] == pytest.approx(value, abs=1e-9)


def test_fixed_points_of_the_temperature_scales() -> None:
    assert to_celsius([32.0, 212.0, -238.0], "FAH").tolist() == pytest.approx([0.0, 100.0, -150.0])
    assert to_celsius([0.0, 123.15], "KEL").tolist() == pytest.approx([-273.15, -150.0])
    assert unit_code("°C") == unit_code("cel") == "CEL"


@pytest.mark.parametrize(
    ("unit", "code"),
    [
        (None, "TEMPERATURE_UNIT_MISSING"),
        ("", "TEMPERATURE_UNIT_MISSING"),
        ("A93", "TEMPERATURE_UNIT_UNKNOWN"),
        ("KGM", "TEMPERATURE_UNIT_UNKNOWN"),
    ],
)
def test_readings_without_a_temperature_unit_are_refused(unit: str | None, code: str) -> None:
    with pytest.raises(InputError) as raised:
        to_celsius([1.0], unit)
    assert raised.value.code == code


@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=datetime(2060, 1, 1),  # noqa: DTZ001 - the zone comes from timezones=
        timezones=st.just(UTC),
    ),
    quarter_hours=st.integers(-14 * 4, 14 * 4),
)
def test_local_times_with_their_offset_pin_the_same_instant(
    moment: datetime, quarter_hours: int
) -> None:
    minutes = quarter_hours * 15
    moment = moment.replace(microsecond=0)
    wall = moment.astimezone(timezone(timedelta(minutes=minutes))).replace(tzinfo=None)
    utc = local_to_utc(np.array([np.datetime64(wall, "us")]), [minutes])
    assert utc[0] == np.datetime64(moment.replace(tzinfo=None), "us")
    assert offset_minutes(offset_text(minutes)) == minutes
    csv = (
        "serial,shipment,local_time,utc_offset,temp_f\n"
        f"LG-1,S1,{wall:%Y-%m-%d %H:%M:%S},{offset_text(minutes)},41.0\n"
    ).encode()
    parsed = parse_logger_csv(csv)
    assert parsed.observed_at.to_pylist() == [moment]
    assert parsed.celsius.to_pylist() == [5.0]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (None, "TIME_OFFSET_MISSING"),
        ("", "TIME_OFFSET_MISSING"),
        ("+1", "TIME_OFFSET_INVALID"),
        ("+15:00", "TIME_OFFSET_INVALID"),
        ("+01:75", "TIME_OFFSET_INVALID"),
    ],
)
def test_malformed_offsets_are_refused(text: str | None, code: str) -> None:
    with pytest.raises(InputError) as raised:
        offset_minutes(text)
    assert raised.value.code == code
