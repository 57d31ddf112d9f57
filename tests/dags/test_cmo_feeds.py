"""The generated CMO feed DAGs: one per feed, wired as configured, and one real dag.test() run."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pendulum
import pytest

from cmohub.crypto.keyring import Keyring
from cmohub.identity import Actor
from cmohub.sandbox.deliver import deliver_program
from cmohub.sandbox.generate import generate_program
from cmohub.settings import load_settings
from cmohub.sources.delivery import load_cmo_feeds
from cmohub.vault import open_vault
from cmohub.vault.enrollment import load_enrollments

REPO = Path(__file__).resolve().parents[2]


def _bag() -> object:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags" / "cmo_feeds.py"))


def test_one_dag_per_configured_cmo_feed_with_its_schedule_and_asset() -> None:
    bag = _bag()
    assert not bag.import_errors  # type: ignore[attr-defined]
    feeds = load_cmo_feeds()
    dags = bag.dags  # type: ignore[attr-defined]
    assert set(dags) == set(feeds)
    for name, feed in feeds.items():
        dag = dags[name]
        assert dag.max_active_runs == 1
        assert feed.options.cmo in dag.tags
        assert [t.task_id for t in dag.topological_sort()] == ["fetch", "verify", "stage", "alert"]
        outlets = dag.get_task("alert").outlets
        assert [o.name for o in outlets] == [f"cmohub.{name}"]
        assert dag.timetable.expression == feed.options.schedule


@pytest.fixture
def borealis_home(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    settings = load_settings()
    program = tmp_path / "program"
    generate_program(program, patients=6, days=4, seed=2, start=date(2026, 1, 5))
    deliver_program(
        program,
        keyring=Keyring.for_settings(settings),
        inbox_root=home / "inbox",
        feeds=["cmo_borealis"],
    )
    actor = Actor("dag-test", "service")
    vault = open_vault(settings, initialize=True)
    try:
        vault.init(actor=actor)
        lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
        vault.enroll_many(load_enrollments(lines), actor=actor)
    finally:
        vault.close()
    return home


def test_a_borealis_run_stages_its_deliveries_and_updates_its_asset(
    borealis_home: Path, airflow_db: Path
) -> None:
    dag = _bag().get_dag("cmo_borealis")  # type: ignore[attr-defined]
    run = dag.test(logical_date=pendulum.datetime(2026, 6, 1, tz="UTC"))
    assert str(run.state) == "success"
    lake = borealis_home / "lake"
    staged = list(lake.glob("staged/manufacturing.batch/feed=cmo-borealis-batches/*/*/*.parquet"))
    assert staged
    ledgers = list(lake.glob("runs/*/cmo_borealis.stage.json"))
    assert len(ledgers) == 1
    with sqlite3.connect(airflow_db / "airflow.db") as db:
        events = db.execute(
            "SELECT count(*) FROM asset_event JOIN asset ON asset.id = asset_event.asset_id "
            "WHERE asset.name = 'cmohub.cmo_borealis'"
        ).fetchone()[0]
    assert events >= 1
