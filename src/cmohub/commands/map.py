"""``cmohub map``: dry-run a mapping on a file; rows to stdout, issues to stderr."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cmohub.errors import HubError, unreadable_as
from cmohub.identity import Actor
from cmohub.mapping import (
    MappingResult,
    PendingTokenize,
    PendingVerify,
    apply_mapping,
    compile_mapping,
    read_records,
    resolve_identities,
)
from cmohub.mapping.readers import Reader
from cmohub.mapping.store import load_mapping

VAULTS = ("none", "ephemeral")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PendingVerify):
        return value.coi  # checked locally (check character), not against a vault
    if isinstance(value, PendingTokenize):
        return None  # no vault: no COI
    return value


def _format_readers() -> dict[str, Reader]:
    """The readers the format adapters offer (FHIR with subjects, HL7 v2, EPCIS)."""
    try:
        from cmohub.formats import format_readers
    except ImportError:  # pragma: no cover - the formats package ships with cmohub
        return {}
    return format_readers()


def _resolve(result: MappingResult, vault: str, feed: str) -> MappingResult:
    if vault == "none":
        return result
    from cmohub.vault import Vault

    with Vault.ephemeral() as throwaway:
        return resolve_identities(
            result, throwaway, actor=Actor(name=f"cmohub-map:{feed}", role="service", feed=feed)
        )


def map_command(
    mapping: Annotated[str, typer.Argument(help="Feed name (cmo-acme-batches) or mapping file.")],
    input_file: Annotated[Path, typer.Argument(help="A payload the feed delivers.")],
    vault: Annotated[
        str,
        typer.Option(
            "--vault",
            help="none: COIs are checked locally only and subject identities stay unresolved; "
            "ephemeral: a throwaway in-memory vault resolves them.",
        ),
    ] = "none",
    run_id: Annotated[str, typer.Option("--run-id", help="Run ID in the lineage.")] = "dry-run",
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any record is rejected.")
    ] = False,
) -> None:
    """Dry-run a mapping: canonical rows as JSON Lines on stdout, issues on stderr.

    Example:  cmohub map cmo-acme-batches ACME_BATCHES_20260119.csv --vault ephemeral
    Nothing is written anywhere. Issues name codes and fields, never values.
    """
    if vault not in VAULTS:
        raise typer.BadParameter(f"use one of {', '.join(VAULTS)}", param_hint="--vault")
    spec = load_mapping(mapping)
    compiled = compile_mapping(spec)
    with unreadable_as(HubError, "the input", code="MAPPING_INPUT_UNREADABLE", where=input_file):
        data = input_file.read_bytes()
    records = read_records(spec.source, data, extra_readers=_format_readers())
    result = apply_mapping(
        compiled, records, run_id=run_id, source_sha256=hashlib.sha256(data).hexdigest()
    )
    result = _resolve(result, vault, spec.name)
    for row in result.rows:
        values = {name: _json_value(value) for name, value in row.values.items()}
        typer.echo(json.dumps(values, sort_keys=True, ensure_ascii=False))
    for issue in result.issues:
        where = f" {issue.field}" if issue.field else ""
        source = f" <- {issue.source_path}" if issue.source_path else ""
        detail = f" [{issue.detail}]" if issue.detail else ""
        typer.echo(
            f"{issue.locator} {issue.severity.value} {issue.code}{detail}{where}{source}: "
            f"{issue.message}",
            err=True,
        )
    if vault == "none" and any(row.pending for row in result.rows):
        typer.echo(
            "note: identities not resolved (COIs checked locally only, subject identities left "
            "empty); use --vault ephemeral",
            err=True,
        )
    typer.echo(
        f"{result.received} record(s): {len(result.rows)} row(s), {len(result.rejected)} rejected",
        err=True,
    )
    if strict and result.rejected:
        raise typer.Exit(1)
