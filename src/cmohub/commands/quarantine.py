"""``cmohub quarantine``: what each feed quarantined, and replaying it after a fix."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated

import typer

app = typer.Typer(
    help="Quarantined records: list them by feed, run and reason; replay a run after a fix.",
    no_args_is_help=True,
)


def _date(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint=option) from None


def _instant(text: str | None, option: str) -> datetime | None:
    """A date (midnight UTC) or an ISO 8601 date-time with its offset."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            "expected YYYY-MM-DD or an ISO 8601 date-time", param_hint=option
        ) from None
    if value.tzinfo is None:
        raise typer.BadParameter("give a UTC offset (…Z or …+01:00)", param_hint=option)
    return value


@app.command("list")
def list_command(
    *,
    feed: Annotated[
        str | None, typer.Option("--feed", help="Only this feed (mapping), e.g. cmo-acme-batches.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only partitions of this day (YYYY-MM-DD) on.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """How many records each feed's runs quarantined, by reason code (no record values).

    Example:  cmohub quarantine list --feed cmo-acme-batches --since 2026-01-01
    """
    from cmohub.lake import Lake
    from cmohub.pipelines.replay import list_quarantine
    from cmohub.settings import load_settings

    runs = list_quarantine(
        Lake(load_settings().lake_root), feed=feed, since=_date(since, "--since")
    )
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in runs], indent=2, sort_keys=True))
        return
    if not runs:
        typer.echo("no quarantined records")
        return
    for run in runs:
        replay = f"  (replay of {run.replay_of})" if run.replay_of else ""
        status = "" if run.current else "  [replayed since: see the later run]"
        typer.echo(
            f"{run.feed}  {run.day}  run {run.run_id}  {run.records} record(s){replay}{status}"
        )
        for code, count in sorted(run.codes.items()):
            typer.echo(f"  {code:<40} {count}")


@app.command("replay")
def replay(
    *,
    feed: Annotated[str, typer.Option("--feed", help="The feed (mapping) to replay.")],
    run: Annotated[str, typer.Option("--run", help="The run whose quarantine to replay.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Evaluate time-dependent contract rules at this instant "
            "(default: the original run's interval end).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Re-stage a run's quarantined records through the feed's current mapping and contract.

    Records come back from the raw payloads the quarantine lines reference; those that pass
    are staged under the run replay-<run>-<n>, those that still fail are quarantined again.
    Replaying again only takes what the last replay left quarantined. CMO feeds, the
    courier shipment and leg feeds, the EPCIS custody and sensor feeds, logger files, and
    the clinical FHIR and HL7 mapping feeds (clinical-fhir-*, clinical-hl7-*: read again from
    the encrypted raw store; not the intake feeds clinical-fhir and clinical-hl7).

    Example:  cmohub quarantine replay --feed cmo-acme-batches --run scheduled__2026-01-20

    Example:  cmohub quarantine replay --feed clinical-fhir-procedure --run scheduled__2026-06-01
    """
    from cmohub.pipelines.replay import replay_quarantine
    from cmohub.settings import load_settings

    settings = load_settings()
    result = replay_quarantine(settings, feed=feed, run_id=run, as_of=_instant(as_of, "--as-of"))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    if result.run_id is None:
        typer.echo(
            f"{feed}: nothing left to replay of run {result.replay_of}: "
            f"{result.read_from} staged every record"
        )
        return
    typer.echo(f"{feed}: replayed {result.read_from}'s quarantine as run {result.run_id}")
    duplicates = f" + {result.duplicates} duplicate(s)" if result.duplicates else ""
    typer.echo(
        f"  records    {result.received} received = {result.valid} staged + "
        f"{result.quarantined} quarantined again{duplicates}"
    )
    for code, count in sorted(result.quarantine_codes.items()):
        typer.echo(f"  quarantine {code:<39} {count}")
    root = settings.lake_root
    for part in result.parts:
        typer.echo(f"  staged     {root}/{part}")
    if result.quarantine:
        typer.echo(f"  quarantine {root}/{result.quarantine}")
    typer.echo(f"  ledger     {root}/{result.ledger}")
