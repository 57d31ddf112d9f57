"""cmohub map: a dry run prints canonical rows on stdout and issues on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cmohub.cli import app

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
BATCHES = GOLDEN / "cmo-acme-batches" / "input.csv"


def test_map_prints_rows_and_issues_without_a_vault() -> None:
    result = CliRunner().invoke(app, ["map", "cmo-acme-batches", str(BATCHES)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["batch_id"] for r in rows] == ["ACM-26-00101", "ACM-26-00102"]
    assert rows[0]["coi"] == "CHA999126GLD0018" and rows[0]["started_at"].endswith("+00:00")
    assert "row=3 error COI_CHECK_INVALID [ID_CHECK_CHARACTER] coi" in result.stderr
    assert "CHA999426GLD004A" not in result.stderr  # the bad COI itself is never echoed
    assert "identities not resolved" in result.stderr
    assert "4 record(s): 2 row(s), 2 rejected" in result.stderr


def test_map_with_an_ephemeral_vault_rejects_cois_it_never_issued() -> None:
    result = CliRunner().invoke(
        app, ["map", "cmo-acme-batches", str(BATCHES), "--vault", "ephemeral", "--strict"]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("COI_UNKNOWN") == 2


def test_map_accepts_a_mapping_file_and_refuses_unknown_vaults(tmp_path: Path) -> None:
    mapping = Path(__file__).resolve().parents[2] / "mappings" / "master-sites.yaml"
    sites = GOLDEN / "master-sites" / "input.csv"
    result = CliRunner().invoke(app, ["map", str(mapping), str(sites)])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2
    wrong = CliRunner().invoke(app, ["map", str(mapping), str(sites), "--vault", "prod"])
    assert wrong.exit_code == 2


def test_mappings_list_and_transforms() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["mappings", "list"])
    assert "cmo-acme-batches" in listed.stdout and "manufacturing.batch" in listed.stdout
    transforms = runner.invoke(app, ["mappings", "transforms"])
    assert "parse_hl7_ts" in transforms.stdout.split()
    schema = runner.invoke(app, ["mappings", "schema"])
    assert json.loads(schema.stdout)["title"] == "cmohub feed mapping"


def test_map_reads_hl7_through_the_format_adapters_and_tokenizes_in_a_throwaway_vault() -> None:
    from cmohub.mapping.store import load_mappings

    hl7 = sorted(name for name, spec in load_mappings().items() if spec.source.format == "hl7v2")
    fixtures = [sorted((GOLDEN / name).glob("input.*")) for name in hl7]
    if not any(fixtures):
        return  # no HL7 feed shipped in this version
    name, (payload,) = next((n, f) for n, f in zip(hl7, fixtures, strict=True) if f)
    result = CliRunner().invoke(app, ["map", name, str(payload), "--vault", "ephemeral"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and all(row["coi"] and len(row["coi"]) == 16 for row in rows)
