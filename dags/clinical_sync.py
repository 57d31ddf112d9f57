"""Clinical sync, every hour: orders, collections and infusions in — identifiers stay out.

* ``import_enrollments`` — the sponsor's enrollment register (``CMOHUB_ENROLLMENTS``) into the
  vault, idempotently, so that clinical records tokenize to the COIs the sponsor issued;
* ``sync_fhir`` — the FHIR server of connection ``cmohub_fhir`` (none defined: the sandbox
  server on loopback): ``_lastUpdated`` from the cursor minus a lookback to the end of the
  data interval, REST search or Bulk ``$export`` (extra ``mode``), auth none / bearer / SMART
  Backend Services (extra ``auth``);
* ``sync_hl7`` — HL7 v2 files in ``CMOHUB_HL7_INBOX`` and messages the MLLP listener
  (``cmohub clinical mllp``) spooled;
* ``summarize`` — the run's counts; updates the ``clinical`` asset that the nightly
  reconciliation waits for.

Patient identifiers go to the vault inside the sync tasks and nowhere else: staged rows carry
COIs, XCom carries counts and lake paths. Reruns over the same interval stage the same rows.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, get_current_context, task

from cmohub.airflow import DEFAULT_ARGS, asset_for, run_pipeline


@dag(
    dag_id="clinical_sync",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["cmohub", "clinical", "identity"],
    doc_md=__doc__,
)
def clinical_sync() -> None:
    @task
    def import_enrollments() -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.clinical:import_enrollments", get_current_context()
        )

    @task
    def sync_fhir(enrollments: dict[str, object]) -> dict[str, object]:
        from cmohub.airflow.connections import get_endpoint

        result = run_pipeline(
            "cmohub.pipelines.clinical:sync_fhir",
            get_current_context(),
            endpoint=get_endpoint("cmohub_fhir"),
        )
        result.pop("feeds", None)  # XCom keeps the totals and the ledger path
        return result  # type: ignore[no-any-return]

    @task
    def sync_hl7(enrollments: dict[str, object]) -> dict[str, object]:
        result = run_pipeline("cmohub.pipelines.clinical:sync_hl7", get_current_context())
        result.pop("feeds", None)
        return result  # type: ignore[no-any-return]

    @task(outlets=[asset_for("clinical")])
    def summarize(fhir: dict[str, object], hl7: dict[str, object]) -> dict[str, object]:
        return run_pipeline(  # type: ignore[no-any-return]
            "cmohub.pipelines.clinical:summarize_clinical", get_current_context()
        )

    enrollments = import_enrollments()
    summarize(sync_fhir(enrollments), sync_hl7(enrollments))


clinical_sync()
