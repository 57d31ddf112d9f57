"""Load feed mappings shipped with the package, or from a path (I/O).

Shipped mappings live under ``mappings/`` (one ``<feed>.yaml`` per feed); a deployed wheel
carries its own copy (:mod:`cmohub.resources`). Each is checked against the mapping JSON
schema that ships inside the package (``cmohub/mapping/mapping.schema.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from cmohub.contracts.lint import LintProblem
from cmohub.contracts.store import load_contracts
from cmohub.errors import MappingError, unreadable_as
from cmohub.mapping.lint import lint_mapping
from cmohub.mapping.spec import MappingSpec, parse_mapping, schema_problems
from cmohub.resources import resource_root

MAPPING_SUFFIXES = (".yaml", ".yml")


@cache
def mapping_schema() -> dict[str, Any]:
    """The JSON schema every mapping YAML must conform to."""
    text = (files("cmohub.mapping") / "mapping.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _read_yaml(path: Path | Traversable) -> tuple[Any, bytes]:
    with unreadable_as(MappingError, "mapping", code="MAPPING_UNREADABLE", where=path):
        data = path.read_bytes()
    try:
        return yaml.safe_load(data.decode("utf-8")), data
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MappingError("not valid YAML", code="MAPPING_YAML", where=str(path)) from None


def load_mapping_file(path: Path | Traversable) -> MappingSpec:
    """Read and schema-check one mapping file."""
    document, data = _read_yaml(path)
    return parse_mapping(document, mapping_schema(), origin=str(path), content=data)


def iter_mapping_files(root: Path | Traversable | None = None) -> Iterator[Path | Traversable]:
    """Every mapping YAML under ``root`` (default: the shipped mappings/), sorted by name."""
    base = root if root is not None else resource_root("mappings")
    if base.is_file():
        yield base
        return
    for item in sorted(base.iterdir(), key=lambda t: t.name):
        if item.is_dir():
            yield from iter_mapping_files(item)
        elif item.name.endswith(MAPPING_SUFFIXES):
            yield item


@cache
def load_mappings() -> dict[str, MappingSpec]:
    """Every shipped mapping, keyed by feed name."""
    specs: dict[str, MappingSpec] = {}
    for item in iter_mapping_files():
        spec = load_mapping_file(item)
        if spec.name in specs:
            raise MappingError(
                f"two mappings are named {spec.name}", code="MAPPING_DUPLICATE", where=str(item)
            )
        specs[spec.name] = spec
    return specs


def load_mapping(name_or_path: str) -> MappingSpec:
    """A shipped mapping by feed name (``cmo-acme-batches``) or a mapping file path."""
    if name_or_path.endswith(MAPPING_SUFFIXES):
        return load_mapping_file(Path(name_or_path))
    try:
        return load_mappings()[name_or_path]
    except KeyError:
        raise MappingError(
            f"no mapping named {name_or_path!r}", code="MAPPING_UNKNOWN", where=name_or_path
        ) from None


def lint_mapping_files(paths: list[Path] | None = None) -> dict[str, list[LintProblem]]:
    """Lint mapping files or folders (default: every shipped mapping) against the contracts."""
    roots: list[Path | None] = list(paths) if paths else [None]
    contracts = load_contracts()
    results: dict[str, list[LintProblem]] = {}
    names: dict[str, str] = {}
    for root in roots:
        for item in iter_mapping_files(root):
            where = str(item)
            try:
                document, _ = _read_yaml(item)
            except MappingError as error:
                results[where] = [LintProblem(error.code, where, error.message)]
                continue
            problems = [
                LintProblem(
                    "MLINT_SCHEMA",
                    line.removeprefix("at ").partition(": ")[0],
                    line.partition(": ")[2],
                )
                for line in schema_problems(document, mapping_schema())
            ]
            if problems:
                results[where] = problems
                continue
            spec = parse_mapping(document, mapping_schema(), origin=where)
            if spec.name in names:
                problems.append(
                    LintProblem("MLINT_NAME", "mapping", f"{spec.name} is also {names[spec.name]}")
                )
            names[spec.name] = where
            problems.extend(lint_mapping(spec, contracts.get(spec.dataset)))
            results[where] = problems
    return results
