"""Every contract shipped with cmohub lints, loads, compiles and validates its own examples."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.contracts.arrow import to_arrow_schema
from cmohub.contracts.checks import compile_checks
from cmohub.contracts.store import iter_contract_files, lint_contract_files, load_contracts

FILES = [str(p) for p in iter_contract_files()]


def test_the_shipped_contracts_are_found() -> None:
    assert len(FILES) == 22  # 18 canonical datasets + 4 published


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.rsplit("/", 1)[-1])
def test_contract_lints_clean(path: str) -> None:
    from pathlib import Path

    problems = lint_contract_files([Path(path)])[path]
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("dataset", sorted(load_contracts()))
def test_contract_compiles_to_arrow_and_checks(dataset: str) -> None:
    contract = load_contracts()[dataset]
    schema = to_arrow_schema(contract)
    assert schema.names == list(contract.names())
    checks = compile_checks(contract)
    assert len({c.id for c in checks}) == len(checks)
    assert schema.metadata[b"cmohub.contract_version"] == contract.version.encode()


def test_contract_ids_are_unique() -> None:
    ids = [c.id for c in load_contracts().values()]
    assert len(ids) == len(set(ids))


def test_cli_lint_reports_clean_contracts() -> None:
    result = CliRunner().invoke(app, ["contracts", "lint"])
    assert result.exit_code == 0, result.stdout
    assert "22 contract(s) checked: no problems" in result.stdout


def test_classified_property_names_are_redacted_in_logs() -> None:
    from cmohub.log import redact_text

    load_contracts()
    assert redact_text("batch ACM-1 coi=CHA999026AB12C3G din=A999326000103Y") == (
        "batch ACM-1 coi=<redacted> din=<redacted>"
    )
