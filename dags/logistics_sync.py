"""Logistics sync, every 15 minutes: custody and temperature in, excursion alerts out.

* ``sync_epcis`` — custody events and sensor readings from the EPCIS repository
  (connection ``cmohub_epcis``), from the last cursor minus a lookback;
* ``sync_courier`` — shipments, legs and logger CSV files from the courier API
  (connection ``cmohub_courier``: OAuth2 client ID and secret as login and password);
* ``watch_excursions`` — excursion episodes against each product's temperature class and
  budget, one decision packet per episode (``reports/packets/``), and an alert when an
  excursion opens and once more when it closes (log; e-mail to ``CMOHUB_ALERT_EMAILS``
  through ``smtp_default``; webhook ``cmohub_alert_webhook`` when defined).

Reruns over the same interval stage nothing twice; the last task updates the ``logistics``
asset that the nightly reconciliation waits for.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, get_current_context, task

from cmohub.airflow import DEFAULT_ARGS, asset_for, run_pipeline


@dag(
    dag_id="logistics_sync",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["cmohub", "logistics", "cold-chain"],
    doc_md=__doc__,
)
def logistics_sync() -> None:
    @task
    def sync_epcis() -> dict[str, object]:
        from cmohub.airflow.connections import get_endpoint

        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.logistics:sync_epcis",
            get_current_context(),
            endpoint=get_endpoint("cmohub_epcis"),
        )

    @task
    def sync_courier() -> dict[str, object]:
        from cmohub.airflow.connections import get_endpoint

        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.logistics:sync_courier",
            get_current_context(),
            endpoint=get_endpoint("cmohub_courier"),
        )

    @task(outlets=[asset_for("logistics")])
    def watch_excursions(epcis: dict[str, object], courier: dict[str, object]) -> dict[str, object]:
        from cmohub.airflow.notify import alert_notifier

        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.logistics:watch_excursions",
            get_current_context(),
            notifier=alert_notifier(),
        )

    watch_excursions(sync_epcis(), sync_courier())


logistics_sync()
