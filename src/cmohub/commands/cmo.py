"""``cmohub cmo``: CMO feeds — list them, run one once, and play the CMOs in the sandbox."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from cmohub.errors import ConfigError
from cmohub.settings import load_settings

app = typer.Typer(
    help="CMO feeds: SFTP/inbox deliveries, OpenPGP, MES and LIMS exports.", no_args_is_help=True
)


def _day(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint=option) from None


def endpoint_from_environment(conn_id: str) -> Any | None:
    """An SFTP endpoint from ``AIRFLOW_CONN_<ID>`` (JSON form), for runs outside Airflow."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(
            "the connection variable must hold JSON", code="CMO_FEED_CONNECTION_MISSING"
        ) from None
    from cmohub.sensitive import Sensitive

    password = value.get("password")
    return SimpleNamespace(
        conn_id=conn_id,
        host=value.get("host"),
        port=value.get("port"),
        login=value.get("login"),
        password=Sensitive(password) if password else None,
        extra=value.get("extra") or {},
    )


@app.command("feeds")
def feeds() -> None:
    """Every CMO feed the mappings configure: transport, folder, pin, file kinds.

    Example:  cmohub cmo feeds
    """
    from cmohub.crypto.keyring import Keyring
    from cmohub.sources.delivery import load_cmo_feeds

    keyring = Keyring.for_settings(load_settings())
    for name, feed in load_cmo_feeds().items():
        options = feed.options
        where = (
            f"inbox {options.inbox or 'cmo/' + options.cmo}"
            if options.transport == "inbox"
            else f"sftp {feed.connection_id}:{options.remote_dir}"
        )
        pin = options.sender_fingerprint or keyring.pin(name) or "NOT PINNED"
        typer.echo(f"{name}  CMO {options.cmo}  {where}  schedule '{options.schedule}'")
        typer.echo(f"  sender {pin}  checksums {options.checksums}  limit {options.max_bytes} B")
        for route in feed.routes:
            typer.echo(f"  {route.pattern:<22} -> {route.mapping} ({route.dataset})")


@app.command("ingest")
def ingest(
    feed: Annotated[str, typer.Argument(help="The CMO feed, e.g. cmo_acme.")],
    *,
    since: Annotated[
        str | None, typer.Option("--since", help="Ignore files delivered before this day.")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Files delivered before this day (default: tomorrow)."),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run ID (default cli__...).")
    ] = None,
) -> None:
    """Run one CMO feed once: fetch, verify and register, stage, alert. Prints the counts.

    Example:  cmohub cmo ingest cmo_borealis --since 2026-01-01 --until 2026-03-01
    """
    from cmohub.pipelines.cmo import ingest_cmo_feed
    from cmohub.pipelines.context import RunContext
    from cmohub.sources.delivery import load_cmo_feed

    config = load_cmo_feed(feed)
    start = _day(since, "--since")
    end = _day(until, "--until") or datetime.combine(
        datetime.now(tz=UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC
    )
    first = start or end - timedelta(days=1)
    context = RunContext.for_interval(feed, first, end, run_id=run_id)
    sftp = None
    if config.options.transport == "sftp":
        sftp = endpoint_from_environment(config.connection_id)
    result = ingest_cmo_feed(context, feed=feed, since=start, until=end, sftp=sftp)
    print_ingest(result)


def print_ingest(result: dict[str, Any]) -> None:
    fetch, verify, stage = result["fetch"], result["verify"], result["stage"]
    typer.echo(
        f"{fetch['feed']}: {fetch['fetched']} file(s) fetched, {fetch['pending']} pending, "
        f"{fetch['refused']} refused"
    )
    typer.echo(
        f"  files     {verify['accepted']} accepted, {verify['duplicates']} duplicate, "
        f"rejected {verify['rejected'] or 0}"
    )
    typer.echo(
        f"  records   {stage['received']} received = {stage['valid']} staged + "
        f"{stage['quarantined']} quarantined + {stage['duplicates']} duplicate"
    )
    for dataset, rows in stage["staged"].items():
        typer.echo(f"  staged    {dataset:<40} {rows}")
    for code, count in stage["quarantine_codes"].items():
        typer.echo(f"  quarantine {code:<39} {count}")
    typer.echo(f"  alerts    {result['alert']['alerts_sent']} new patient-impact deviation(s)")
    typer.echo(f"  ledger    {stage['ledger']}")


@app.command("sandbox-deliver")
def sandbox_deliver(
    *,
    program: Annotated[
        Path | None,
        typer.Option(
            "--program",
            help="A generated sandbox program (has truth.json; default CMOHUB_SANDBOX_DIR).",
        ),
    ] = None,
    feed: Annotated[
        list[str] | None, typer.Option("--feed", help="Only this feed (repeatable).")
    ] = None,
    inbox: Annotated[
        Path | None, typer.Option("--inbox", help="Inbox root (default CMOHUB_HOME/inbox).")
    ] = None,
) -> None:
    """Play the CMOs: sign and encrypt the program's CMO files into the feeds' inbox folders.

    Creates the hub key and sandbox CMO keys under CMOHUB_HOME/keys/openpgp on first use and
    pins the sandbox CMO keys for their feeds.

    Example:  cmohub sandbox generate --out .cmohub/sandbox && cmohub cmo sandbox-deliver
    """
    from cmohub.crypto.keyring import Keyring
    from cmohub.sandbox.deliver import deliver_program

    settings = load_settings()
    summary = deliver_program(
        program or settings.sandbox_root,
        keyring=Keyring.for_settings(settings),
        inbox_root=inbox or settings.home_dir / "inbox",
        feeds=feed or None,
    )
    for name, count in summary.files.items():
        typer.echo(
            f"{name}: {count} file(s), {summary.bytes[name]} bytes, "
            f"{summary.checksum_files[name]} checksum file(s) -> {summary.targets[name]}"
        )
        typer.echo(f"  signed by {summary.senders[name]} (pinned)")
