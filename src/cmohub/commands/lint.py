"""How every ``lint`` command reports: one line per problem, a count, exit 1 on any problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import typer

from cmohub.contracts.lint import LintProblem


def echo_lint_results(results: Mapping[str, Sequence[LintProblem]], noun: str) -> None:
    """Print ``results`` (file -> problems) and exit 1 when any file has a problem."""
    problems = 0
    for source, found in results.items():
        for problem in found:
            typer.echo(f"{source}: {problem}")
            problems += 1
    if problems:
        typer.echo(f"{problems} problem(s) in {len(results)} {noun}(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(results)} {noun}(s) checked: no problems")
