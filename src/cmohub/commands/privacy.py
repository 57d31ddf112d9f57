"""``cmohub privacy``: prove that no patient identifier left the vault."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Privacy checks for privacy officers.", no_args_is_help=True)


@app.command("scan")
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to scan (lake, logs).")],
    canaries: Annotated[Path, typer.Option("--canaries", help="A sandbox truth.json.")],
    exclude: Annotated[
        list[Path] | None, typer.Option("--exclude", help="Paths not to scan (the sources).")
    ] = None,
) -> None:
    """Scan artifacts for the sandbox's canary identifiers; exit 1 if any is found.

    Example:  cmohub privacy scan .cmohub/lake --canaries .cmohub/demo/sandbox/truth.json
    """
    from cmohub.privacy import canary_tokens, scan_paths

    tokens = canary_tokens(canaries)
    scanned, hits = scan_paths(paths, tokens, exclude=exclude or [])
    for hit in hits:
        typer.echo(f"LEAK {hit}")
    typer.echo(f"scanned {scanned} files for {len(tokens)} canary tokens: {len(hits)} found")
    raise typer.Exit(1 if hits else 0)
