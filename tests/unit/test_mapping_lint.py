"""mappings lint: a mapping must fit its contract and keep identifiers inside the vault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cmohub.cli import app
from cmohub.contracts.store import load_contract
from cmohub.mapping import parse_mapping
from cmohub.mapping.lint import lint_mapping
from cmohub.mapping.store import mapping_schema

BASE = {
    "mapping": "test-orders",
    "version": "1.0.0",
    "description": "test",
    "produces": {"dataset": "clinical.order", "contract_version": "1"},
    "source": {"format": "hl7v2", "time_zone": "Europe/Berlin"},
    "targets": {
        "order_id": "ORC-2",
        "coi": {
            "identity": {
                "tokenize": {
                    "system": {"const": "urn:oid:1.2.3.4"},
                    "value": "PID-3.1",
                    "therapy_event": "ORC-2",
                    "demographics": {"birth_date": "PID-7"},
                }
            }
        },
        "product_code": {"const": "SBX-CART-01"},
        "ordering_site": {"const": "A9990"},
        "collection_site": {"const": "A9990"},
        "ordered_at": {"from": "ORC-9", "transforms": ["parse_hl7_ts"]},
        "status": {"from": "ORC-5", "transforms": [{"map_values": {"table": {"SC": "scheduled"}}}]},
    },
}


def problems(document: dict[str, Any]) -> list[str]:
    spec = parse_mapping(document, mapping_schema())
    return [p.code for p in lint_mapping(spec, load_contract(spec.dataset))]


def edited(**targets: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(yaml.safe_dump(BASE))
    for name, value in targets.items():
        if value is None:
            document["targets"].pop(name)
        else:
            document["targets"][name] = value
    return document


def test_a_clinical_mapping_that_tokenizes_the_mrn_is_clean() -> None:
    assert problems(BASE) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"status": None}, "MLINT_REQUIRED_UNMAPPED"),
        ({"colour": {"const": "blue"}}, "MLINT_TARGET_UNKNOWN"),
        ({"ordered_at": {"from": "ORC-9", "transforms": ["parse_iso_maybe"]}}, "MLINT_COMPILE"),
        ({"ordered_at": {"from": "ORC9"}}, "MLINT_COMPILE"),
        ({"order_id": "PID-3.1"}, "MLINT_CLASSIFIED_SOURCE"),  # an MRN copied into a dataset
        ({"coi": {"from": "PID-3.1", "identity": "verify"}}, "MLINT_CLASSIFIED_SOURCE"),
        ({"coi": {"from": "ORC-3"}}, "MLINT_IDENTITY"),
        ({"order_id": {"from": "ORC-2", "identity": "verify"}}, "MLINT_IDENTITY"),
        (
            {
                "ordered_at": {
                    "from": "ORC-9",
                    "transforms": [{"parse_datetime": {"format": "%Y%m%d%H%M", "tz": "Nowhere/X"}}],
                }
            },
            "MLINT_COMPILE",
        ),
    ],
)
def test_lint_catches(change: dict[str, Any], code: str) -> None:
    assert code in problems(edited(**change))


def test_lineage_columns_cannot_be_mapped() -> None:
    from cmohub.errors import MappingError

    with pytest.raises(MappingError) as raised:
        problems(edited(_feed={"const": "x"}))
    assert raised.value.code == "MAPPING_SCHEMA"


def test_naive_time_formats_need_a_time_zone() -> None:
    document = edited(
        ordered_at={"from": "ORC-9", "transforms": [{"parse_datetime": {"format": "%Y%m%d%H%M"}}]}
    )
    assert problems(document) == []
    document["source"].pop("time_zone")
    assert "MLINT_TIMEZONE" in problems(document)


def test_declared_classification_wins_and_confidential_may_not_be_lowered() -> None:
    document = edited(order_id="ZZ1-1")
    document["source"]["fields"] = [{"name": "ZZ1-1", "classification": "confidential"}]
    assert "MLINT_CLASSIFIED_SOURCE" in problems(document)  # order_id is internal
    csv_doc = {
        **edited(),
        "source": {
            "format": "csv",
            "fields": [{"name": "mrn", "classification": "internal"}],
        },
        "targets": {
            **BASE["targets"],
            "order_id": "mrn",
            "coi": {"from": "COI", "identity": "verify"},
            "ordered_at": "ordered",
            "status": "status",
        },
    }
    assert "MLINT_CLASSIFIED_SOURCE" not in problems(csv_doc)
    csv_doc["source"]["fields"] = []
    assert "MLINT_CLASSIFIED_SOURCE" in problems(csv_doc)  # "mrn" is a known direct identifier


def test_fhir_patient_identifiers_must_be_tokenized() -> None:
    document = {
        **edited(),
        "source": {"format": "fhir", "resource_type": "ServiceRequest"},
        "targets": {
            **BASE["targets"],
            "order_id": "subject.identifier.value",
            "coi": {"from": "identifier[0].value", "identity": "verify"},
            "ordered_at": {"from": "authoredOn", "transforms": ["parse_datetime"]},
            "status": "status",
        },
    }
    assert "MLINT_CLASSIFIED_SOURCE" in problems(document)


def test_schema_violations_are_reported_by_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    document = edited()
    document["targets"]["order_id"] = {"form": "ORC-2"}  # typo
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["mappings", "lint", str(path)])
    assert result.exit_code == 1
    assert "MLINT_SCHEMA" in result.stdout


def test_cli_lint_of_the_shipped_mappings_is_clean() -> None:
    result = CliRunner().invoke(app, ["mappings", "lint"])
    assert result.exit_code == 0, result.stdout
