"""Adapter for ODCS documents: the only importer of ``open_data_contract_standard`` (pure).

Turns a parsed YAML document into the library's model and then into the hub's
:class:`~cmohub.contracts.model.Contract`; library errors become :class:`ContractError` with
stable codes:

========================== ===========================================================
CONTRACT_API_VERSION       ``apiVersion`` missing or not one the hub can check
CONTRACT_SCHEMA            the document does not conform to its ODCS JSON schema
CONTRACT_ODCS_INVALID      the ``open-data-contract-standard`` model rejects it
CONTRACT_SHAPE             not one schema object with properties (hub convention)
CONTRACT_TYPE_UNSUPPORTED  a logical type the hub cannot store
CONTRACT_CUSTOM_PROPERTY   a ``cmohub.*`` custom property with an invalid value
========================== ===========================================================

JSON schemas are passed in (``cmohub.contracts.store`` reads them: the library's own v3.2.0
schema, or the declared version's from ``CMOHUB_ODCS_SCHEMAS``), so this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import jsonschema
import pydantic
from open_data_contract_standard.model import (
    CustomProperty,
    DataQuality,
    OpenDataContractStandard,
    SchemaObject,
    SchemaProperty,
)

from cmohub.contracts.model import (
    CUSTOM_DATASET,
    CUSTOM_DATASET_KIND,
    CUSTOM_IDENTITY_ROLE,
    CUSTOM_LINEAGE,
    CUSTOM_RECORD_KEY,
    CUSTOM_RULE_CODE,
    CUSTOM_UNIT,
    Classification,
    Contract,
    DatasetKind,
    Freshness,
    IdentityRole,
    LogicalType,
    PropertySpec,
    QualityRule,
    RuleKind,
    Severity,
    parse_duration,
)
from cmohub.errors import ContractError

#: The ODCS version whose JSON schema ships inside the installed library.
PACKAGE_API_VERSION = "v3.2.0"
#: Versions the hub can check against a JSON schema (store ships 3.0.2 and 3.1.0).
SUPPORTED_API_VERSIONS = ("v3.0.2", "v3.1.0", "v3.2.0")
_MAX_SCHEMA_PROBLEMS = 20


def api_version_of(document: Any, *, where: str) -> str:
    """The declared ``apiVersion``, checked against the versions the hub supports."""
    if not isinstance(document, Mapping):
        raise ContractError("a contract must be a YAML mapping", code="CONTRACT_SHAPE", where=where)
    declared = document.get("apiVersion")
    if not isinstance(declared, str):
        raise ContractError("apiVersion is missing", code="CONTRACT_API_VERSION", where=where)
    if declared not in SUPPORTED_API_VERSIONS:
        raise ContractError(
            f"apiVersion {declared} is not supported; "
            f"use one of {', '.join(SUPPORTED_API_VERSIONS)}",
            code="CONTRACT_API_VERSION",
            where=where,
        )
    return declared


def schema_problems(document: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way ``document`` breaks ``schema``, as ``at <path>: <message>`` lines."""
    validator = jsonschema.Draft201909Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path))):
        path = "/".join(str(p) for p in error.absolute_path) or "(document)"
        problems.append(f"at {path}: {_short(error.message)}")
    return problems


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def check_against_schema(
    document: Any,
    schema: Mapping[str, Any],
    api_version: str,
    *,
    where: str,
    declared: str | None = None,
) -> None:
    """Raise CONTRACT_SCHEMA with a readable summary when ``document`` breaks its schema.

    ``api_version`` is the schema's version; ``declared`` the document's, when they differ.
    """
    problems = schema_problems(document, schema)
    if problems:
        shown = "; ".join(problems[:_MAX_SCHEMA_PROBLEMS])
        more = f" (and {len(problems) - _MAX_SCHEMA_PROBLEMS} more)" if len(problems) > 20 else ""
        whose = "it declares" if declared in (None, api_version) else f"(it declares {declared})"
        raise ContractError(
            f"does not conform to the ODCS {api_version} JSON schema {whose} "
            f"({len(problems)} problem{'s' if len(problems) != 1 else ''}): {shown}{more}",
            code="CONTRACT_SCHEMA",
            where=where,
        )


def parse_odcs(document: Mapping[str, Any], *, where: str) -> OpenDataContractStandard:
    """The library's model of ``document`` (after the JSON-schema check)."""
    try:
        return OpenDataContractStandard.model_validate(dict(document))
    except pydantic.ValidationError as error:
        first = error.errors(include_input=False)[0]
        path = "/".join(str(p) for p in first["loc"])
        raise ContractError(
            f"{first['msg']} at {path}", code="CONTRACT_ODCS_INVALID", where=where
        ) from None


def dump_odcs(model: OpenDataContractStandard) -> dict[str, Any]:
    """The document as plain data (defaults and nulls left out)."""
    dumped: dict[str, Any] = model.model_dump(exclude_none=True, by_alias=True)
    return dumped


# --- conversion to the hub's model -----------------------------------------------------------


def customs(items: Iterable[CustomProperty] | None) -> dict[str, Any]:
    return {c.property: c.value for c in items or () if c.property is not None}


def to_contract(
    document: Mapping[str, Any], *, source: str = "", content_sha256: str = ""
) -> Contract:
    """Convert a schema-valid ODCS document into a :class:`Contract` (one schema object)."""
    model = parse_odcs(document, where=source)
    objects = model.schema_ or []
    if len(objects) != 1:
        raise ContractError(
            f"expected exactly one schema object (one dataset per contract), found {len(objects)}",
            code="CONTRACT_SHAPE",
            where=source,
        )
    obj = objects[0]
    top = customs(model.customProperties)
    dataset = str(top.get(CUSTOM_DATASET) or obj.name or "")
    if not dataset:
        raise ContractError("the schema object has no name", code="CONTRACT_SHAPE", where=source)
    kind_text = str(top.get(CUSTOM_DATASET_KIND, DatasetKind.CANONICAL.value))
    try:
        kind = DatasetKind(kind_text)
    except ValueError:
        raise ContractError(
            f"{CUSTOM_DATASET_KIND} must be canonical or published",
            code="CONTRACT_CUSTOM_PROPERTY",
            where=source,
        ) from None
    rules: list[QualityRule] = []
    properties = tuple(
        _to_property(prop, rules, where=f"{source}#{prop.name}") for prop in obj.properties or ()
    )
    if not properties:
        raise ContractError(
            "the schema object has no properties", code="CONTRACT_SHAPE", where=source
        )
    rules.extend(_to_rule(q, None, where=f"{source}#{obj.name}") for q in obj.quality or ())
    properties = _attach_value_sets(properties, rules)
    description = model.description
    text = ""
    if description is not None:
        text = " ".join(t for t in (description.purpose, description.usage) if t)
    sla = tuple(
        (s.property or "", s.value, s.unit) for s in model.slaProperties or () if s.property
    )
    return Contract(
        id=model.id or "",
        version=model.version or "",
        api_version=model.apiVersion or "",
        status=model.status or "",
        dataset=dataset,
        kind=kind,
        description=text or (obj.description or ""),
        properties=properties,
        rules=tuple(rules),
        freshness=_freshness(model, obj, properties, where=source),
        tags=tuple(model.tags or ()),
        content_sha256=content_sha256,
        source=source,
        sla=sla,
    )


def _to_property(prop: SchemaProperty, rules: list[QualityRule], *, where: str) -> PropertySpec:
    name = prop.name or ""
    try:
        logical = LogicalType(prop.logicalType or "")
    except ValueError:
        raise ContractError(
            f"logical type {prop.logicalType!r} of {name!r} is not one the hub stores "
            f"({', '.join(t.value for t in LogicalType)})",
            code="CONTRACT_TYPE_UNSUPPORTED",
            where=where,
        ) from None
    custom = customs(prop.customProperties)
    role_text = str(custom.get(CUSTOM_IDENTITY_ROLE, IdentityRole.NONE.value))
    try:
        role = IdentityRole(role_text)
    except ValueError:
        raise ContractError(
            f"{CUSTOM_IDENTITY_ROLE} of {name!r} must be one of "
            f"{', '.join(r.value for r in IdentityRole)}",
            code="CONTRACT_CUSTOM_PROPERTY",
            where=where,
        ) from None
    # An unclassified property is treated as restricted (the safe side); lint reports it.
    try:
        classification = Classification((prop.classification or "restricted").lower())
    except ValueError:
        classification = Classification.RESTRICTED
    options = prop.logicalTypeOptions or {}
    for quality in prop.quality or ():
        rules.append(_to_rule(quality, name, where=where))
    children = tuple(
        _to_property(child, rules, where=f"{where}.{child.name}") for child in prop.properties or ()
    )
    return PropertySpec(
        name=name,
        logical_type=logical,
        required=bool(prop.required),
        classification=classification,
        description=prop.description or "",
        primary_key=bool(prop.primaryKey),
        primary_key_position=prop.primaryKeyPosition if prop.primaryKeyPosition is not None else -1,
        unique=bool(prop.unique),
        identity_role=role,
        unit=_opt_str(custom.get(CUSTOM_UNIT)),
        lineage=custom.get(CUSTOM_LINEAGE) is True,
        record_key=custom.get(CUSTOM_RECORD_KEY) is True,
        pattern=_opt_str(options.get("pattern")),
        min_length=_opt_int(options.get("minLength")),
        max_length=_opt_int(options.get("maxLength")),
        minimum=_opt_float(options.get("minimum")),
        maximum=_opt_float(options.get("maximum")),
        exclusive_minimum=_opt_float(options.get("exclusiveMinimum")),
        exclusive_maximum=_opt_float(options.get("exclusiveMaximum")),
        integer_format=_opt_str(options.get("format")) if logical is LogicalType.INTEGER else None,
        timezone=options.get("timezone") if isinstance(options.get("timezone"), bool) else None,
        tags=tuple(prop.tags or ()),
        children=children,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _operators(quality: DataQuality) -> tuple[float | None, float | None]:
    """The allowed [min, max] of the rule's metric (None: unbounded)."""
    if quality.mustBe is not None and not isinstance(quality.mustBe, bool):
        value = float(quality.mustBe)
        return value, value
    low: float | None = None
    high: float | None = None
    if quality.mustBeGreaterThan is not None:
        low = float(quality.mustBeGreaterThan) + 1e-9
    if quality.mustBeGreaterOrEqualTo is not None:
        low = float(quality.mustBeGreaterOrEqualTo)
    if quality.mustBeLessThan is not None:
        high = float(quality.mustBeLessThan) - 1e-9
    if quality.mustBeLessOrEqualTo is not None:
        high = float(quality.mustBeLessOrEqualTo)
    if quality.mustBeBetween is not None:
        low, high = float(quality.mustBeBetween[0]), float(quality.mustBeBetween[1])
    return low, high


def _to_rule(quality: DataQuality, column: str | None, *, where: str) -> QualityRule:
    metric = quality.metric or quality.rule
    severity = Severity.parse(quality.severity, where=where)
    custom = customs(quality.customProperties)
    arguments = quality.arguments or {}
    low, high = _operators(quality)
    # No operator, or "must be 0": every row must pass (row level); anything else is a tolerance.
    strict = (low is None and high is None) or (low in (None, 0.0) and high == 0.0)
    base = {
        "severity": severity,
        "column": column,
        "description": quality.description or "",
        "must_be_min": low,
        "must_be_max": high,
        "unit": quality.unit,
        "rule_code": _opt_str(custom.get(CUSTOM_RULE_CODE)),
    }
    if quality.type in ("text",):
        kind = None
    elif metric == "nullValues" and column is not None:
        kind = RuleKind.REQUIRED if strict and quality.unit != "percent" else RuleKind.NULL_SHARE
    elif metric == "invalidValues" and column is not None:
        if not (strict and quality.unit != "percent"):
            kind = RuleKind.INVALID_SHARE
        elif "pattern" in arguments:
            kind = RuleKind.PATTERN
        else:
            kind = RuleKind.VALUE_SET
    elif metric == "duplicateValues":
        kind = RuleKind.UNIQUE
    elif metric == "rowCount" and column is None:
        kind = RuleKind.ROW_COUNT
    else:
        kind = None
    if kind is None:
        rule_id = quality.id or quality.name or f"{column or 'table'}.{metric or quality.type}"
        raise ContractError(
            f"quality rule {rule_id!r} ({quality.type or 'library'} {metric or ''}) is not one "
            "the hub can run: use nullValues, invalidValues, duplicateValues or rowCount",
            code="CONTRACT_RULE_UNSUPPORTED",
            where=where,
        )
    valid = arguments.get("validValues")
    return QualityRule(
        id=quality.id or quality.name or f"{column or 'table'}.{kind.value}",
        kind=kind,
        valid_values=tuple(valid) if isinstance(valid, list) else None,
        pattern=_opt_str(arguments.get("pattern")),
        **base,  # type: ignore[arg-type]
    )


def _attach_value_sets(
    properties: Sequence[PropertySpec], rules: Sequence[QualityRule]
) -> tuple[PropertySpec, ...]:
    """Copy each property's code list (a row-level validValues rule) onto the property."""
    by_column = {
        r.column: r.valid_values
        for r in rules
        if r.kind is RuleKind.VALUE_SET and r.valid_values is not None
    }
    out = []
    for prop in properties:
        values = by_column.get(prop.name)
        if values is not None:
            prop = replace(  # noqa: PLW2901 - a frozen copy with the code list set
                prop, allowed_values=tuple(str(v) for v in values if v is not None)
            )
        out.append(prop)
    return tuple(out)


def _freshness(
    model: OpenDataContractStandard,
    obj: SchemaObject,
    properties: Sequence[PropertySpec],
    *,
    where: str,
) -> Freshness | None:
    for sla in model.slaProperties or ():
        if sla.property != "latency":
            continue
        element = sla.element or model.slaDefaultElement
        if not element:
            raise ContractError(
                "SLA latency needs an element (table.column)",
                code="CONTRACT_SLA_INVALID",
                where=where,
            )
        column = element.split(".")[-1]
        if column not in {p.name for p in properties}:
            raise ContractError(
                f"SLA latency element {element!r} is not a property of {obj.name}",
                code="CONTRACT_SLA_INVALID",
                where=where,
            )
        severity = Severity.ERROR if (sla.driver or "") == "regulatory" else Severity.WARNING
        max_age = parse_duration(sla.value, sla.unit, where=where)
        return Freshness(column=column, max_age=max_age, severity=severity)
    return None
