"""Mapping lint: a mapping must fit its contract and keep identifiers inside the vault (pure).

============================== ==================================================================
MLINT_SCHEMA                   the YAML conforms to the mapping JSON schema
MLINT_CONTRACT                 the produced dataset has a contract
MLINT_CONTRACT_VERSION         the mapping's contract_version has the contract's major version
MLINT_TARGET_UNKNOWN           every target is a property of the contract (lineage columns are
                               filled by the engine, not mapped)
MLINT_REQUIRED_UNMAPPED        every required contract property is mapped
MLINT_COMPILE                  paths fit the source format; transforms exist; arguments are valid
MLINT_IDENTITY                 COI properties go through ``verify`` or ``tokenize``, DIN
                               properties through ``din``; no other property uses an identity
                               action
MLINT_CLASSIFIED_SOURCE        a restricted source field (declared in ``source.fields``, or a
                               well-known direct identifier: PID-3, PID-5, PID-7,
                               Patient.identifier, Patient.birthDate, an ``mrn`` column, ...) is
                               read only inside ``tokenize``; a confidential one only into a
                               confidential property (no lowering of a classification)
MLINT_RESTRICTED_TARGET        nothing is mapped into a restricted contract property
MLINT_TIMEZONE                 a ``parse_datetime`` format without ``%z`` has a time zone
                               (``tz`` or ``source.time_zone``)
============================== ==================================================================
"""

from __future__ import annotations

import re

from cmohub.contracts.lint import LintProblem
from cmohub.contracts.model import Classification, Contract, IdentityRole, parse_semver
from cmohub.errors import ContractError, MappingError
from cmohub.log import CLASSIFIED_FIELDS
from cmohub.mapping.paths import compile_path, field_path, top_field
from cmohub.mapping.spec import (
    IdentityAction,
    MappingSpec,
    TransformStep,
    iter_paths,
)
from cmohub.mapping.transforms import TRANSFORMS, TransformContext, build_transform

#: HL7 v2 fields that hold direct identifiers or demographics (PID, NK1).
HL7_RESTRICTED = frozenset(
    {
        *(f"PID-{n}" for n in (2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 19, 20, 21)),
        *(f"NK1-{n}" for n in (2, 4, 5, 6)),
        "MRG-1",
        "MRG-2",
    }
)
#: FHIR elements that hold direct identifiers, on Patient or as a reference's identifier.
_FHIR_PATIENT_ELEMENTS = ("identifier", "name", "birthDate", "address", "telecom", "photo")
_FHIR_REFERENCE_IDENTIFIER = re.compile(r"(^|\.)(subject|patient)\.(identifier|display)(\.|$)")
_LOWER_CLASSIFIED = frozenset(name.lower() for name in CLASSIFIED_FIELDS)


def builtin_classification(spec: MappingSpec, path: str) -> str | None:
    """The classification the hub knows for a source path without being told, if any."""
    source = spec.source.format
    normalized = field_path(source, path)
    if source == "hl7v2":
        return "restricted" if normalized in HL7_RESTRICTED else None
    if source == "fhir":
        head = normalized.split(".", 1)[0]
        if spec.source.resource_type == "Patient" and head in _FHIR_PATIENT_ELEMENTS:
            return "restricted"
        if _FHIR_REFERENCE_IDENTIFIER.search(normalized):
            return "restricted"
        return None
    last = re.split(r"[./:@]", normalized.strip("/"))[-1].lower()
    top = top_field(source, path).split(":")[-1].lower()
    if last in _LOWER_CLASSIFIED or top in _LOWER_CLASSIFIED:
        return "restricted"
    return None


def source_classification(spec: MappingSpec, path: str) -> str | None:
    """Declared classification of the source field a path reads (declared wins over built-in)."""
    normalized = field_path(spec.source.format, path)
    top = top_field(spec.source.format, path)
    for declared in spec.source.fields:
        if declared.name in (normalized, top, path) and declared.classification is not None:
            return declared.classification
    return builtin_classification(spec, path)


def _compile_problems(spec: MappingSpec) -> list[LintProblem]:
    problems: list[LintProblem] = []
    ctx = TransformContext(time_zone=spec.source.time_zone)
    namespaces = dict(spec.source.namespaces)
    for target in spec.targets:
        for label, value in target.all_values():
            where = f"targets/{label}"
            for path in value.paths:
                try:
                    compile_path(spec.source.format, path, namespaces=namespaces, where=where)
                except MappingError as error:
                    problems.append(LintProblem("MLINT_COMPILE", where, error.message))
            for step in value.transforms:
                problems.extend(_transform_problems(step, ctx, where, spec))
    return problems


def _transform_problems(
    step: TransformStep, ctx: TransformContext, where: str, spec: MappingSpec
) -> list[LintProblem]:
    if step.name not in TRANSFORMS:
        return [
            LintProblem(
                "MLINT_COMPILE",
                where,
                f"unknown transform {step.name!r} (known: {', '.join(sorted(TRANSFORMS))})",
            )
        ]
    if step.dynamic_args:
        return []
    try:
        build_transform(step.name, dict(step.args), ctx)
    except MappingError as error:
        return [LintProblem("MLINT_COMPILE", where, error.message)]
    args = dict(step.args)
    if (
        step.name == "parse_datetime"
        and args.get("format")
        and not (args.get("tz") or ctx.time_zone)
    ):
        formats = args["format"] if isinstance(args["format"], list) else [args["format"]]
        if any("%z" not in str(f) for f in formats):
            return [
                LintProblem(
                    "MLINT_TIMEZONE",
                    where,
                    "a format without %z gives local times: set tz or source.time_zone",
                )
            ]
    return []


def _identity_problems(spec: MappingSpec, contract: Contract) -> list[LintProblem]:
    problems = []
    names = {p.name: p for p in contract.properties}
    for target in spec.targets:
        prop = names.get(target.name)
        if prop is None:
            continue
        where = f"targets/{target.name}"
        action = target.identity
        if prop.identity_role is IdentityRole.COI and action not in (
            IdentityAction.VERIFY,
            IdentityAction.TOKENIZE,
        ):
            problems.append(
                LintProblem(
                    "MLINT_IDENTITY",
                    where,
                    "a COI property needs identity: verify (or tokenize for clinical feeds)",
                )
            )
        elif prop.identity_role is IdentityRole.DIN and action is not IdentityAction.DIN:
            problems.append(
                LintProblem("MLINT_IDENTITY", where, "a DIN property needs identity: din")
            )
        elif prop.identity_role is IdentityRole.NONE and action is not IdentityAction.NONE:
            problems.append(
                LintProblem(
                    "MLINT_IDENTITY",
                    where,
                    f"identity: {action.value} only applies to COI and DIN properties",
                )
            )
        if prop.classification is Classification.RESTRICTED:
            problems.append(
                LintProblem(
                    "MLINT_RESTRICTED_TARGET",
                    where,
                    "restricted values live only in the vault; do not map them into a dataset",
                )
            )
    return problems


def _classified_source_problems(spec: MappingSpec, contract: Contract | None) -> list[LintProblem]:
    problems = []
    levels = {p.name: p.classification for p in contract.properties} if contract else {}
    tokenize_targets = {t.name for t in spec.targets if t.identity is IdentityAction.TOKENIZE}
    for label, path, inside_identity in iter_paths(spec):
        level = source_classification(spec, path)
        where = f"targets/{label}"
        target = label.split(".", 1)[0]
        in_tokenize = target in tokenize_targets and ".tokenize." in label
        if level == "restricted" and not in_tokenize:
            problems.append(
                LintProblem(
                    "MLINT_CLASSIFIED_SOURCE",
                    where,
                    f"source field {path} is a direct identifier (restricted): read it only "
                    "inside identity: {tokenize: ...}, which sends it to the vault",
                )
            )
        elif (
            level == "confidential"
            and not inside_identity
            and target in levels
            and not levels[target].classified
        ):
            problems.append(
                LintProblem(
                    "MLINT_CLASSIFIED_SOURCE",
                    where,
                    f"source field {path} is confidential but {target} is "
                    f"{levels[target].value}: a mapping may not lower a classification",
                )
            )
    return problems


def lint_mapping(spec: MappingSpec, contract: Contract | None) -> list[LintProblem]:
    """Every problem of one parsed mapping against its contract (None: no contract found)."""
    problems = _compile_problems(spec)
    problems.extend(_classified_source_problems(spec, contract))
    if contract is None:
        problems.append(
            LintProblem("MLINT_CONTRACT", "produces", f"no contract for dataset {spec.dataset}")
        )
        return problems
    try:
        wanted = int(spec.contract_version.split(".")[0])
        if wanted != parse_semver(contract.version)[0]:
            problems.append(
                LintProblem(
                    "MLINT_CONTRACT_VERSION",
                    "produces/contract_version",
                    f"written for major version {wanted}, the contract is {contract.version}",
                )
            )
    except (ValueError, ContractError):
        problems.append(
            LintProblem("MLINT_CONTRACT_VERSION", "produces/contract_version", "not a version")
        )
    properties = {p.name: p for p in contract.properties}
    mapped = {t.name for t in spec.targets}
    for target in spec.targets:
        prop = properties.get(target.name)
        if prop is None or prop.lineage:
            problems.append(
                LintProblem(
                    "MLINT_TARGET_UNKNOWN",
                    f"targets/{target.name}",
                    f"{target.name} is not a property of {contract.dataset}"
                    if prop is None
                    else "lineage columns are filled by the engine",
                )
            )
    for prop in contract.properties:
        if prop.required and not prop.lineage and prop.name not in mapped:
            problems.append(
                LintProblem(
                    "MLINT_REQUIRED_UNMAPPED",
                    "targets",
                    f"required property {prop.name} of {contract.dataset} is not mapped",
                )
            )
    problems.extend(_identity_problems(spec, contract))
    return problems
