"""``cmohub demo`` end to end, as a newcomer runs it (about two minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import need

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cmohub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    need(Path("/usr/bin/gpg").exists() or bool(os.environ.get("PATH")), "gpg")
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = cmohub("demo", "--out", str(out))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def test_every_planted_fault_is_caught_and_nothing_else(demo: tuple[Path, str]) -> None:
    _, output = demo
    assert "precision 1.00  recall 1.00" in output
    assert "MISSED" not in output and "UNEXPECTED" not in output
    for dag_id in (
        "clinical_sync",
        "logistics_sync",
        "cmo_acme",
        "cmo_borealis",
        "vault_maintenance",
        "nightly_reconciliation",
    ):
        assert re.search(rf"{dag_id}\s+success", output), dag_id


def test_the_release_verifies_and_nothing_leaked(demo: tuple[Path, str]) -> None:
    out, output = demo
    assert re.search(r"release \d{4}-\d{2}-\d{2}: verified", output)
    assert re.search(r"canary scan: \d+ files under .*, 0 canary identifiers found", output)
    home = out / "home"
    release = next(p for p in (home / "lake" / "published").iterdir() if not p.name.startswith("."))
    env = {**os.environ, "CMOHUB_HOME": str(home)}
    verified = cmohub("publish", "verify", str(release), env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    audit = cmohub("vault", "audit", "verify", env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_dossier_can_be_printed_from_the_release(demo: tuple[Path, str], tmp_path: Path) -> None:
    out, output = demo
    match = re.search(r"cmohub coi report (CH[A-Z0-9*]{14})", output)
    assert match, "the demo names a COI whose dossier to print"
    env = {**os.environ, "CMOHUB_HOME": str(out / "home")}
    target = tmp_path / "dossier.html"
    result = cmohub("coi", "report", match.group(1), "--out", str(target), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Custody events and handoffs" in target.read_text()
