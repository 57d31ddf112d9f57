"""Read what ingest staged, as of a day: the nightly reconciliation's inputs (I/O).

:func:`load_dataset` reads every staged Parquet part of a canonical dataset whose partition
day is on or before ``up_to`` — later deliveries are ignored, so re-running an interval reads
the same parts and gives the same result — and keeps, for each primary key, the record from
the latest partition (day, then run ID): a corrected record re-delivered later replaces the
earlier one. Its :class:`Snapshot` lists the parts with their SHA-256, and a snapshot ID
(the hash of that list) goes into the release manifest as the input snapshot.

:func:`load_quarantine` reads the quarantine files of the same period, and
:func:`load_ledgers` the run ledgers, for the ingest-level exceptions and the scorecard.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cmohub.contracts.arrow import to_arrow_schema
from cmohub.contracts.model import Contract
from cmohub.lake import Lake, sha256_hex

_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/run=([^/]+)/")


@dataclass
class Snapshot:
    dataset: str
    parts: list[dict[str, Any]] = field(default_factory=list)  # path, sha256, rows
    rows_read: int = 0
    rows_kept: int = 0

    @property
    def snapshot_id(self) -> str:
        text = json.dumps([[p["path"], p["sha256"]] for p in self.parts])
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "snapshot_id": self.snapshot_id,
            "parts": len(self.parts),
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
        }


def _partition(path: str) -> tuple[date, str] | None:
    match = _PARTITION.search(path)
    if match is None:
        return None
    return date.fromisoformat(match.group(1)), match.group(2)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``: columns a later contract version added are filled with nulls."""
    columns = [
        table[field.name]
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(None)).cast(schema)


def load_dataset(
    lake: Lake, contract: Contract, *, up_to: date | None = None, since: date | None = None
) -> tuple[pa.Table, Snapshot]:
    """The dataset from staged partitions in [since, up_to]: the latest version of each record.

    Parts are ordered by partition day, then run ID; for each primary key the row from the
    latest part wins (a corrected record delivered later replaces the earlier one).
    """
    snapshot = Snapshot(contract.dataset)
    schema = to_arrow_schema(contract)
    candidates = []
    for part in lake.iter_files(f"staged/{contract.dataset}", "**/*.parquet"):
        relative = str(part.relative_to(lake.root))
        where = _partition(relative)
        if where is None:
            continue
        if (up_to is not None and where[0] > up_to) or (since is not None and where[0] < since):
            continue
        candidates.append((where, relative, part))
    tables: list[pa.Table] = []
    for order, (_, relative, part) in enumerate(sorted(candidates)):
        data = part.read_bytes()
        table = _conform(lake.read_parquet(part), schema)
        snapshot.parts.append(
            {"path": relative, "sha256": sha256_hex(data), "rows": table.num_rows}
        )
        snapshot.rows_read += table.num_rows
        tables.append(table.append_column("_order", pa.array([order] * table.num_rows, pa.int32())))
    if not tables:
        return schema.empty_table(), snapshot
    combined = pa.concat_tables(tables)
    keys = list(contract.primary_key)
    if keys:
        indexed = combined.append_column("_row", pa.array(range(combined.num_rows), pa.int64()))
        latest = indexed.group_by(keys, use_threads=False).aggregate([("_row", "max")])
        keep = pc.is_in(indexed["_row"], value_set=latest["_row_max"])
        combined = (
            indexed.filter(keep).drop_columns(["_row"]).sort_by([(k, "ascending") for k in keys])
        )
    result = combined.drop_columns(["_order"])
    snapshot.rows_kept = result.num_rows
    return result, snapshot


#: The dag_id of a quarantine replay's run context (and so of its ledger).
REPLAY_DAG = "quarantine_replay"
REPLAY_RUN = re.compile(r"^replay-(?P<root>.+)-(?P<number>\d+)$")


def replay_done(lake: Lake, feed: str, root: str, step: int) -> bool:
    """Whether replay ``step`` of ``root``'s quarantine for ``feed`` finished (its ledger,
    written last by :mod:`cmohub.pipelines.replay`, exists)."""
    return (lake.run_dir(f"replay-{root}-{step}") / f"{replay_ledger_name(feed)}.json").exists()


def replay_ledger_name(feed: str) -> str:
    return f"replay.{feed}"


def latest_replay(lake: Lake, feed: str, root: str) -> int:
    """The step of the last finished replay of ``root``'s quarantine for ``feed`` (0: none)."""
    done = 0
    while replay_done(lake, feed, root, done + 1):
        done += 1
    return done


def replay_chain(run: str) -> tuple[str, int]:
    """(the run at the root of ``run``'s replay chain, ``run``'s step in it: 0 for the root)."""
    match = REPLAY_RUN.fullmatch(run)
    return (match.group("root"), int(match.group("number"))) if match else (run, 0)


def load_quarantine(lake: Lake, *, up_to: date) -> list[dict[str, Any]]:
    """Every record still quarantined in partitions on or before ``up_to``, with its file.

    A run's quarantine is superseded by its latest finished replay (which re-read every record
    still quarantined and quarantined again only those that still fail): of each chain, only
    that replay's file counts, and none when the replay staged them all.
    """
    entries: list[dict[str, Any]] = []
    files: list[tuple[str, str, int, Any]] = []
    latest: dict[tuple[str, str], int] = {}
    for path in lake.iter_files("quarantine", "**/records.jsonl"):
        relative = str(path.relative_to(lake.root))
        match = re.search(r"date=(\d{4}-\d{2}-\d{2})", relative)
        if match is None or date.fromisoformat(match.group(1)) > up_to:
            continue
        found = re.search(r"^quarantine/([^/]+)/.*run=([^/]+)/records\.jsonl$", relative)
        feed, run = (found.group(1), found.group(2)) if found else ("", relative)
        root, step = replay_chain(run)
        files.append((feed, root, step, path))
        if (feed, root) not in latest:
            latest[(feed, root)] = latest_replay(lake, feed, root)
    for feed, root, step, path in files:
        if step != latest[(feed, root)]:
            continue
        relative = str(path.relative_to(lake.root))
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entries.append({**json.loads(line), "_file": relative})
    return entries


def load_ledgers(lake: Lake) -> list[dict[str, Any]]:
    """Every task ledger under ``runs/`` (one JSON per task and run)."""
    ledgers = []
    for path in lake.iter_files("runs", "*/*.json"):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and "counts" in data and "task" in data:
            ledgers.append(data)
    return ledgers
