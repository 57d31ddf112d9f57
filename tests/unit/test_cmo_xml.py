"""XML paths for batch records: ``ancestor::`` and ``current()``, safe parsing, the B2MML corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmohub.errors import MappingError
from cmohub.mapping.paths import compile_path
from cmohub.mapping.readers import read_xml
from cmohub.mapping.spec import SourceSpec

NS = {"b": "urn:example:batch"}
DOC = b"""<?xml version="1.0"?>
<Record xmlns="urn:example:batch">
  <Batch><BatchID>B-1</BatchID>
    <Step><ID>S1</ID><Charge><Lot>L-1</Lot></Charge><Charge><Lot>L-2</Lot></Charge></Step>
    <Step><ID>S2</ID><Charge><Lot>L-3</Lot></Charge></Step>
  </Batch>
  <Events><Event><ID>D-1</ID></Event><Event><ID>D-2</ID></Event></Events>
  <Closures>
    <Closure><Ref>D-2</Ref><At>2026-02-01T10:00:00Z</At></Closure>
    <Closure><Ref>D'3</Ref><At>2026-02-02T10:00:00Z</At></Closure>
  </Closures>
</Record>
"""


def _records(record_path: str, data: bytes = DOC) -> list[object]:
    spec = SourceSpec(format="xml", record_path=record_path, namespaces=tuple(NS.items()))
    return [r.data for r in read_xml(spec, data)]


def test_records_below_the_root_read_their_ancestors() -> None:
    charges = _records(".//b:Charge")
    batch = compile_path("xml", "ancestor::b:Batch/b:BatchID", namespaces=NS)
    step = compile_path("xml", "ancestor::b:Step/b:ID", namespaces=NS)
    lot = compile_path("xml", "b:Lot", namespaces=NS)
    assert [(batch(c), step(c), lot(c)) for c in charges] == [
        (["B-1"], ["S1"], ["L-1"]),
        (["B-1"], ["S1"], ["L-2"]),
        (["B-1"], ["S2"], ["L-3"]),
    ]
    assert compile_path("xml", "ancestor::b:Nowhere/b:ID", namespaces=NS)(charges[0]) == []


def test_current_joins_a_record_to_another_part_of_its_document() -> None:
    events = _records("b:Events/b:Event")
    closed = compile_path(
        "xml",
        "ancestor::b:Record/b:Closures/b:Closure[b:Ref=current()/b:ID]/b:At",
        namespaces=NS,
    )
    assert [closed(e) for e in events] == [[], ["2026-02-01T10:00:00Z"]]


@pytest.mark.parametrize(
    "path",
    ["ancestor::x:Batch/b:ID", "b:Step[contains(b:ID,'S')]", "following-sibling::b:Step"],
)
def test_paths_outside_the_supported_subset_are_refused_when_compiled(path: str) -> None:
    with pytest.raises(MappingError) as caught:
        compile_path("xml", path, namespaces=NS)
    assert caught.value.code == "MAPPING_PATH_INVALID"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>',
            "MAPPING_SOURCE_UNSAFE_XML",
        ),
        (b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><r/>',
         "MAPPING_SOURCE_UNSAFE_XML"),
        (DOC[: len(DOC) // 2], "MAPPING_SOURCE_INVALID"),
    ],
    ids=["entity-bomb", "external-dtd", "truncated"],
)  # fmt: skip
def test_unsafe_or_truncated_xml_is_refused_before_any_record(data: bytes, code: str) -> None:
    with pytest.raises(MappingError) as caught:
        _records(".//b:Charge", data)
    assert caught.value.code == code


@pytest.mark.corpus
def test_the_public_b2mml_v0401_example_is_read_with_the_borealis_paths(corpus: Path) -> None:
    data = (corpus / "b2mml" / "ProductionBatchRecord_Example_v06.xml").read_bytes()
    spaces = {"b2mml": "http://www.wbf.org/xml/B2MML-V0401"}
    spec = SourceSpec(
        format="xml",
        record_path=".//b2mml:RuntimeRecipeElement",
        namespaces=tuple(spaces.items()),
    )
    elements = [r.data for r in read_xml(spec, data)]
    batch = compile_path(
        "xml", "ancestor::b2mml:ExecutedControlRecipe/b2mml:BatchID", namespaces=spaces
    )
    assert elements and all(batch(e) == ["BX10"] for e in elements)
