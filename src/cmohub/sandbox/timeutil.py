"""Small, fast time helpers shared by the world model and the writers (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

MINUTE = timedelta(minutes=1)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def offset_minutes(when: datetime, zone_name: str) -> int:
    """The UTC offset of ``zone_name`` at the instant ``when``, in minutes."""
    local = when.astimezone(zone(zone_name))
    delta = local.utcoffset()
    return int(delta.total_seconds() // 60) if delta is not None else 0


def offset_text(minutes: int, *, colon: bool = True) -> str:
    """``+01:00`` (or ``+0100`` for HL7)."""
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}" if colon else f"{sign}{hours:02d}{mins:02d}"


def parse_offset(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    hours, mins = text[1:].split(":")
    return sign * (int(hours) * 60 + int(mins))


def local_iso(when: datetime, zone_name: str) -> str:
    """ISO 8601 local time with its offset: ``2026-01-07T14:10:00+01:00``."""
    return iso_at_offset(when, offset_minutes(when, zone_name))


def iso_at_offset(when: datetime, minutes: int) -> str:
    local = when.astimezone(UTC) + timedelta(minutes=minutes)
    return f"{local:%Y-%m-%dT%H:%M:%S}{offset_text(minutes)}"


def local_date(when: datetime, zone_name: str) -> date:
    return when.astimezone(zone(zone_name)).date()


def at_local(day: date, minute_of_day: int, zone_name: str) -> datetime:
    """The UTC instant of ``minute_of_day`` on ``day`` in ``zone_name`` (minute-aligned)."""
    hours, minutes = divmod(minute_of_day, 60)
    local = datetime.combine(day, time(hours, minutes), tzinfo=zone(zone_name))
    return local.astimezone(UTC)


def utc_iso(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"
