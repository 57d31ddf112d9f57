"""``cmohub logistics``: custody and temperature sync, excursions and decision packets."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Logistics: EPCIS custody, courier shipments, logger temperatures, excursions.",
    no_args_is_help=True,
)

SECRET_ENV = "CMOHUB_COURIER_CLIENT_SECRET"  # noqa: S105 - the variable's name, not a secret


def _instant(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("expected an ISO 8601 date-time", param_hint=name) from None
    if value.tzinfo is None:
        raise typer.BadParameter("give a UTC offset (…Z or …+01:00)", param_hint=name)
    return value


def _context(until: datetime | None, run_id: str | None) -> Any:
    from cmohub.pipelines.context import RunContext

    end = until or datetime.now(tz=UTC)
    return RunContext.for_interval(
        "logistics_sync",
        end - timedelta(minutes=15),
        end,
        run_id=run_id or f"cli__{end.astimezone(UTC):%Y%m%dT%H%M%S}",
    )


@app.command("sync")
def sync(
    *,
    epcis_url: Annotated[
        str | None, typer.Option("--epcis-url", help="EPCIS 2.0 query interface base URL.")
    ] = None,
    courier_url: Annotated[
        str | None, typer.Option("--courier-url", help="Courier API base URL.")
    ] = None,
    courier_client_id: Annotated[
        str | None,
        typer.Option(
            "--courier-client-id",
            help=f"OAuth2 client ID of the courier API (the secret is read from {SECRET_ENV}).",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Backfill from this instant (default: cursor).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Up to this instant (default: now).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run ID (default: cli__<until>).")
    ] = None,
) -> None:
    """Pull custody events, sensor readings, shipments and logger files, and stage them.

    Example:  cmohub logistics sync --epcis-url http://127.0.0.1:8081 \\
                --courier-url http://127.0.0.1:8082 --courier-client-id cmohub-sandbox \\
                --since 2026-01-01T00:00:00Z --until 2026-03-01T00:00:00Z
    """
    from cmohub.pipelines.logistics import sync_courier, sync_epcis
    from cmohub.sensitive import Sensitive
    from cmohub.sources.endpoint import SourceEndpoint

    if not epcis_url and not courier_url:
        raise typer.BadParameter("give --epcis-url, --courier-url or both")
    context = _context(_instant(until, "--until"), run_id)
    start = _instant(since, "--since")
    if epcis_url:
        result = sync_epcis(context, endpoint=SourceEndpoint(epcis_url), since=start)
        typer.echo(_line("epcis", result))
    if courier_url:
        secret = os.environ.get(SECRET_ENV)
        endpoint = SourceEndpoint(
            courier_url,
            login=courier_client_id,
            password=Sensitive(secret) if secret else None,
            extra={} if courier_client_id else {"auth": "none"},
        )
        result = sync_courier(context, endpoint=endpoint, since=start)
        typer.echo(_line("courier", result))


def _line(name: str, result: dict[str, Any]) -> str:
    codes = ", ".join(f"{k} {v}" for k, v in sorted(result["quarantine_codes"].items()))
    return (
        f"{name}: {result['received']} received, {result['valid']} staged, "
        f"{result['quarantined']} quarantined{f' ({codes})' if codes else ''}, "
        f"{result['duplicates']} duplicates — ledger {result['ledger']}"
    )


@app.command("watch")
def watch(
    *,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Judge the data as of this instant.")
    ] = None,
) -> None:
    """Detect excursions in what is staged, write decision packets, alert once per state.

    Example:  cmohub logistics watch --as-of 2026-03-01T00:00:00Z
    """
    from cmohub.pipelines.logistics import watch_excursions

    context = _context(_instant(as_of, "--as-of"), None)
    result = watch_excursions(context)
    typer.echo(
        f"{result['episodes']} excursion(s), {result['open']} open; budget exceeded on "
        f"{', '.join(result['exceeded']) or 'no shipment'}; {result['alerts_sent']} alert(s) sent"
    )
    for packet in result["packets"]:
        typer.echo(f"  packet {context.settings.lake_root}/{packet}")


@app.command("packet")
def packet(
    shipment: Annotated[str, typer.Argument(help="Shipment ID, e.g. PLR0000000017.")],
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")],
    leg: Annotated[int | None, typer.Option("--leg", help="Only this leg's excursion.")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Judge the data as of this instant.")
    ] = None,
) -> None:
    """Write the decision packet of a shipment's excursion (the latest one) as HTML.

    Example:  cmohub logistics packet PLR0000000017 --out packet.html
    """
    from cmohub.coldchain import build_custody_ledger, detect_excursions
    from cmohub.contracts.store import load_product_catalog
    from cmohub.errors import InputError
    from cmohub.pipelines.logistics import load_logistics
    from cmohub.publish.packets import render_packet

    context = _context(_instant(as_of, "--as-of"), None)
    tables = load_logistics(context.lake)
    products = {code: entry.product for code, entry in load_product_catalog().items()}
    report = detect_excursions(
        tables.readings, tables.legs, tables.shipments, products, as_of=context.interval_end
    )
    episodes = [
        e
        for e in report.episodes.to_pylist()
        if e["shipment_id"] == shipment and (leg is None or e["leg_no"] == leg)
    ]
    if not episodes:
        raise InputError(
            f"no temperature excursion on shipment {shipment}"
            + (f" leg {leg}" if leg is not None else "")
            + " in the staged data",
            code="PACKET_NO_EXCURSION",
        )
    directory = tables.directory()
    custody = (
        build_custody_ledger(tables.custody, tables.shipments, tables.legs, directory)
        if directory is not None
        else None
    )
    html = render_packet(
        episodes[-1],
        report=report,
        tables=tables,
        custody=custody,
        directory=directory,
        as_of=context.interval_end,
    )
    out.write_text(html, encoding="utf-8")
    typer.echo(f"wrote {out}")


@app.command("serve")
def serve(
    program: Annotated[
        Path, typer.Argument(help="A generated sandbox program (cmohub sandbox generate).")
    ],
    *,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="Stop after this long (default: Ctrl-C).")
    ] = None,
) -> None:
    """Serve a sandbox program's EPCIS repository and courier API on loopback.

    Example:  cmohub logistics serve .cmohub/sandbox
    """
    from cmohub.sandbox.servers.courier import CourierServer
    from cmohub.sandbox.servers.epcis import EpcisServer

    epcis, courier = EpcisServer(program), CourierServer(program)
    with epcis.running(), courier.running():
        typer.echo(f"EPCIS query interface  {epcis.base_url}/events")
        typer.echo(
            f"courier API            {courier.base_url}/v1/shipments "
            f"(OAuth2 client {courier.client_id}; secret in {SECRET_ENV})"
        )
        deadline = time.monotonic() + seconds if seconds is not None else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            typer.echo("stopped")
