"""Nightly reconciliation: one joined, checked view of every patient journey, signed and published.

Runs at 03:00 UTC, or earlier as soon as every ingest DAG (clinical, logistics, each CMO feed)
has updated its Asset since the last run. ``master_data`` refreshes sites, reagent lots,
operator certifications and products; ``reconcile`` runs every rule over the canonical
datasets staged up to the interval's end; ``publish`` validates, renders the report and
decision packets, encrypts each CMO's records to it, and writes the signed release.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import (
    AssetAll,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    dag,
    get_current_context,
    task,
)

from cmohub.airflow import DEFAULT_ARGS, run_pipeline
from cmohub.airflow.assets import ingest_assets


@dag(
    dag_id="nightly_reconciliation",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(
            "0 3 * * *", timezone="UTC", interval=pendulum.duration(days=1)
        ),
        assets=AssetAll(*ingest_assets()),
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["cmohub", "reconciliation", "publish"],
    doc_md=__doc__,
)
def nightly_reconciliation() -> None:
    @task
    def master_data() -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.master:sync_master", get_current_context()
        )

    @task
    def reconcile(master: dict[str, object]) -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.nightly:reconcile", get_current_context()
        )

    @task
    def publish(reconciled: dict[str, object]) -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.nightly:signed_publish", get_current_context()
        )

    publish(reconcile(master_data()))


nightly_reconciliation()
