"""The encrypted raw store of clinical payloads: kept only encrypted, or not at all.

Clinical payloads (FHIR pages and bulk files, HL7 files and MLLP messages) carry patient
identifiers, so the lake keeps them only as envelopes (:mod:`cmohub.crypto.envelope`:
AES-256-GCM under a fresh data key wrapped by a key-encryption key) at
``raw/clinical/<sha256[:2]>/<sha256>.enc``, addressed by the SHA-256 of the *plaintext* —
the same hash the records' source references name, so a quarantined record is replayed by
decrypting its payload and reading its locator. With ``CMOHUB_RAW_CLINICAL=none`` nothing is
kept (records stay traceable by hash, but cannot be replayed).

Key: the vault's key-encryption key (purpose ``kek``, latest version) is not used as is; the
raw store's KEK is derived from it with HKDF-SHA256 (info ``cmohub raw clinical v1``), so a
raw envelope and a vault data key never share a wrapping key, while rotating the vault's KEK
(provision version N+1) also moves new raw payloads to a new key. Old envelopes name their
version and stay readable while that KEK version is provisioned.

A small *batch manifest* (``raw/clinical-batch/…``, plain JSON: hashes and counts only, no
identifiers) lists the payloads one feed received in one run, so that one staging step can
cover them all: locators read ``input=<n>/<locator in that payload>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmohub.crypto.envelope import decrypt_envelope, encrypt_envelope
from cmohub.errors import ConfigError
from cmohub.lake import Lake, RawRef, canonical_json, sha256_hex
from cmohub.settings import RawClinicalPolicy, Settings
from cmohub.vault.keys import KeyProvider, KeyPurpose

RAW_KIND = "clinical"
BATCH_KIND = "clinical-batch"
_HKDF_INFO = b"cmohub raw clinical v1"
_AAD = b"cmohub.raw.clinical"


def derive_raw_kek(kek: bytes) -> bytes:
    """The raw store's key-encryption key for one vault KEK version."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)


class RawClinicalStore:
    """Put and get clinical payloads, encrypted, under the SHA-256 of their plaintext."""

    def __init__(self, lake: Lake, keys: KeyProvider, *, policy: RawClinicalPolicy) -> None:
        self.lake = lake
        self.keys = keys
        self.policy = policy
        self._kek_cache: dict[int, bytes] = {}

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyProvider) -> RawClinicalStore:
        return cls(Lake(settings.lake_root), keys, policy=settings.raw_clinical)

    def __repr__(self) -> str:
        return f"RawClinicalStore({self.lake!r}, policy={self.policy.value})"

    @property
    def keeps(self) -> bool:
        return self.policy is RawClinicalPolicy.ENCRYPTED

    def _kek(self, version: int) -> bytes:
        key = self._kek_cache.get(version)
        if key is None:
            key = derive_raw_kek(self.keys.load(KeyPurpose.KEK, version))
            self._kek_cache[version] = key  # the same bytes whichever thread wins
        return key

    def _current_version(self) -> int:
        versions = self.keys.versions(KeyPurpose.KEK)
        if not versions:
            raise ConfigError(
                "no key-encryption key for the raw clinical store: run 'cmohub vault init'",
                code="VAULT_KEY_MISSING",
            )
        return versions[-1]

    def put(self, data: bytes) -> tuple[str, RawRef | None]:
        """Keep ``data`` encrypted (per policy); return its plaintext SHA-256 and reference."""
        digest = sha256_hex(data)
        if not self.keeps:
            return digest, None
        ref = RawRef(sha256=digest, size=0, kind=RAW_KIND, encrypted=True)
        if self.lake.path(ref.relative_path).exists():
            return digest, ref
        version = self._current_version()
        envelope = encrypt_envelope(data, kek=self._kek(version), kek_version=version, aad=_AAD)
        stored, _ = self.lake.put_raw_as(digest, envelope, kind=RAW_KIND, encrypted=True)
        return digest, stored

    def put_many(self, payloads: Sequence[bytes], *, workers: int = 8) -> list[str]:
        """:meth:`put` for many payloads; the writes (each fsynced) overlap in threads.

        Returns the plaintext SHA-256 of each payload, in order.
        """
        digests = [sha256_hex(data) for data in payloads]
        if not self.keeps:
            return digests
        unique = dict(zip(digests, payloads, strict=True))
        if len(unique) <= 1:
            for data in unique.values():
                self.put(data)
            return digests
        self._current_version()  # fail before any thread starts when no KEK exists
        with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
            list(pool.map(self.put, unique.values()))
        return digests

    def get(self, sha256: str) -> bytes:
        """The plaintext of a kept payload (ConfigError RAW_NOT_KEPT when it is not there)."""
        ref = RawRef(sha256=sha256, size=0, kind=RAW_KIND, encrypted=True)
        path = self.lake.path(ref.relative_path)
        if not path.exists():
            raise ConfigError(
                "the raw payload is not in the store (CMOHUB_RAW_CLINICAL=none, or another lake)",
                code="RAW_NOT_KEPT",
                where=sha256,
            )
        return decrypt_envelope(path.read_bytes(), kek_for=self._kek, aad=_AAD)

    def has(self, sha256: str) -> bool:
        ref = RawRef(sha256=sha256, size=0, kind=RAW_KIND, encrypted=True)
        return bool(self.lake.path(ref.relative_path).exists())


@dataclass
class BatchManifest:
    """The payloads one feed received in one run, in order (hashes only)."""

    feed: str
    run_id: str
    inputs: list[dict[str, Any]] = field(default_factory=list)  # {sha256, source, kind}
    #: The FHIR version the run read its payloads as when it was told one (an endpoint's
    #: ``extra``), not each mapping's own: a replay must read them the same way. Recorded
    #: only when set, so that manifests without it keep their bytes.
    fhir_version: str | None = None

    def add(self, sha256: str, *, source: str, kind: str) -> int:
        """Add a payload; return its 1-based input number (used in locators)."""
        self.inputs.append({"sha256": sha256, "source": source, "kind": kind})
        return len(self.inputs)

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {
            "feed": self.feed,
            "run_id": self.run_id,
            "inputs": self.inputs,
            "version": 1,
        }
        if self.fhir_version is not None:
            document["fhir_version"] = self.fhir_version
        return canonical_json(document)

    def save(self, lake: Lake) -> str:
        """Store the manifest (plain: it holds no identifiers); return its SHA-256."""
        data = self.to_bytes()
        digest = sha256_hex(data)
        lake.put_raw_as(digest, data, kind=BATCH_KIND, encrypted=False)
        return digest


def load_batch_manifest(lake: Lake, sha256: str) -> dict[str, Any]:
    ref = RawRef(sha256=sha256, size=0, kind=BATCH_KIND, encrypted=False)
    data: dict[str, Any] = json.loads(lake.get_raw(ref))
    return data


def input_locator(number: int, locator: str) -> str:
    return f"input={number}/{locator}"


def split_input_locator(locator: str) -> tuple[int, str]:
    """``input=3/entry=7`` -> (3, ``entry=7``)."""
    head, _, rest = locator.partition("/")
    kind, _, number = head.partition("=")
    if kind != "input" or not number.isdigit() or not rest:
        raise ConfigError("not a batch locator (input=<n>/...)", code="RAW_LOCATOR_INVALID")
    return int(number), rest
