"""``cmohub mappings``: lint and list feed mappings, show the transform registry and schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cmohub.commands.lint import echo_lint_results
from cmohub.mapping.store import lint_mapping_files, load_mappings, mapping_schema
from cmohub.mapping.transforms import TRANSFORMS

app = typer.Typer(help="Feed mappings: lint, list, transforms, schema.", no_args_is_help=True)


@app.command("lint")
def lint(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Mapping files or folders (default: every mapping shipped)."),
    ] = None,
) -> None:
    """Check mappings against their schema, their contract and the privacy rules.

    Example:  cmohub mappings lint mappings/cmo-acme-batches.yaml
    Every required contract property must be mapped, every transform must exist, and every
    classified source field must go through an identity action. Exits 1 on any problem.
    """
    echo_lint_results(lint_mapping_files(list(paths) if paths else None), "mapping")


@app.command("list")
def list_mappings() -> None:
    """The mappings shipped with this version: feed, source format, dataset, version.

    Example:  cmohub mappings list
    """
    for name, spec in sorted(load_mappings().items()):
        typer.echo(
            f"{name:<40} {spec.source.format:<6} -> {spec.dataset:<40} "
            f"v{spec.version}  {spec.content_sha256[:12]}"
        )


@app.command("transforms")
def transforms() -> None:
    """The named transforms a mapping may use.

    Example:  cmohub mappings transforms
    """
    for name in sorted(TRANSFORMS):
        typer.echo(name)


@app.command("schema")
def schema() -> None:
    """Print the mapping JSON schema (for editors: yaml-language-server, IDEs).

    Example:  cmohub mappings schema > mapping.schema.json
    """
    typer.echo(json.dumps(mapping_schema(), indent=2))
