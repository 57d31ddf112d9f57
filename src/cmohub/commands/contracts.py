"""``cmohub contracts``: lint, diff, validate and show data contracts."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from cmohub.commands.lint import echo_lint_results
from cmohub.contracts.checks import compile_checks
from cmohub.contracts.diff import (
    ContractDiff,
    apply_waivers,
    diff_contract_sets,
    diff_contracts,
    parse_waivers,
)
from cmohub.contracts.model import LINEAGE_COLUMNS, Contract
from cmohub.contracts.report import ValidationReport
from cmohub.contracts.store import (
    iter_contract_files,
    lint_contract_files,
    load_contract,
    load_contract_file,
)
from cmohub.errors import ContractError

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(help="Data contracts (ODCS v3): lint, diff, validate.", no_args_is_help=True)


@app.command("lint")
def lint(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Contract files or folders (default: every contract shipped with cmohub)."
        ),
    ] = None,
) -> None:
    """Check contracts against the ODCS JSON schema and the hub's conventions.

    Example:  cmohub contracts lint contracts/canonical/manufacturing.batch.odcs.yaml
    Prints one line per problem (code, where, what) and exits 1 when there is any.
    """
    echo_lint_results(lint_contract_files(list(paths) if paths else None), "contract")


def _load_side(path: Path) -> dict[str, Contract]:
    if path.is_dir():
        contracts = [load_contract_file(item) for item in iter_contract_files(path)]
        return {c.dataset: c for c in contracts}
    if not path.exists():
        raise ContractError(
            "no such contract file or folder", code="CONTRACT_UNREADABLE", where=str(path)
        )
    contract = load_contract_file(path)
    return {contract.dataset: contract}


def _print_diff_text(diffs: list[ContractDiff]) -> None:
    for diff in diffs:
        typer.echo(f"{diff.dataset}: {diff.old_version or '-'} -> {diff.new_version or '-'}")
        if not diff.changes:
            typer.echo("  no changes")
        for change in diff.changes:
            status = "waived" if change.waived_by else "BREAKING" if change.breaking else "ok"
            path = change.path or "(dataset)"
            typer.echo(f"  {status:<9} {change.code:<24} {path:<28} {change.reason}")
            if change.waived_by:
                typer.echo(f"  {'':<9} waiver: {change.waived_by}")
        if diff.version_note:
            typer.echo(f"  version: {diff.version_note}")


@app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help="The old contract file (or folder of contracts).")],
    new: Annotated[Path, typer.Argument(help="The new contract file (or folder of contracts).")],
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    waivers: Annotated[
        Path | None,
        typer.Option("--waivers", help="YAML file of agreed breaking changes: {waivers: [...]}."),
    ] = None,
) -> None:
    """Every change between two versions of a contract, each breaking or non-breaking.

    Example:  cmohub contracts diff old/manufacturing.batch.odcs.yaml \\
                  contracts/canonical/manufacturing.batch.odcs.yaml --waivers waivers.yaml
    Exits 1 when an unwaived breaking change is present, 0 otherwise.
    """
    if output_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--format")
    before, after = _load_side(old), _load_side(new)
    if len(before) == 1 and len(after) == 1 and not old.is_dir() and not new.is_dir():
        diffs = [diff_contracts(next(iter(before.values())), next(iter(after.values())))]
    else:
        diffs = diff_contract_sets(before, after)
    if waivers is not None:
        agreed = parse_waivers(
            yaml.safe_load(waivers.read_text(encoding="utf-8")), where=str(waivers)
        )
        today = datetime.now(UTC).date()
        diffs = [apply_waivers(d, agreed, today=today) for d in diffs]
    if output_format == "json":
        typer.echo(json.dumps([d.to_dict() for d in diffs], indent=2, sort_keys=True))
    else:
        _print_diff_text(diffs)
    blocking = sum(len(d.blocking) for d in diffs)
    if blocking:
        if output_format == "text":
            typer.echo(f"{blocking} unwaived breaking change(s)", err=True)
        raise typer.Exit(1)


# --- validate --------------------------------------------------------------------------------


def read_data_file(path: Path) -> pd.DataFrame:
    """Parquet, CSV (text values, empty cells are empty) or JSON Lines, as a DataFrame."""
    import pandas as pd
    import pyarrow.parquet as pq

    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame: pd.DataFrame = pq.read_table(path).to_pandas()
            return frame
        if name.endswith(".csv"):
            return pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
            )
        if name.endswith((".jsonl", ".ndjson", ".json")):
            rows = [
                json.loads(line)
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            return pd.DataFrame.from_records(rows)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ContractError(
            f"cannot read the data file ({type(error).__name__})",
            code="CONTRACT_DATA_UNREADABLE",
            where=str(path),
        ) from None
    raise ContractError(
        "DATA must be .parquet, .csv or .jsonl", code="CONTRACT_DATA_UNREADABLE", where=str(path)
    )


def _fill_lineage(frame: pd.DataFrame, path: Path, *, feed: str, run_id: str) -> bool:
    """Give rows read straight from a file the lineage columns staged rows carry."""
    if any(column in frame.columns for column in LINEAGE_COLUMNS):
        return False
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    frame["_feed"] = feed
    frame["_run_id"] = run_id
    frame["_source_ref"] = [f"{digest}#row={i + 1}" for i in range(len(frame))]
    return True


def print_report(report: ValidationReport, *, show_all: bool = False) -> None:
    counts = report.counts
    typer.echo(
        f"{report.dataset}  contract {report.contract_id} {report.contract_version}  "
        f"run {report.run_id}"
    )
    typer.echo(
        f"received {counts.received}  valid {counts.valid}  quarantined {counts.quarantined}  "
        f"duplicates {counts.duplicates}"
    )
    for check in report.checks:
        if check.success and not show_all:
            continue
        status = "skipped" if not check.evaluated else "ok" if check.success else "FAILED"
        rows = ""
        if check.unexpected_count is not None and check.element_count is not None:
            rows = f"{check.unexpected_count} of {check.element_count} rows"
        typer.echo(
            f"  {status:<7} {check.severity.value:<7} {check.check_id:<32} {check.code:<22} {rows}"
            + (f"  ({check.note})" if check.note else "")
        )
    passed = sum(1 for c in report.checks if c.success and c.evaluated)
    typer.echo(f"  {passed} of {len(report.checks)} checks passed")
    for finding in report.findings:
        typer.echo(f"  finding {finding.severity.value:<7} {finding.code:<28} {finding.message}")
    for code, count in report.quarantine_reasons:
        typer.echo(f"  quarantined {count:>6} x {code}")
    typer.echo(
        "result: passed" if report.passed else f"result: FAILED ({len(report.errors)} errors)"
    )


@app.command("validate")
def validate(  # noqa: PLR0917 - typer maps each parameter to an argument or option
    contract: Annotated[
        str, typer.Argument(help="Dataset name (manufacturing.batch) or contract file.")
    ],
    data: Annotated[
        Path, typer.Argument(help="Parquet, CSV or JSON Lines file of canonical rows.")
    ],
    run_id: Annotated[
        str, typer.Option("--run-id", help="Run ID recorded in the report.")
    ] = "manual",
    feed: Annotated[
        str, typer.Option("--feed", help="Feed name recorded in the report.")
    ] = "manual",
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Run time for freshness checks (ISO 8601 with offset; default now)."
        ),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    report_file: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON.")
    ] = None,
    quarantine_file: Annotated[
        Path | None,
        typer.Option("--quarantine", help="Write quarantined rows (JSON Lines, no values) here."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List passing checks too.")] = False,
) -> None:
    """Validate a data file against a contract and print the report.

    Example:  cmohub contracts validate logistics.temperature_reading readings.parquet
    Files without lineage columns get them (feed, run, file SHA-256 and row number).
    Exits 1 when a check or finding of severity error fails.
    """
    if output_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--format")
    # Great Expectations takes seconds to import: only this command pays for it.
    from cmohub.contracts.validate import validate_table

    spec = load_contract(contract)
    frame = read_data_file(data)
    filled = _fill_lineage(frame, data, feed=feed, run_id=run_id)
    moment = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    if moment.tzinfo is None:
        raise typer.BadParameter(
            "give a UTC offset, e.g. 2026-03-01T12:00:00+00:00", param_hint="--as-of"
        )
    outcome = validate_table(frame, spec, run_id=run_id, feed=feed, as_of=moment)
    report = outcome.report
    if output_format == "json":
        typer.echo(report.to_json())
    else:
        if filled:
            typer.echo("(lineage columns added from the file: _feed, _run_id, _source_ref)")
        print_report(report, show_all=show_all)
    if report_file is not None:
        report_file.write_text(report.to_json() + "\n", encoding="utf-8")
    if quarantine_file is not None:
        lines = [
            json.dumps(e.to_dict(run_id=run_id, feed=feed), sort_keys=True)
            for e in outcome.quarantined
        ]
        quarantine_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if not report.passed:
        raise typer.Exit(1)


@app.command("show")
def show(
    contract: Annotated[
        str, typer.Argument(help="Dataset name (manufacturing.batch) or contract file.")
    ],
) -> None:
    """Show a contract's properties and the checks it compiles to.

    Example:  cmohub contracts show manufacturing.batch
    """
    spec = load_contract(contract)
    typer.echo(f"{spec.dataset} ({spec.kind.value})  {spec.id} {spec.version}")
    typer.echo(f"key: {', '.join(spec.primary_key)}")
    for prop in spec.properties:
        flags = ",".join(
            flag
            for flag, on in (
                ("required", prop.required),
                ("key", prop.primary_key),
                ("lineage", prop.lineage),
                (prop.identity_role.value, prop.identity_role.value != "none"),
            )
            if on
        )
        unit = f" [{prop.unit}]" if prop.unit else ""
        typer.echo(
            f"  {prop.name:<28} {prop.logical_type.value:<9} {prop.classification.value:<12} "
            f"{flags}{unit}"
        )
    typer.echo("checks:")
    for check in compile_checks(spec):
        typer.echo(f"  {check.severity.value:<7} {check.id:<36} {check.code}")
