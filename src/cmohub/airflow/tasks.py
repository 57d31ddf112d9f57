"""Run a pipeline function as an Airflow task: the one place errors map to Airflow.

``run_pipeline("cmohub.pipelines.clinical:sync_clinical", context, **kwargs)`` imports the
function inside the task (heavy imports never happen at DAG parse time), builds a
:class:`~cmohub.pipelines.context.RunContext` from the Airflow context (DAG id, run ID, data
interval, try number), calls it and returns its small JSON result for XCom.

Error mapping: a Terminal :class:`~cmohub.errors.HubError` becomes ``AirflowFailException``
(no retry: the input or configuration is wrong and a person must act); a Transient one is
re-raised so Airflow retries with the task's ``retries`` and ``retry_delay``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "cmohub",
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name.startswith("cmohub.pipelines") or not attribute:
        raise ValueError(
            f"pipeline target must be 'cmohub.pipelines.<module>:<function>': {target}"
        )
    return getattr(importlib.import_module(module_name), attribute)


def build_context(airflow_context: Mapping[str, Any]) -> Any:
    """A RunContext from the Airflow task context."""
    from cmohub.pipelines.context import RunContext

    dag_run = airflow_context["dag_run"]
    task_instance = airflow_context["ti"]
    start = airflow_context.get("data_interval_start") or airflow_context["logical_date"]
    end = airflow_context.get("data_interval_end") or start
    return RunContext(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        interval_start=start,
        interval_end=end,
        try_number=getattr(task_instance, "try_number", 1) or 1,
    )


def run_pipeline(target: str, airflow_context: Mapping[str, Any], **kwargs: Any) -> Any:
    """Call a pipeline function with a RunContext; map our errors to Airflow's behaviour."""
    from cmohub.errors import HubError
    from cmohub.lake import use_system_memory_pool

    use_system_memory_pool()
    function = _resolve(target)
    context = build_context(airflow_context)
    try:
        return function(context, **kwargs)
    except HubError as error:
        if error.retryable:
            raise
        raise AirflowFailException(str(error)) from error
