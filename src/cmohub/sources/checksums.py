"""Checksum files CMOs send alongside deliveries: ``<file>.sha256`` sidecars or a manifest.

Both use the ``sha256sum`` format (``<64 hex>  <name>``, ``*<name>`` for binary mode) or the
BSD format (``SHA256 (<name>) = <64 hex>``); a sidecar may hold just the digest. The sums cover
the file **as delivered** (the encrypted file), which is what the CMO computed before upload.

:func:`check_delivery` says, for one delivered file:

* ``ok`` — the listed sum matches;
* ``pending`` — the convention needs a sum that has not arrived yet: the upload is not
  finished (checksum files are uploaded last), so the file waits for the next run;
* ``mismatch`` — the sum differs: the file is rejected (FILE_CHECKSUM_MISMATCH), kept as
  received for evidence, and never decrypted or parsed;
* ``not_required`` — the feed uses no checksums.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from cmohub.sources.delivery import RemoteFile

_GNU = re.compile(r"^(?P<hex>[0-9A-Fa-f]{64})\s+\*?(?P<name>.+?)\s*$")
_BSD = re.compile(r"^SHA256\s*\((?P<name>.+)\)\s*=\s*(?P<hex>[0-9A-Fa-f]{64})\s*$")
_BARE = re.compile(r"^\s*(?P<hex>[0-9A-Fa-f]{64})\s*$")


def parse_sums(text: str) -> dict[str, str]:
    """``{file name: lower-case hex digest}`` from a checksum file (unknown lines ignored)."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        match = _GNU.match(line) or _BSD.match(line)
        if match:
            sums[PurePosixPath(match["name"].strip()).name] = match["hex"].lower()
    return sums


def parse_sidecar(text: str, name: str) -> str | None:
    """The digest a ``<name>.sha256`` sidecar gives for ``name``."""
    bare = _BARE.match(text)
    if bare:
        return bare["hex"].lower()
    return parse_sums(text).get(PurePosixPath(name).name)


@dataclass(frozen=True, slots=True)
class ChecksumResult:
    status: str  # ok, pending, mismatch, not_required
    expected: str | None = None
    checksum_file: str | None = None


def check_delivery(
    convention: str,
    delivered: RemoteFile,
    data: bytes,
    *,
    listing: dict[str, RemoteFile],
    read: Callable[[str], bytes],
    manifest_name: str = "SHA256SUMS",
) -> ChecksumResult:
    """Check ``data`` (the delivered bytes of ``delivered``) against the feed's convention."""
    if convention == "none":
        return ChecksumResult("not_required")
    if convention == "sidecar":
        sidecar = f"{delivered.path}.sha256"
        if sidecar not in listing:
            return ChecksumResult("pending", checksum_file=sidecar)
        expected = parse_sidecar(read(sidecar).decode("utf-8", "replace"), delivered.name)
        checksum_file = sidecar
    else:
        folder = delivered.folder
        manifest = f"{folder}/{manifest_name}" if folder else manifest_name
        if manifest not in listing:
            return ChecksumResult("pending", checksum_file=manifest)
        expected = parse_sums(read(manifest).decode("utf-8", "replace")).get(delivered.name)
        checksum_file = manifest
        if expected is None:
            return ChecksumResult("pending", checksum_file=manifest)
    if expected is None:
        return ChecksumResult("mismatch", None, checksum_file)
    actual = hashlib.sha256(data).hexdigest()
    return ChecksumResult("ok" if actual == expected else "mismatch", expected, checksum_file)


def sums_line(name: str, data: bytes) -> str:
    """One ``sha256sum`` line for ``data`` named ``name`` (what the sandbox CMOs write)."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"
