"""``cmohub airflow``: the Airflow UI over the hub's DAGs and the sandbox (``make airflow``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run the hub's DAGs in Airflow.", no_args_is_help=True)

DEFAULT_OUT = Path(".cmohub/airflow-ui")


@app.command("standalone")
def standalone(
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Patients.")] = 40,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder (recreated).")] = DEFAULT_OUT,
    port: Annotated[int, typer.Option("--port", help="Airflow API server port.")] = 8080,
    print_env: Annotated[
        bool, typer.Option("--print-env", help="Prepare, print the environment, do not start.")
    ] = False,
) -> None:
    """The Airflow UI (``airflow standalone``) with the hub's DAGs and sandbox connections.

    Prepares what ``cmohub demo`` prepares — a sandbox program, the vault, keys, the CMOs'
    signed deliveries, the FHIR, EPCIS and courier servers on loopback — then starts
    ``airflow standalone`` and keeps the servers up until you stop it (Ctrl-C). Unpause and
    trigger the DAGs in the UI to watch the same run as the demo.

    Example:  cmohub airflow standalone --port 8080
    """
    from cmohub.commands.demo import DemoContext, airflow_env, prepare_embedded

    ctx = DemoContext(out=out.absolute(), patients=patients, seed=1)
    with ctx.stack:
        prepare_embedded(ctx)
        env = airflow_env(ctx)
        env["AIRFLOW__API__PORT"] = str(port)
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{port}"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if print_env:
            for name in sorted(env):
                if name.startswith(("AIRFLOW", "CMOHUB")):
                    shown = "<redacted>" if "CONN" in name else env[name]
                    typer.echo(f"{name}={shown}")
            return
        passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        typer.echo(f"== airflow standalone on http://localhost:{port}")
        typer.echo(f"   login admin, password in {passwords}")
        typer.echo("   Ctrl-C stops Airflow and the sandbox servers.")
        airflow = str(Path(sys.executable).parent / "airflow")
        try:
            subprocess.run([airflow, "standalone"], env=env, check=False)  # noqa: S603 - our venv's airflow
        except KeyboardInterrupt:
            typer.echo("stopped")
