"""clinical_sync through dag.test() against the sandbox FHIR server (bearer auth, faults on).

One run after the whole program stages exactly the clinical rows truth.json expects, with the
malformed FHIR resource and HL7 messages quarantined under RECORD_MALFORMED and their detail
codes; a second run an hour later stages nothing twice. No canary identifier reaches the
lake, the Airflow home (task logs, SQLite metadata database with its XComs) or the output.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pendulum
import pyarrow.parquet as pq
import pytest
from tests.conftest import assert_no_canaries

REPO = Path(__file__).resolve().parents[2]
CLINICAL = ("clinical.order", "clinical.collection", "clinical.infusion")
TOKEN = "sandbox-clinical-token"


def dag_run(when: pendulum.DateTime) -> str:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "clinical_sync.py")).get_dag("clinical_sync")
    assert dag is not None
    return str(dag.test(logical_date=when).state)


def staged_rows(lake: Path, dataset: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (lake / "staged" / dataset).rglob("*.parquet"))


def test_clinical_sync_stages_the_program_once_and_leaks_nothing(
    airflow_db: Path,
    sandbox_program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from cmohub.airflow.connections import connection_env
    from cmohub.identity import Actor
    from cmohub.sandbox.servers.base import FaultPlan
    from cmohub.sandbox.servers.fhir import FhirSandboxServer
    from cmohub.settings import load_settings
    from cmohub.vault import open_vault

    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    monkeypatch.setenv("CMOHUB_SANDBOX_DIR", str(sandbox_program))
    with open_vault(load_settings(), initialize=True) as vault:
        vault.init(actor=Actor("test", "data_engineer"))
    truth = json.loads((sandbox_program / "truth.json").read_text())
    faults = FaultPlan(
        rate_limit_every=4,
        retry_after_seconds=0,
        unavailable_every=7,
        malformed_paths={"/r4/Specimen"},
    )
    server = FhirSandboxServer(sandbox_program, faults=faults, auth="bearer", bearer_token=TOKEN)
    with server.running():
        host, port = server.base_url.removeprefix("http://").split(":")
        name, value = connection_env(
            "cmohub_fhir", scheme="http", host=host, port=int(port), base_path="/r4",
            auth="bearer", fhir_version="R4", page_size=15,
        )  # fmt: skip
        monkeypatch.setenv(name, json.dumps({**json.loads(value), "password": TOKEN}))

        assert dag_run(pendulum.datetime(2026, 6, 1, tz="UTC")) == "success"

        lake = home / "lake"
        expected = truth["counts"]["datasets"]
        assert {d: staged_rows(lake, d) for d in CLINICAL} == {d: expected[d] for d in CLINICAL}
        ledgers = [json.loads(p.read_text()) for p in (lake / "runs").rglob("sync_*.json")]
        codes: Counter[str] = Counter()
        for ledger in ledgers:
            codes.update(ledger["quarantine_codes"])
        malformed = [f for f in truth["faults"] if f["rule"] == "RECORD_MALFORMED"]
        clinical = [f for f in malformed if f["key"]["file"].startswith("clinical/")]
        assert codes == {"RECORD_MALFORMED": len(clinical)}
        details = Counter(
            json.loads(line)["reasons"][1]["code"]
            for path in (lake / "quarantine").rglob("records.jsonl")
            for line in path.read_text().splitlines()
        )
        assert details == {
            "PARSE_FHIR_INVALID": 1,
            "PARSE_HL7_ENCODING": 1,
            "PARSE_HL7_NUL": 1,
            "PARSE_HL7_TRUNCATED": 1,
        }
        assert server.stats.faults.get("429", 0) > 0 and server.stats.faults.get("malformed") == 1

        # An hour later: the new window and the lookback re-read nothing new.
        assert dag_run(pendulum.datetime(2026, 6, 1, 1, tz="UTC")) == "success"
        assert {d: staged_rows(lake, d) for d in CLINICAL} == {d: expected[d] for d in CLINICAL}

    summaries = sorted((home / "lake" / "runs").rglob("clinical.json"))
    assert len(summaries) == 2
    scanned = assert_no_canaries([home, airflow_db], sandbox_program / "truth.json")
    assert scanned > 10
    output = capfd.readouterr()
    tokens = [t for c in truth["canaries"] for t in c["tokens"].values()]
    assert not [t for t in tokens if t in output.out or t in output.err]
