"""Which keys sign and verify releases, and reading releases back (I/O).

:func:`hub_signer` signs manifests with the sponsor's key at a *fixed* signature time — the
later of the release's as-of instant and one second after the key was made — so re-running an
interval gives the same signature bytes. :func:`hub_verifier` checks them against the sponsor's
(optionally pinned) public key, with the same expiry, revocation and algorithm checks as CMO
deliveries. The signer and verifier themselves live in :mod:`cmohub.crypto.openpgp`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cmohub.crypto import openpgp
from cmohub.crypto.keyring import Keyring
from cmohub.errors import PublishError
from cmohub.publish.release import Recipient
from cmohub.settings import Settings
from cmohub.sources.delivery import load_cmo_feeds
from cmohub.vault.audit import verify_checkpoint


def hub_signer(settings: Settings, *, as_of: datetime) -> openpgp.DetachedSigner:
    """The embedded default's sponsor key (created on first use, mode 0600), at a fixed time."""
    key = Keyring.for_settings(settings).ensure_hub_key()
    at = max(as_of.astimezone(UTC), key.public.primary.created + timedelta(seconds=1))
    return openpgp.DetachedSigner(key, at=at)


def hub_verifier(
    settings: Settings, *, key_file: Path | None, pinned: str | None
) -> openpgp.PinnedVerifier:
    """The sponsor's public key from ``key_file``, or the embedded default's own."""
    if key_file is not None:
        public = openpgp.load_public_key(key_file, pinned=pinned)
    else:
        keyring = Keyring.for_settings(settings)
        if not keyring.hub_public_path.exists():
            raise PublishError(
                "no sponsor public key: give --sponsor-key (the key the sponsor published)",
                code="PUBLISH_KEY_MISSING",
            )
        public = keyring.hub_public()
    return openpgp.PinnedVerifier(public, pinned)


def check_checkpoint(checkpoint: Mapping[str, Any]) -> None:
    """The audit checkpoint a manifest embeds must carry a valid signature by its audit key."""
    if not verify_checkpoint(checkpoint, str(checkpoint.get("public_key", ""))):
        raise PublishError(
            "checkpoint signature does not verify", code="PUBLISH_CHECKPOINT_INVALID"
        )


def load_release_tables(folder: Path, names: Sequence[str] | None = None) -> dict[str, pa.Table]:
    """A release's datasets by name: published ones, canonical ones, and ``specifications``."""
    tables: dict[str, pa.Table] = {}
    datasets = folder / "datasets"
    for path in sorted(datasets.glob("*.parquet")):
        tables[path.stem] = pq.read_table(path)
    for path in sorted((datasets / "canonical").glob("*.parquet")):
        tables[path.name.removesuffix(".parquet")] = pq.read_table(path)
    spec = datasets / "reference" / "specifications.parquet"
    if spec.exists():
        tables["specifications"] = pq.read_table(spec)
    if not tables:
        raise PublishError(f"{folder} holds no datasets", code="PUBLISH_NOT_A_RELEASE")
    if names is not None:
        missing = sorted(set(names) - set(tables))
        if missing:
            raise PublishError(f"release lacks {', '.join(missing)}", code="PUBLISH_INCOMPLETE")
    return tables


def latest_release(root: Path) -> Path:
    """The newest release folder under ``root`` (names are as-of dates)."""
    candidates = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith("."))
    candidates = [p for p in candidates if (p / "manifest.json").exists()]
    if not candidates:
        raise PublishError(f"no release under {root}", code="PUBLISH_NOT_A_RELEASE")
    return candidates[-1]


def cmo_recipients(settings: Settings) -> dict[str, Any]:
    """Each CMO whose feed key the hub holds, and how to encrypt its deliveries to it.

    A CMO receives its own batches' records, encrypted to the public key it uses for its feed
    (pinned as for its deliveries) and signed by the sponsor. Returns the keyword arguments of
    :func:`cmohub.pipelines.nightly.publish` (``recipients`` and ``encrypt``).
    """
    keyring = Keyring.for_settings(settings)
    recipients = []
    for name, feed in sorted(load_cmo_feeds().items()):
        if keyring.sender_path(name).exists():
            key = keyring.sender(name, pinned=feed.options.sender_fingerprint)
            recipients.append(Recipient(f"cmo-{feed.options.cmo}", feed.options.cmo, key))
    if not recipients:
        return {}
    signer = keyring.hub_secret()

    def encrypt(data: bytes, recipient: Recipient) -> bytes:
        return openpgp.encrypt_to(data, [recipient.public_key], signer)

    return {"recipients": recipients, "encrypt": encrypt}
