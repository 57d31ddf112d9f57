"""The public ODCS examples in ../shared/corpus/odcs load with the library and its schemas.

The version schemas (v3.0.2, v3.1.0) are read from the corpus through CMOHUB_ODCS_SCHEMAS, never
copied into the repository; without them the library's own v3.2.0 schema checks every document.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmohub.contracts.store import load_odcs_document, load_odcs_model, odcs_schema_version
from cmohub.errors import ContractError

pytestmark = pytest.mark.corpus

# Upstream declares v3.0.2 for these two, but they only conform to v3.1.0 (version drift).
DRIFTED = {"all-data-types.odcs.yaml", "column-completeness.odcs.yaml"}
EXAMPLES = [
    "all-data-types.odcs.yaml",
    "all-schema-types.odcs.yaml",
    "column-accuracy.odcs.yaml",
    "column-completeness.odcs.yaml",
    "column-custom.odcs.yaml",
    "column-validity.odcs.yaml",
    "database-table-sla.odcs.yaml",
    "full-example.odcs.yaml",
    "service-and-operational-roles.odcs.yaml",
    "table-columns-with-partition.odcs.yaml",
]


@pytest.fixture
def version_schemas(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each example checked against the schema of the version it declares (the corpus has the
    v3.0.2 and v3.1.0 schemas; the repository ships none: the library brings v3.2.0)."""
    folder = corpus / "odcs"
    monkeypatch.setenv("CMOHUB_ODCS_SCHEMAS", str(folder))
    return folder


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - DRIFTED))
def test_example_loads_against_its_declared_schema(version_schemas: Path, name: str) -> None:
    model = load_odcs_model(version_schemas / name)
    assert model.kind == "DataContract"
    assert model.apiVersion in ("v3.0.2", "v3.1.0")
    assert odcs_schema_version(model.apiVersion) == model.apiVersion


@pytest.mark.parametrize("name", sorted(DRIFTED))
def test_drifted_examples_fail_their_declared_schema_with_a_clear_error(
    version_schemas: Path, name: str
) -> None:
    with pytest.raises(ContractError) as raised:
        load_odcs_document(version_schemas / name)
    error = raised.value
    assert error.code == "CONTRACT_SCHEMA"
    assert "does not conform to the ODCS v3.0.2 JSON schema it declares" in error.message
    assert "declare apiVersion: v3.1.0" in error.message
    assert name in (error.where or "")


def test_a_contract_breaking_its_declared_schema_says_which_version_it_fits(
    version_schemas: Path, tmp_path: Path
) -> None:
    document = yaml.safe_load((version_schemas / "all-data-types.odcs.yaml").read_text())
    document["id"] = "drift-check"
    path = tmp_path / "x.odcs.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ContractError) as raised:
        load_odcs_document(path)
    assert raised.value.code == "CONTRACT_SCHEMA"
    assert "v3.0.2" in raised.value.message and "declare apiVersion: v3.1.0" in raised.value.message


@pytest.mark.parametrize("name", EXAMPLES)
def test_without_version_schemas_every_example_meets_the_librarys_schema(
    corpus: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CMOHUB_ODCS_SCHEMAS", raising=False)
    model = load_odcs_model(corpus / "odcs" / name)
    assert model.kind == "DataContract"
    assert odcs_schema_version(model.apiVersion or "") == "v3.2.0"
