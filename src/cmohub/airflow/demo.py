"""Run the hub's DAGs once each with ``dag.test()`` (the embedded default's Airflow run).

Used by ``cmohub demo`` in a child process whose environment already holds ``AIRFLOW_HOME``,
the DAG folder and the sandbox connections (Airflow reads its configuration when imported)::

    python -m cmohub.airflow.demo --at 2026-04-21T03:00:00+00:00 clinical_sync logistics_sync ...

It migrates the metadata database (SQLite) if needed, runs each DAG for the given logical date
in the order given, and prints one line per DAG, ``RESULT`` followed by JSON: its id, state and
the state of each task. Airflow's own output goes wherever it goes (the parent logs it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

#: Prefix of the lines the parent reads; everything else on stdout is Airflow's chatter.
RESULT = "CMOHUB-DAG-RESULT"


def migrate(home: Path) -> None:
    """Create or upgrade Airflow's metadata database (idempotent)."""
    marker = home / ".cmohub-migrated"
    if marker.exists():
        return
    from airflow.utils.db import upgradedb

    with contextlib.redirect_stdout(io.StringIO()):
        upgradedb()
    marker.touch()


def run_dag(dag_id: str, logical_date: datetime, dags: Path) -> dict[str, Any]:
    """``dag.test()`` one DAG; its state and each task's returned value."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags))
    dag = bag.get_dag(dag_id)
    if dag is None:
        return {"dag_id": dag_id, "state": "missing", "errors": sorted(bag.import_errors)}
    with contextlib.redirect_stdout(io.StringIO()):
        run = dag.test(logical_date=logical_date)
    results: dict[str, Any] = {}
    for ti in run.get_task_instances():
        results[ti.task_id] = {"state": str(ti.state)}
    return {"dag_id": dag_id, "state": str(run.state), "run_id": run.run_id, "tasks": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmohub.airflow.demo")
    parser.add_argument("--at", required=True, help="logical date (ISO 8601 with offset)")
    parser.add_argument("dag_ids", nargs="+")
    args = parser.parse_args(argv)
    home = Path(os.environ["AIRFLOW_HOME"])
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    migrate(home)
    at = datetime.fromisoformat(args.at)
    failed = 0
    for dag_id in args.dag_ids:
        result = run_dag(dag_id, at, dags)
        failed += result["state"] != "success"
        print(RESULT, json.dumps(result, default=str), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
