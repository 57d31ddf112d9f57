"""The layering rules of DESIGN.md, enforced on every `make test`.

1. The functional core takes values and returns values: it imports no I/O module (network,
   files, processes, databases, randomness, settings) and no I/O part of cmohub, and calls no
   clock, ``open``, ``print`` or environment.
2. Only ``cmohub/airflow`` (and ``dags/``) import airflow; ``pipelines/`` does not.
3. Each third-party domain library has one adapter module, the only importer of it.
4. DAG files import, at module level, only ``airflow.sdk``, ``pendulum`` and ``cmohub.airflow``.

Imports under ``if TYPE_CHECKING:`` are ignored: they do not run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "cmohub"

# Functional core: packages or modules (dotted, without the "cmohub." prefix).
CORE = (
    "identifiers",
    "identity",
    "sensitive",
    "errors",
    "domain",
    "formats",
    "mapping",
    "coldchain",
    "reconcile",
    "contracts",
)
# Modules inside core packages that are allowed to do I/O (they load files or run engines).
CORE_IO_EXCEPTIONS = frozenset(
    {
        "contracts.store",  # reads contract and specification YAML from resources / disk
        "contracts.quarantine",  # writes quarantined rows to the lake
        "mapping.store",  # reads mapping YAML from resources / disk
    }
)
FORBIDDEN_IN_CORE = (
    "socket",
    "ssl",
    "http",
    "urllib",
    "httpx",
    "requests",
    "sqlalchemy",
    "psycopg",
    "alembic",
    "paramiko",
    "subprocess",
    "shutil",
    "tempfile",
    "random",
    "secrets",
    "os",
    "pathlib",
    "time",
    "asyncio",
    "threading",
    "multiprocessing",
    "fsspec",
    "upath",
    "pyarrow.parquet",
    "pyarrow.fs",
    "pyarrow.dataset",
    "smtplib",
    "airflow",
    "pendulum",
    "pgpy",
    "importlib.resources",
)
FORBIDDEN_CMOHUB_IN_CORE = (
    "vault",
    "sources",
    "publish",
    "lake",
    "pipelines",
    "airflow",
    "settings",
    "crypto",
    "sandbox",
    "commands",
    "cli",
    "resources",
)
FORBIDDEN_CALLS = {"now", "utcnow", "today", "getenv", "urandom"}
FORBIDDEN_NAMES = {"open", "print", "input"}

# Third-party library (top-level import name) -> the one cmohub module allowed to import it.
ADAPTERS = {
    "fhir": "formats.fhir",
    "fhir_core": "formats.fhir",
    "hl7apy": "formats.hl7v2",
    "pgpy": "crypto.openpgp",
    "great_expectations": "contracts.gx",
    "open_data_contract_standard": "contracts.odcs",
    "paramiko": "sources.sftp",
    "epcis_event_hash_generator": "formats.epcis",
    "airflow": "airflow",
}
DAG_ALLOWED = ("__future__", "airflow.sdk", "pendulum", "cmohub.airflow")


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int
    top_level: bool  # at module level (not inside a function)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in(name: str, prefixes: tuple[str, ...] | frozenset[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def iter_imports(tree: ast.Module) -> Iterator[Import]:
    def walk(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, child.lineno, top)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield Import(child.module, child.lineno, top)
                for alias in child.names:
                    yield Import(f"{child.module}.{alias.name}", child.lineno, top)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            else:
                yield from walk(child, top)

    yield from walk(tree, True)


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_core(name: str) -> bool:
    return _in(name, CORE) and not _in(name, CORE_IO_EXCEPTIONS)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_functional_core_does_no_io(path: Path) -> None:
    name = module_name(path)
    if not is_core(name):
        return
    tree = parse(path)
    problems = []
    for imp in iter_imports(tree):
        if _in(imp.module, FORBIDDEN_IN_CORE):
            problems.append(f"line {imp.line}: imports {imp.module} (I/O) in the functional core")
        if imp.module.startswith("cmohub.") and _in(imp.module[7:], FORBIDDEN_CMOHUB_IN_CORE):
            problems.append(f"line {imp.line}: imports {imp.module} (imperative shell) in the core")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_CALLS:
                problems.append(f"line {node.lineno}: calls .{func.attr}() (clock/environment)")
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
                problems.append(f"line {node.lineno}: calls {func.id}() (I/O)")
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            problems.append(f"line {node.lineno}: reads the environment")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_each_library_is_imported_by_its_adapter_only(path: Path) -> None:
    name = module_name(path)
    problems = []
    for imp in iter_imports(parse(path)):
        top = imp.module.split(".")[0]
        owner = ADAPTERS.get(top)
        if owner is not None and not _in(name, (owner,)):
            problems.append(f"line {imp.line}: imports {top}, which only cmohub.{owner} may import")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_pipelines_do_not_import_airflow() -> None:
    for path in (SRC / "pipelines").rglob("*.py") if (SRC / "pipelines").is_dir() else []:
        for imp in iter_imports(parse(path)):
            assert not _in(imp.module, ("airflow",)), f"{path}: line {imp.line} imports airflow"


DAG_FILES = sorted((REPO / "dags").glob("*.py"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_are_wiring_only(path: Path) -> None:
    problems = [
        f"line {imp.line}: imports {imp.module} at module level"
        for imp in iter_imports(parse(path))
        if imp.top_level and not _in(imp.module, DAG_ALLOWED)
    ]
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_the_checker_catches_what_it_should() -> None:
    # The rules above must be able to fail: feed them a bad module.
    bad = ast.parse(
        "import os\nfrom cmohub.vault import store\nimport pgpy\n"
        "def f():\n    import httpx\n    return datetime.now()\n"
        "if TYPE_CHECKING:\n    import sqlalchemy\n"
    )
    found = {(i.module, i.top_level) for i in iter_imports(bad)}
    assert ("os", True) in found and ("httpx", False) in found
    assert ("cmohub.vault.store", True) in found and ("pgpy", True) in found
    assert not any(m == "sqlalchemy" for m, _ in found)
    assert is_core("formats.hl7v2") and not is_core("vault.store")
    assert not is_core("contracts.store") and is_core("contracts.diff")
