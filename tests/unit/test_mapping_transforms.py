"""Named transforms: each converts what the feeds send, and fails with a code, never a value."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmohub.errors import MappingError
from cmohub.mapping.transforms import (
    TRANSFORMS,
    TransformContext,
    TransformError,
    build_transform,
    parse_hl7_datetime,
)

NY = TransformContext(time_zone="America/New_York")


def run(name: str, given: Any, ctx: TransformContext = NY, **args: Any) -> Any:
    return build_transform(name, args, ctx)(given)


@pytest.mark.parametrize(
    ("name", "args", "value", "expected"),
    [
        ("strip", {}, "  A  ", "A"),
        ("strip", {}, "   ", None),
        ("upper", {}, "a9990", "A9990"),
        ("lower", {}, "Material", "material"),
        ("to_str", {}, 7.0, "7"),
        ("prefix", {"text": "ACM-"}, "1", "ACM-1"),
        ("suffix", {"text": "/m3"}, "CFU", "CFU/m3"),
        ("to_float", {}, "7.25", 7.25),
        ("to_float", {"decimal": ","}, "1.234,5", 1234.5),
        ("to_float", {"invalid": "empty"}, "Negative", None),
        ("to_int", {}, "3", 3),
        ("to_bool", {}, "Y", True),
        ("to_bool", {}, "n", False),
        ("to_bool", {"true": ["ja"], "false": ["nein"]}, "Ja", True),
        ("multiply", {"factor": 1000}, "0.5", 500.0),
        ("celsius_from", {"unit": "F"}, "-292", -180.0),
        ("celsius_from", {"unit": "K"}, "93.15", -180.0),
        ("celsius_from", {"unit": "Cel"}, -180, -180.0),
        ("map_values", {"table": {"Complete": "complete"}}, "Complete", "complete"),
        ("map_values", {"table": {"A": "a"}, "ignore_case": True}, "a", "a"),
        ("map_values", {"table": {"A": "a"}, "default": None}, "B", None),
        ("default", {"value": "apheresis"}, None, "apheresis"),
        ("regex_extract", {"pattern": r"(\d+)$"}, "LOT-0042", "0042"),
        ("split", {"sep": "^", "index": 1}, "A^B", "B"),
        ("first", {}, ["a", "b"], "a"),
        ("last", {}, ["a", "b"], "b"),
        ("join", {"sep": "-"}, ["a", "b"], "a-b"),
        ("count", {}, ["a", "b"], 2),
        ("date", {}, "2026-04-05", date(2026, 4, 5)),
        ("date", {"format": "%d.%m.%Y"}, "05.04.2026", date(2026, 4, 5)),
    ],
)
def test_transforms(name: str, args: dict[str, Any], value: Any, expected: Any) -> None:
    assert run(name, value, **args) == expected


@pytest.mark.parametrize(
    "name", sorted(set(TRANSFORMS) - {"default", "count", "first", "last", "join"})
)
def test_empty_values_stay_empty(name: str) -> None:
    args: dict[str, Any] = {
        "map_values": {"table": {"a": "b"}},
        "multiply": {"factor": 2},
        "celsius_from": {"unit": "C"},
        "regex_extract": {"pattern": "x"},
        "split": {"sep": ","},
    }.get(name, {})
    assert run(name, None, **args) is None


def test_local_times_are_read_in_the_feeds_time_zone_and_stored_in_utc() -> None:
    assert run("parse_datetime", "2026-01-11 17:29", format="%Y-%m-%d %H:%M") == datetime(
        2026, 1, 11, 22, 29, tzinfo=UTC
    )
    assert run("parse_datetime", "2026-01-11T17:29:00-05:00") == datetime(
        2026, 1, 11, 22, 29, tzinfo=UTC
    )
    berlin = run("parse_datetime", "2026-07-01 12:00", format="%Y-%m-%d %H:%M", tz="Europe/Berlin")
    assert berlin == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert run("parse_datetime", "2026-01-11T17:29:00Z").tzinfo is UTC


def test_times_that_do_not_exist_or_lack_a_zone_fail_with_their_own_codes() -> None:
    with pytest.raises(TransformError) as gap:
        run("parse_datetime", "2026-03-08 02:30", format="%Y-%m-%d %H:%M")  # NY spring forward
    assert gap.value.code == "MAPPING_TIME_NONEXISTENT"
    with pytest.raises(TransformError) as naive:
        run("parse_datetime", "2026-01-11T17:29:00", TransformContext())
    assert naive.value.code == "MAPPING_TIMEZONE_MISSING"
    ambiguous = run("parse_datetime", "2026-11-01 01:30", format="%Y-%m-%d %H:%M")
    assert ambiguous == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # first occurrence (EDT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260301093000", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),  # New York winter
        ("20260301093000+0100", datetime(2026, 3, 1, 8, 30, tzinfo=UTC)),
        ("202603010930", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),
        ("20260301", datetime(2026, 3, 1, 5, 0, tzinfo=UTC)),
        ("20260301093000.1234-0500", datetime(2026, 3, 1, 14, 30, 0, 123400, tzinfo=UTC)),
    ],
)
def test_hl7_timestamps(text: str, expected: datetime) -> None:
    assert run("parse_hl7_ts", text) == expected


# Naive bounds: hypothesis draws naive datetimes; the test writes the offset into the text.
@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)))  # noqa: DTZ001
def test_hl7_timestamps_with_offset_round_trip(moment: datetime) -> None:
    text = moment.strftime("%Y%m%d%H%M%S") + "+0000"
    assert parse_hl7_datetime(text, None) == moment.replace(microsecond=0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "args", "value", "code"),
    [
        ("to_float", {}, "seven", "MAPPING_NOT_A_NUMBER"),
        ("to_float", {}, "nan", "MAPPING_NOT_A_NUMBER"),
        ("to_int", {}, "7.5", "MAPPING_NOT_A_NUMBER"),
        ("to_bool", {}, "perhaps", "MAPPING_NOT_A_BOOLEAN"),
        ("map_values", {"table": {"A": "a"}}, "SECRET-VALUE", "MAPPING_VALUE_UNMAPPED"),
        ("date", {}, "05/04/2026", "MAPPING_NOT_A_DATE"),
        ("parse_datetime", {}, "yesterday", "MAPPING_NOT_A_DATETIME"),
        ("parse_hl7_ts", {}, "2026-03-01", "MAPPING_NOT_A_DATETIME"),
        ("regex_extract", {"pattern": r"^\d+$"}, "SECRET-VALUE", "MAPPING_PATTERN_MISMATCH"),
    ],
)
def test_failures_carry_a_code_and_never_the_value(
    name: str, args: dict[str, Any], value: Any, code: str
) -> None:
    with pytest.raises(TransformError) as raised:
        run(name, value, **args)
    assert raised.value.code == code
    assert str(value) not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("nope", {}),
        ("map_values", {}),
        ("multiply", {"factor": "x"}),
        ("celsius_from", {"unit": "R"}),
        ("parse_datetime", {"tz": "Mars/Olympus"}),
        ("to_float", {"invalid": "ignore"}),
        ("strip", {"extra": 1}),
        ("regex_extract", {"pattern": "("}),
    ],
)
def test_bad_transform_names_and_arguments_fail_when_compiled(
    name: str, args: dict[str, Any]
) -> None:
    with pytest.raises(MappingError):
        build_transform(name, args, NY)
