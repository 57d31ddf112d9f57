"""Load contracts and product specifications shipped with the package, or from a path (I/O).

Shipped contracts live under ``contracts/`` (``canonical/<dataset>.odcs.yaml``,
``published/<dataset>.odcs.yaml``, ``specifications/<product>.yaml``); a deployed wheel carries
its own copy (:mod:`cmohub.resources`). Every contract is checked against the ODCS JSON schema
of the ``apiVersion`` it declares before it is converted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cmohub.contracts import odcs
from cmohub.contracts.lint import LintProblem, lint_document
from cmohub.contracts.model import Contract
from cmohub.contracts.specifications import ProductCatalogEntry, parse_product_document
from cmohub.domain import DATASETS
from cmohub.errors import ContractError, unreadable_as
from cmohub.log import add_classified_fields
from cmohub.resources import resource_root
from cmohub.settings import load_settings

if TYPE_CHECKING:
    from open_data_contract_standard.model import OpenDataContractStandard

CONTRACT_SUFFIX = ".odcs.yaml"


class _NoDatesLoader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: ODCS dates are strings in its JSON schema."""


_NoDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_contract_yaml(text: str, *, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoDatesLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ContractError(f"not valid YAML{line}", code="CONTRACT_YAML", where=where) from None


def odcs_schema_version(api_version: str) -> str:
    """The ODCS version whose JSON schema checks documents declaring ``api_version``: their own
    when ``CMOHUB_ODCS_SCHEMAS`` holds it, else the one the library ships (it admits every
    version the hub supports)."""
    folder = load_settings().odcs_schemas
    if folder is not None and (folder / f"odcs-json-schema-{api_version}.json").is_file():
        return api_version
    return odcs.PACKAGE_API_VERSION


def odcs_json_schema(api_version: str) -> dict[str, Any]:
    """The ODCS JSON schema that checks documents declaring ``api_version``
    (see :func:`odcs_schema_version`)."""
    return _schema_file(load_settings().odcs_schemas, odcs_schema_version(api_version))


@cache
def _schema_file(folder: Path | None, version: str) -> dict[str, Any]:
    source: Path | Traversable = files("open_data_contract_standard") / "schema.json"
    if folder is not None and (folder / f"odcs-json-schema-{version}.json").is_file():
        source = folder / f"odcs-json-schema-{version}.json"
    with unreadable_as(ContractError, "ODCS schema", code="CONTRACT_SCHEMA_FILE", where=source):
        schema: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return schema


def _read(source: Traversable | Path) -> tuple[str, str]:
    with unreadable_as(ContractError, "contract", code="CONTRACT_UNREADABLE", where=source):
        data = source.read_bytes()
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def load_odcs_document(path: Path | Traversable) -> dict[str, Any]:
    """Read any ODCS YAML file and check it against the schema of its ``apiVersion``.

    A document that breaks its declared schema but conforms to a newer one (version drift:
    some upstream v3.0.2 examples only validate against v3.1.0) gets a hint saying so.
    """
    text, _ = _read(path)
    where = str(path)
    document = parse_contract_yaml(text, where=where)
    version = odcs.api_version_of(document, where=where)
    try:
        odcs.check_against_schema(
            document,
            odcs_json_schema(version),
            odcs_schema_version(version),
            where=where,
            declared=version,
        )
    except ContractError as error:
        raise _with_drift_hint(error, document, version) from None
    return dict(document)


def load_odcs_model(path: Path | Traversable) -> OpenDataContractStandard:
    """The ``open-data-contract-standard`` model of a schema-valid ODCS file (any shape)."""
    return odcs.parse_odcs(load_odcs_document(path), where=str(path))


def load_contract_file(path: Path | Traversable) -> Contract:
    """Read, schema-check and convert one contract file."""
    _, digest = _read(path)
    document = load_odcs_document(path)
    return odcs.to_contract(document, source=str(path), content_sha256=digest)


def _with_drift_hint(error: ContractError, document: Any, declared: str) -> ContractError:
    """Add "it conforms to vX" when a newer schema accepts what the declared one rejects."""
    for newer in odcs.SUPPORTED_API_VERSIONS:
        if newer <= declared or odcs_schema_version(newer) != newer:
            continue
        if not odcs.schema_problems(document, odcs_json_schema(newer)):
            return ContractError(
                f"{error.message}; it does conform to ODCS {newer}: declare apiVersion: {newer}",
                code=error.code,
                where=error.where,
            )
    return error


def iter_contract_files(root: Traversable | Path | None = None) -> Iterator[Traversable | Path]:
    """Every ``*.odcs.yaml`` under ``root`` (default: the shipped contracts/), sorted by path."""
    base = root if root is not None else resource_root("contracts")

    def walk(folder: Traversable | Path) -> Iterator[Traversable | Path]:
        for item in sorted(folder.iterdir(), key=lambda t: t.name):
            if item.is_dir():
                yield from walk(item)
            elif item.name.endswith(CONTRACT_SUFFIX):
                yield item

    if base.is_file():
        yield base
        return
    yield from walk(base)


@cache
def load_contracts() -> dict[str, Contract]:
    """Every shipped contract, keyed by dataset name.

    The names of classified properties (``coi``, ``din``, staff IDs...) are registered with
    the logging redaction filter, so ``coi=...`` in a log line is redacted too.
    """
    contracts: dict[str, Contract] = {}
    for item in iter_contract_files():
        contract = load_contract_file(item)
        if contract.dataset in contracts:
            raise ContractError(
                f"two contracts for dataset {contract.dataset}",
                code="CONTRACT_DUPLICATE",
                where=str(item),
            )
        contracts[contract.dataset] = contract
    add_classified_fields(
        name for contract in contracts.values() for name in contract.classified_names()
    )
    return contracts


def load_contract(dataset_or_path: str) -> Contract:
    """A shipped contract by dataset name (``manufacturing.batch``) or a contract file path."""
    if dataset_or_path.endswith((".yaml", ".yml")):
        return load_contract_file(Path(dataset_or_path))
    contracts = load_contracts()
    try:
        return contracts[dataset_or_path]
    except KeyError:
        raise ContractError(
            f"no contract for dataset {dataset_or_path!r}",
            code="CONTRACT_UNKNOWN",
            where=dataset_or_path,
        ) from None


def load_product_catalog() -> dict[str, ProductCatalogEntry]:
    """Every product under ``contracts/specifications/``, keyed by product code."""
    folder = resource_root("contracts") / "specifications"
    catalog: dict[str, ProductCatalogEntry] = {}
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        if item.name.endswith((".yaml", ".yml")):
            entry = parse_product_document(
                yaml.safe_load(item.read_text(encoding="utf-8")),
                where=f"contracts/specifications/{item.name}",
            )
            catalog[entry.product.product_code] = entry
    return catalog


def lint_contract_files(
    paths: list[Path] | None = None,
) -> dict[str, list[LintProblem]]:
    """Lint the given contract files or folders (default: every shipped contract)."""
    roots: list[Path | None] = list(paths) if paths else [None]
    items: list[Traversable | Path] = []
    for root in roots:
        items.extend(iter_contract_files(root))
    results: dict[str, list[LintProblem]] = {}
    ids: dict[str, str] = {}
    for item in items:
        where = str(item)
        try:
            text, _ = _read(item)
            document = parse_contract_yaml(text, where=where)
        except ContractError as error:
            results[where] = [LintProblem(error.code, where, error.message)]
            continue
        problems, contract = lint_document(
            document, odcs_json_schema, source=where, known_datasets=tuple(DATASETS)
        )
        if contract is not None:
            if contract.id in ids:
                problems.append(
                    LintProblem(
                        "LINT_ID", "id", f"id {contract.id} is also used by {ids[contract.id]}"
                    )
                )
            ids[contract.id] = where
        results[where] = problems
    return results
