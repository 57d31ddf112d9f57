"""``make airflow`` prepares the embedded default and points Airflow at the hub's DAGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_standalone_prepares_connections_and_the_dag_folder(tmp_path: Path) -> None:
    out = tmp_path / "ui"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cmohub.cli import main; main()",
            "airflow",
            "standalone",
            "--out",
            str(out),
            "--patients",
            "12",
            "--print-env",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    env = dict(
        line.split("=", 1)
        for line in result.stdout.splitlines()
        if line.startswith(("AIRFLOW", "CMOHUB"))
    )
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert env["AIRFLOW_HOME"] == str(out / "home" / "airflow")
    for conn in (
        "AIRFLOW_CONN_CMOHUB_FHIR",
        "AIRFLOW_CONN_CMOHUB_EPCIS",
        "AIRFLOW_CONN_CMOHUB_COURIER",
    ):
        assert env[conn] == "<redacted>"  # defined, and never printed
    assert (out / "home" / "vault.sqlite").exists()
    assert any((out / "home" / "inbox").rglob("*.pgp"))
