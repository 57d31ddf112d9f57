"""DAG tests: an Airflow metadata database (SQLite) in the worker's throwaway AIRFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the Airflow metadata database once per test process; return AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / ".migrated").exists():
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            check=True,
            capture_output=True,
            timeout=600,
            env=os.environ.copy(),
        )
        (home / ".migrated").touch()
    return home
