"""The canonical contracts and the domain models describe the same tables."""

from __future__ import annotations

import datetime as dt
import enum
import types
import typing

import pytest
from pydantic import BaseModel

from cmohub.contracts.model import (
    LINEAGE_COLUMNS,
    Classification,
    Contract,
    DatasetKind,
    IdentityRole,
    LogicalType,
)
from cmohub.contracts.store import load_contracts
from cmohub.domain import DATASETS
from cmohub.domain.types import CoiStr, DinStr

CONTRACTS = load_contracts()


def _unwrap(annotation: typing.Any) -> tuple[typing.Any, bool, tuple[typing.Any, ...]]:
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    metadata: tuple[typing.Any, ...] = ()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *rest = typing.get_args(annotation)
        metadata = tuple(rest)
    return annotation, optional, metadata


def _logical(annotation: typing.Any) -> LogicalType:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return LogicalType.STRING
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return LogicalType.OBJECT
    if annotation is bool:
        return LogicalType.BOOLEAN
    if annotation is int:
        return LogicalType.INTEGER
    if annotation is float:
        return LogicalType.NUMBER
    if annotation is dt.datetime or getattr(annotation, "__name__", "") == "AwareDatetime":
        return LogicalType.TIMESTAMP
    if annotation is dt.date:
        return LogicalType.DATE
    return LogicalType.STRING


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_domain_field_is_a_contract_property_of_a_compatible_type(dataset: str) -> None:
    contract = CONTRACTS[dataset]
    model = DATASETS[dataset]
    props = {p.name: p for p in contract.properties}
    for name, info in model.model_fields.items():
        assert name in props, f"{dataset}.{name} has no contract property"
        annotation, optional, _ = _unwrap(info.annotation)
        prop = props[name]
        assert prop.logical_type is _logical(annotation), f"{dataset}.{name}: type differs"
        # Fields with a default are always filled in the canonical row, so they are required.
        assert prop.required == (not optional), f"{dataset}.{name}: required differs"
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            assert set(prop.allowed_values or ()) == {e.value for e in annotation}, (
                f"{dataset}.{name}: code list differs from {annotation.__name__}"
            )


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_contract_property_is_a_domain_field_or_lineage(dataset: str) -> None:
    contract = CONTRACTS[dataset]
    fields = set(DATASETS[dataset].model_fields)
    for prop in contract.properties:
        if prop.lineage:
            assert prop.name in LINEAGE_COLUMNS
        else:
            assert prop.name in fields, f"{dataset}: {prop.name} is not a field of the model"
    assert [p.name for p in contract.properties if p.lineage] == list(LINEAGE_COLUMNS)


def _validators(info: typing.Any) -> set[str]:
    return {getattr(getattr(m, "func", None), "__name__", "") for m in info.metadata}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_identity_roles_follow_the_identifier_types(dataset: str) -> None:
    contract = CONTRACTS[dataset]
    coi_checks = {m.func.__name__ for m in typing.get_args(CoiStr)[1:]}
    din_checks = {m.func.__name__ for m in typing.get_args(DinStr)[1:]}
    for name, info in DATASETS[dataset].model_fields.items():
        checks = _validators(info)
        expected = (
            IdentityRole.COI
            if checks & coi_checks
            else IdentityRole.DIN
            if checks & din_checks
            else IdentityRole.NONE
        )
        assert contract.prop(name).identity_role is expected, f"{dataset}.{name}"


def test_every_canonical_dataset_has_exactly_one_contract() -> None:
    canonical = {name for name, c in CONTRACTS.items() if c.kind is DatasetKind.CANONICAL}
    assert canonical == set(DATASETS)


def test_published_datasets_have_contracts() -> None:
    published = {name for name, c in CONTRACTS.items() if c.kind is DatasetKind.PUBLISHED}
    assert published == {"coi_journey", "exceptions", "excursions", "feed_scorecard"}


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=lambda c: c.dataset)
def test_no_dataset_holds_direct_identifiers(contract: Contract) -> None:
    assert all(p.classification is not Classification.RESTRICTED for p in contract.properties)
    for prop in contract.iter_identity_properties():
        assert prop.classification is Classification.CONFIDENTIAL
