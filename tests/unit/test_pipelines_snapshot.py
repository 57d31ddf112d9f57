from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.store import load_contract
from cmohub.identifiers import Coi, allocate_din
from cmohub.lake import Lake
from cmohub.pipelines.snapshot import load_dataset

COI = str(Coi(fin="A9999", year="26", sequence="QQQ111"))
DIN = str(allocate_din("A9991", 2026, 1))


def batch(status: str, run: str) -> dict[str, object]:
    return {
        "batch_id": "ACM-26-00001",
        "coi": COI,
        "din": DIN,
        "cmo": "A9996",
        "product_code": "SBX-CART-01",
        "started_at": datetime(2026, 1, 20, tzinfo=UTC),
        "completed_at": None,
        "status": status,
        "_feed": "cmo-acme-batches",
        "_run_id": run,
        "_source_ref": f"{'a' * 64}#row=2",
    }


def stage(lake: Lake, day: date, run: str, status: str) -> None:
    contract = load_contract("manufacturing.batch")
    target = lake.staged_dir("manufacturing.batch", feed="cmo-acme-batches", day=day, run_id=run)
    lake.write_parquet(
        target / "part-000000000000.parquet", rows_to_table([batch(status, run)], contract)
    )


def test_latest_delivery_wins_and_later_days_are_ignored(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    contract = load_contract("manufacturing.batch")
    stage(lake, date(2026, 1, 21), "r1", "in_process")
    stage(lake, date(2026, 1, 29), "r2", "complete")
    stage(lake, date(2026, 2, 3), "r3", "aborted")  # after the interval: not read
    table, snapshot = load_dataset(lake, contract, up_to=date(2026, 1, 31))
    assert table.column("status").to_pylist() == ["complete"]
    assert (snapshot.rows_read, snapshot.rows_kept, len(snapshot.parts)) == (2, 1, 2)
    again, same = load_dataset(lake, contract, up_to=date(2026, 1, 31))
    assert same.snapshot_id == snapshot.snapshot_id and again.equals(table)
    later, newer = load_dataset(lake, contract, up_to=date(2026, 2, 28))
    assert (
        later.column("status").to_pylist() == ["aborted"]
        and newer.snapshot_id != snapshot.snapshot_id
    )


def test_an_empty_dataset_has_the_contract_schema(tmp_path: Path) -> None:
    table, snapshot = load_dataset(
        Lake(tmp_path), load_contract("quality.qc_result"), up_to=date(2026, 1, 1)
    )
    assert table.num_rows == 0 and "test_code" in table.column_names and snapshot.parts == []
