"""The file registry: every received file registered once, by the SHA-256 of its bytes.

A file seen again — same bytes, under any name, on any day, from any run — is a *duplicate*,
not a second delivery: :meth:`FileRegistry.register` says so atomically (a unique constraint
and an insert that does nothing on conflict), even when two runs receive it at the same moment.
The registry lives in the hub's operational database (SQLite by default, PostgreSQL in
production) and holds file metadata only, never content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from cmohub.errors import ConfigError
from cmohub.sources.hubdb import (
    create_tables,
    hub_engine,
    insert_ignoring_conflicts,
    reachable,
)

metadata = sa.MetaData()

received_files = sa.Table(
    "received_file",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("feed", sa.String(120), nullable=False),
    sa.Column("name", sa.String(500), nullable=False),  # name at first delivery
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(200), nullable=False),
    sa.Column("status", sa.String(40), nullable=False),  # accepted / rejected:<code>
)

file_sightings = sa.Table(
    "file_sighting",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("feed", sa.String(120), nullable=False),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(200), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Registration:
    sha256: str
    new: bool  # False: the same bytes were registered before (a duplicate delivery)
    first_feed: str
    first_name: str
    first_received_at: datetime
    first_run_id: str


class FileRegistry:
    """Register received files once; list what was received."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        create_tables(metadata, engine)

    @classmethod
    def from_url(cls, url: str) -> FileRegistry:
        return cls(hub_engine(url))

    def register(
        self, sha256: str, *, size: int, feed: str, name: str, received_at: datetime, run_id: str
    ) -> Registration:
        """Record a delivery of ``sha256``; ``new`` is False when it was registered before."""
        if received_at.tzinfo is None:
            raise ConfigError("received_at must be timezone-aware")
        row = {
            "sha256": sha256,
            "size": size,
            "feed": feed,
            "name": name,
            "received_at": received_at,
            "run_id": run_id,
            "status": "accepted",
        }
        statement = insert_ignoring_conflicts(self._engine, received_files, "sha256").values(**row)
        with reachable(), self._engine.begin() as connection:
            inserted = connection.execute(statement).rowcount == 1
            connection.execute(
                file_sightings.insert().values(
                    sha256=sha256, feed=feed, name=name, seen_at=received_at, run_id=run_id
                )
            )
            first = connection.execute(
                sa.select(received_files).where(received_files.c.sha256 == sha256)
            ).one()
        return Registration(
            sha256=sha256,
            new=inserted,
            first_feed=first.feed,
            first_name=first.name,
            first_received_at=_aware(first.received_at),
            first_run_id=first.run_id,
        )

    def register_many(
        self,
        files: Sequence[tuple[str, int, str]],
        *,
        feed: str,
        received_at: datetime,
        run_id: str,
    ) -> list[Registration]:
        """:meth:`register` for many ``(sha256, size, name)`` in one transaction, in order.

        The same bytes twice in ``files`` are new once. For feeds that receive many small files
        per run (HL7 messages): one commit instead of one per file.
        """
        if received_at.tzinfo is None:
            raise ConfigError("received_at must be timezone-aware")
        if not files:
            return []
        unique = sorted({sha for sha, _, _ in files})
        rows = list(
            {
                sha: {
                    "sha256": sha,
                    "size": size,
                    "feed": feed,
                    "name": name,
                    "received_at": received_at,
                    "run_id": run_id,
                    "status": "accepted",
                }
                for sha, size, name in reversed(files)  # the first name of each wins
            }.values()
        )
        select_firsts = sa.select(received_files).where(received_files.c.sha256.in_(unique))
        with reachable(), self._engine.begin() as connection:
            before = {row.sha256 for row in connection.execute(select_firsts)}
            connection.execute(
                insert_ignoring_conflicts(self._engine, received_files, "sha256"), rows
            )
            connection.execute(
                file_sightings.insert(),
                [
                    {"sha256": sha, "feed": feed, "name": name, "seen_at": received_at,
                     "run_id": run_id}
                    for sha, _, name in files
                ],
            )  # fmt: skip
            firsts = {row.sha256: row for row in connection.execute(select_firsts)}
        out: list[Registration] = []
        claimed: set[str] = set()
        for sha256, _, _ in files:
            first = firsts[sha256]
            # New: absent before this transaction, inserted by it (not by a concurrent run),
            # and the first of its bytes in ``files``.
            new = sha256 not in before and first.run_id == run_id and sha256 not in claimed
            claimed.add(sha256)
            out.append(
                Registration(
                    sha256=sha256,
                    new=new,
                    first_feed=first.feed,
                    first_name=first.name,
                    first_received_at=_aware(first.received_at),
                    first_run_id=first.run_id,
                )
            )
        return out

    def mark(self, sha256: str, status: str) -> None:
        """Record the outcome of a registered file (``accepted`` or ``rejected:<code>``)."""
        with self._engine.begin() as connection:
            connection.execute(
                received_files.update()
                .where(received_files.c.sha256 == sha256)
                .values(status=status)
            )

    def status(self, sha256: str) -> str | None:
        """The recorded outcome of a registered file (None when never registered).

        A file whose first run stopped before its outcome was recorded still says what
        ``mark`` last wrote (e.g. ``received``), so a later run can finish it instead of
        counting it as a duplicate.
        """
        with self._engine.connect() as connection:
            value = connection.execute(
                sa.select(received_files.c.status).where(received_files.c.sha256 == sha256)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def deliveries(self, feed: str, since: datetime, until: datetime) -> list[dict[str, object]]:
        """Files first received for ``feed`` in [since, until), oldest first."""
        query = (
            sa.select(received_files)
            .where(received_files.c.feed == feed)
            .where(received_files.c.received_at >= since)
            .where(received_files.c.received_at < until)
            .order_by(received_files.c.received_at, received_files.c.sha256)
        )
        with self._engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def file_names(self) -> dict[str, str]:
        """Every registered file's SHA-256 -> the name it first arrived under."""
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(received_files.c.sha256, received_files.c.name))
            return {r.sha256: r.name for r in rows}

    def all_sightings(self) -> list[dict[str, object]]:
        """Every delivery of every file, oldest first (what duplicate detection reads)."""
        query = sa.select(file_sightings).order_by(file_sightings.c.id)
        with self._engine.connect() as connection:
            return [
                {**dict(r._mapping), "seen_at": _aware(r.seen_at)}
                for r in connection.execute(query)
            ]

    def sightings(self, sha256: str) -> int:
        with self._engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).where(file_sightings.c.sha256 == sha256)
                ).scalar_one()
            )


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; we only ever store UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
