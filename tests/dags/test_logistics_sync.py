"""logistics_sync through dag.test() against the sandbox EPCIS repository and courier API.

One run after the whole program has happened stages exactly the logistics rows truth.json
expects, quarantines the corrupted COI, writes the decision packet and alerts the planted
excursion once as open and once as closed; a second run 15 minutes later re-reads its
lookback window and stages nothing twice, sends no alert again. No canary identifier
reaches the lake or the Airflow home.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pendulum
import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries

REPO = Path(__file__).resolve().parents[2]
LOGISTICS = (
    "logistics.custody_event",
    "logistics.shipment",
    "logistics.shipment_leg",
    "logistics.temperature_reading",
)
SERVICE = "cmohub-sandbox"
SECRET = "sandbox-secret"


def dag_run(when: pendulum.DateTime) -> str:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "logistics_sync.py")).get_dag("logistics_sync")
    assert dag is not None
    return str(dag.test(logical_date=when).state)


def prepare_home(home: Path, program: Path) -> None:
    """A vault holding the sponsor's enrollments, and the site master staged."""
    from cmohub.identity import Actor
    from cmohub.mapping import read_records
    from cmohub.mapping.store import load_mapping
    from cmohub.pipelines.context import RunContext
    from cmohub.pipelines.ledger import RunLedger
    from cmohub.pipelines.stage import FeedStager
    from cmohub.settings import load_settings
    from cmohub.vault import open_vault
    from cmohub.vault.enrollment import load_enrollments

    actor = Actor(name="test", role="data_engineer")
    settings = load_settings(home=home)
    vault = open_vault(settings, initialize=True)
    try:
        vault.init(actor=actor)
        lines = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
        vault.enroll_many(load_enrollments(lines), actor=actor)
        context = RunContext.for_interval(
            "master", pendulum.datetime(2026, 1, 1, tz="UTC"), run_id="master", settings=settings
        )
        stager = FeedStager(context, "master-sites", port=vault, ledger=RunLedger("master"))
        data = (program / "master" / "sites.csv").read_bytes()
        spec = load_mapping("master-sites")
        stager.stage(hashlib.sha256(data).hexdigest(), read_records(spec.source, data))
        stager.finish()
    finally:
        vault.close()


def staged_rows(lake: Path, dataset: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (lake / "staged" / dataset).rglob("*.parquet"))


def test_logistics_sync_stages_the_program_once_and_alerts_each_state_once(
    airflow_db: Path,
    sandbox_program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cmohub.airflow.connections import connection_env
    from cmohub.sandbox.servers.base import FaultPlan
    from cmohub.sandbox.servers.courier import CourierServer
    from cmohub.sandbox.servers.epcis import EpcisServer

    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    prepare_home(home, sandbox_program)
    truth = json.loads((sandbox_program / "truth.json").read_text())
    # The repository misbehaves now and then: the connectors must ride it out.
    epcis = EpcisServer(
        sandbox_program, faults=FaultPlan(rate_limit_every=5, retry_after_seconds=0)
    )
    courier = CourierServer(sandbox_program, faults=FaultPlan(unavailable_every=9))
    with epcis.running(), courier.running():
        host, port = epcis.base_url.removeprefix("http://").split(":")
        name, value = connection_env("cmohub_epcis", scheme="http", host=host, port=int(port))
        monkeypatch.setenv(name, value)
        host, port = courier.base_url.removeprefix("http://").split(":")
        name, value = connection_env("cmohub_courier", scheme="http", host=host, port=int(port))
        value = json.dumps({**json.loads(value), "login": SERVICE, "password": SECRET})
        monkeypatch.setenv(name, value)

        assert dag_run(pendulum.datetime(2026, 4, 1, tz="UTC")) == "success"

        lake = home / "lake"
        expected = truth["counts"]["datasets"]
        assert {d: staged_rows(lake, d) for d in LOGISTICS} == {d: expected[d] for d in LOGISTICS}
        ledgers = [json.loads(p.read_text()) for p in (lake / "runs").rglob("sync_*.json")]
        codes: dict[str, int] = {}
        for ledger in ledgers:
            for code, count in ledger["quarantine_codes"].items():
                codes[code] = codes.get(code, 0) + count
        assert codes == {"COI_CHECK_INVALID": 1}
        assert epcis.stats.faults.get("429", 0) > 0 and courier.stats.faults.get("503", 0) > 0

        excursion = next(f for f in truth["faults"] if f["rule"] == "TEMPERATURE_EXCURSION")
        sent = json.loads((lake / "state" / "logistics-alerts" / "alerts-sent.json").read_text())
        shipment = excursion["key"]["shipment_id"]
        assert sorted(s.split("|")[1] for s in sent["sent"]) == ["closed", "open"]
        assert all(s.startswith(f"excursion:{shipment}:") for s in sent["sent"])
        packets = list((lake / "reports" / "packets").glob("*.html"))
        assert [p.name.split("-")[0] for p in packets] == [shipment]

        # 15 minutes later: the lookback re-reads, nothing is staged twice, no alert again.
        assert dag_run(pendulum.datetime(2026, 4, 1, 0, 15, tz="UTC")) == "success"
        assert {d: staged_rows(lake, d) for d in LOGISTICS} == {d: expected[d] for d in LOGISTICS}
        again = json.loads((lake / "state" / "logistics-alerts" / "alerts-sent.json").read_text())
        assert again == sent

    scanned = assert_no_canaries([home, airflow_db], sandbox_program / "truth.json")
    assert scanned > 10
