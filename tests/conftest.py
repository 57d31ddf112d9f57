"""Shared test helpers.

``need(condition, reason)`` is the one place that decides skip versus fail for tests that
need a real component (PostgreSQL, OpenSSH, GnuPG, the shared corpus): on a developer's
laptop they skip with the reason; when ``CI`` is set they fail, so CI can never pass by
skipping.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpus"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Airflow reads its configuration when first imported: give every test process (each xdist
# worker) its own throwaway AIRFLOW_HOME before anything imports airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cmohub-test-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def need(condition: bool, reason: str) -> None:
    """Skip (developer laptop) or fail (CI) when a required component is missing."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared public corpus (../shared/corpus); never copied into the repository."""
    need(CORPUS_DIR.is_dir(), f"shared corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


@pytest.fixture
def cmohub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated CMOHUB_HOME for one test."""
    home = tmp_path / "cmohub-home"
    home.mkdir()
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def sandbox_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated sandbox program (40 patients, every fault), once per test process.

    Read it, never write into it: tests that change files copy what they need first.
    """
    from datetime import date

    from cmohub.sandbox.generate import generate_program

    out = tmp_path_factory.mktemp("sandbox") / "program"
    generate_program(out, patients=40, days=30, seed=1, start=date(2026, 1, 5))
    return out


def assert_no_canaries(paths: list[Path], truth: Path, *, exclude: list[Path] | None = None) -> int:
    """Fail with the hits if any canary identifier appears under ``paths``; return files scanned."""
    from cmohub.privacy import canary_tokens, scan_paths

    scanned, hits = scan_paths(paths, canary_tokens(truth), exclude=exclude or [])
    assert not hits, "canary identifiers leaked:\n" + "\n".join(map(str, hits))
    return scanned
