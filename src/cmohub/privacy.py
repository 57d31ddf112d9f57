"""Prove that no patient identifier left the vault: scan artifacts for canary identifiers.

The sandbox plants canary identifiers (unique tokens in MRNs, names, phone numbers, e-mails,
addresses, and unusual birth dates) and lists them in ``truth.json``. :func:`scan_paths` looks
for every token in everything a run leaves behind — the lake, reports, logs, the Airflow
metadata database — reading each file the way its content is stored: Parquet column values
(compressed pages would hide a token from a byte search), SQLite tables, gzip members, and the
raw bytes of everything else (UTF-8 and UTF-16). Encrypted files (``*.enc``, OpenPGP) are
opaque by design and are scanned as bytes only.

A hit names the file and where in it (column, table), never the token's context.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmohub.errors import ConfigError

_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Hit:
    path: str
    where: str  # "bytes", "column coi", "table task_instance", ...
    token_label: str  # which canary field matched (mrn, family, ...), not the token

    def __str__(self) -> str:
        return f"{self.path}: {self.token_label} found in {self.where}"


def canary_tokens(truth_file: Path) -> dict[str, str]:
    """Canary tokens from a sandbox ``truth.json``: ``{token: label}``."""
    try:
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(
            "cannot read the canaries of truth.json", where=str(truth_file)
        ) from error
    tokens: dict[str, str] = {}
    for canary in truth.get("canaries", []):
        for label, token in canary.get("tokens", {}).items():
            if isinstance(token, str) and len(token) >= 6:
                tokens[token] = label
    if not tokens:
        raise ConfigError("truth.json lists no canary tokens", where=str(truth_file))
    return tokens


def _search_bytes(data: bytes, tokens: dict[str, str]) -> Iterator[str]:
    for token, label in tokens.items():
        if token.encode() in data or token.encode("utf-16-le") in data:
            yield label


def _scan_parquet(path: Path, tokens: dict[str, str]) -> Iterator[tuple[str, str]]:
    table = pq.read_table(path)
    for name in table.column_names:
        column = table[name]
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            try:
                column = pc.cast(column, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        for token, label in tokens.items():
            if pc.any(pc.match_substring(column, token)).as_py():
                yield f"column {name}", label


def _scan_sqlite(path: Path, tokens: dict[str, str]) -> Iterator[tuple[str, str]]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                text = "\x1f".join(
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row
                )
                for token, label in tokens.items():
                    if token in text:
                        yield f"table {table}", label
    finally:
        connection.close()


def scan_file(path: Path, tokens: dict[str, str]) -> list[Hit]:
    """Every canary found in one file, by where it was found."""
    hits: set[Hit] = set()
    data = path.read_bytes()
    for label in _search_bytes(data, tokens):
        hits.add(Hit(str(path), "bytes", label))
    if path.suffix == ".parquet":
        hits.update(Hit(str(path), where, label) for where, label in _scan_parquet(path, tokens))
    elif data.startswith(_SQLITE_MAGIC):
        hits.update(Hit(str(path), where, label) for where, label in _scan_sqlite(path, tokens))
    elif data[:2] == b"\x1f\x8b":
        try:
            inflated = gzip.decompress(data)
        except (OSError, EOFError):
            inflated = b""
        hits.update(Hit(str(path), "gzip", label) for label in _search_bytes(inflated, tokens))
    return sorted(hits, key=lambda h: (h.path, h.where, h.token_label))


def iter_files(paths: Iterable[Path], *, exclude: Sequence[Path] = ()) -> Iterator[Path]:
    excluded = [p.resolve() for p in exclude]
    for root in paths:
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            resolved = path.resolve()
            if any(resolved == e or e in resolved.parents for e in excluded):
                continue
            yield path


def scan_paths(
    paths: Iterable[Path], tokens: dict[str, str], *, exclude: Sequence[Path] = ()
) -> tuple[int, list[Hit]]:
    """Scan every file under ``paths`` (minus ``exclude``); return (files scanned, hits)."""
    scanned = 0
    hits: list[Hit] = []
    for path in iter_files(paths, exclude=exclude):
        scanned += 1
        hits.extend(scan_file(path, tokens))
    return scanned, hits
