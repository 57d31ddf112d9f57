from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmohub.errors import ConfigError, LedgerImbalance, RunLocked
from cmohub.lake import Lake
from cmohub.pipelines.context import RunContext, safe_run_id
from cmohub.pipelines.ledger import FeedCounts, RunLedger
from cmohub.pipelines.locks import run_lock
from cmohub.pipelines.state import load_cursor, save_cursor
from cmohub.settings import load_settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def context(home: Path) -> RunContext:
    return RunContext.for_interval(
        "cmo_acme_mes",
        T0,
        run_id="scheduled__2026-03-01T00:00:00+00:00",
        settings=load_settings(home=home),
    )


def test_airflow_run_ids_become_safe_path_components() -> None:
    assert (
        safe_run_id("scheduled__2026-03-01T00:00:00+00:00")
        == "scheduled__2026-03-01T00-00-00-00-00"
    )
    with pytest.raises(ConfigError):
        safe_run_id(":::")


def test_context_refuses_naive_or_inverted_intervals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RunContext(dag_id="d", run_id="r", interval_start=datetime(2026, 3, 1), interval_end=T0)  # noqa: DTZ001
    with pytest.raises(ConfigError):
        RunContext(dag_id="d", run_id="r", interval_start=T0, interval_end=T0 - timedelta(1))
    ctx = context(tmp_path)
    assert ctx.day.isoformat() == "2026-03-01"
    assert ctx.actor("cmo-acme").role == "service"


def test_ledger_refuses_to_save_when_records_are_lost(tmp_path: Path) -> None:
    ledger = RunLedger(task="ingest")
    ledger.feed("cmo-acme").add(FeedCounts(received=10, valid=7, quarantined=2, duplicates=0))
    with pytest.raises(LedgerImbalance) as caught:
        ledger.save(context(tmp_path))
    assert "received 10" in str(caught.value) and "cmo-acme" in str(caught.value)
    ledger.feed("cmo-acme").add(FeedCounts(received=0, duplicates=1))
    path = ledger.save(context(tmp_path))
    saved = Lake(tmp_path / "lake").read_json(Lake(tmp_path / "lake").path(path))
    assert saved["counts"]["cmo-acme"] == {
        "received": 10,
        "valid": 7,
        "quarantined": 2,
        "duplicates": 1,
        "files": 0,
        "duplicate_files": 0,
    }
    assert ledger.summary()["received"] == 10


def test_cursor_never_moves_backwards(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    assert load_cursor(lake, "clinical-fhir") is None
    save_cursor(lake, "clinical-fhir", T0 + timedelta(hours=2), run_id="r1")
    save_cursor(lake, "clinical-fhir", T0, run_id="backfill")
    assert load_cursor(lake, "clinical-fhir") == T0 + timedelta(hours=2)


HOLDER = """
import sys, time
from pathlib import Path
from cmohub.pipelines.locks import run_lock
with run_lock(Path(sys.argv[1]), "publish:2026-03-01", wait_seconds=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def lock_held_elsewhere(home: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process (another run of the same interval) holding the lock."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), "60"], stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        try:
            yield holder
        finally:
            holder.kill()


def test_second_run_of_the_same_interval_waits_then_fails_cleanly(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path):
        with pytest.raises(RunLocked), run_lock(tmp_path, "publish:2026-03-01", wait_seconds=0.5):
            pass
        with run_lock(tmp_path, "publish:2026-03-02", wait_seconds=0):  # other interval: free
            pass
    with run_lock(tmp_path, "publish:2026-03-01", wait_seconds=5):  # released when it ends
        pass


def test_a_killed_run_does_not_leave_a_stale_lock(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path) as holder:
        holder.kill()  # the run dies while holding the lock
        holder.wait(30)
        with run_lock(tmp_path, "publish:2026-03-01", wait_seconds=5):
            pass
