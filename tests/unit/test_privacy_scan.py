from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cmohub.privacy import canary_tokens, scan_paths

TOKEN = "SBX-MRN-CNRYQ7K2M9X4ZA"


def truth(tmp_path: Path) -> Path:
    path = tmp_path / "truth.json"
    path.write_text(
        json.dumps({"canaries": [{"tokens": {"mrn": TOKEN, "birth_date": "1901-01-02"}}]})
    )
    return path


def test_finds_canaries_inside_compressed_parquet_sqlite_and_text(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(
        pa.table({"note": ["ok", f"x{TOKEN}y"]}), lake / "leak.parquet", compression="zstd"
    )
    pq.write_table(pa.table({"note": ["ok"]}), lake / "clean.parquet", compression="zstd")
    with sqlite3.connect(lake / "airflow.db") as db:
        db.execute("create table xcom (value blob)")
        db.execute("insert into xcom values (?)", (json.dumps({"birth": "1901-01-02"}).encode(),))
    (lake / "task.log").write_text(f"mapped mrn {TOKEN}\n")
    scanned, hits = scan_paths([lake], canary_tokens(truth(tmp_path)))
    assert scanned == 4
    found = {(Path(h.path).name, h.where, h.token_label) for h in hits}
    assert ("leak.parquet", "column note", "mrn") in found
    assert ("airflow.db", "table xcom", "birth_date") in found
    assert ("task.log", "bytes", "mrn") in found
    assert not any(Path(h.path).name == "clean.parquet" for h in hits)
    assert all(TOKEN not in str(h) for h in hits)  # a hit never repeats the identifier


def test_cli_exits_1_on_a_leak_and_0_when_clean(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    clean.mkdir()
    dirty.mkdir()
    (clean / "a.json").write_text("{}")
    (dirty / "a.json").write_text(json.dumps({"mrn": TOKEN}))
    command = [sys.executable, "-c", "from cmohub.cli import main; main()", "privacy", "scan"]
    ok = subprocess.run(
        [*command, str(clean), "--canaries", str(truth(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    bad = subprocess.run(
        [*command, str(dirty), "--canaries", str(truth(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "0 found" in ok.stdout
    assert bad.returncode == 1 and "LEAK" in bad.stdout and TOKEN not in bad.stdout
