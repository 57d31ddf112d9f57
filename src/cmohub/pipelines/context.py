"""The run context a pipeline function receives: which run, which interval, where to write."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from cmohub.errors import ConfigError
from cmohub.identity import Actor
from cmohub.lake import Lake
from cmohub.settings import Settings, load_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_run_id(run_id: str) -> str:
    """A run ID usable as a path component on every store (Airflow's contain ':' and '+')."""
    cleaned = _UNSAFE.sub("-", run_id).strip("-.")
    if not cleaned:
        raise ConfigError("empty run id")
    return cleaned[:120]


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


@dataclass(frozen=True)
class RunContext:
    """Everything a pipeline task needs to know about its run; built by Airflow or the CLI."""

    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime
    settings: Settings = field(default_factory=load_settings)
    clock: Callable[[], datetime] = utc_now
    try_number: int = 1

    def __post_init__(self) -> None:
        for name in ("interval_start", "interval_end"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ConfigError(f"{name} must be timezone-aware")
        if self.interval_end < self.interval_start:
            raise ConfigError("interval_end is before interval_start")

    @property
    def path_run_id(self) -> str:
        return safe_run_id(self.run_id)

    @property
    def day(self) -> date:
        """The (UTC) day the interval starts on: the partition staged data is written under."""
        return self.interval_start.astimezone(UTC).date()

    @property
    def lake(self) -> Lake:
        return Lake(self.settings.lake_root)

    def actor(self, feed: str | None = None) -> Actor:
        """The service identity this run uses with the vault (never allowed to reveal)."""
        return Actor(name=f"pipeline:{self.dag_id}", role="service", feed=feed)

    @classmethod
    def for_interval(
        cls,
        dag_id: str,
        start: datetime,
        end: datetime | None = None,
        *,
        run_id: str | None = None,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> RunContext:
        """A context for a run started outside Airflow (CLI, tests, benchmarks)."""
        end = end or start + timedelta(days=1)
        return cls(
            dag_id=dag_id,
            run_id=run_id or f"cli__{start.astimezone(UTC):%Y%m%dT%H%M%S}",
            interval_start=start,
            interval_end=end,
            settings=settings or load_settings(),
            clock=clock,
        )
