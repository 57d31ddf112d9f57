from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def airflow_context() -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(
            dag_id="cmo_acme_mes", run_id="scheduled__2026-03-01T00:00:00+00:00"
        ),
        "ti": SimpleNamespace(try_number=2),
        "data_interval_start": T0,
        "data_interval_end": T0.replace(day=2),
        "logical_date": T0,
    }


def test_terminal_errors_fail_the_task_and_transient_ones_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from cmohub.airflow import tasks
    from cmohub.errors import ParseError, SourceUnavailable

    def fake(context: Any, *, error: Exception | None = None) -> dict[str, Any]:
        if error:
            raise error
        return {"run": context.run_id, "try": context.try_number, "day": context.day.isoformat()}

    monkeypatch.setattr(tasks, "_resolve", lambda target: fake)
    result = tasks.run_pipeline("cmohub.pipelines.x:fake", airflow_context())
    assert result == {"run": "scheduled__2026-03-01T00:00:00+00:00", "try": 2, "day": "2026-03-01"}
    with pytest.raises(AirflowFailException, match="PARSE_INVALID"):
        tasks.run_pipeline(
            "cmohub.pipelines.x:fake", airflow_context(), error=ParseError("bad file")
        )
    with pytest.raises(SourceUnavailable):
        tasks.run_pipeline(
            "cmohub.pipelines.x:fake", airflow_context(), error=SourceUnavailable("down")
        )


def test_only_pipeline_functions_can_be_targets() -> None:
    from cmohub.airflow.tasks import _resolve

    with pytest.raises(ValueError, match="pipeline target"):
        _resolve("os:system")
