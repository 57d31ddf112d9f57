"""``cmohub sandbox generate`` and ``cmohub demo`` as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


def test_generate_writes_a_program_and_prints_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "sbx"
    result = run_cli(
        "sandbox", "generate", "--patients", "8", "--days", "4", "--seed", "3",
        "--faults", "custody_gap,duplicate_file", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "patients             8" in result.stdout
    assert "CUSTODY_GAP" in result.stdout and "FILE_DUPLICATE" in result.stdout
    assert "epcis" in result.stdout and "cmo/A9996" in result.stdout
    truth = json.loads((out / "truth.json").read_text())
    assert {f["fault"] for f in truth["faults"]} == {"custody_gap", "duplicate_file"}
    assert truth["generator"]["start"] == "2026-01-05"


def test_generate_rejects_an_unknown_fault_with_its_code(tmp_path: Path) -> None:
    result = run_cli("sandbox", "generate", "--faults", "gremlins", "--out", str(tmp_path / "x"))
    assert result.returncode == 1
    assert "SANDBOX_FAULT_UNKNOWN" in result.stderr and "custody_gap" in result.stderr
    assert not (tmp_path / "x").exists()


def test_demo_generates_the_sandbox_and_says_where_it_is(tmp_path: Path) -> None:
    result = run_cli("demo", "--patients", "6", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "== sandbox" in result.stdout and "planted faults by rule" in result.stdout
    assert str(tmp_path / "demo" / "sandbox") in result.stdout
    assert (tmp_path / "demo" / "sandbox" / "truth.json").is_file()


def test_without_out_the_program_goes_where_the_hub_reads_it(tmp_path: Path) -> None:
    """CMOHUB_HOME elsewhere: generate and sandbox-deliver agree on HOME/sandbox by default."""
    home = tmp_path / "home"
    env_cli = [sys.executable, "-c", "from cmohub.cli import main; main()"]
    env = {**os.environ, "CMOHUB_HOME": str(home)}
    env.pop("CMOHUB_SANDBOX_DIR", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*env_cli, *args], capture_output=True, text=True, timeout=300, check=False,
            cwd=tmp_path, env=env,
        )  # fmt: skip

    generated = run("sandbox", "generate", "--patients", "3", "--days", "2", "--faults", "none")
    assert generated.returncode == 0, generated.stderr
    assert (home / "sandbox" / "truth.json").exists()
    assert not (tmp_path / ".cmohub").exists()
    delivered = run("cmo", "sandbox-deliver", "--feed", "cmo_acme")
    assert delivered.returncode == 0, delivered.stderr
    assert "cmo_acme:" in delivered.stdout and "signed by" in delivered.stdout
