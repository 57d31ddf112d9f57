"""``cmohub coi``: Chain of Identity identifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmohub.identifiers import validate_coi

app = typer.Typer(help="Chain of Identity (COI) identifiers.", no_args_is_help=True)


@app.command("check")
def check(
    code: str = typer.Argument(
        ...,
        help="The 15-character COI followed by its check character; '&/' prefix and spaces "
        "are allowed.",
    ),
) -> None:
    """Check a COI and its check character.

    Example:  cmohub coi check "CH A9990 26 84G7VS *"
    Prints 'valid' and exits 0, or prints the error code and the reason and exits 1.
    """
    error = validate_coi(code)
    if error is not None:
        typer.echo(f"{error.code}: {error.message}")
        raise typer.Exit(1)
    typer.echo("valid")


@app.command("report")
def report(
    code: Annotated[str, typer.Argument(help="The COI (with its check character).")],
    release: Annotated[
        Path | None, typer.Option("--release", help="Release folder (default: the latest).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the HTML here.")] = None,
) -> None:
    """The chain-of-custody dossier of a COI, from a published release alone.

    Example:  cmohub coi report CHA999926AB12C3G --out dossier.html
    """
    from cmohub.lake import Lake
    from cmohub.publish.dossier import dossier_data, render_dossier
    from cmohub.publish.signing import latest_release, load_release_tables
    from cmohub.settings import load_settings

    error = validate_coi(code)
    if error is not None:
        typer.echo(f"{error.code}: {error.message}")
        raise typer.Exit(1)
    if release is None:
        root = Lake(load_settings().lake_root).local_root
        if root is None:
            typer.echo("PUBLISH_CONFIG: give --release for a lake that is not a local folder")
            raise typer.Exit(1)
        release = latest_release(root / "published")
    data = dossier_data(code, load_release_tables(release), release=release.name)
    html = render_dossier(data)
    if out is None:
        typer.echo(html)
    else:
        out.write_text(html, encoding="utf-8")
        typer.echo(f"{data.coi_display}: {len(data.exceptions)} open exception(s) -> {out}")
