"""vault_maintenance through dag.test(): checkpoints and backs up an intact log, refuses a
tampered one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pendulum
import pytest

from cmohub.identity import Actor, SubjectIdentity, TokenizeRequest
from cmohub.sensitive import Sensitive
from cmohub.settings import load_settings
from cmohub.vault import FileKeyProvider, Vault, open_vault

REPO = Path(__file__).resolve().parents[2]
ENGINEER = Actor(name="dana", role="data_engineer")


def dag_run(dag_id: str, when: pendulum.DateTime, conf: dict[str, object] | None = None) -> str:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py")).get_dag(dag_id)
    assert dag is not None
    return str(dag.test(logical_date=when, run_conf=conf).state)


@pytest.fixture
def vault_home(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CMOHUB_HOME", str(home))
    vault = open_vault(load_settings(), initialize=True)
    vault.init(actor=ENGINEER)
    vault.tokenize_many(
        [
            TokenizeRequest(
                SubjectIdentity("urn:cmohub:sandbox:mrn:A9990", Sensitive(f"SBX-MRN-{n}")),
                f"SBX-TE-{n}",
            )
            for n in range(5)
        ],
        actor=ENGINEER,
    )
    vault.close()
    return home


def test_an_intact_log_is_checkpointed_and_keys_rotate_when_due(vault_home: Path) -> None:
    assert dag_run("vault_maintenance", pendulum.datetime(2026, 4, 1, tz="UTC")) == "success"
    vault = open_vault(load_settings())
    try:
        status = vault.status()
        assert status.last_checkpoint is not None and status.last_checkpoint.size >= 2
        assert (status.index_version, status.kek_version) == (2, 2)  # 1 April: a quarter starts
    finally:
        vault.close()
    # The day's backup, taken before the rotation: it opens with the keys of then (v1).
    backup = vault_home / "backups" / "vault-2026-04-01.sqlite"
    copy = Vault.open(f"sqlite:///{backup}", FileKeyProvider(vault_home / "keys"))
    try:
        copied = copy.status()
        assert (copied.index_version, copied.kek_version, copied.cois_active) == (1, 1, 5)
    finally:
        copy.close()


def test_a_tampered_log_fails_the_run_and_is_not_checkpointed(vault_home: Path) -> None:
    vault = open_vault(load_settings())
    before = vault.status().last_checkpoint  # the one `vault init` signed
    vault.close()
    with sqlite3.connect(vault_home / "vault.sqlite") as db:
        db.execute("UPDATE vault_audit SET actor = 'mallory' WHERE seq = 2")
    assert dag_run("vault_maintenance", pendulum.datetime(2026, 4, 2, tz="UTC")) == "failed"
    vault = open_vault(load_settings())
    try:
        assert vault.status().last_checkpoint == before  # nothing signed over the tampering
    finally:
        vault.close()
    assert not (vault_home / "backups").exists()  # nor backed up
