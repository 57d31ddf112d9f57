"""contracts diff: each change classified breaking or not, versions checked, waivers applied."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.contracts.diff import (
    Waiver,
    apply_waivers,
    diff_contract_sets,
    diff_contracts,
    parse_waivers,
)
from cmohub.contracts.model import Classification, Contract, PropertySpec
from cmohub.contracts.store import load_contract
from cmohub.resources import resource_root

BATCH = load_contract("manufacturing.batch")


def with_prop(contract: Contract, prop: str, **changes: Any) -> Contract:
    props = tuple(replace(p, **changes) if p.name == prop else p for p in contract.properties)
    return replace(contract, properties=props)


def codes(old: Contract, new: Contract) -> dict[str, bool]:
    return {c.code: c.breaking for c in diff_contracts(old, new).changes}


def major(contract: Contract) -> Contract:
    return replace(contract, version="2.0.0")


@pytest.mark.parametrize(
    ("make_new", "code", "breaking"),
    [
        (
            lambda c: replace(c, properties=tuple(p for p in c.properties if p.name != "din")),
            "PROPERTY_REMOVED",
            True,
        ),
        (lambda c: with_prop(c, "status", name="state"), "PROPERTY_RENAMED", True),
        (lambda c: with_prop(c, "completed_at", required=True), "REQUIRED_ADDED", True),
        (lambda c: with_prop(c, "cmo", required=False), "REQUIRED_REMOVED", False),
        (
            lambda c: with_prop(c, "status", allowed_values=("in_process", "complete")),
            "VALUES_NARROWED",
            True,
        ),
        (
            lambda c: with_prop(
                c, "status", allowed_values=("in_process", "complete", "aborted", "hold")
            ),
            "VALUES_WIDENED",
            False,
        ),
        (lambda c: with_prop(c, "batch_id", pattern="^B[0-9]+$"), "PATTERN_CHANGED", True),
        (lambda c: with_prop(c, "batch_id", pattern=None), "PATTERN_REMOVED", False),
        (lambda c: with_prop(c, "batch_id", max_length=20), "LENGTH_TIGHTENED", True),
        (lambda c: with_prop(c, "batch_id", max_length=200), "LENGTH_LOOSENED", False),
        (
            lambda c: with_prop(c, "coi", classification=Classification.INTERNAL),
            "CLASSIFICATION_LOWERED",
            True,
        ),
        (
            lambda c: with_prop(c, "cmo", classification=Classification.INTERNAL),
            "CLASSIFICATION_RAISED",
            False,
        ),
        (lambda c: with_prop(c, "batch_id", description="new words"), "DESCRIPTION_CHANGED", False),
        (
            lambda c: replace(
                c,
                properties=tuple(
                    replace(p, primary_key=p.name == "coi", primary_key_position=1)
                    if p.name in ("batch_id", "coi")
                    else p
                    for p in c.properties
                ),
            ),
            "PRIMARY_KEY_CHANGED",
            True,
        ),
    ],
)
def test_each_change_is_classified(make_new: Any, code: str, breaking: bool) -> None:
    found = codes(BATCH, make_new(BATCH))
    assert found.get(code) is breaking, found


def test_type_ranges_units_and_added_properties() -> None:
    readings = load_contract("logistics.temperature_reading")
    assert codes(readings, with_prop(readings, "celsius", maximum=40.0))["RANGE_TIGHTENED"]
    assert not codes(readings, with_prop(readings, "celsius", maximum=80.0))["RANGE_LOOSENED"]
    assert codes(readings, with_prop(readings, "celsius", unit="[degF]"))["UNIT_CHANGED"]
    from cmohub.contracts.model import LogicalType

    assert codes(readings, with_prop(readings, "celsius", logical_type=LogicalType.STRING))[
        "TYPE_CHANGED"
    ]
    optional = PropertySpec("note", LogicalType.STRING, False, Classification.INTERNAL, "a note")
    required = replace(optional, name="site", required=True)
    assert not codes(readings, replace(readings, properties=(*readings.properties, optional)))[
        "PROPERTY_ADDED"
    ]
    assert codes(readings, replace(readings, properties=(*readings.properties, required)))[
        "PROPERTY_ADDED"
    ]


def test_versions_must_follow_the_changes() -> None:
    narrowed = with_prop(BATCH, "status", allowed_values=("complete",))
    assert "new major version" in (diff_contracts(BATCH, narrowed).version_note or "")
    assert diff_contracts(BATCH, major(narrowed)).version_note is None
    widened = replace(
        with_prop(BATCH, "status", allowed_values=("in_process", "complete", "aborted", "x")),
        version="1.1.0",
    )
    assert diff_contracts(BATCH, widened).version_note is None
    assert "without a breaking change" in (diff_contracts(BATCH, major(widened)).version_note or "")
    same_version = with_prop(BATCH, "batch_id", description="new words")
    assert "did not" in (diff_contracts(BATCH, same_version).version_note or "")


def test_dataset_removed_and_added_between_sets() -> None:
    diffs = diff_contract_sets(
        {"manufacturing.batch": BATCH}, {"x.y": replace(BATCH, dataset="x.y")}
    )
    assert {(d.dataset, c.code, c.breaking) for d in diffs for c in d.changes} == {
        ("manufacturing.batch", "DATASET_REMOVED", True),
        ("x.y", "DATASET_ADDED", False),
    }


def test_waivers_unblock_agreed_breaking_changes() -> None:
    new = major(replace(BATCH, properties=tuple(p for p in BATCH.properties if p.name != "din")))
    diff = diff_contracts(BATCH, new)
    assert len(diff.blocking) == 1
    waiver = Waiver("manufacturing.batch", "din", "agreed with Acme, ticket Q-1")
    assert not apply_waivers(diff, [waiver], today=date(2026, 1, 1)).blocking
    expired = replace(waiver, expires=date(2025, 12, 31))
    assert apply_waivers(diff, [expired], today=date(2026, 1, 1)).blocking
    parsed = parse_waivers(
        {"waivers": [{"dataset": "manufacturing.batch", "path": "din", "reason": "ok"}]},
        where="w.yaml",
    )
    assert parsed[0].path == "din"


def _write_contract(path: Path, edit: Any) -> Path:
    source = resource_root("contracts") / "canonical" / "manufacturing.batch.odcs.yaml"
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_cli_exits_1_on_an_unwaived_breaking_change(tmp_path: Path) -> None:
    old = _write_contract(tmp_path / "old.odcs.yaml", lambda d: None)

    def drop_din(document: dict[str, Any]) -> None:
        props = document["schema"][0]["properties"]
        document["schema"][0]["properties"] = [p for p in props if p["name"] != "din"]

    new = _write_contract(tmp_path / "new.odcs.yaml", drop_din)
    runner = CliRunner()
    result = runner.invoke(app, ["contracts", "diff", str(old), str(new)])
    assert result.exit_code == 1
    assert "BREAKING" in result.stdout and "PROPERTY_REMOVED" in result.stdout
    assert "new major version" in result.stdout
    as_json = runner.invoke(app, ["contracts", "diff", str(old), str(new), "--format", "json"])
    assert json.loads(as_json.stdout)[0]["blocking"] == 1
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text(
        yaml.safe_dump(
            {"waivers": [{"dataset": "manufacturing.batch", "path": "din", "reason": "agreed"}]}
        )
    )
    waived = runner.invoke(
        app, ["contracts", "diff", str(old), str(new), "--waivers", str(waivers)]
    )
    assert waived.exit_code == 0 and "waived" in waived.stdout
    unchanged = runner.invoke(app, ["contracts", "diff", str(old), str(old)])
    assert unchanged.exit_code == 0 and "no changes" in unchanged.stdout
