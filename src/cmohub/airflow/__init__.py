"""The only place cmohub imports Airflow: task adapter, assets, notifier, DAG factories.

DAG files in ``dags/`` import from here (and ``airflow.sdk``, ``pendulum``) and nothing else
at module level. This package itself imports only ``airflow.sdk`` at module level; every
pipeline (and every heavy library behind it) is imported inside the task that runs it, so a
DAG file parses in about the time of an empty one.
"""

from __future__ import annotations

from cmohub.airflow.assets import asset_for
from cmohub.airflow.tasks import DEFAULT_ARGS, run_pipeline

__all__ = ["DEFAULT_ARGS", "asset_for", "run_pipeline"]
