"""The mapping specification: parsed, checked and compiled (pure).

:func:`parse_mapping` checks a YAML document against the mapping JSON schema (shipped as
``mapping.schema.json``; the store reads it) and builds a :class:`MappingSpec`;
:func:`compile_mapping` turns it into path getters and transform chains, failing on unknown
transforms, bad arguments and paths that do not fit the source format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jsonschema

from cmohub.errors import MappingError
from cmohub.mapping.paths import Getter, compile_path, top_field
from cmohub.mapping.transforms import (
    LIST_TRANSFORMS,
    TRANSFORMS,
    Transform,
    TransformContext,
    build_transform,
)


class IdentityAction(StrEnum):
    NONE = "none"
    VERIFY = "verify"  # a COI: local check character, then the vault's verify_many
    DIN = "din"  # a DIN: local check character (DINs are not in the vault)
    TOKENIZE = "tokenize"  # a subject identity -> COI through the vault's tokenize_many


class DriftPolicy(StrEnum):
    QUARANTINE = "quarantine"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class TransformStep:
    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def dynamic_args(self) -> tuple[tuple[str, str], ...]:
        """Arguments read from the record: ``{unit: {from: TEMP_UNIT}}``."""
        return tuple(
            (key, str(value["from"]))
            for key, value in self.args
            if isinstance(value, Mapping) and set(value) == {"from"}
        )


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """A value from source paths (or a constant) through transforms."""

    paths: tuple[str, ...] = ()
    const: Any = None
    has_const: bool = False
    transforms: tuple[TransformStep, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenizeSpec:
    system: ValueSpec
    value: ValueSpec
    therapy_event: ValueSpec
    demographics: tuple[tuple[str, ValueSpec], ...] = ()


@dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str
    value: ValueSpec | None
    identity: IdentityAction = IdentityAction.NONE
    tokenize: TokenizeSpec | None = None

    def all_values(self) -> list[tuple[str, ValueSpec]]:
        """Every value expression in the target, with a label (for lint)."""
        out: list[tuple[str, ValueSpec]] = []
        if self.value is not None:
            out.append((self.name, self.value))
        if self.tokenize is not None:
            out.append((f"{self.name}.tokenize.system", self.tokenize.system))
            out.append((f"{self.name}.tokenize.value", self.tokenize.value))
            out.append((f"{self.name}.tokenize.therapy_event", self.tokenize.therapy_event))
            out.extend(
                (f"{self.name}.tokenize.demographics.{k}", v) for k, v in self.tokenize.demographics
            )
        return out


@dataclass(frozen=True, slots=True)
class SourceField:
    name: str
    classification: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    format: str
    encoding: str = "utf-8"
    delimiter: str = ","
    quotechar: str = '"'
    skip_rows: int = 0
    record_path: str | None = None
    resource_type: str | None = None
    event_type: str | None = None
    segment: str | None = None
    namespaces: tuple[tuple[str, str], ...] = ()
    time_zone: str | None = None
    drift: DriftPolicy = DriftPolicy.QUARANTINE
    fields: tuple[SourceField, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class MappingSpec:
    name: str
    version: str
    description: str
    dataset: str
    contract_version: str
    source: SourceSpec
    targets: tuple[TargetSpec, ...]
    content_sha256: str = ""
    origin: str = ""  # file it was read from (for messages)

    def target(self, name: str) -> TargetSpec | None:
        return next((t for t in self.targets if t.name == name), None)


# --- parsing -----------------------------------------------------------------------------------


def schema_problems(document: Any, schema: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path))):
        path = "/".join(str(p) for p in error.absolute_path) or "(document)"
        message = error.message if len(error.message) < 200 else error.message[:197] + "..."
        out.append(f"at {path}: {message}")
    return out


def _value(raw: Any) -> ValueSpec:
    if isinstance(raw, str):
        return ValueSpec(paths=(raw,))
    paths = raw.get("from")
    steps = []
    for item in raw.get("transforms") or ():
        if isinstance(item, str):
            steps.append(TransformStep(item))
        else:
            ((name, args),) = item.items()
            steps.append(TransformStep(name, tuple(sorted((args or {}).items()))))
    return ValueSpec(
        paths=(paths,) if isinstance(paths, str) else tuple(paths or ()),
        const=raw.get("const"),
        has_const="const" in raw,
        transforms=tuple(steps),
    )


def _target(name: str, raw: Any) -> TargetSpec:
    if isinstance(raw, str):
        return TargetSpec(name=name, value=ValueSpec(paths=(raw,)))
    identity = raw.get("identity")
    has_value = "from" in raw or "const" in raw
    value = _value(raw) if has_value else None
    if isinstance(identity, Mapping):
        spec = identity["tokenize"]
        tokenize = TokenizeSpec(
            system=_value(spec["system"]),
            value=_value(spec["value"]),
            therapy_event=_value(spec["therapy_event"]),
            demographics=tuple(
                (k, _value(v)) for k, v in sorted((spec.get("demographics") or {}).items())
            ),
        )
        return TargetSpec(
            name=name, value=value, identity=IdentityAction.TOKENIZE, tokenize=tokenize
        )
    action = IdentityAction(identity) if identity else IdentityAction.NONE
    return TargetSpec(name=name, value=value, identity=action)


def parse_mapping(
    document: Any, schema: Mapping[str, Any], *, origin: str = "", content: bytes | None = None
) -> MappingSpec:
    """Check ``document`` against the mapping JSON schema and build the spec."""
    problems = schema_problems(document, schema)
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise MappingError(
            f"does not conform to the mapping schema: {shown}{more}",
            code="MAPPING_SCHEMA",
            where=origin or None,
        )
    raw_source = document["source"]
    csv_options = raw_source.get("csv") or {}
    source = SourceSpec(
        format=raw_source["format"],
        encoding=raw_source.get("encoding", "utf-8"),
        delimiter=csv_options.get("delimiter", ","),
        quotechar=csv_options.get("quotechar", '"'),
        skip_rows=int(csv_options.get("skip_rows", 0)),
        record_path=raw_source.get("record_path"),
        resource_type=raw_source.get("resource_type"),
        event_type=raw_source.get("event_type"),
        segment=raw_source.get("segment"),
        namespaces=tuple(sorted((raw_source.get("namespaces") or {}).items())),
        time_zone=raw_source.get("time_zone"),
        drift=DriftPolicy(raw_source.get("drift", "quarantine")),
        fields=tuple(
            SourceField(f["name"], f.get("classification"), f.get("description", ""))
            for f in raw_source.get("fields") or ()
        ),
        options=tuple(sorted((raw_source.get("options") or {}).items())),
    )
    digest = hashlib.sha256(
        content if content is not None else json.dumps(document, sort_keys=True).encode()
    ).hexdigest()
    return MappingSpec(
        name=document["mapping"],
        version=document["version"],
        description=document["description"],
        dataset=document["produces"]["dataset"],
        contract_version=str(document["produces"]["contract_version"]),
        source=source,
        targets=tuple(_target(name, raw) for name, raw in document["targets"].items()),
        content_sha256=digest,
        origin=origin,
    )


# --- compiling ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledStep:
    name: str
    transform: Transform | None  # None when it has arguments read from the record
    step: TransformStep
    dynamic: tuple[tuple[str, Getter], ...] = ()

    @property
    def takes_list(self) -> bool:
        return self.name in LIST_TRANSFORMS


@dataclass(frozen=True, slots=True)
class CompiledValue:
    spec: ValueSpec
    getters: tuple[tuple[str, Getter], ...]
    steps: tuple[CompiledStep, ...]


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    spec: TargetSpec
    value: CompiledValue | None
    tokenize: tuple[tuple[str, CompiledValue], ...] = ()


@dataclass(frozen=True)
class CompiledMapping:
    spec: MappingSpec
    targets: tuple[CompiledTarget, ...]
    context: TransformContext
    known_fields: frozenset[str] = field(default_factory=frozenset)


def _compile_value(
    spec: ValueSpec, source: SourceSpec, ctx: TransformContext, where: str
) -> CompiledValue:
    namespaces = dict(source.namespaces)
    getters = tuple(
        (path, compile_path(source.format, path, namespaces=namespaces, where=where))
        for path in spec.paths
    )
    steps = []
    for step in spec.transforms:
        dynamic = step.dynamic_args
        try:
            if dynamic:
                getters_for_args = tuple(
                    (key, compile_path(source.format, path, namespaces=namespaces, where=where))
                    for key, path in dynamic
                )
                if step.name not in TRANSFORMS:
                    raise MappingError(
                        f"unknown transform {step.name!r}", code="MAPPING_TRANSFORM_UNKNOWN"
                    )
                steps.append(CompiledStep(step.name, None, step, getters_for_args))
            else:
                steps.append(
                    CompiledStep(step.name, build_transform(step.name, dict(step.args), ctx), step)
                )
        except MappingError as error:
            raise MappingError(error.message, code=error.code, where=where) from None
    return CompiledValue(spec=spec, getters=getters, steps=tuple(steps))


def compile_mapping(spec: MappingSpec) -> CompiledMapping:
    """Compile every path and transform of ``spec``; fail on the first that cannot be."""
    ctx = TransformContext(time_zone=spec.source.time_zone)
    if spec.source.time_zone is not None:
        # An unknown zone fails here rather than on the first record.
        build_transform("parse_datetime", {"tz": spec.source.time_zone}, ctx)
    targets = []
    known: set[str] = {f.name for f in spec.source.fields}
    for target in spec.targets:
        where = f"{spec.origin or spec.name}#targets/{target.name}"
        value = (
            _compile_value(target.value, spec.source, ctx, where)
            if target.value is not None
            else None
        )
        tokenize: tuple[tuple[str, CompiledValue], ...] = ()
        if target.tokenize is not None:
            tokenize = tuple(
                (label.rsplit(".", 1)[-1], _compile_value(v, spec.source, ctx, f"{where}/{label}"))
                for label, v in target.all_values()
                if label != target.name
            )
        targets.append(CompiledTarget(spec=target, value=value, tokenize=tokenize))
        for _, expression in target.all_values():
            known.update(_top_fields(spec.source.format, expression))
    return CompiledMapping(
        spec=spec, targets=tuple(targets), context=ctx, known_fields=frozenset(known)
    )


def _top_fields(source_format: str, value: ValueSpec) -> set[str]:
    names = {top_field(source_format, p) for p in value.paths}
    for step in value.transforms:
        names.update(top_field(source_format, path) for _, path in step.dynamic_args)
    return names


def iter_paths(spec: MappingSpec) -> list[tuple[str, str, bool]]:
    """(target label, source path, inside an identity action) for every path of ``spec``."""
    out = []
    for target in spec.targets:
        for label, value in target.all_values():
            inside = target.identity is not IdentityAction.NONE
            for path in value.paths:
                out.append((label, path, inside))
            for step in value.transforms:
                for _, path in step.dynamic_args:
                    out.append((label, path, inside))
    return out
