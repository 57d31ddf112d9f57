"""The sandbox speaks each standard as the standard's own tools read it.

EPCIS documents validate against the official EPCIS 2.0 JSON schema (../shared/corpus),
FHIR resources parse with fhir.resources' R4B models, HL7 messages parse with hl7apy, BatchML
is well-formed XML in the B2MML V0401 namespace the corpus examples use. The planted
malformed records are the only ones that fail, and each is listed in truth.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from defusedxml import ElementTree
from fhir.resources.R4B import get_fhir_model_class
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from pydantic import ValidationError

from cmohub.sandbox.generate import generate_program

pytestmark = pytest.mark.corpus
B2MML = "{http://www.wbf.org/xml/B2MML-V0401}"


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sandbox") / "program"
    generate_program(out, patients=40, days=20, seed=9)
    return out


@pytest.fixture(scope="module")
def malformed(program: Path) -> dict[str, dict[str, Any]]:
    """Planted RECORD_MALFORMED faults by file."""
    truth = json.loads((program / "truth.json").read_text())
    return {f["key"]["file"]: f for f in truth["faults"] if f["rule"] == "RECORD_MALFORMED"}


def test_epcis_documents_validate_against_the_official_schema(program: Path, corpus: Path) -> None:
    schema = json.loads((corpus / "epcis/EPCIS-JSON-Schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    documents = sorted((program / "epcis").glob("*.jsonld"))
    assert documents
    kinds = set()
    for path in documents:
        document = json.loads(path.read_text())
        errors = [e.message for e in validator.iter_errors(document)]
        assert not errors, f"{path.name}: {errors[:3]}"
        kinds |= {e["bizStep"] for e in document["epcisBody"]["eventList"]}
    assert {"commissioning", "shipping", "departing", "arriving", "receiving"} <= kinds
    assert "sensor_reporting" in kinds


def test_the_schema_check_can_fail(corpus: Path) -> None:
    schema = json.loads((corpus / "epcis/EPCIS-JSON-Schema.json").read_text())
    bad = {"type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "x", "epcisBody": {}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_fhir_resources_parse_with_r4b_models(
    program: Path, malformed: dict[str, dict[str, Any]]
) -> None:
    failed = set()
    for path in sorted((program / "clinical/fhir").glob("*.ndjson")):
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            try:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except ValidationError:
                failed.add(resource["id"])
    planted = {
        f["key"]["id"] for f in malformed.values() if f["fault"] == "malformed_fhir_resource"
    }
    assert planted and failed == planted


def test_fhir_search_pages_are_valid_bundles_but_for_the_planted_resource(
    program: Path, malformed: dict[str, dict[str, Any]]
) -> None:
    planted = {
        f["key"]["id"] for f in malformed.values() if f["fault"] == "malformed_fhir_resource"
    }
    bundle_model = get_fhir_model_class("Bundle")
    for path in sorted((program / "clinical/fhir/pages").rglob("*.json")):
        page = json.loads(path.read_text())
        ids = {e["resource"]["id"] for e in page.get("entry", [])}
        if ids & planted:
            page["entry"] = [e for e in page["entry"] if e["resource"]["id"] not in planted]
            with pytest.raises(ValidationError):
                bundle_model.model_validate(json.loads(path.read_text()))
        bundle_model.model_validate(page)


def test_hl7_messages_parse_with_hl7apy_except_the_planted_ones(
    program: Path, malformed: dict[str, dict[str, Any]]
) -> None:
    messages = sorted((program / "clinical/hl7").rglob("*.hl7"))
    assert messages
    structures = set()
    for path in messages:
        rel = str(path.relative_to(program))
        raw = path.read_bytes()
        planted = malformed.get(rel)
        try:
            message = parse_message(
                raw.decode("utf-8"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True
            )
        except HL7apyException:
            assert planted is not None, f"{rel} does not parse"
            continue
        groups = [child.name for child in message.children]
        if planted is None:
            assert raw.endswith(b"\r") and b"\n" not in raw and b"\x00" not in raw
            structures.add(message.name)
            if message.name == "OML_O21":
                assert groups == ["MSH", "OML_O21_PATIENT", "OML_O21_ORDER"]
                order = message.oml_o21_order
                assert order.orc.orc_4.value.startswith("SBX-TE-")
        else:
            # hl7apy is lenient: what it accepts, the planted defect must still show.
            assert b"\x00" in raw or "OML_O21_ORDER" not in groups, rel
    assert structures == {"OML_O21", "ADT_A01"}  # ADT^A08 uses the ADT_A01 structure
    hl7_planted = {f for f, v in malformed.items() if v["fault"].startswith("malformed_hl7")}
    assert len(hl7_planted) == 3


def test_batchml_records_are_well_formed_b2mml(program: Path) -> None:
    records = sorted((program / "cmo/A9997").rglob("BPR_*.xml"))
    assert records
    for path in records:
        root = ElementTree.parse(path).getroot()
        assert root.tag == f"{B2MML}BatchProductionRecord"
        recipe = root.find(f"{B2MML}ExecutedControlRecipes/{B2MML}ExecutedControlRecipe")
        assert recipe is not None
        info = {
            i.findtext(f"{B2MML}ID"): i.findtext(f"{B2MML}Value/{B2MML}ValueString")
            for i in recipe.findall(f"{B2MML}OtherInformation")
        }
        assert {"ChainOfIdentity", "DonationIdentificationNumber", "BatchStatus"} <= set(info)
        assert recipe.findtext(f"{B2MML}BatchID") == path.stem.removeprefix("BPR_")


def test_the_corpus_b2mml_example_uses_the_same_namespace(corpus: Path) -> None:
    example = corpus / "b2mml/ProductionBatchRecord_Example_v06.xml"
    assert ElementTree.parse(example).getroot().tag == f"{B2MML}BatchProductionRecord"
