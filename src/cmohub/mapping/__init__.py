"""Declarative feed mappings: source records -> canonical rows (pure, except ``store``).

A data engineer adds a feed by writing ``mappings/<feed>.yaml`` (checked by the JSON schema
``mapping.schema.json``) and a golden test. The engine::

    spec = load_mapping("cmo-acme-batches")                       # mapping.store (I/O)
    compiled = compile_mapping(spec)                               # paths + transforms, once
    records = read_records(spec.source, payload)                   # bytes -> SourceRecords
    result = apply_mapping(compiled, records, run_id=run_id, source_sha256=sha)
    result = resolve_identities(result, vault, actor=actor)        # one batch through the vault
    rows = result.canonical_rows()                                 # dicts for validate_table
    quarantine = result.quarantine_entries()                       # rejected records

Modules: ``spec`` (model, schema check, compile), ``paths`` (path languages per source
format), ``transforms`` (the named-transform registry), ``readers`` (payload -> records),
``engine`` (apply), ``identity`` (vault resolution), ``lint``, ``store`` (load files).
"""

from __future__ import annotations

from cmohub.mapping.engine import (
    MappedRow,
    MappingIssue,
    MappingResult,
    PendingTokenize,
    PendingVerify,
    RejectedRecord,
    apply_mapping,
    map_record,
)
from cmohub.mapping.identity import resolve_identities
from cmohub.mapping.paths import Hl7Record, compile_path
from cmohub.mapping.readers import SourceRecord, read_records
from cmohub.mapping.spec import CompiledMapping, MappingSpec, compile_mapping, parse_mapping
from cmohub.mapping.transforms import TRANSFORMS, TransformError, build_transform

__all__ = [
    "TRANSFORMS",
    "CompiledMapping",
    "Hl7Record",
    "MappedRow",
    "MappingIssue",
    "MappingResult",
    "MappingSpec",
    "PendingTokenize",
    "PendingVerify",
    "RejectedRecord",
    "SourceRecord",
    "TransformError",
    "apply_mapping",
    "build_transform",
    "compile_mapping",
    "compile_path",
    "map_record",
    "parse_mapping",
    "read_records",
    "resolve_identities",
]
