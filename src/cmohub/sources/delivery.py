"""CMO feeds: their configuration (from the mappings), and which delivered files are complete.

A **CMO feed** (``cmo_acme``, ``cmo_borealis``) is one CMO's exchange folder. It delivers
several kinds of files, each read by its own mapping; every mapping of the feed names the feed
and the file names it reads in ``source.options``::

    options:
      feed: cmo_borealis                  # the CMO feed (= the DAG id and the Asset name)
      file_pattern: "BPR_*.xml"           # files (delivered name without .pgp/.gpg/.asc)

Feed-level options may be given in any one of the feed's mappings (usually the first); when
two mappings give one, they must agree (CMO_FEED_CONFLICT):

=================== ======================================================================
cmo                 the CMO's facility (FIN), e.g. A9997
transport           ``inbox`` (a local folder; the embedded default) or ``sftp``
inbox               inbox folder, relative to CMOHUB_HOME/inbox (or absolute)
connection          Airflow connection ID of the SFTP server (default ``cmohub_sftp_<cmo>``)
remote_dir          folder on the SFTP server (default ``/``)
sender_fingerprint  the CMO's pinned OpenPGP fingerprint (40 hex); when absent, the pin
                    recorded by ``cmohub keys import`` (``keys/openpgp/pins.json``)
encrypted           ``true`` (default): every file must be OpenPGP signed and encrypted
max_bytes           size limit of one delivered file and of its plaintext (default 64 MiB)
checksums           ``none`` (default), ``sidecar`` (``<file>.sha256`` next to each file) or
                    ``manifest`` (one ``SHA256SUMS``-style file per folder); the sums cover
                    the file as delivered; a file whose sum has not arrived yet is pending
manifest_name       name of the manifest file (default ``SHA256SUMS``)
settle_seconds      a file counts as complete when its size and time did not change over
                    this many seconds between two listings (default 2; 0: one listing)
schedule            cron of the feed's ingest DAG (default ``0 6 * * *``)
time_zone           IANA zone the CMO works in (documentation; mappings read it themselves)
=================== ======================================================================

Validation errors are :class:`~cmohub.errors.ConfigError` with the codes CMO_FEED_INVALID,
CMO_FEED_OPTION_UNKNOWN, CMO_FEED_CONFLICT and CMO_FEED_UNKNOWN. Loading reads the mapping YAML
files only (no mapping engine, no pandas), so Airflow can build the DAGs at parse time.

Completeness: partial uploads are ignored — temporary names (``.part``, ``.tmp``,
``.filepart``, dot files, ...) and files whose size or modification time changed between two
listings ``settle_seconds`` apart (:func:`complete_files`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cmohub.errors import ConfigError
from cmohub.resources import resource_root

MiB = 1 << 20
ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")
TEMPORARY_SUFFIXES = (".part", ".tmp", ".temp", ".filepart", ".partial", ".crdownload", "~")
ROUTE_KEYS = frozenset({"feed", "file_pattern"})
_DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class FeedOptions(BaseModel):
    """Feed-level options of a CMO feed (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cmo: str = Field(pattern=r"^[A-NP-Z][0-9]{4}$")
    transport: Literal["inbox", "sftp"] = "inbox"
    inbox: str | None = None
    connection: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    remote_dir: str = "/"
    sender_fingerprint: str | None = None
    encrypted: bool = True
    max_bytes: int = Field(default=64 * MiB, gt=0, le=4096 * MiB)
    checksums: Literal["none", "sidecar", "manifest"] = "none"
    manifest_name: str = Field(default="SHA256SUMS", pattern=r"^[A-Za-z0-9_.-]+$")
    settle_seconds: float = Field(default=2.0, ge=0, le=3600)
    schedule: str = "0 6 * * *"
    time_zone: str | None = None

    @field_validator("sender_fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cleaned = value.replace(" ", "").upper()
        if not re.fullmatch(r"[0-9A-F]{40}", cleaned):
            raise ValueError("a full OpenPGP v4 fingerprint is 40 hexadecimal digits")
        return cleaned


FEED_KEYS = frozenset(FeedOptions.model_fields)


@dataclass(frozen=True, slots=True)
class Route:
    """Files matching ``pattern`` are read by ``mapping`` (which produces ``dataset``)."""

    mapping: str
    pattern: str
    dataset: str
    source_format: str

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class CmoFeed:
    """One CMO feed: its options and the routes of its file kinds (mapping order)."""

    name: str
    options: FeedOptions
    routes: tuple[Route, ...]

    @property
    def connection_id(self) -> str:
        return self.options.connection or f"cmohub_sftp_{self.options.cmo.lower()}"

    def routes_for(self, name: str) -> tuple[Route, ...]:
        """The mappings a delivered file goes to, by its plain name."""
        plain = plain_name(name)
        return tuple(route for route in self.routes if route.matches(plain))

    def inbox_folder(self, inbox_root: Path) -> Path:
        folder = self.options.inbox or f"cmo/{self.options.cmo}"
        path = Path(folder)
        return path if path.is_absolute() else inbox_root / path

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.dataset for route in self.routes))


def plain_name(name: str) -> str:
    """A delivered file's name without its directory and its OpenPGP suffix."""
    base = PurePosixPath(name).name
    for suffix in ENCRYPTED_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _problem(code: str, message: str, where: str) -> ConfigError:
    return ConfigError(message, code=code, where=where)


def parse_cmo_feeds(documents: Iterable[tuple[str, Any]]) -> dict[str, CmoFeed]:
    """CMO feeds from mapping documents ``(origin, parsed YAML)``; others are skipped."""
    settings: dict[str, dict[str, tuple[Any, str]]] = {}
    routes: dict[str, list[Route]] = {}
    for origin, document in documents:
        if not isinstance(document, Mapping):
            continue
        source = document.get("source")
        if not isinstance(source, Mapping):
            continue
        options = source.get("options")
        if not isinstance(options, Mapping) or "feed" not in options:
            continue
        feed = str(options["feed"])
        if not re.fullmatch(r"cmo_[a-z0-9_]+", feed):
            raise _problem(
                "CMO_FEED_INVALID",
                f"feed {feed!r}: a CMO feed is named cmo_<letters/digits>",
                origin,
            )
        pattern = options.get("file_pattern")
        if not isinstance(pattern, str) or not pattern:
            raise _problem("CMO_FEED_INVALID", "file_pattern (text) is required", origin)
        unknown = set(options) - ROUTE_KEYS - FEED_KEYS
        if unknown:
            raise _problem(
                "CMO_FEED_OPTION_UNKNOWN",
                f"unknown option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(ROUTE_KEYS | FEED_KEYS))}",
                origin,
            )
        produces = document.get("produces") or {}
        routes.setdefault(feed, []).append(
            Route(
                mapping=str(document.get("mapping")),
                pattern=pattern,
                dataset=str(produces.get("dataset")),
                source_format=str(source.get("format")),
            )
        )
        merged = settings.setdefault(feed, {})
        for key, value in options.items():
            if key in ROUTE_KEYS:
                continue
            if key in merged and merged[key][0] != value:
                raise _problem(
                    "CMO_FEED_CONFLICT",
                    f"{feed}: option {key} is {value!r} here but {merged[key][0]!r} in "
                    f"{merged[key][1]}",
                    origin,
                )
            merged.setdefault(key, (value, origin))
    feeds: dict[str, CmoFeed] = {}
    for feed, merged in sorted(settings.items()):
        values = {key: value for key, (value, _) in merged.items()}
        try:
            options_model = FeedOptions.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            raise _problem(
                "CMO_FEED_INVALID", f"{feed}: option {where}: {first['msg']}", feed
            ) from None
        feeds[feed] = CmoFeed(feed, options_model, tuple(routes[feed]))
    return feeds


_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: The top-level keys :func:`parse_cmo_feeds` reads (a mapping's ``fields`` are most of it).
_FEED_KEYS = ("mapping", "produces", "source")
_TOP_LEVEL_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*:")


def _feed_view(text: str) -> Any:
    """The parts of a mapping document :func:`parse_cmo_feeds` reads: its top-level
    ``mapping``, ``produces`` and ``source`` entries, parsed alone (about a quarter of the
    YAML; this runs at DAG parse time). A document written any other way than as a block
    mapping of plain keys at column 0 (flow style, directives, several documents), or whose
    parts do not parse alone (an alias of an anchor elsewhere), is parsed whole."""
    kept: list[str] = []
    keep = False
    for line in text.splitlines(keepends=True):
        first = line[:1]
        if first in ("", " ", "\t", "\n", "\r", "#"):
            if keep:
                kept.append(line)
            continue
        key = _TOP_LEVEL_KEY.match(line)
        if key is None:
            return _load_yaml(text)
        keep = key.group(1) in _FEED_KEYS
        if keep:
            kept.append(line)
    try:
        return _load_yaml("".join(kept))
    except yaml.YAMLError:
        return _load_yaml(text)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a SafeLoader


def _iter_documents(root: Path | Traversable) -> Iterable[tuple[str, Any]]:
    items = [root] if root.is_file() else sorted(root.iterdir(), key=lambda t: t.name)
    for item in items:
        if not item.name.endswith((".yaml", ".yml")):
            if item.is_dir():  # only folders are stat'ed: this runs at DAG parse time
                yield from _iter_documents(item)
        else:
            try:
                # DAG files build their DAGs from these at parse time: libyaml's loader is ~10x
                # faster than the pure-Python one (same safe subset of YAML), a document that
                # never spells "feed" cannot declare one, so it is not parsed at all, and of
                # the others only the parts that configure a feed are (_feed_view).
                raw = item.read_bytes()
                if b"feed" not in raw:
                    continue
                yield str(item), _feed_view(raw.decode("utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                continue  # mapping lint reports unreadable mappings; they route nothing


def load_cmo_feeds(root: Path | Traversable | None = None) -> dict[str, CmoFeed]:
    """Every CMO feed configured by the mappings under ``root`` (default: shipped mappings)."""
    return parse_cmo_feeds(_iter_documents(root if root is not None else resource_root("mappings")))


def load_cmo_feed(name: str, root: Path | Traversable | None = None) -> CmoFeed:
    feeds = load_cmo_feeds(root)
    try:
        return feeds[name]
    except KeyError:
        raise _problem(
            "CMO_FEED_UNKNOWN",
            f"no CMO feed {name!r}; configured: {', '.join(sorted(feeds)) or 'none'}",
            name,
        ) from None


# --- listings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file in a CMO's exchange folder: path relative to the feed's folder, size, mtime."""

    path: str
    size: int
    mtime: float

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def folder(self) -> str:
        parent = str(PurePosixPath(self.path).parent)
        return "" if parent == "." else parent

    @property
    def delivered_on(self) -> date | None:
        """The delivery day when the file sits in a ``YYYY-MM-DD`` folder (CMO convention)."""
        for part in reversed(PurePosixPath(self.path).parts[:-1]):
            if _DAY_FOLDER.fullmatch(part):
                try:
                    return date.fromisoformat(part)
                except ValueError:
                    return None
        return None


class DeliverySource(Protocol):
    """Where a CMO feed's files are: a local inbox folder or an SFTP folder."""

    def list_files(self) -> list[RemoteFile]:
        """Every regular file under the feed's folder (recursively), any name."""
        ...

    def read(self, path: str, *, max_bytes: int) -> bytes:
        """The bytes of one file (refusing more than ``max_bytes``)."""
        ...

    def close(self) -> None: ...


def is_temporary(name: str) -> bool:
    """Names uploads use while in progress (``x.csv.part``, ``.x.csv``, ``x.tmp``, ...)."""
    base = PurePosixPath(name).name
    lowered = base.lower()
    return (
        base.startswith((".", "~"))
        or lowered.endswith(TEMPORARY_SUFFIXES)
        or (".inprogress" in lowered or ".uploading" in lowered)
    )


def complete_files(first: list[RemoteFile], second: list[RemoteFile]) -> list[RemoteFile]:
    """Files present in both listings with the same size and time, and not temporary."""
    before = {f.path: (f.size, f.mtime) for f in first}
    return sorted(
        (f for f in second if before.get(f.path) == (f.size, f.mtime) and not is_temporary(f.path)),
        key=lambda f: f.path,
    )


def list_complete(
    source: DeliverySource, *, settle_seconds: float, sleep: Callable[[float], None]
) -> list[RemoteFile]:
    """The complete files of ``source``: two listings ``settle_seconds`` apart (see above)."""
    first = source.list_files()
    if settle_seconds <= 0:
        return complete_files(first, first)
    sleep(settle_seconds)
    return complete_files(first, source.list_files())


def is_checksum_file(feed: CmoFeed, name: str) -> bool:
    base = PurePosixPath(name).name
    return base.endswith((".sha256", ".sha256sum")) or base == feed.options.manifest_name
