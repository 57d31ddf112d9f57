"""Every DAG imports cleanly, declares owners, tags and retries, and stays light at parse time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
# Imported by a DAG file at parse time, these would make the scheduler slow (a top-level Great
# Expectations import makes a file 86x slower to parse): they belong inside tasks.
HEAVY = (
    "great_expectations",
    "pandas",
    "pyarrow",
    "fhir",
    "hl7apy",
    "pgpy",
    "duckdb",
    "polars",
    "httpx",
    "paramiko",
    "cmohub.pipelines",
    "cmohub.vault",
    "cmohub.contracts",
    "cmohub.formats",
)

# What an empty DAG file costs is the baseline: import airflow.sdk and pendulum first and
# count only what the DAG file adds on top.
PROBE = """
import json, sys, runpy
import airflow.sdk, pendulum
from airflow.sdk import dag, task, Asset
before = set(sys.modules)
runpy.run_path(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_dagbag_has_no_import_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES
    assert not bag.import_errors, bag.import_errors
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            assert task.retries is not None and task.retries >= 1, (
                f"{dag_id}.{task.task_id} retries"
            )


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_nothing_heavy_at_parse_time(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"{path.name} imports at parse time: {heavy[:10]}"
