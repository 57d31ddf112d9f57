"""Records seen before: the de-duplication memory of message and resource feeds.

An HL7 message is the same message when its sending application and control ID (MSH-3 +
MSH-10) are; a FHIR resource version is the same when its type, id and ``meta.versionId`` (or
``lastUpdated``) are. :meth:`SeenRegistry.claim` records keys in the hub's operational
database (``CMOHUB_HUB_DB_URL``, beside the file registry) atomically — a unique constraint
and inserts that do nothing on conflict — and says which are new. A key first claimed by the
*same* run counts as new again, so a retried task stages exactly what its first try did.

Keys are stored as SHA-256 digests of ``feed`` and key: the table holds no control IDs,
resource ids or anything else from a payload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from cmohub.sources.hubdb import (
    create_tables,
    hub_engine,
    insert_ignoring_conflicts,
    reachable,
)

metadata = sa.MetaData()

seen_records = sa.Table(
    "seen_record",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("feed", sa.String(120), nullable=False),
    sa.Column("first_run_id", sa.String(200), nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
)

_CHUNK = 500


def record_digest(feed: str, key: str) -> str:
    return hashlib.sha256(f"{feed}\x00{key}".encode()).hexdigest()


class SeenRegistry:
    """Claim keys for a feed; learn which were seen by an earlier run."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        create_tables(metadata, engine)

    @classmethod
    def from_url(cls, url: str) -> SeenRegistry:
        return cls(hub_engine(url))

    def dispose(self) -> None:
        self._engine.dispose()

    def claim(
        self, feed: str, keys: Sequence[str], *, run_id: str, at: datetime | None = None
    ) -> list[bool]:
        """For each key: True when new (or first claimed by this run), False when a duplicate.

        Repeats of a key inside ``keys`` are duplicates after the first.
        """
        when = at or datetime.now(UTC)
        digests = [record_digest(feed, k) for k in keys]
        unique = list(dict.fromkeys(digests))
        claim = insert_ignoring_conflicts(self._engine, seen_records, "digest")
        owners: dict[str, str] = {}
        with reachable(), self._engine.begin() as connection:
            for start in range(0, len(unique), _CHUNK):
                part = unique[start : start + _CHUNK]
                rows = [
                    {"digest": d, "feed": feed, "first_run_id": run_id, "first_seen_at": when}
                    for d in part
                ]
                connection.execute(claim.values(rows))
                found = connection.execute(
                    sa.select(seen_records.c.digest, seen_records.c.first_run_id).where(
                        seen_records.c.digest.in_(part)
                    )
                )
                owners.update({row.digest: row.first_run_id for row in found})
        out: list[bool] = []
        taken: set[str] = set()
        for digest in digests:
            new = owners.get(digest) == run_id and digest not in taken
            taken.add(digest)
            out.append(new)
        return out
