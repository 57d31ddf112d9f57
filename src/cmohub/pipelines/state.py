"""Per-feed incremental state (cursors) kept in the lake, updated only after a run succeeds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cmohub.errors import ConfigError
from cmohub.lake import Lake


def load_cursor(lake: Lake, feed: str) -> datetime | None:
    """The high-water mark of the last successful run of ``feed``, if any."""
    path = lake.state_path(feed, "cursor")
    if not path.exists():
        return None
    data: dict[str, Any] = lake.read_json(path)
    value = datetime.fromisoformat(data["high_water_mark"])
    if value.tzinfo is None:
        raise ConfigError("stored cursor has no offset", where=str(path))
    return value


def save_cursor(lake: Lake, feed: str, high_water_mark: datetime, *, run_id: str) -> None:
    """Advance the cursor; never moves it backwards (a backfill must not rewind live syncs)."""
    if high_water_mark.tzinfo is None:
        raise ConfigError("cursor must be timezone-aware")
    current = load_cursor(lake, feed)
    if current is not None and high_water_mark <= current:
        return
    lake.write_json(
        lake.state_path(feed, "cursor"),
        {"feed": feed, "high_water_mark": high_water_mark.isoformat(), "run_id": run_id},
    )
