"""Signed, atomic releases: files + ``manifest.json`` + detached signature, made visible at once.

A release is a folder::

    published/<release>/
        manifest.json          what is in it: every file with SHA-256, bytes and rows, contract
                               versions, mapping hashes, package version, input snapshot IDs,
                               validation summary, the vault's audit checkpoint
        manifest.json.asc      detached OpenPGP signature of manifest.json by the sponsor key
        datasets/...           Parquet files
        report/...             the HTML report and decision packets
        deliveries/<recipient>/...   per-recipient files, encrypted to the recipient's key

:func:`write_release` writes everything into a hidden staging folder next to the target,
fsyncs every file, writes the manifest and its signature **last**, fsyncs the folder and
makes it visible with one rename. A process killed at any point leaves either the previous
release or the new one, never a partial one (a stale staging folder is ignored by readers
and removed by the next run). On an object store, where there is no rename, readers treat a
release as present only once its manifest exists — which is written last.

:func:`verify_release` checks a release the way a recipient or an inspector would: every
listed file present with its hash, no unlisted file, the manifest's signature by the pinned
sponsor key, and the audit checkpoint's own signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cmohub.errors import HubError, PublishError
from cmohub.lake import canonical_json, fsync_dir

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.asc"
FORMAT = "cmohub.release/1"
_STAGING_PREFIX = ".staging-"
_SUPERSEDED_PREFIX = ".superseded-"


class Signer(Protocol):
    """Makes a detached signature (the sponsor's key)."""

    @property
    def fingerprint(self) -> str: ...

    def sign_detached(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a detached signature against a pinned key; raises on any failure."""

    def verify_detached(self, data: bytes, signature: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    """One file of a release: where it goes and what it is."""

    path: str  # relative, with forward slashes
    data: bytes
    rows: int | None = None
    dataset: str | None = None
    contract_version: str | None = None
    recipient: str | None = None  # for per-recipient (encrypted) deliveries

    def entry(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "path": self.path,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "bytes": len(self.data),
        }
        if self.rows is not None:
            item["rows"] = self.rows
        if self.dataset is not None:
            item["dataset"] = self.dataset
            item["contract_version"] = self.contract_version
        if self.recipient is not None:
            item["recipient"] = self.recipient
        return item


@dataclass(frozen=True)
class Recipient:
    """A CMO that receives its own records of each release, encrypted to its key."""

    name: str  # e.g. "cmo-A9996"
    fin: str
    public_key: Any  # cmohub.crypto.openpgp.PublicKey (kept opaque: this module is crypto-free)


@dataclass
class ReleaseResult:
    path: Path
    manifest_sha256: str
    files: int
    replaced: bool = False
    notes: list[str] = field(default_factory=list)


def build_manifest(files: list[ReleaseFile], header: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest: ``header`` (interval, versions, inputs, validation, checkpoint) + files."""
    paths = [f.path for f in files]
    if len(paths) != len(set(paths)):
        raise PublishError("two release files share a path", code="PUBLISH_DUPLICATE_PATH")
    for path in paths:
        if path.startswith("/") or ".." in path.split("/") or path in (MANIFEST, SIGNATURE):
            raise PublishError(f"unsafe release path {path!r}", code="PUBLISH_PATH_INVALID")
    return {
        "format": FORMAT,
        **header,
        "files": [f.entry() for f in sorted(files, key=lambda f: f.path)],
    }


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_release(
    root: Path,
    name: str,
    files: list[ReleaseFile],
    header: Mapping[str, Any],
    signer: Signer | None,
    *,
    before_visible: Callable[[Path], None] | None = None,
) -> ReleaseResult:
    """Write release ``name`` under ``root`` atomically; see the module docstring.

    ``before_visible`` is called with the staging folder just before the final rename (tests
    use it to kill the process at the worst moment).
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{_STAGING_PREFIX}{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f"{_STAGING_PREFIX}{name}-{os.getpid()}"
    target = root / name
    manifest = build_manifest(files, header)
    manifest_bytes = canonical_json(manifest)
    try:
        for item in files:
            _write_synced(staging / item.path, item.data)
        # The manifest and its signature go last: their presence means the release is whole.
        _write_synced(staging / MANIFEST, manifest_bytes)
        if signer is not None:
            _write_synced(staging / SIGNATURE, signer.sign_detached(manifest_bytes))
        for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        if before_visible is not None:
            before_visible(staging)
        replaced = False
        if target.exists():
            superseded = root / f"{_SUPERSEDED_PREFIX}{name}-{os.getpid()}"
            os.rename(target, superseded)
            os.rename(staging, target)
            shutil.rmtree(superseded, ignore_errors=True)
            replaced = True
        else:
            os.rename(staging, target)
        fsync_dir(root)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise PublishError(
            f"cannot write the release ({error.strerror or type(error).__name__})",
            code="PUBLISH_WRITE_FAILED",
            where=str(target),
        ) from error
    return ReleaseResult(
        path=target,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        files=len(files),
        replaced=replaced,
    )


@dataclass
class VerifyResult:
    ok: bool
    checked_files: int = 0
    failure: str | None = None  # "<CODE>: what" of the first failure
    manifest: dict[str, Any] = field(default_factory=dict)


def verify_release(
    folder: Path,
    verifier: Verifier | None,
    *,
    checkpoint_check: Callable[[Mapping[str, Any]], None] | None = None,
) -> VerifyResult:
    """Check hashes, completeness, the signature and the checkpoint; stop at the first failure.

    ``verifier`` (None skips the signature: only for callers that check it another way) and
    ``checkpoint_check`` raise a :class:`~cmohub.errors.HubError` when what they check is bad.
    """

    def fail(
        code: str, what: str, checked: int = 0, manifest: dict[str, Any] | None = None
    ) -> VerifyResult:
        return VerifyResult(False, checked, f"{code}: {what}", manifest or {})

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return fail("PUBLISH_MANIFEST_MISSING", f"no {MANIFEST} in {folder}")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        return fail("PUBLISH_MANIFEST_INVALID", f"{MANIFEST} is not JSON")
    if manifest.get("format") != FORMAT:
        return fail(
            "PUBLISH_MANIFEST_INVALID", f"unknown release format {manifest.get('format')!r}"
        )
    if verifier is not None:
        signature_path = folder / SIGNATURE
        if not signature_path.is_file():
            return fail("PUBLISH_SIGNATURE_MISSING", f"no {SIGNATURE}", manifest=manifest)
        try:
            verifier.verify_detached(manifest_bytes, signature_path.read_bytes())
        except HubError as error:
            return fail(
                error.code,
                f"manifest signature does not verify ({error.message})",
                manifest=manifest,
            )
    listed = {entry["path"]: entry for entry in manifest.get("files", [])}
    checked = 0
    for path, entry in sorted(listed.items()):
        file = folder / path
        if not file.is_file():
            return fail("PUBLISH_FILE_MISSING", f"{path} is listed but absent", checked, manifest)
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            return fail(
                "PUBLISH_HASH_MISMATCH", f"{path} does not match its SHA-256", checked, manifest
            )
        checked += 1
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {
        MANIFEST,
        SIGNATURE,
    }
    extra = sorted(present - set(listed))
    if extra:
        return fail(
            "PUBLISH_FILE_UNLISTED", f"{extra[0]} is not in the manifest", checked, manifest
        )
    if checkpoint_check is not None:
        checkpoint = manifest.get("audit_checkpoint")
        if not checkpoint:
            return fail(
                "PUBLISH_CHECKPOINT_MISSING",
                "no audit checkpoint in the manifest",
                checked,
                manifest,
            )
        try:
            checkpoint_check(checkpoint)
        except HubError as error:
            return fail(
                "PUBLISH_CHECKPOINT_INVALID",
                f"audit checkpoint does not verify ({error.code}: {error.message})",
                checked,
                manifest,
            )
    return VerifyResult(True, checked, None, manifest)
