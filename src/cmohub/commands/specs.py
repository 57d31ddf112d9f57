"""``cmohub specs``: product release specifications and their versions."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer

from cmohub.contracts.specifications import ProductCatalogEntry, diff_specifications
from cmohub.contracts.store import load_product_catalog
from cmohub.errors import ContractError

app = typer.Typer(help="Product release specifications (versioned).", no_args_is_help=True)


def _product(code: str) -> ProductCatalogEntry:
    catalog = load_product_catalog()
    try:
        return catalog[code]
    except KeyError:
        raise ContractError(
            f"unknown product; known: {', '.join(sorted(catalog))}",
            code="SPEC_PRODUCT_UNKNOWN",
            where=code,
        ) from None


@app.command("diff")
def diff(
    product: Annotated[str, typer.Argument(help="Product code, e.g. SBX-CART-01.")],
    v1: Annotated[int, typer.Argument(help="Old specification version.")],
    v2: Annotated[int, typer.Argument(help="New specification version.")],
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """What changed between two versions of a product's release specification.

    Example:  cmohub specs diff SBX-CART-01 1 2
    Lists tests added or removed and limits tightened or loosened.
    """
    entry = _product(product)
    old, new = entry.version(v1), entry.version(v2)
    changes = diff_specifications(old, new)
    if output_format == "json":
        typer.echo(json.dumps([c.to_dict() for c in changes], indent=2))
        return
    typer.echo(
        f"{product}: version {old.version} (from {old.effective_from}) -> "
        f"version {new.version} (from {new.effective_from})"
    )
    if not changes:
        typer.echo("  no changes")
    for change in changes:
        typer.echo(f"  {change.test_code:<10} {change.change:<16} {change.detail}")


@app.command("in-force")
def in_force(
    product: Annotated[str, typer.Argument(help="Product code, e.g. SBX-CART-01.")],
    on: Annotated[str, typer.Argument(help="The date (YYYY-MM-DD).")],
) -> None:
    """Which specification version was in force on a date, with its limits.

    Example:  cmohub specs in-force SBX-CART-01 2026-01-15
    """
    entry = _product(product)
    try:
        day = date.fromisoformat(on)
    except ValueError:
        raise typer.BadParameter("use YYYY-MM-DD", param_hint="ON") from None
    spec = entry.in_force_on(day)
    if spec is None:
        typer.echo(f"{product}: no specification in force on {day}")
        raise typer.Exit(1)
    until = f" until {spec.effective_to}" if spec.effective_to else ""
    typer.echo(f"{product}: version {spec.version}, in force from {spec.effective_from}{until}")
    for limit in spec.limits:
        if limit.allowed_text is not None:
            criterion = "one of " + ", ".join(limit.allowed_text)
        else:
            low = "" if limit.lower is None else f">= {limit.lower:g}"
            high = "" if limit.upper is None else f"<= {limit.upper:g}"
            criterion = " and ".join(p for p in (low, high) if p) + (
                f" {limit.unit}" if limit.unit else ""
            )
        typer.echo(f"  {limit.test_code:<10} {criterion}{'' if limit.required else '  (optional)'}")
