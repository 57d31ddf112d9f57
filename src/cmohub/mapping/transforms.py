"""Named transforms: the only way a mapping computes a value (pure; no eval).

A mapping lists transforms by name, with arguments::

    transforms:
      - strip
      - {parse_datetime: {format: "%d.%m.%Y %H:%M"}}      # the feed's time zone applies
      - {map_values: {table: {IP: in_process, DONE: complete}}}
      - {celsius_from: {unit: {from: TEMP_UNIT}}}         # an argument read from the record

Every transform is built once per mapping (arguments checked then) and applied per value. A
transform that cannot convert a value raises :class:`TransformError` with a code and a
message that never quotes the value. ``None`` passes through every transform except
``default`` and ``count`` (an empty field stays empty).

Registry (:data:`TRANSFORMS`):

==================== =============================================================================
strip, upper, lower  text clean-up
to_str               any value as text (numbers without trailing .0)
to_float, to_int     numbers (``,`` as decimal separator with ``decimal: ","``); with
                     ``invalid: empty`` a non-number becomes empty (mixed result columns)
to_bool              true/false, yes/no, y/n, 1/0 (``true``/``false`` lists can be given)
date                 a calendar date; ``format`` (strptime, one or a list) or ISO 8601
parse_datetime       an instant; ``format`` (strptime, one or a list) or ISO 8601; naive times are
                     read in ``tz`` or the mapping's ``source.time_zone``; always aware, in UTC
parse_hl7_ts         an HL7 v2 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``), same time rules
celsius_from         a temperature in ``unit`` (C, F, K; °C/°F, Cel, [degF], K; CEL, FAH, KEL) to °C
multiply             times ``factor`` (unit scaling)
map_values           a code through ``table``; unknown codes fail unless ``default`` is given
default              a value when empty
regex_extract        group ``group`` (default 1) of ``pattern``; no match fails
split                part ``index`` after splitting on ``sep``
first, last          first or last of several values
join                 several values joined by ``sep`` (default "")
count                how many values
prefix, suffix       text added before / after
==================== =============================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cmohub.errors import MappingError

Transform = Callable[[Any], Any]


class TransformError(MappingError):
    """A value could not be transformed; ``code`` says how. Never carries the value."""

    code = "MAPPING_TRANSFORM_FAILED"


@dataclass(frozen=True, slots=True)
class TransformContext:
    """What a transform may know besides its arguments: the feed's declared time zone."""

    time_zone: str | None = None


Factory = Callable[[Mapping[str, Any], TransformContext], Transform]
#: Transforms that receive the list of all values a path found (others get one value).
LIST_TRANSFORMS = frozenset({"first", "last", "join", "count"})


def _fail(message: str, code: str = "MAPPING_TRANSFORM_FAILED") -> TransformError:
    return TransformError(message, code=code)


def _arg_error(name: str, message: str) -> MappingError:
    return MappingError(f"transform {name}: {message}", code="MAPPING_TRANSFORM_ARGS")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _skip_none(fn: Transform) -> Transform:
    def apply(value: Any) -> Any:
        return None if value is None else fn(value)

    return apply


def _allow(name: str, args: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise _arg_error(name, f"unknown argument(s) {', '.join(sorted(unknown))}")


# --- text ----------------------------------------------------------------------------------------


def _strip(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("strip", args, set())
    return _skip_none(lambda v: _text(v).strip() or None)


def _upper(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("upper", args, set())
    return _skip_none(lambda v: _text(v).upper())


def _lower(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("lower", args, set())
    return _skip_none(lambda v: _text(v).lower())


def _to_str(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("to_str", args, set())
    return _skip_none(_text)


def _prefix(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("prefix", args, {"text"})
    text = str(args.get("text", ""))
    return _skip_none(lambda v: text + _text(v))


def _suffix(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("suffix", args, {"text"})
    text = str(args.get("text", ""))
    return _skip_none(lambda v: _text(v) + text)


# --- numbers and booleans ------------------------------------------------------------------------


def _number(value: Any, decimal: str) -> float:
    if isinstance(value, bool):
        raise _fail("a boolean is not a number", "MAPPING_NOT_A_NUMBER")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = _text(value).strip().replace(" ", "")
        if decimal != ".":
            text = text.replace(".", "").replace(decimal, ".")
        try:
            number = float(text)
        except ValueError:
            raise _fail("not a number", "MAPPING_NOT_A_NUMBER") from None
    if not math.isfinite(number):
        raise _fail("not a finite number", "MAPPING_NOT_A_NUMBER")
    return number


def _invalid_policy(name: str, args: Mapping[str, Any]) -> bool:
    """``invalid: empty`` turns a value that is not a number into an empty value."""
    policy = args.get("invalid", "fail")
    if policy not in ("fail", "empty"):
        raise _arg_error(name, "invalid must be fail or empty")
    return bool(policy == "empty")


def _to_float(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("to_float", args, {"decimal", "invalid"})
    decimal = str(args.get("decimal", "."))
    lenient = _invalid_policy("to_float", args)

    def apply(value: Any) -> float | None:
        try:
            return _number(value, decimal)
        except TransformError:
            if lenient:
                return None
            raise

    return _skip_none(apply)


def _to_int(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("to_int", args, {"decimal"})
    decimal = str(args.get("decimal", "."))

    def apply(value: Any) -> int:
        number = _number(value, decimal)
        if not number.is_integer():
            raise _fail("not a whole number", "MAPPING_NOT_A_NUMBER")
        return int(number)

    return _skip_none(apply)


def _to_bool(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("to_bool", args, {"true", "false"})
    truthy = {str(v).lower() for v in args.get("true", ("true", "t", "yes", "y", "1"))}
    falsy = {str(v).lower() for v in args.get("false", ("false", "f", "no", "n", "0"))}

    def apply(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = _text(value).strip().lower()
        if text in truthy:
            return True
        if text in falsy:
            return False
        raise _fail("not a yes/no value", "MAPPING_NOT_A_BOOLEAN")

    return _skip_none(apply)


def _multiply(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("multiply", args, {"factor"})
    factor = args.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise _arg_error("multiply", "factor must be a number")
    return _skip_none(lambda v: _number(v, ".") * float(factor))


_CELSIUS = {"c", "°c", "cel", "degc", "celsius"}
_FAHRENHEIT = {"f", "°f", "[degf]", "degf", "fahrenheit", "fah"}  # FAH: UN/CEFACT Rec. 20 (EPCIS)
_KELVIN = {"k", "kelvin", "kel"}


def to_celsius(value: float, unit: str) -> float:
    """``value`` in ``unit`` (C, F, K and their UCUM / symbol spellings) as degrees Celsius."""
    key = unit.strip().lower()
    if key in _CELSIUS:
        return value
    if key in _FAHRENHEIT:
        return (value - 32.0) * 5.0 / 9.0
    if key in _KELVIN:
        return value - 273.15
    raise _fail("unknown temperature unit", "MAPPING_UNIT_UNKNOWN")


def _celsius_from(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("celsius_from", args, {"unit"})
    unit = args.get("unit")
    if not isinstance(unit, str):
        raise _arg_error("celsius_from", "unit (C, F or K, or {from: field}) is required")
    to_celsius(0.0, unit)  # reject an unknown unit when the mapping is compiled
    return _skip_none(lambda v: round(to_celsius(_number(v, "."), unit), 6))


# --- dates and times -----------------------------------------------------------------------------


def _zone(name: str | None, transform: str) -> ZoneInfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _arg_error(transform, f"unknown time zone {name!r}") from None


def _formats(args: Mapping[str, Any], name: str) -> tuple[str, ...]:
    given = args.get("format")
    if given is None:
        return ()
    if isinstance(given, str):
        return (given,)
    if isinstance(given, list) and all(isinstance(f, str) for f in given):
        return tuple(given)
    raise _arg_error(name, "format must be a strptime format or a list of them")


def localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """Read a naive local time in ``zone``; fail for times that do not exist (DST gap).

    Ambiguous times (the repeated hour when clocks go back) are read as the first occurrence.
    """
    aware = naive.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise _fail(
            "local time does not exist in the time zone (clock change)", "MAPPING_TIME_NONEXISTENT"
        )
    return aware


def _finish(parsed: datetime, zone: ZoneInfo | None) -> datetime:
    if parsed.tzinfo is None:
        if zone is None:
            raise _fail(
                "time has no UTC offset and the mapping declares no time zone",
                "MAPPING_TIMEZONE_MISSING",
            )
        parsed = localize(parsed, zone)
    return parsed.astimezone(UTC)


def _parse_datetime(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("parse_datetime", args, {"format", "tz"})
    formats = _formats(args, "parse_datetime")
    zone = _zone(args.get("tz") or ctx.time_zone, "parse_datetime")

    def apply(value: Any) -> datetime:
        if isinstance(value, datetime):
            return _finish(value, zone)
        text = _text(value).strip()
        for fmt in formats:
            try:
                return _finish(datetime.strptime(text, fmt), zone)  # noqa: DTZ007 - zone applied
            except ValueError:
                continue
        if not formats:
            try:
                return _finish(datetime.fromisoformat(text.replace("Z", "+00:00")), zone)
            except ValueError:
                pass
        raise _fail("not a date-time in the expected format", "MAPPING_NOT_A_DATETIME")

    return _skip_none(apply)


def _date(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("date", args, {"format"})
    formats = _formats(args, "date")

    def apply(value: Any) -> date:
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        text = _text(value).strip()
        for fmt in formats:
            try:
                return datetime.strptime(text, fmt).date()  # noqa: DTZ007 - a calendar date
            except ValueError:
                continue
        if not formats:
            try:
                return date.fromisoformat(text)
            except ValueError:
                pass
        raise _fail("not a date in the expected format", "MAPPING_NOT_A_DATE")

    return _skip_none(apply)


_HL7_TS = re.compile(
    r"^(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?(?P<hour>\d{2})?(?P<minute>\d{2})?"
    r"(?P<second>\d{2})?(?:\.(?P<fraction>\d{1,4}))?(?P<offset>[+-]\d{4})?$"
)


def parse_hl7_datetime(text: str, zone: ZoneInfo | None) -> datetime:
    """An HL7 v2 DTM/TS value as an aware UTC datetime (precision below a day is optional)."""
    match = _HL7_TS.match(text.strip().split("^", 1)[0])
    if match is None:
        raise _fail("not an HL7 v2 timestamp", "MAPPING_NOT_A_DATETIME")
    fraction = match["fraction"] or ""
    try:
        naive = datetime(  # noqa: DTZ001 - the offset or time zone is applied below
            int(match["year"]),
            int(match["month"] or 1),
            int(match["day"] or 1),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            int((fraction + "000000")[:6]),
        )
    except ValueError:
        raise _fail("not a valid calendar time", "MAPPING_NOT_A_DATETIME") from None
    offset = match["offset"]
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return naive.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
    return _finish(naive, zone)


def _parse_hl7_ts(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("parse_hl7_ts", args, {"tz"})
    zone = _zone(args.get("tz") or ctx.time_zone, "parse_hl7_ts")
    return _skip_none(lambda v: parse_hl7_datetime(_text(v), zone))


# --- codes and text pieces -----------------------------------------------------------------------


def _map_values(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("map_values", args, {"table", "default", "ignore_case"})
    table = args.get("table")
    if not isinstance(table, Mapping) or not table:
        raise _arg_error("map_values", "table must be a non-empty mapping")
    ignore_case = bool(args.get("ignore_case", False))
    lookup = {(str(k).lower() if ignore_case else str(k)): v for k, v in table.items()}
    has_default = "default" in args
    fallback = args.get("default")

    def apply(value: Any) -> Any:
        key = _text(value).strip()
        key = key.lower() if ignore_case else key
        if key in lookup:
            return lookup[key]
        if has_default:
            return fallback
        raise _fail("code is not in the mapping's table", "MAPPING_VALUE_UNMAPPED")

    return _skip_none(apply)


def _default(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("default", args, {"value"})
    if "value" not in args:
        raise _arg_error("default", "value is required")
    fallback = args["value"]
    return lambda v: fallback if v is None or v == "" else v


def _regex_extract(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("regex_extract", args, {"pattern", "group"})
    try:
        pattern = re.compile(str(args.get("pattern", "")))
    except re.error:
        raise _arg_error("regex_extract", "pattern does not compile") from None
    group = args.get("group", 1)
    if not isinstance(group, (int, str)) or isinstance(group, bool):
        raise _arg_error("regex_extract", "group must be a number or a name")

    def apply(value: Any) -> str:
        match = pattern.search(_text(value))
        if match is None:
            raise _fail("value does not match the pattern", "MAPPING_PATTERN_MISMATCH")
        return match.group(group)

    return _skip_none(apply)


def _split(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("split", args, {"sep", "index"})
    sep = args.get("sep")
    index = args.get("index", 0)
    if not isinstance(sep, str) or not sep or not isinstance(index, int):
        raise _arg_error("split", "sep (text) and index (number) are required")

    def apply(value: Any) -> str | None:
        parts = _text(value).split(sep)
        try:
            return parts[index]
        except IndexError:
            return None

    return _skip_none(apply)


def _first(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("first", args, set())
    return lambda values: values[0] if values else None


def _last(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("last", args, set())
    return lambda values: values[-1] if values else None


def _join(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("join", args, {"sep"})
    sep = str(args.get("sep", ""))
    return lambda values: sep.join(_text(v) for v in values) if values else None


def _count(args: Mapping[str, Any], ctx: TransformContext) -> Transform:
    _allow("count", args, set())
    return len


TRANSFORMS: dict[str, Factory] = {
    "strip": _strip,
    "upper": _upper,
    "lower": _lower,
    "to_str": _to_str,
    "prefix": _prefix,
    "suffix": _suffix,
    "to_float": _to_float,
    "to_int": _to_int,
    "to_bool": _to_bool,
    "multiply": _multiply,
    "celsius_from": _celsius_from,
    "date": _date,
    "parse_datetime": _parse_datetime,
    "parse_hl7_ts": _parse_hl7_ts,
    "map_values": _map_values,
    "default": _default,
    "regex_extract": _regex_extract,
    "split": _split,
    "first": _first,
    "last": _last,
    "join": _join,
    "count": _count,
}
#: Transforms whose output type is a timestamp (for lint: they must be able to add an offset).
TIME_TRANSFORMS = frozenset({"parse_datetime", "parse_hl7_ts"})


def build_transform(name: str, args: Mapping[str, Any] | None, ctx: TransformContext) -> Transform:
    """The transform ``name`` with ``args`` (arguments are checked here, once)."""
    factory = TRANSFORMS.get(name)
    if factory is None:
        raise MappingError(
            f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}",
            code="MAPPING_TRANSFORM_UNKNOWN",
        )
    return factory(dict(args or {}), ctx)


def chain(transforms: Sequence[Transform]) -> Transform:
    def apply(value: Any) -> Any:
        for transform in transforms:
            value = transform(value)
        return value

    return apply
