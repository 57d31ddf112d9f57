"""``cmohub publish``: run the nightly reconciliation once, and verify a release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Signed, reconciled releases.", no_args_is_help=True)


def _as_of(text: str | None) -> datetime:
    if text is None:
        return datetime.now(tz=UTC)
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@app.command("run")
def run(
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Reconcile up to this instant (ISO 8601; default now)."),
    ] = None,
    unsigned: Annotated[bool, typer.Option("--unsigned", help="Do not sign (tests only).")] = False,
) -> None:
    """Reconcile everything staged up to AS_OF and publish the signed release.

    Example:  cmohub publish run --as-of 2026-04-21T03:00:00+00:00
    """
    from cmohub.pipelines import nightly
    from cmohub.pipelines.context import RunContext
    from cmohub.publish.signing import hub_signer

    end = _as_of(as_of)
    context = RunContext.for_interval("nightly_reconciliation", end - timedelta(days=1), end)
    result = nightly.reconcile(context)
    signer = None if unsigned else hub_signer(context.settings, as_of=end)
    published = nightly.publish(context, signer=signer, **nightly.default_recipients(context))
    typer.echo(f"release {published['release']}: {result['exceptions']} exceptions")
    for rule, count in sorted(result["exceptions_by_rule"].items()):
        typer.echo(f"  {rule:<28} {count}")
    typer.echo(f"written to {published['path']}")


@app.command("verify")
def verify(
    folder: Annotated[Path, typer.Argument(help="A release folder (published/<date>).")],
    sponsor_key: Annotated[
        Path | None,
        typer.Option("--sponsor-key", help="The sponsor's public key (default: this hub's)."),
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Pin the sponsor key's full fingerprint.")
    ] = None,
) -> None:
    """Check every hash, the manifest's signature and the audit checkpoint of a release.

    Example:  cmohub publish verify .cmohub/lake/published/2026-04-21
    Exit 0 when all hold; 1 with the first failure named.
    """
    from cmohub.publish.release import verify_release
    from cmohub.publish.signing import check_checkpoint, hub_verifier
    from cmohub.settings import load_settings

    verifier = hub_verifier(load_settings(), key_file=sponsor_key, pinned=fingerprint)
    result = verify_release(folder, verifier, checkpoint_check=check_checkpoint)
    if not result.ok:
        typer.echo(f"FAILED {result.failure}")
        raise typer.Exit(1)
    checkpoint = result.manifest.get("audit_checkpoint") or {}
    typer.echo(
        f"verified: {result.checked_files} files match their SHA-256; manifest signed by "
        f"{verifier.fingerprint}; audit checkpoint of {checkpoint.get('size')} events valid"
    )
