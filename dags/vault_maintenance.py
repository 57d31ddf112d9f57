"""Vault maintenance: audit verification, a signed checkpoint and a backup every day, quarterly
key rotation."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from cmohub.airflow import DEFAULT_ARGS, run_pipeline


@dag(
    dag_id="vault_maintenance",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["cmohub", "vault", "privacy"],
    params={"force_rotation": Param(False, type="boolean", description="Rotate keys now")},
    doc_md=__doc__,
)
def vault_maintenance() -> None:
    @task
    def verify_and_checkpoint() -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.vault_maintenance:verify_and_checkpoint", get_current_context()
        )

    @task
    def back_up(checkpoint: dict[str, object]) -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.vault_maintenance:back_up", get_current_context()
        )

    @task
    def rotate_keys(backup: dict[str, object]) -> dict[str, object]:
        context = get_current_context()
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.vault_maintenance:rotate_keys_if_due",
            context,
            force=bool(context["params"].get("force_rotation")),
        )

    rotate_keys(back_up(verify_and_checkpoint()))


vault_maintenance()
