"""The public ODCS examples in ../shared/corpus/odcs load with the library and its schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmohub.contracts.store import load_odcs_document, load_odcs_model
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


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - DRIFTED))
def test_example_loads_with_the_odcs_library(corpus: Path, name: str) -> None:
    model = load_odcs_model(corpus / "odcs" / name)
    assert model.kind == "DataContract"
    assert model.apiVersion in ("v3.0.2", "v3.1.0")


@pytest.mark.parametrize("name", sorted(DRIFTED))
def test_drifted_examples_fail_their_declared_schema_with_a_clear_error(
    corpus: Path, name: str
) -> None:
    with pytest.raises(ContractError) as raised:
        load_odcs_document(corpus / "odcs" / name)
    error = raised.value
    assert error.code == "CONTRACT_SCHEMA"
    assert "does not conform to the ODCS v3.0.2 JSON schema it declares" in error.message
    assert "declare apiVersion: v3.1.0" in error.message
    assert name in (error.where or "")


def test_the_shipped_schemas_are_the_corpus_schemas(corpus: Path) -> None:
    import json
    from importlib.resources import files

    for version in ("v3.0.2", "v3.1.0"):
        shipped = files("cmohub.contracts") / "schemas" / f"odcs-json-schema-{version}.json"
        upstream = corpus / "odcs" / f"odcs-json-schema-{version}.json"
        assert json.loads(shipped.read_text()) == json.loads(upstream.read_text())
