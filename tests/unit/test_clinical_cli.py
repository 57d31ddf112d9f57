"""``cmohub clinical sync`` and ``cmohub clinical ingest`` as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )


def test_sync_once_against_the_embedded_sandbox(sandbox_program: Path, tmp_path: Path) -> None:
    env = {"CMOHUB_HOME": str(tmp_path / "home"), "CMOHUB_SANDBOX_DIR": str(sandbox_program)}
    assert run_cli("vault", "init", env=env).returncode == 0
    result = run_cli(
        "clinical", "sync", "--since", "2026-06-01T00:00Z", "--until", "2026-06-01T01:00Z",
        "--json", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["staged_by_feed"]["clinical-fhir-specimen"] == 40
    assert summary["quarantine_codes"] == {"RECORD_MALFORMED": 4}
    assert "SBX-MRN" not in result.stdout + result.stderr


def test_sync_without_a_sandbox_or_endpoint_says_what_to_do(tmp_path: Path) -> None:
    env = {"CMOHUB_HOME": str(tmp_path / "home"), "CMOHUB_SANDBOX_DIR": str(tmp_path / "none")}
    assert run_cli("vault", "init", env=env).returncode == 0
    result = run_cli("clinical", "sync", "--register", str(tmp_path / "missing.ndjson"), env=env)
    assert result.returncode == 1
    assert "CLINICAL_ENROLLMENTS_MISSING" in result.stderr


def test_ingest_reports_codes_for_bad_files(tmp_path: Path) -> None:
    env = {"CMOHUB_HOME": str(tmp_path / "home")}
    assert run_cli("vault", "init", env=env).returncode == 0
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(b"MSH|^~}|A|B|C|D|20260101||OML^O21|X1|P|2.5.1\rPID|1||M1\r")
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Patient",, }')
    result = run_cli("clinical", "ingest", str(bad), str(broken), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "PARSE_HL7_ENCODING" not in result.stdout  # the detail is in the quarantine file
    assert result.stdout.count('"RECORD_MALFORMED": 1') == 2
