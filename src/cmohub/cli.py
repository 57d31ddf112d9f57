"""The ``cmohub`` command.

Each command group lives in its own module under :mod:`cmohub.commands` and is a thin wrapper
over library and pipeline functions. Errors print one line — the error code, what was wrong,
what to do — and exit non-zero; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from cmohub import __version__
from cmohub.commands.demo import demo
from cmohub.commands.map import map_command
from cmohub.errors import HubError
from cmohub.lake import use_system_memory_pool
from cmohub.log import configure_logging

#: Command groups: name -> module that defines ``app`` (a typer.Typer).
GROUPS: dict[str, str] = {
    "coi": "cmohub.commands.coi",
    "contracts": "cmohub.commands.contracts",
    "mappings": "cmohub.commands.mappings",
    "specs": "cmohub.commands.specs",
    "sandbox": "cmohub.commands.sandbox",
    "vault": "cmohub.commands.vault",
    "privacy": "cmohub.commands.privacy",
    "publish": "cmohub.commands.publish",
    "airflow": "cmohub.commands.airflow",
    "logistics": "cmohub.commands.logistics",
    "keys": "cmohub.commands.keys",
    "pgp": "cmohub.commands.pgp",
    "cmo": "cmohub.commands.cmo",
    "clinical": "cmohub.commands.clinical",
    "quarantine": "cmohub.commands.quarantine",
}

app = typer.Typer(
    name="cmohub",
    help="Integration hub for cell and gene therapy programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    _state["verbose"] = verbose
    configure_logging("DEBUG" if verbose else "WARNING")


for _name, _module in GROUPS.items():
    app.add_typer(importlib.import_module(_module).app, name=_name)

app.command("demo")(demo)
app.command("map")(map_command)


def main() -> None:
    """Console-script entry point: run the app, turning HubErrors into one clear line.

    Typer's standalone mode handles usage errors and exit codes; only our own errors are
    translated here: exit 1 for Terminal errors, 2 for Transient ones (worth retrying).
    """
    use_system_memory_pool()
    try:
        app()
    except HubError as error:
        typer.echo(f"error {error}", err=True)
        if _state["verbose"]:
            raise
        sys.exit(2 if error.retryable else 1)
