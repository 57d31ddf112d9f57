"""Golden tests: every shipped mapping, applied to its input fixture, gives the expected rows.

Each ``tests/golden/<mapping>/`` folder holds ``input.<ext>`` (a few records in the feed's
own wire format, synthetic values), ``expected.jsonl`` (the canonical rows) and
``issues.jsonl`` (the records the mapping rejects or warns about, by locator and code).
After a deliberate change, regenerate with ``CMOHUB_UPDATE_GOLDEN=1 pytest tests/golden`` and
review the diff like code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cmohub.contracts.store import load_contract
from cmohub.contracts.validate import validate_table
from cmohub.formats import format_readers
from cmohub.identifiers import Coi
from cmohub.identity import Actor, CoiStatus, TokenizeRequest
from cmohub.mapping import (
    MappingResult,
    PendingTokenize,
    PendingVerify,
    apply_mapping,
    compile_mapping,
    read_records,
    resolve_identities,
)
from cmohub.mapping.store import load_mappings

GOLDEN = Path(__file__).parent
MAPPINGS = load_mappings()
UPDATE = os.environ.get("CMOHUB_UPDATE_GOLDEN") == "1"


class KnownCois:
    """Every COI is known; tokenized identities get a stable test COI."""

    def tokenize_many(self, requests: Sequence[TokenizeRequest], *, actor: Actor) -> list[Coi]:
        return [Coi("A9999", "26", f"GT{i:04d}") for i in range(len(requests))]

    def verify_many(self, cois: Sequence[str], *, actor: Actor) -> list[CoiStatus]:
        return [CoiStatus.KNOWN] * len(cois)


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PendingVerify):
        return value.coi
    if isinstance(value, PendingTokenize):
        return "<tokenize>"
    return value


def _input(folder: Path) -> Path:
    found = sorted(folder.glob("input.*"))
    assert len(found) == 1, f"{folder.name}: expected exactly one input.* fixture"
    return found[0]


def _apply(name: str) -> tuple[MappingResult, bytes]:
    spec = MAPPINGS[name]
    data = _input(GOLDEN / name).read_bytes()
    records = read_records(spec.source, data, extra_readers=format_readers())
    result = apply_mapping(
        compile_mapping(spec),
        records,
        run_id="golden",
        source_sha256=hashlib.sha256(data).hexdigest(),
    )
    return result, data


def _lines(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n" for item in items)


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_every_mapping_has_a_golden_fixture(name: str) -> None:
    folder = GOLDEN / name
    assert folder.is_dir(), f"add tests/golden/{name}/ with input.* and expected.jsonl"
    _input(folder)
    assert (folder / "expected.jsonl").is_file() or UPDATE


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_mapping_gives_the_expected_rows_and_issues(name: str) -> None:
    result, _ = _apply(name)
    rows = [{k: _plain(v) for k, v in row.values.items()} for row in result.rows]
    issues = [
        {"locator": i.locator, "code": i.code, "field": i.field, "severity": i.severity.value}
        for i in result.issues
    ]
    folder = GOLDEN / name
    if UPDATE:
        (folder / "expected.jsonl").write_text(_lines(rows), encoding="utf-8")
        (folder / "issues.jsonl").write_text(_lines(issues), encoding="utf-8")
    expected = (folder / "expected.jsonl").read_text(encoding="utf-8")
    assert _lines(rows) == expected
    expected_issues = (folder / "issues.jsonl").read_text(encoding="utf-8")
    assert _lines(issues) == expected_issues


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_golden_rows_satisfy_the_contract(name: str) -> None:
    result, _ = _apply(name)
    resolved = resolve_identities(result, KnownCois(), actor=Actor("golden", "service"))
    rows = resolved.canonical_rows()
    assert rows, f"{name}: the fixture should produce at least one valid row"
    contract = load_contract(MAPPINGS[name].dataset)
    outcome = validate_table(pd.DataFrame(rows), contract, run_id="golden", feed=name)
    failed = [c.check_id for c in outcome.report.checks if not c.success]
    assert outcome.report.counts.valid == len(rows), failed
