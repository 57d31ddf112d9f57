from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from cmohub.errors import ConfigError
from cmohub.lake import Lake, sha256_hex, use_system_memory_pool


def test_layout_is_addressed_by_dataset_feed_day_and_run(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    staged = lake.staged_dir(
        "manufacturing.batch", feed="cmo-acme-mes", day=date(2026, 3, 1), run_id="r1"
    )
    assert (
        staged == tmp_path / "staged/manufacturing.batch/feed=cmo-acme-mes/date=2026-03-01/run=r1"
    )
    assert lake.quarantine_dir(feed="f", day=date(2026, 3, 1), run_id="r1").name == "run=r1"
    with pytest.raises(ConfigError):
        lake.staged_dir("../etc", feed="f", day=date(2026, 3, 1), run_id="r1")
    with pytest.raises(ConfigError):
        lake.path("raw/../../x")


def test_raw_is_content_addressed_and_registered_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    ref, new = lake.put_raw(b"batch_id,coi\n", kind="cmo")
    again, new_again = lake.put_raw(b"batch_id,coi\n", kind="cmo")
    assert (new, new_again) == (True, False)
    assert ref == again and ref.sha256 == sha256_hex(b"batch_id,coi\n")
    assert lake.get_raw(ref) == b"batch_id,coi\n"


def test_parquet_and_json_are_deterministic(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    table = pa.table({"coi": ["CHA999026AB12C3G"], "n": [1]})
    first = lake.write_parquet(lake.path("a/x.parquet"), table)
    second = lake.write_parquet(lake.path("b/x.parquet"), table)
    assert first == second
    lake.write_json(lake.path("a/run.json"), {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a/run.json").read_text().startswith('{\n  "a"')
    assert not list(tmp_path.rglob(".*.tmp-*")), "temporary files left behind"


def test_object_store_urls_work(tmp_path: Path) -> None:
    lake = Lake("memory://cmohub-test-lake")
    target = lake.path("runs/r1/run.json")
    lake.write_json(target, {"ok": True})
    assert lake.read_json(target) == {"ok": True}


def test_pipelines_allocate_with_the_system_pool_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        use_system_memory_pool()
        assert pa.default_memory_pool().backend_name == "mimalloc"  # an operator's choice stands
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        use_system_memory_pool()
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(before)
