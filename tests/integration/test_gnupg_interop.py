"""OpenPGP against real GnuPG: both directions, both backends, the same bad-message corpus.

A CMO runs GnuPG with a key GnuPG generated; the hub uses its own (pgpy-made) key. Files the
CMO's ``gpg`` signs and encrypts must verify and decrypt here (pgpy and GnuPG backends), and
files made here must verify and decrypt with the ``gpg`` command line. Each test home is a
temporary GNUPGHOME whose agent is stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import need

from cmohub.crypto import openpgp as pgp
from cmohub.crypto.gnupg import GnupgBackend
from cmohub.sandbox.deliver import (
    BAD_DELIVERY_NAMES,
    BadDelivery,
    CorpusKeys,
    bad_message_corpus,
    corpus_keys,
)
from cmohub.sensitive import Sensitive

pytestmark = pytest.mark.integration

PAYLOAD = (
    b"Lot Number,Step Seq,Operation,Room,Operator Badge,Start Time,End Time\r\n"
    b"ACM-26-00101,1,Cell Selection,RM-101,ACME-OP-004,2026-01-20T08:15:00-05:00,"
    b"2026-01-20T11:00:00-05:00\r\n"
) * 30
HUB_PASSPHRASE = Sensitive("hub passphrase for the interop test")


@dataclass
class GpgHome:
    """A CMO's GnuPG: its own home directory and a key GnuPG generated."""

    path: Path
    fingerprint: str

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        # Every call here is expected to succeed; gpg-agent's private-key operations fail now
        # and then for no reason in the input (GnuPG 2.2.40), so a failure is tried again.
        for _ in range(3):
            done = subprocess.run(
                ["gpg", "--homedir", str(self.path), "--batch", "--yes", "--no-tty",
                 "--trust-model", "always", "--pinentry-mode", "loopback", *args],
                input=stdin,
                capture_output=True,
                check=False,
                timeout=300,
            )  # fmt: skip
            if done.returncode == 0:
                break
        return done

    def status(self, *args: str, stdin: bytes | None = None) -> str:
        return self.run("--status-fd", "1", *args, stdin=stdin).stdout.decode()


@pytest.fixture(scope="module")
def keys() -> CorpusKeys:
    need(shutil.which("gpg") is not None, "GnuPG (gpg) is not installed")
    return corpus_keys()


@pytest.fixture(scope="module")
def hub(keys: CorpusKeys) -> pgp.SecretKey:
    """The hub's key, passphrase-protected as in production."""
    made = pgp.generate_key("Interop hub", "hub-interop@sandbox.invalid", passphrase=HUB_PASSPHRASE)
    return pgp.SecretKey(made.armored, passphrase=HUB_PASSPHRASE)


@pytest.fixture(scope="module")
def cmo_gpg(hub: pgp.SecretKey) -> Iterator[GpgHome]:
    path = Path(tempfile.mkdtemp(prefix="cmohub-cmo-gpg-"))
    path.chmod(0o700)
    home = GpgHome(path, "")
    try:
        user_id = "GnuPG CMO <cmo-gnupg@sandbox.invalid>"
        made = home.run("--passphrase", "", "--quick-generate-key", user_id, "rsa3072",
                        "sign,cert", "1y")  # fmt: skip
        assert made.returncode == 0, made.stderr.decode()
        listing = home.run("--with-colons", "--list-secret-keys").stdout.decode()
        home.fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        sub = home.run("--passphrase", "", "--quick-add-key", home.fingerprint, "rsa3072", "encr",
                       "1y")  # fmt: skip
        assert sub.returncode == 0, sub.stderr.decode()
        imported = home.run("--import", stdin=hub.public.armored)
        assert imported.returncode == 0, imported.stderr.decode()
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(path), "--kill", "all"], check=False,
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cmo_public(cmo_gpg: GpgHome) -> pgp.PublicKey:
    exported = cmo_gpg.run("--armor", "--export", cmo_gpg.fingerprint).stdout
    return pgp.PublicKey(exported).pinned(cmo_gpg.fingerprint)


@pytest.fixture(scope="module")
def gnupg() -> Iterator[GnupgBackend]:
    need(shutil.which("gpg") is not None, "GnuPG (gpg) is not installed")
    backend = GnupgBackend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def corpus(keys: CorpusKeys) -> list[BadDelivery]:
    return bad_message_corpus(PAYLOAD, keys)


BACKENDS = ["pgpy", "gnupg"]


def _backend(name: str, gnupg: GnupgBackend) -> pgp.Backend:
    return gnupg if name == "gnupg" else pgp.PgpyBackend()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_file_gnupg_signed_and_encrypted_is_verified_and_decrypted_here(
    backend_name: str,
    *,
    cmo_gpg: GpgHome,
    cmo_public: pgp.PublicKey,
    hub: pgp.SecretKey,
    gnupg: GnupgBackend,
    tmp_path: Path,
) -> None:
    source = tmp_path / "ACME_STEPS_20260120.csv"
    source.write_bytes(PAYLOAD)
    target = tmp_path / "ACME_STEPS_20260120.csv.pgp"
    made = cmo_gpg.run("--local-user", cmo_gpg.fingerprint, "--recipient", hub.fingerprint,
                       "--output", str(target), "--sign", "--encrypt", str(source))  # fmt: skip
    assert made.returncode == 0, made.stderr.decode()
    out = tmp_path / "plain" / "steps.csv"
    out.parent.mkdir()
    verified = pgp.verify_decrypt(
        target,
        sender=cmo_public,
        recipient=hub,
        out=out,
        backend=_backend(backend_name, gnupg),
    )
    assert out.read_bytes() == PAYLOAD
    assert verified.signer == cmo_gpg.fingerprint
    assert verified.file_name == source.name
    assert out.stat().st_mode & 0o077 == 0


def test_an_armored_gnupg_message_is_read_by_both_backends(
    cmo_gpg: GpgHome, cmo_public: pgp.PublicKey, hub: pgp.SecretKey, gnupg: GnupgBackend
) -> None:
    made = cmo_gpg.run("--armor", "--local-user", cmo_gpg.fingerprint, "--recipient",
                       hub.fingerprint, "--sign", "--encrypt", stdin=PAYLOAD)  # fmt: skip
    assert made.stdout.startswith(b"-----BEGIN PGP MESSAGE-----")
    for backend in (pgp.PgpyBackend(), gnupg):
        verified = pgp.verify_decrypt(
            made.stdout, sender=cmo_public, recipient=hub, backend=backend
        )
        assert verified.data == PAYLOAD


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_file_made_here_verifies_and_decrypts_with_gpg(
    backend_name: str,
    *,
    cmo_gpg: GpgHome,
    cmo_public: pgp.PublicKey,
    hub: pgp.SecretKey,
    gnupg: GnupgBackend,
    tmp_path: Path,
) -> None:
    # The hub sends a file to the CMO: signed by the hub, encrypted to the CMO's GnuPG key.
    imported = cmo_gpg.run("--import", stdin=hub.public.armored)
    assert imported.returncode == 0
    message = pgp.sign_encrypt(
        PAYLOAD,
        signer=hub,
        recipients=[cmo_public],
        file_name="release.csv",
        backend=_backend(backend_name, gnupg),
    )
    assert message is not None
    target = tmp_path / "release.csv.pgp"
    target.write_bytes(message)
    out = tmp_path / "release.csv"
    status = cmo_gpg.status("--passphrase", "", "--output", str(out), "--decrypt", str(target))
    assert out.read_bytes() == PAYLOAD
    assert f"VALIDSIG {hub.fingerprint}" in status
    assert "GOODMDC" in status
    assert "DECRYPTION_INFO 2 9" in status  # MDC, cipher 9 = AES-256


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_detached_signatures_interoperate(
    backend_name: str,
    *,
    cmo_gpg: GpgHome,
    cmo_public: pgp.PublicKey,
    hub: pgp.SecretKey,
    gnupg: GnupgBackend,
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"files": [], "rows": 0}\n')
    backend = _backend(backend_name, gnupg)
    ours = pgp.sign_detached(manifest.read_bytes(), hub, backend=backend)
    (tmp_path / "manifest.json.asc").write_bytes(ours)
    status = cmo_gpg.status("--verify", str(tmp_path / "manifest.json.asc"), str(manifest))
    assert f"VALIDSIG {hub.fingerprint}" in status
    theirs = cmo_gpg.run("--armor", "--local-user", cmo_gpg.fingerprint, "--detach-sign",
                         "--output", "-", str(manifest)).stdout  # fmt: skip
    info = pgp.verify_detached(
        manifest.read_bytes(), theirs, cmo_public, pinned_fingerprint=cmo_gpg.fingerprint,
        backend=backend,
    )  # fmt: skip
    assert info.signer == cmo_gpg.fingerprint


def test_a_large_file_streams_through_gnupg_in_both_directions(
    cmo_gpg: GpgHome, cmo_public: pgp.PublicKey, hub: pgp.SecretKey, tmp_path: Path
) -> None:
    big = tmp_path / "big.parquet"
    big.write_bytes(b"PAR1" + os.urandom(3 << 20))  # incompressible, like Parquet
    policy = pgp.Policy(stream_threshold=1 << 20)
    target = tmp_path / "big.parquet.pgp"
    made = cmo_gpg.run("--local-user", cmo_gpg.fingerprint, "--recipient", hub.fingerprint,
                       "--output", str(target), "--sign", "--encrypt", str(big))  # fmt: skip
    assert made.returncode == 0
    out = tmp_path / "big.out"
    verified = pgp.verify_decrypt(target, sender=cmo_public, recipient=hub, out=out, policy=policy)
    assert verified.backend == "gnupg"
    assert out.read_bytes() == big.read_bytes()


@pytest.mark.parametrize("name", BAD_DELIVERY_NAMES)
def test_the_gnupg_backend_rejects_the_bad_message_corpus_with_the_same_codes(
    name: str,
    corpus: list[BadDelivery],
    keys: CorpusKeys,
    gnupg: GnupgBackend,
    tmp_path: Path,
) -> None:
    bad = next(b for b in corpus if b.name == name)
    out = tmp_path / "out" / "plaintext.csv"
    out.parent.mkdir()
    with pytest.raises(pgp.OpenPgpError) as caught:
        pgp.verify_decrypt(
            bad.message, sender=bad.sender, recipient=keys.hub, out=out, backend=gnupg
        )
    assert caught.value.code == bad.code
    assert list(out.parent.iterdir()) == []
