"""cmohub contracts validate and show, as a data steward uses them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.identifiers import Coi

COI = str(Coi("A9990", "26", "AB12C3"))
HEADER = "batch_id,coi,din,cmo,product_code,started_at,completed_at,status\n"


def write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "batches.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_validate_passes_a_clean_file_and_fills_lineage(tmp_path: Path) -> None:
    data = write(
        tmp_path,
        f"B1,{COI},A9993260000019,A9996,SBX-CART-01,2026-01-11T17:29:00-05:00,,complete",
    )
    result = CliRunner().invoke(
        app,
        [
            "contracts",
            "validate",
            "manufacturing.batch",
            str(data),
            "--as-of",
            "2026-02-01T00:00:00Z",
        ],
    )
    assert result.exit_code == 0, result.stdout
    assert "lineage columns added" in result.stdout and "result: passed" in result.stdout


def test_validate_exits_1_on_error_checks_and_writes_report_and_quarantine(
    tmp_path: Path,
) -> None:
    bad_coi = COI[:-1] + ("A" if COI[-1] != "A" else "B")
    data = write(
        tmp_path,
        f"B1,{COI},A9993260000019,A9996,SBX-CART-01,2026-01-11T17:29:00-05:00,,complete",
        f"B2,{bad_coi},A9993260000019,A9996,SBX-CART-01,2026-01-11T17:29:00,,complete",
    )
    report, quarantine = tmp_path / "report.json", tmp_path / "q.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "contracts", "validate", "manufacturing.batch", str(data),
            "--report", str(report), "--quarantine", str(quarantine),
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "COI_CHECK_INVALID" in result.stdout and "result: FAILED" in result.stdout
    saved = json.loads(report.read_text())
    assert saved["counts"] == {
        "received": 2,
        "valid": 1,
        "quarantined": 1,
        "duplicates": 0,
        "balanced": True,
    }
    line = json.loads(quarantine.read_text())
    assert line["source_locator"] == "row=2" and bad_coi not in quarantine.read_text()
    assert bad_coi not in result.stdout


def test_validate_reads_json_lines_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {
        "fin": "A9990",
        "site_name": "Clinic",
        "kind": "clinical",
        "time_zone": "Europe/Berlin",
    }
    jsonl = tmp_path / "sites.jsonl"
    jsonl.write_text(json.dumps(row) + "\n")
    parquet = tmp_path / "sites.parquet"
    pq.write_table(pa.Table.from_pylist([row]), parquet)
    runner = CliRunner()
    for data in (jsonl, parquet):
        result = runner.invoke(app, ["contracts", "validate", "master.site", str(data)])
        assert result.exit_code == 0, result.stdout


def test_show_lists_properties_and_checks() -> None:
    result = CliRunner().invoke(app, ["contracts", "show", "logistics.temperature_reading"])
    assert result.exit_code == 0
    assert "celsius" in result.stdout and "[Cel]" in result.stdout
    assert "observed_at.timezone" in result.stdout
