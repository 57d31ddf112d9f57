"""``cmohub clinical``: clinical sources — sync once, ingest files, the MLLP listener, and the
sandbox FHIR server.

Every command is a thin wrapper over :mod:`cmohub.pipelines.clinical` (library imports happen
inside the commands, so ``cmohub --help`` stays fast). Output is counts, codes and lake paths:
never a record.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Clinical sources: FHIR and HL7 v2, pseudonymized at the door.", no_args_is_help=True
)


class Mode(StrEnum):
    SEARCH = "search"
    BULK = "bulk"


class Auth(StrEnum):
    NONE = "none"
    BEARER = "bearer"
    SMART = "smart"


def _instant(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("expected an ISO 8601 date or time", param_hint=what) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    for key in ("received", "valid", "quarantined", "duplicates"):
        if key in result:
            typer.echo(f"{key:>12}: {result[key]}")
    codes = result.get("quarantine_codes") or {}
    for code, count in sorted(codes.items()):
        typer.echo(f"  quarantined {code}: {count}")
    staged = result.get("staged_by_feed") or {}
    for feed, count in staged.items():
        typer.echo(f"  staged {feed}: {count}")
    for key in ("ledger", "window", "mode"):
        if key in result:
            typer.echo(f"{key:>12}: {result[key]}")


def _endpoint(
    url: str | None, auth: Auth, client_id: str | None, key_file: Path | None, version: str
) -> Any:
    if url is None:
        return None
    from cmohub.sensitive import Sensitive
    from cmohub.sources.endpoint import SourceEndpoint

    extra: dict[str, Any] = {"auth": auth.value, "fhir_version": version}
    token = os.environ.get("CMOHUB_FHIR_TOKEN")
    if auth is Auth.SMART:
        if key_file is None:
            raise typer.BadParameter("--auth smart needs --key-file", param_hint="--key-file")
        extra["private_key"] = key_file.read_text(encoding="ascii")
    return SourceEndpoint(
        url, login=client_id, password=Sensitive(token) if token else None, extra=extra
    )


@app.command("sync")
def sync(
    *,
    since: Annotated[
        str | None, typer.Option("--since", help="Interval start (ISO 8601); default until-1h.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Interval end (ISO 8601); default now.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--fhir-url", help="FHIR base URL; default: the sandbox server on loopback."),
    ] = None,
    mode: Annotated[
        Mode, typer.Option("--mode", help="REST search or Bulk $export.")
    ] = Mode.SEARCH,
    auth: Annotated[
        Auth, typer.Option("--auth", help="none, bearer (token in CMOHUB_FHIR_TOKEN) or smart.")
    ] = Auth.NONE,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="SMART Backend Services client ID.")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="SMART private key (PEM, RS384/ES384).")
    ] = None,
    fhir_version: Annotated[str, typer.Option("--fhir-version", help="R4 or R5.")] = "R4",
    register: Annotated[
        str | None, typer.Option("--register", help="Enrollment register (NDJSON).")
    ] = None,
    inbox: Annotated[Path | None, typer.Option("--inbox", help="HL7 v2 inbox folder.")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run ID (default cli__...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the clinical sync once: enrollments, FHIR, HL7 files and the MLLP spool.

    Example:  cmohub clinical sync --since 2026-03-01T00:00Z --until 2026-03-01T01:00Z
    """
    from cmohub.pipelines.clinical import sync_clinical
    from cmohub.pipelines.context import RunContext

    end = _instant(until, "--until") or datetime.now(UTC).replace(second=0, microsecond=0)
    start = _instant(since, "--since") or end - timedelta(hours=1)
    if start > end:
        raise typer.BadParameter("--since is after --until", param_hint="--since")
    context = RunContext.for_interval("clinical_sync", start, end, run_id=run_id)
    endpoint = _endpoint(url, auth, client_id, key_file, fhir_version)
    result = sync_clinical(
        context, endpoint=endpoint, register=register, inbox=inbox, mode=mode.value
    )
    result.pop("results", None)
    _print(result, as_json)


@app.command("ingest")
def ingest(
    files: Annotated[list[Path], typer.Argument(help="FHIR JSON/NDJSON or HL7 v2 files.")],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Stage clinical files at hand (FHIR Bundles/NDJSON/resources, HL7 messages or batches).

    Example:  cmohub clinical ingest orders.hl7 Procedure.ndjson
    """
    from cmohub.pipelines.clinical import (
        ingest_fhir_files,
        ingest_hl7_files,
    )
    from cmohub.pipelines.context import RunContext

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise typer.BadParameter(f"not a file: {', '.join(missing)}", param_hint="FILES")
    now = datetime.now(UTC).replace(microsecond=0)
    hl7 = [
        f
        for f in files
        if f.read_bytes().lstrip(b"\xef\xbb\xbf").startswith((b"MSH", b"FHS", b"BHS"))
    ]
    fhir = [f for f in files if f not in hl7]
    context = RunContext.for_interval(
        "clinical_ingest", now, now, run_id=f"ingest__{now:%Y%m%dT%H%M%S}"
    )
    results = {}
    if fhir:
        results["fhir"] = ingest_fhir_files(context, fhir)
    if hl7:
        results["hl7"] = ingest_hl7_files(context, hl7)
    for name, result in results.items():
        typer.echo(f"== {name}")
        result.pop("feeds", None)
        _print(result, as_json)


@app.command("mllp")
def mllp(
    *,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 2575,
) -> None:
    """Receive HL7 v2 over MLLP: store each message encrypted, then acknowledge it.

    Messages land in the MLLP spool; the next 'cmohub clinical sync' (or the clinical_sync
    DAG) stages them. Bad messages are answered AR with an ERR segment.

    Example:  cmohub clinical mllp --port 2575
    """
    from cmohub.lake import Lake
    from cmohub.settings import load_settings
    from cmohub.sources.hl7 import MllpSpool
    from cmohub.sources.mllp import MllpListener
    from cmohub.sources.raw_clinical import RawClinicalStore
    from cmohub.vault import key_provider_for, open_vault

    settings = load_settings()
    open_vault(settings).close()  # the keys must exist before anything is stored
    lake = Lake(settings.lake_root)
    spool = MllpSpool(
        lake, RawClinicalStore(lake, key_provider_for(settings), policy=settings.raw_clinical)
    )
    listener = MllpListener(spool.store, host=host, port=port).start()
    bound_host, bound_port = listener.address
    typer.echo(f"listening for MLLP on {bound_host}:{bound_port} (Ctrl-C to stop)")
    try:
        listener.serve_forever()
    except KeyboardInterrupt:
        rejected = sum(listener.stats.rejected.values())
        typer.echo(f"stopped: {listener.stats.accepted} accepted, {rejected} rejected")


@app.command("serve-fhir")
def serve_fhir(
    *,
    program: Annotated[
        Path | None,
        typer.Option("--program", help="Sandbox program folder (default: the configured one)."),
    ] = None,
    auth: Annotated[Auth, typer.Option("--auth", help="none, bearer or smart.")] = Auth.NONE,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="SMART client allowed to get tokens.")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="That client's public key (PEM).")
    ] = None,
) -> None:
    """Serve a sandbox program's clinical FHIR data on loopback (search, $export, auth).

    Example:  cmohub clinical serve-fhir --program .cmohub/sandbox
    """
    import time

    from cmohub.sandbox.servers.fhir import FhirSandboxServer
    from cmohub.settings import load_settings

    folder = program or load_settings().sandbox_root
    if not (folder / "clinical" / "fhir").is_dir():
        raise typer.BadParameter(
            "no clinical/fhir folder: generate the program first", param_hint="--program"
        )
    clients = {}
    if auth is Auth.SMART:
        if client_id is None or public_key is None:
            raise typer.BadParameter(
                "--auth smart needs --client-id and --public-key", param_hint="--auth"
            )
        clients[client_id] = public_key.read_text(encoding="ascii")
    server = FhirSandboxServer(folder, auth=auth.value, smart_clients=clients)
    server.start()
    typer.echo(f"FHIR R4 sandbox at {server.fhir_base} (Ctrl-C to stop)")
    if auth is Auth.BEARER:
        typer.echo(f"bearer token (sandbox only): {server.bearer_token}")
    if auth is Auth.SMART:
        typer.echo(f"token endpoint: {server.token_url}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
