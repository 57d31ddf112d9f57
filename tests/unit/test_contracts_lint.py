"""Contract loading and lint: the ODCS schema of the declared version plus the hub's rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmohub.contracts.lint import lint_document
from cmohub.contracts.model import Classification, IdentityRole, LogicalType, RuleKind, Severity
from cmohub.contracts.odcs import to_contract
from cmohub.contracts.store import load_contract_file, odcs_json_schema
from cmohub.domain import DATASETS
from cmohub.errors import ContractError


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "v3.1.0",
        "kind": "DataContract",
        "id": "test-batch",
        "name": "manufacturing.batch",
        "version": "1.0.0",
        "status": "active",
        "description": {"purpose": "a test"},
        "customProperties": [
            {"property": "cmohub.dataset", "value": "test.table"},
            {"property": "cmohub.datasetKind", "value": "published"},
        ],
        "schema": [
            {
                "name": "test.table",
                "properties": [
                    {
                        "name": "id",
                        "logicalType": "string",
                        "required": True,
                        "primaryKey": True,
                        "primaryKeyPosition": 1,
                        "classification": "internal",
                        "description": "key",
                    },
                    {
                        "name": "coi",
                        "logicalType": "string",
                        "required": False,
                        "classification": "confidential",
                        "description": "a COI",
                        "customProperties": [{"property": "cmohub.identityRole", "value": "coi"}],
                    },
                    {
                        "name": "at",
                        "logicalType": "timestamp",
                        "logicalTypeOptions": {"timezone": True},
                        "required": True,
                        "classification": "internal",
                        "description": "when",
                        "quality": [
                            {
                                "metric": "nullValues",
                                "mustBeLessOrEqualTo": 5,
                                "unit": "percent",
                                "severity": "warning",
                                "description": "mostly filled",
                            }
                        ],
                    },
                    {
                        "name": "state",
                        "logicalType": "string",
                        "required": True,
                        "classification": "public",
                        "description": "state",
                        "quality": [
                            {
                                "metric": "invalidValues",
                                "arguments": {"validValues": ["a", "b"]},
                                "mustBe": 0,
                                "severity": "error",
                            }
                        ],
                    },
                ],
                "quality": [{"metric": "rowCount", "mustBeGreaterThan": 0, "severity": "warning"}],
            }
        ],
        "slaProperties": [
            {"property": "latency", "value": 4, "unit": "h", "element": "test.table.at"}
        ],
    }


def lint(document: dict[str, Any]) -> list[str]:
    problems, _ = lint_document(document, odcs_json_schema, known_datasets=tuple(DATASETS))
    return [p.code for p in problems]


def test_a_valid_document_converts_into_the_hubs_model() -> None:
    contract = to_contract(minimal())
    assert lint(minimal()) == []
    assert contract.dataset == "test.table" and contract.primary_key == ("id",)
    assert contract.prop("coi").identity_role is IdentityRole.COI
    assert contract.prop("at").logical_type is LogicalType.TIMESTAMP
    assert contract.prop("state").allowed_values == ("a", "b")
    kinds = {(r.column, r.kind, r.severity) for r in contract.rules}
    assert ("at", RuleKind.NULL_SHARE, Severity.WARNING) in kinds
    assert ("state", RuleKind.VALUE_SET, Severity.ERROR) in kinds
    assert (None, RuleKind.ROW_COUNT, Severity.WARNING) in kinds
    assert contract.freshness is not None and contract.freshness.max_age.total_seconds() == 4 * 3600


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda d: d["schema"][0]["properties"][0].pop("classification"), "LINT_CLASSIFICATION"),
        (lambda d: d["schema"][0]["properties"][0].pop("primaryKey"), "LINT_KEY"),
        (lambda d: d["schema"][0]["properties"][0].pop("description"), "LINT_DESCRIPTION"),
        (lambda d: d["schema"][0]["properties"][0].pop("required"), "LINT_REQUIRED"),
        (
            lambda d: d["schema"][0]["properties"][1].update(classification="internal"),
            "LINT_IDENTITY_ROLE",
        ),
        (
            lambda d: d["schema"][0]["properties"][1]["customProperties"][0].update(value="mrn"),
            "LINT_IDENTITY_ROLE",
        ),
        (
            lambda d: d["schema"][0]["properties"][0].update(classification="restricted"),
            "LINT_RESTRICTED",
        ),
        (lambda d: d["schema"][0]["properties"][2].pop("logicalTypeOptions"), "LINT_TIMEZONE"),
        (lambda d: d.update(version="1.0"), "LINT_VERSION"),
        (
            lambda d: d["customProperties"].append({"property": "cmohub.colour", "value": 1}),
            "LINT_CUSTOM_PROPERTY",
        ),
        (lambda d: d["customProperties"].pop(0), "LINT_DATASET"),
        (lambda d: d.update(apiVersion="v9.9.9"), "LINT_API_VERSION"),
        (lambda d: d.update(kind="Contract"), "LINT_SCHEMA"),
        (
            lambda d: d["schema"][0]["properties"][0].update(logicalType="timestampz"),
            "LINT_SCHEMA",
        ),
        (
            lambda d: d["customProperties"].__setitem__(
                1, {"property": "cmohub.datasetKind", "value": "canonical"}
            ),
            "LINT_DATASET",  # a canonical dataset must be one of the domain's
        ),
    ],
)
def test_lint_names_each_broken_convention(edit: Any, code: str) -> None:
    document = copy.deepcopy(minimal())
    edit(document)
    assert code in lint(document)


def test_canonical_contracts_need_the_lineage_columns() -> None:
    document = copy.deepcopy(minimal())
    document["customProperties"] = [
        {"property": "cmohub.dataset", "value": "master.site"},
        {"property": "cmohub.datasetKind", "value": "canonical"},
    ]
    assert "LINT_LINEAGE" in lint(document)


def test_a_property_without_classification_is_treated_as_restricted() -> None:
    document = copy.deepcopy(minimal())
    document["schema"][0]["properties"][0].pop("classification")
    assert to_contract(document).prop("id").classification is Classification.RESTRICTED


def test_unsupported_quality_rules_are_refused_with_a_clear_code() -> None:
    document = copy.deepcopy(minimal())
    document["schema"][0]["quality"] = [{"type": "sql", "query": "select 1", "mustBe": 1}]
    with pytest.raises(ContractError) as raised:
        to_contract(document)
    assert raised.value.code == "CONTRACT_RULE_UNSUPPORTED"


def test_a_file_breaking_the_schema_names_the_schema_and_the_version_it_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CMOHUB_ODCS_SCHEMAS", raising=False)  # the library's v3.2.0 schema
    document = copy.deepcopy(minimal())
    document["schema"][0]["properties"][2]["logicalType"] = "datetime"  # in no ODCS version
    path = tmp_path / "x.odcs.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ContractError) as raised:
        load_contract_file(path)
    assert raised.value.code == "CONTRACT_SCHEMA"
    message = raised.value.message
    assert "ODCS v3.2.0 JSON schema (it declares v3.1.0)" in message
    assert "logicalType" in message


def test_unquoted_yaml_dates_stay_text(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "contractCreatedTs: 2026-01-01T00:00:00Z\n"
    path = tmp_path / "x.odcs.yaml"
    path.write_text(text)
    assert load_contract_file(path).dataset == "test.table"
