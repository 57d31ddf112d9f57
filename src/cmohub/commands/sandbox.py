"""``cmohub sandbox``: the synthetic therapy program every feed, test and demo runs against."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from cmohub.sandbox.faults import Fault, parse_fault_selection
from cmohub.sandbox.generate import GenerationSummary, generate_program
from cmohub.sandbox.program import DEFAULT_START
from cmohub.settings import load_settings

app = typer.Typer(help="Synthetic therapy program with planted faults.", no_args_is_help=True)


@app.command("generate")
def generate(
    *,
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Patients.")] = 40,
    days: Annotated[
        int, typer.Option("--days", "-d", min=1, help="Days over which patients enroll.")
    ] = 30,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Same seed, same bytes.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default CMOHUB_SANDBOX_DIR)."),
    ] = None,
    faults: Annotated[
        str,
        typer.Option(
            "--faults", help="'all', 'none', or comma-separated fault names (or 'malformed')."
        ),
    ] = "all",
    start: Annotated[
        str, typer.Option("--start", help="First enrollment day (YYYY-MM-DD).")
    ] = DEFAULT_START.isoformat(),
) -> None:
    """Write a synthetic program in every source's wire format, plus truth.json.

    Example:  cmohub sandbox generate --patients 40 --days 30 --seed 7 --out /tmp/sbx
    """
    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="--start") from None
    summary = run_generation(
        out or load_settings().sandbox_root,
        patients=patients,
        days=days,
        seed=seed,
        start=first,
        faults=parse_fault_selection(faults),
    )
    print_summary(summary)


def run_generation(
    out: Path,
    *,
    patients: int,
    days: int,
    seed: int,
    start: date = DEFAULT_START,
    faults: frozenset[Fault] = frozenset(Fault),
) -> GenerationSummary:
    """Generate with a progress bar on the terminal (shown only when stderr is one)."""
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("generating", total=patients)
        return generate_program(
            out,
            patients=patients,
            days=days,
            seed=seed,
            start=start,
            faults=faults,
            progress=lambda n: bar.update(task, completed=n),
        )


def print_summary(summary: GenerationSummary) -> None:
    """The summary a person reads: patients, files per source, readings, faults by rule."""
    typer.echo(f"sandbox program in {summary.out}")
    typer.echo(f"  patients             {summary.patients}")
    typer.echo(f"  temperature readings {summary.readings}")
    typer.echo(f"  canary patients      {summary.canaries}")
    typer.echo(f"  size                 {summary.total_bytes / 1e6:.1f} MB")
    typer.echo("  files per source")
    for source, count in summary.files_by_source.items():
        typer.echo(f"    {source:<14} {count}")
    typer.echo(f"  planted faults by rule ({sum(summary.faults_by_rule.values())})")
    for rule, count in summary.faults_by_rule.items():
        typer.echo(f"    {rule:<28} {count}")
    for fault, count in summary.not_planted.items():
        typer.echo(f"  not planted (program too small): {fault} x{count}")
