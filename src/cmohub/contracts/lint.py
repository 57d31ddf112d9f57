"""Contract lint: the ODCS JSON schema plus the hub's conventions (pure).

A contract passes when it conforms to the JSON schema of its ``apiVersion`` and:

=========================== ====================================================================
LINT_API_VERSION            apiVersion is one the hub can check
LINT_SCHEMA                 the document conforms to that JSON schema
LINT_CONTRACT               it converts into a hub contract (one dataset, known types, rules)
LINT_VERSION                ``version`` is semantic (MAJOR.MINOR.PATCH)
LINT_DATASET                ``cmohub.dataset`` and ``cmohub.datasetKind`` are declared;
                            a canonical dataset is one of ``cmohub.domain.DATASETS``
LINT_DESCRIPTION            the contract and every property have a description
LINT_CLASSIFICATION         every property declares a classification on the hub's scale
LINT_REQUIRED               every property says whether it is ``required``
LINT_KEY                    the dataset declares a primary key with positions 1..n
LINT_IDENTITY_ROLE          identity roles are valid: COI/DIN properties are confidential
                            strings; subject identifiers are restricted and never staged
LINT_RESTRICTED             no restricted property in a canonical or published dataset
LINT_TIMEZONE               timestamps say ``timezone: true`` (or false, deliberately)
LINT_PATTERN                patterns compile
LINT_CUSTOM_PROPERTY        no unknown ``cmohub.*`` custom property
LINT_LINEAGE                canonical datasets carry the lineage columns
=========================== ====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmohub.contracts import odcs
from cmohub.contracts.arrow import to_arrow_schema
from cmohub.contracts.checks import compile_checks
from cmohub.contracts.model import (
    CUSTOM_DATASET,
    CUSTOM_DATASET_KIND,
    CUSTOM_IDENTITY_ROLE,
    KNOWN_CUSTOM_PROPERTIES,
    LINEAGE_COLUMNS,
    Classification,
    Contract,
    DatasetKind,
    IdentityRole,
    parse_semver,
)
from cmohub.errors import ContractError


@dataclass(frozen=True, slots=True)
class LintProblem:
    code: str
    where: str  # a path inside the document, e.g. schema/0/properties/coi
    message: str

    def __str__(self) -> str:
        return f"{self.code} at {self.where}: {self.message}"


def _customs(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {
        str(item.get("property")): item.get("value")
        for item in items
        if isinstance(item, Mapping) and item.get("property") is not None
    }


def _iter_properties(properties: Any, prefix: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(properties, list):
        return
    for prop in properties:
        if not isinstance(prop, Mapping):
            continue
        where = f"{prefix}/{prop.get('name', '?')}"
        yield where, prop
        yield from _iter_properties(prop.get("properties"), where)


def _unknown_customs(items: Any, where: str) -> list[LintProblem]:
    return [
        LintProblem("LINT_CUSTOM_PROPERTY", where, f"unknown custom property {name}")
        for name in _customs(items)
        if name.startswith("cmohub.") and name not in KNOWN_CUSTOM_PROPERTIES
    ]


def lint_document(
    document: Any,
    schema_for: Any,
    *,
    source: str = "",
    known_datasets: Sequence[str] = (),
) -> tuple[list[LintProblem], Contract | None]:
    """Every problem of one contract document; the contract when it converts.

    ``schema_for(api_version)`` returns the ODCS JSON schema (the store reads them).
    """
    problems: list[LintProblem] = []
    try:
        version = odcs.api_version_of(document, where=source)
    except ContractError as error:
        return [LintProblem("LINT_API_VERSION", "apiVersion", error.message)], None
    for line in odcs.schema_problems(document, schema_for(version)):
        path, _, message = line.removeprefix("at ").partition(": ")
        problems.append(LintProblem("LINT_SCHEMA", path, message))
    if problems:
        return problems, None
    contract = None
    try:
        contract = odcs.to_contract(document, source=source)
    except ContractError as error:
        problems.append(LintProblem("LINT_CONTRACT", error.where or source, error.message))
    problems.extend(_conventions(document, known_datasets))
    if contract is not None:
        problems.extend(_contract_conventions(contract))
    return problems, contract


def _conventions(document: Mapping[str, Any], known_datasets: Sequence[str]) -> list[LintProblem]:
    problems: list[LintProblem] = []
    add = problems.append
    try:
        parse_semver(str(document.get("version", "")))
    except ContractError as error:
        add(LintProblem("LINT_VERSION", "version", error.message))
    top = _customs(document.get("customProperties"))
    problems.extend(_unknown_customs(document.get("customProperties"), "customProperties"))
    dataset = top.get(CUSTOM_DATASET)
    kind = top.get(CUSTOM_DATASET_KIND)
    if not dataset:
        add(LintProblem("LINT_DATASET", "customProperties", f"{CUSTOM_DATASET} is not declared"))
    if kind not in {k.value for k in DatasetKind}:
        add(
            LintProblem(
                "LINT_DATASET",
                "customProperties",
                f"{CUSTOM_DATASET_KIND} must be canonical or published",
            )
        )
    if (
        kind == DatasetKind.CANONICAL.value
        and known_datasets
        and dataset
        and dataset not in known_datasets
    ):
        add(
            LintProblem(
                "LINT_DATASET",
                "customProperties",
                f"canonical dataset {dataset} is not in cmohub.domain.DATASETS",
            )
        )
    description = document.get("description")
    if not isinstance(description, Mapping) or not description.get("purpose"):
        add(LintProblem("LINT_DESCRIPTION", "description", "the contract needs a purpose"))
    scale = {c.value for c in Classification}
    for index, obj in enumerate(document.get("schema") or ()):
        if not isinstance(obj, Mapping):
            continue
        base = f"schema/{index}"
        problems.extend(_unknown_customs(obj.get("customProperties"), base))
        keys: list[int] = []
        for where, prop in _iter_properties(obj.get("properties"), f"{base}/properties"):
            problems.extend(_property_conventions(where, prop, scale, kind))
            if prop.get("primaryKey") is True:
                position = prop.get("primaryKeyPosition")
                keys.append(position if isinstance(position, int) else -1)
        if not keys:
            add(LintProblem("LINT_KEY", base, "no property is declared primaryKey"))
        elif sorted(keys) != list(range(1, len(keys) + 1)):
            add(
                LintProblem(
                    "LINT_KEY",
                    base,
                    "primaryKeyPosition of the key properties must be 1..n, each once",
                )
            )
    return problems


def _property_conventions(
    where: str, prop: Mapping[str, Any], scale: set[str], kind: Any
) -> list[LintProblem]:
    problems: list[LintProblem] = []
    add = problems.append
    if not prop.get("description"):
        add(LintProblem("LINT_DESCRIPTION", where, "property has no description"))
    classification = prop.get("classification")
    if classification not in scale:
        add(
            LintProblem(
                "LINT_CLASSIFICATION",
                where,
                "classification must be one of " + ", ".join(c.value for c in Classification),
            )
        )
    if not isinstance(prop.get("required"), bool):
        add(LintProblem("LINT_REQUIRED", where, "say required: true or false"))
    custom = _customs(prop.get("customProperties"))
    problems.extend(_unknown_customs(prop.get("customProperties"), where))
    role = custom.get(CUSTOM_IDENTITY_ROLE, IdentityRole.NONE.value)
    roles = {r.value for r in IdentityRole}
    if role not in roles:
        add(
            LintProblem(
                "LINT_IDENTITY_ROLE",
                where,
                f"{CUSTOM_IDENTITY_ROLE} must be one of {sorted(roles)}",
            )
        )
    elif role in (IdentityRole.COI.value, IdentityRole.DIN.value):
        if prop.get("logicalType") != "string":
            add(LintProblem("LINT_IDENTITY_ROLE", where, f"a {role} property is a string"))
        if classification != Classification.CONFIDENTIAL.value:
            add(
                LintProblem(
                    "LINT_IDENTITY_ROLE",
                    where,
                    f"a {role} is a pseudonymous identifier: classify it confidential",
                )
            )
    elif role == IdentityRole.SUBJECT.value and classification != "restricted":
        add(
            LintProblem(
                "LINT_IDENTITY_ROLE",
                where,
                "a subject identifier is a direct identifier: classify it restricted",
            )
        )
    if classification == Classification.RESTRICTED.value and kind in (
        DatasetKind.CANONICAL.value,
        DatasetKind.PUBLISHED.value,
    ):
        add(
            LintProblem(
                "LINT_RESTRICTED",
                where,
                "direct identifiers (restricted) live only in the vault, never in a "
                "canonical or published dataset",
            )
        )
    options = prop.get("logicalTypeOptions")
    options = options if isinstance(options, Mapping) else {}
    if prop.get("logicalType") == "timestamp" and not isinstance(options.get("timezone"), bool):
        add(
            LintProblem(
                "LINT_TIMEZONE",
                where,
                "timestamps declare logicalTypeOptions.timezone (true: an offset is required)",
            )
        )
    pattern = options.get("pattern")
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error as error:
            add(LintProblem("LINT_PATTERN", where, f"pattern does not compile ({error.msg})"))
    return problems


def _contract_conventions(contract: Contract) -> list[LintProblem]:
    problems: list[LintProblem] = []
    try:
        compile_checks(contract)
        to_arrow_schema(contract)
    except ContractError as error:
        problems.append(LintProblem("LINT_CONTRACT", contract.dataset, error.message))
    if contract.kind is DatasetKind.CANONICAL:
        for name in LINEAGE_COLUMNS:
            try:
                prop = contract.prop(name)
            except ContractError:
                problems.append(
                    LintProblem("LINT_LINEAGE", contract.dataset, f"lineage column {name} missing")
                )
                continue
            if not prop.lineage or not prop.required:
                problems.append(
                    LintProblem(
                        "LINT_LINEAGE",
                        f"{contract.dataset}/{name}",
                        "lineage columns are required and say cmohub.lineage: true",
                    )
                )
    for rule in contract.rules:
        if rule.pattern is not None:
            try:
                re.compile(rule.pattern)
            except re.error as error:
                problems.append(
                    LintProblem("LINT_PATTERN", rule.id, f"pattern does not compile ({error.msg})")
                )
    return problems
