"""DAG factory: one ingest DAG per CMO feed, generated from the mappings' configuration.

Every CMO feed configured in ``mappings/`` (``source.options.feed``; see
:mod:`cmohub.sources.delivery`) becomes a DAG named after the feed (``cmo_acme``,
``cmo_borealis``) with the feed's schedule and four tasks::

    fetch  ->  verify  ->  stage  ->  alert (outlet: Asset cmohub.<feed>)

``fetch`` copies complete, new files as delivered (inbox folder, or the SFTP connection the
feed names); ``verify`` checks OpenPGP signatures and decrypts, registers each file once
(duplicates counted as FILE_DUPLICATE) and keeps it raw; ``stage`` routes every file to its
mappings and stages it; ``alert`` raises new patient-impact deviations at once and updates the
feed's Asset, which ``nightly_reconciliation`` waits for. Tasks hand each other counts and lake
paths (XCom), never records.

Building the DAGs reads the mapping YAML files only: no pipeline, pandas, Great Expectations,
pgpy or paramiko import at parse time.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, dag, get_current_context, task

from cmohub.airflow.assets import asset_for
from cmohub.airflow.tasks import DEFAULT_ARGS, run_pipeline
from cmohub.sources.delivery import CmoFeed, load_cmo_feeds

START = pendulum.datetime(2026, 1, 1, tz="UTC")
PIPELINE = "cmohub.pipelines.cmo"


def _doc(feed: CmoFeed) -> str:
    options = feed.options
    where = (
        f"the inbox folder `{options.inbox or 'cmo/' + options.cmo}`"
        if options.transport == "inbox"
        else f"SFTP connection `{feed.connection_id}`, folder `{options.remote_dir}`"
    )
    kinds = "\n".join(f"* `{r.pattern}` → `{r.mapping}` ({r.dataset})" for r in feed.routes)
    return (
        f"CMO {options.cmo} feed `{feed.name}`: files from {where}, OpenPGP signed by the "
        f"pinned sender key and encrypted to the sponsor, checksums `{options.checksums}`, "
        f"at most {options.max_bytes} bytes per file.\n\n{kinds}\n\n"
        "fetch → verify (decrypt, register once, keep raw) → stage (map, verify COIs, "
        f"validate) → alert (patient-impact deviations); updates Asset `cmohub.{feed.name}`."
    )


def build_cmo_dag(feed: CmoFeed) -> DAG:
    """The ingest DAG of one CMO feed."""
    name = feed.name
    uses_sftp = feed.options.transport == "sftp"
    connection = feed.connection_id

    @dag(
        dag_id=name,
        schedule=feed.options.schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,  # runs of one feed never interleave (files are registered once)
        default_args=DEFAULT_ARGS,
        tags=["cmohub", "cmo", feed.options.cmo],
        doc_md=_doc(feed),
    )
    def cmo_feed() -> None:
        @task
        def fetch() -> dict[str, Any]:
            endpoint = None
            if uses_sftp:
                from cmohub.airflow.connections import get_endpoint

                endpoint = get_endpoint(connection)
            return run_pipeline(  # type: ignore[no-any-return]
                f"{PIPELINE}:fetch_deliveries", get_current_context(), feed=name, sftp=endpoint
            )

        @task
        def verify(fetched: Any) -> dict[str, Any]:
            return run_pipeline(  # type: ignore[no-any-return]
                f"{PIPELINE}:verify_deliveries", get_current_context(), feed=name
            )

        @task
        def stage(verified: Any) -> dict[str, Any]:
            return run_pipeline(  # type: ignore[no-any-return]
                f"{PIPELINE}:stage_deliveries", get_current_context(), feed=name
            )

        @task(outlets=[asset_for(name)])
        def alert(staged: Any) -> dict[str, Any]:
            from cmohub.airflow.notify import alert_notifier

            return run_pipeline(  # type: ignore[no-any-return]
                f"{PIPELINE}:alert_deviations",
                get_current_context(),
                feed=name,
                notifier=alert_notifier(),
            )

        alert(stage(verify(fetch())))

    built: DAG = cmo_feed()
    return built


def cmo_feed_dags() -> dict[str, DAG]:
    """One DAG per configured CMO feed, by DAG id."""
    return {name: build_cmo_dag(feed) for name, feed in load_cmo_feeds().items()}
