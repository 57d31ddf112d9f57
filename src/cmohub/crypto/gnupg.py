"""The streaming OpenPGP backend: GnuPG (``gpg``) in a private, temporary home directory.

pgpy holds a whole message in memory several times over (about 1 GB of peak memory for a
200 MB payload); ``gpg`` streams from file to file in constant memory and decrypts several
times faster. :func:`cmohub.crypto.openpgp.choose_backend` sends files above
``Policy.stream_threshold`` here. The checks are the hub's, not GnuPG's: the outer packets are
scanned by :mod:`cmohub.crypto.packets` first, and the signature facts GnuPG reports on its
status channel (``VALIDSIG``: signing key, primary key, time, hash) go through the same
:func:`~cmohub.crypto.openpgp.check_signature` as pgpy's, so both backends give a message the same
verdict and the same error code.

GnuPG runs with ``--batch --pinentry-mode loopback``; a passphrase reaches it through a pipe
(``--passphrase-fd``), never argv or the environment. Keys are imported once into a home
directory that lives as long as the backend (mode 0700, removed with its agent on close). The
plaintext is written to a private temporary file next to its destination and moved there only
after every check passed; a rejected message leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from cmohub.crypto.openpgp import (
    OpenPgpError,
    Policy,
    PublicKey,
    SecretKey,
    SignatureInfo,
    Verified,
    check_plaintext_size,
    check_signature,
    check_size,
    cipher_name,
    hash_name,
    precheck,
    scan_file,
    should_compress,
    signer_not_pinned,
)
from cmohub.sensitive import Sensitive

_TIMEOUT_SECONDS = 3600
# gpg-agent's private-key operation fails now and then for no reason in the message (seen
# with GnuPG 2.2.40: about 1 % of decryptions report pkdecrypt_failed, and a retry of the very
# same file succeeds). A real failure fails every time, so failures are retried twice.
_ATTEMPTS = 3
log = logging.getLogger(__name__)
_COPY = 1 << 20


def gpg_binary() -> str | None:
    """The ``gpg`` executable (``CMOHUB_GPG`` names another), or None when not installed."""
    return shutil.which(os.environ.get("CMOHUB_GPG", "gpg"))


def _error(code: str, message: str) -> OpenPgpError:
    return OpenPgpError(message, code=code)


@dataclass
class _Status:
    """What GnuPG said on its status channel (``[GNUPG:] KEYWORD args``)."""

    lines: list[list[str]] = field(default_factory=list)

    def has(self, keyword: str) -> bool:
        return any(line[0] == keyword for line in self.lines)

    def all(self, keyword: str) -> list[list[str]]:
        return [line[1:] for line in self.lines if line[0] == keyword]

    def first(self, keyword: str) -> list[str] | None:
        found = self.all(keyword)
        return found[0] if found else None

    def signatures(self) -> list[list[list[str]]]:
        """Status lines grouped per signature (each group starts at NEWSIG)."""
        groups: list[list[list[str]]] = []
        for line in self.lines:
            if line[0] == "NEWSIG":
                groups.append([])
            elif groups and line[0] in (
                "GOODSIG",
                "EXPSIG",
                "EXPKEYSIG",
                "REVKEYSIG",
                "BADSIG",
                "ERRSIG",
                "VALIDSIG",
            ):
                groups[-1].append(line)
        return groups


def _may_be_transient(status: _Status) -> bool:
    """A failure worth one more try (see _ATTEMPTS); success or a clear verdict is not."""
    errors = {line[0] for line in status.all("ERROR")}
    return (
        "pkdecrypt_failed" in errors
        or status.has("BADSIG")
        or (status.has("DECRYPTION_FAILED") and status.has("DECRYPTION_KEY"))
    )


def _may_be_transient_decryption(status: _Status) -> bool:
    errors = {line[0] for line in status.all("ERROR")}
    return "pkdecrypt_failed" in errors or status.has("DECRYPTION_FAILED")


def _can_encrypt(key: SecretKey) -> bool:
    return any(p.can_encrypt and p.revoked_at is None for p in key.public.parts)


def _parse_status(text: str) -> _Status:
    status = _Status()
    for raw in text.splitlines():
        if raw.startswith("[GNUPG:] "):
            parts = raw[9:].split(" ")
            if parts and parts[0]:
                status.lines.append(parts)
    return status


class _Home:
    """A private GNUPGHOME with the keys the backend was given, imported once each."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.path = Path(tempfile.mkdtemp(prefix="cmohub-gpg-"))
        self.path.chmod(0o700)
        (self.path / "gpg.conf").write_text("no-greeting\nno-permission-warning\n")
        (self.path / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        self.imported: set[tuple[str, bool]] = set()
        self.lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _remove_home, binary, self.path)

    def close(self) -> None:
        self._finalizer()


def _remove_home(binary: str, path: Path) -> None:
    gpgconf = shutil.which("gpgconf", path=str(Path(binary).parent)) or shutil.which("gpgconf")
    if gpgconf is not None:
        subprocess.run(  # noqa: S603 - a fixed argv of our own, no shell
            [gpgconf, "--homedir", str(path), "--kill", "all"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _private_dir(near: Path | None) -> Iterator[Path]:
    """A mode-0700 scratch folder (next to ``near`` so the final move is a rename)."""
    base = near.parent if near is not None else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".cmohub-pgp-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _aware_now(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=UTC)


class GnupgBackend:
    """OpenPGP through ``gpg``, streaming from file to file (see the module docstring)."""

    name = "gnupg"

    def __init__(self, binary: str | None = None) -> None:
        found = binary or gpg_binary()
        if found is None:
            raise _error(
                "CRYPTO_BACKEND_UNAVAILABLE",
                "gpg (GnuPG) is not installed: install the gnupg package or keep files below "
                "the streaming threshold",
            )
        self.binary = found
        self._home = _Home(found)

    def close(self) -> None:
        self._home.close()

    # --- running gpg ---------------------------------------------------------------------------

    def _run(
        self,
        args: Sequence[str],
        *,
        passphrase: Sensitive[str] | None = None,
        stdin: bytes | None = None,
        now: datetime | None = None,
    ) -> tuple[int, _Status, str]:
        command = [
            self.binary,
            "--homedir",
            str(self._home.path),
            "--batch",
            "--no-tty",
            "--status-fd",
            "1",
            "--trust-model",
            "always",
            "--no-auto-key-locate",
            "--no-auto-check-trustdb",
            "--pinentry-mode",
            "loopback",
        ]
        if now is not None:
            delta = abs((datetime.now(tz=UTC) - _aware_now(now)).total_seconds())
            if delta > 120:
                command += ["--faked-system-time", f"{int(_aware_now(now).timestamp())}!"]
        read_fd = write_fd = None
        if passphrase is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, passphrase.reveal().encode() + b"\n")
            os.close(write_fd)
            command += ["--passphrase-fd", str(read_fd)]
        command += list(args)
        try:
            completed = subprocess.run(  # noqa: S603 - argv built here, no shell
                command,
                input=stdin,
                capture_output=True,
                timeout=_TIMEOUT_SECONDS,
                check=False,
                pass_fds=(read_fd,) if read_fd is not None else (),
                env={**os.environ, "LC_ALL": "C", "GNUPGHOME": str(self._home.path)},
            )
        except subprocess.TimeoutExpired:
            raise _error("CRYPTO_BACKEND_FAILED", "gpg did not finish in time") from None
        except OSError as error:
            raise _error(
                "CRYPTO_BACKEND_UNAVAILABLE", f"gpg cannot be run ({type(error).__name__})"
            ) from None
        finally:
            if read_fd is not None:
                os.close(read_fd)
        status = _parse_status(completed.stdout.decode("utf-8", "replace"))
        return completed.returncode, status, completed.stderr.decode("utf-8", "replace")

    def _import(self, key: PublicKey | SecretKey) -> None:
        secret = isinstance(key, SecretKey)
        marker = (key.fingerprint, secret)
        with self._home.lock:
            if marker in self._home.imported:
                return
            passphrase = key.passphrase if isinstance(key, SecretKey) else None
            code, status, _ = self._run(["--import"], passphrase=passphrase, stdin=key.armored)
            if not status.has("IMPORT_OK") and not status.has("IMPORT_RES"):
                raise _error("CRYPTO_BACKEND_FAILED", f"gpg could not import key {key.fingerprint}")
            if code != 0 and secret and not status.has("IMPORT_OK"):
                raise _error("CRYPTO_PASSPHRASE", "gpg could not import the secret key")
            self._home.imported.add(marker)
            if secret:
                assert isinstance(key, SecretKey)
                self._home.imported.add((key.fingerprint, False))

    # --- the backend interface -----------------------------------------------------------------

    def verify_decrypt(
        self,
        message: bytes | Path,
        *,
        sender: PublicKey,
        recipient: SecretKey,
        policy: Policy,
        now: datetime,
        out: Path | None = None,
    ) -> Verified:
        with _private_dir(out) as work:
            source = self._as_file(message, work / "message.pgp", policy)
            precheck(scan_file(source), recipient)
            self._import(recipient)
            self._import(sender)
            plain = work / "plaintext"
            decrypt = ["--max-output", str(policy.max_bytes + 1), "--output", str(plain)]
            for attempt in range(1, _ATTEMPTS + 1):
                plain.unlink(missing_ok=True)
                _, status, _ = self._run(
                    [*decrypt, "--decrypt", str(source)], passphrase=recipient.passphrase
                )
                if not _may_be_transient(status) or attempt == _ATTEMPTS:
                    break
                log.warning("gpg failed to decrypt or verify (attempt %d); trying again", attempt)
            pinned_bad = [s for s in status.all("BADSIG") if sender.part(s[0]) is not None]
            if pinned_bad and not status.has("GOODMDC"):
                # gpg stops at a bad signature before it reaches the MDC: decrypt once more
                # without verifying, to tell a tampered ciphertext from a bad signature.
                for _ in range(_ATTEMPTS):
                    plain.unlink(missing_ok=True)
                    _, recheck, _ = self._run(
                        [*decrypt, "--skip-verify", "--decrypt", str(source)],
                        passphrase=recipient.passphrase,
                    )
                    plain.unlink(missing_ok=True)
                    if not _may_be_transient_decryption(recheck):
                        break
                if not recheck.has("GOODMDC"):
                    raise _error(
                        "CRYPTO_TAMPERED", "the ciphertext fails its integrity check (MDC)"
                    )
                raise _error("CRYPTO_BAD_SIGNATURE", "the signature does not match the content")
            info, file_name = self._judge(status, sender, recipient, policy, now)
            if not plain.exists():
                raise _error("CRYPTO_BACKEND_FAILED", "gpg reported success but wrote nothing")
            digest, size = _hash_file(plain)
            check_plaintext_size(size, policy.max_bytes)
            if out is not None:
                plain.chmod(0o600)
                os.replace(plain, out)
                return Verified(info, size, digest, file_name, self.name, None, out)
            return Verified(info, size, digest, file_name, self.name, plain.read_bytes(), None)

    @staticmethod
    def _as_file(message: bytes | Path, scratch: Path, policy: Policy) -> Path:
        check_size(message, policy.max_bytes)
        if isinstance(message, bytes):
            scratch.write_bytes(message)
            return scratch
        return message

    def _judge(
        self,
        status: _Status,
        sender: PublicKey,
        recipient: SecretKey,
        policy: Policy,
        now: datetime,
    ) -> tuple[SignatureInfo, str]:
        """The verdict on a decryption, from gpg's status lines (first failed check wins)."""
        info = status.first("DECRYPTION_INFO")
        if info is not None:
            if info[0] == "0":
                raise _error("CRYPTO_NO_INTEGRITY", "the message has no integrity protection")
            if len(info) > 2 and info[2] not in ("0", ""):
                raise _error("CRYPTO_UNSUPPORTED", "AEAD-encrypted messages are not read")
            cipher = cipher_name(int(info[1]))
            if cipher != policy.cipher:
                raise _error(
                    "CRYPTO_WEAK_ALGORITHM",
                    f"session cipher {cipher}; only {policy.cipher} is accepted",
                )
        ours = {p.key_id for p in recipient.public.parts}
        missing = {line[0] for line in status.all("NO_SECKEY")}
        if status.has("DECRYPTION_FAILED") and not status.has("DECRYPTION_KEY"):
            targets = {line[0] for line in status.all("ENC_TO")}
            if targets and targets <= missing and not (targets & ours):
                raise _error("CRYPTO_WRONG_RECIPIENT", "the message is not encrypted to our key")
        if (
            status.has("BADMDC")
            or status.has("DECRYPTION_FAILED")
            or not status.has("DECRYPTION_OKAY")
            or not status.has("GOODMDC")
        ):
            if status.has("NODATA") and not status.has("BEGIN_DECRYPTION"):
                raise _error("CRYPTO_MALFORMED", "gpg found no OpenPGP data")
            raise _error("CRYPTO_TAMPERED", "the ciphertext fails its integrity check (MDC)")
        length = status.first("PLAINTEXT_LENGTH")
        if length is not None:
            check_plaintext_size(int(length[0]), policy.max_bytes)
        plaintext = status.first("PLAINTEXT")
        file_name = unquote(plaintext[2]) if plaintext is not None and len(plaintext) > 2 else ""
        return self._signature(status, sender, policy, now), file_name

    @staticmethod
    def _signature(
        status: _Status, sender: PublicKey, policy: Policy, now: datetime
    ) -> SignatureInfo:
        groups = status.signatures()
        if not groups:
            raise _error("CRYPTO_UNSIGNED", "the message is encrypted but not signed")
        problem: OpenPgpError | None = None
        for group in groups:
            for line in group:
                keyword, args = line[0], line[1:]
                if keyword == "BADSIG" and sender.part(args[0]) is not None:
                    raise _error("CRYPTO_BAD_SIGNATURE", "the signature does not match the content")
                if keyword == "ERRSIG":
                    issuer = args[6] if len(args) > 6 and args[6] != "-" else args[0]
                    if sender.part(issuer) is None:
                        problem = problem or signer_not_pinned()
                    elif args[5] == "4":
                        problem = problem or _error(
                            "CRYPTO_WEAK_ALGORITHM", "the signature uses an unsupported algorithm"
                        )
                    else:
                        problem = problem or _error(
                            "CRYPTO_BAD_SIGNATURE", "the signature cannot be checked"
                        )
                if keyword == "VALIDSIG":
                    signing, created = args[0], int(args[2])
                    primary = args[9] if len(args) > 9 else signing
                    if primary != sender.fingerprint and sender.part(signing) is None:
                        problem = problem or signer_not_pinned()
                        continue
                    algorithm = hash_name(int(args[7]))
                    signed_at = datetime.fromtimestamp(created, tz=UTC)
                    part = check_signature(
                        sender,
                        key_id=signing,
                        created=signed_at,
                        hash_algorithm=algorithm,
                        policy=policy,
                        now=now,
                    )
                    return SignatureInfo(sender.fingerprint, part.fingerprint, signed_at, algorithm)
        raise problem or _error("CRYPTO_BAD_SIGNATURE", "no signature could be verified")

    def sign_encrypt(
        self,
        data: bytes | Path,
        *,
        signer: SecretKey,
        recipients: Sequence[PublicKey],
        policy: Policy,
        now: datetime,
        compress: bool | None = None,
        file_name: str = "",
        out: Path | None = None,
    ) -> bytes | None:
        """Sign and encrypt with gpg, then check our own signature (see _check_own)."""
        for recipient in recipients:
            recipient.encryption_part(policy, now)
        self._import(signer)
        for recipient in recipients:
            self._import(recipient)
        # Also encrypted to the signer's own key when it can decrypt, so that the signature
        # gpg made can be checked here before the file leaves (and the sponsor can reopen what
        # it sent).
        own = signer.public.encryption_part(policy, now) if _can_encrypt(signer) else None
        with _private_dir(out) as work:
            source = self._as_file(data, work / "plaintext", policy)
            if compress is None:
                with source.open("rb") as handle:
                    compress = should_compress(handle.read(64 * 1024))
            target = work / "message.pgp"
            args = [
                "--local-user",
                signer.fingerprint,
                "--cipher-algo",
                policy.cipher,
                "--digest-algo",
                "SHA512",
                "--compress-algo",
                "zlib" if compress else "none",
                "--set-filename",
                file_name,
            ]
            for recipient in recipients:
                args += ["--recipient", recipient.fingerprint]
            if own is not None:
                args += ["--recipient", signer.fingerprint]
            args += ["--output", str(target), "--sign", "--encrypt", str(source)]
            for attempt in range(1, _ATTEMPTS + 1):
                target.unlink(missing_ok=True)
                _, status, _ = self._run(args, passphrase=signer.passphrase, now=now)
                if not status.has("SIG_CREATED") or not status.has("END_ENCRYPTION"):
                    raise _error("CRYPTO_BACKEND_FAILED", "gpg could not sign and encrypt the file")
                if own is None or self._check_own(
                    ["--output", os.devnull, "--decrypt", str(target)], signer
                ):
                    break
                if attempt == _ATTEMPTS:
                    raise _error(
                        "CRYPTO_BACKEND_FAILED", "gpg made a signature that does not verify"
                    )
                log.warning("gpg made a signature that does not verify; signing again")
            if out is not None:
                target.chmod(0o600)
                os.replace(target, out)
                return None
            return target.read_bytes()

    def _check_own(self, args: list[str], signer: SecretKey) -> bool:
        """True when gpg verifies the signature it just made (retrying flaky agent calls).

        GnuPG 2.2.40's agent was seen making an RSA signature that does not verify about once
        in 300 signatures; such a signature is caught here and made again.
        """
        for _ in range(_ATTEMPTS):
            _, status, _ = self._run(args, passphrase=signer.passphrase)
            valid = any(line[0] == signer.fingerprint or line[-1] == signer.fingerprint
                        for line in status.all("VALIDSIG"))  # fmt: skip
            if valid:
                return True
            if status.has("BADSIG") and not _may_be_transient_decryption(status):
                return False
        return False

    def sign_detached(self, data: bytes | Path, *, signer: SecretKey, now: datetime) -> bytes:
        self._import(signer)
        with _private_dir(None) as work:
            source = data if isinstance(data, Path) else work / "data"
            if isinstance(data, bytes):
                source.write_bytes(data)
            target = work / "data.asc"
            for attempt in range(1, _ATTEMPTS + 1):
                target.unlink(missing_ok=True)
                _, status, _ = self._run(
                    [
                        "--local-user",
                        signer.fingerprint,
                        "--digest-algo",
                        "SHA512",
                        "--armor",
                        "--output",
                        str(target),
                        "--detach-sign",
                        str(source),
                    ],
                    passphrase=signer.passphrase,
                    now=now,
                )
                if not status.has("SIG_CREATED"):
                    raise _error("CRYPTO_BACKEND_FAILED", "gpg could not sign the file")
                if self._check_own(["--verify", str(target), str(source)], signer):
                    return target.read_bytes()
                log.warning("gpg made a signature that does not verify (attempt %d)", attempt)
            raise _error("CRYPTO_BACKEND_FAILED", "gpg made a signature that does not verify")

    def verify_detached(
        self,
        data: bytes | Path,
        signature: bytes,
        *,
        sender: PublicKey,
        policy: Policy,
        now: datetime,
    ) -> SignatureInfo:
        self._import(sender)
        with _private_dir(None) as work:
            source = self._as_file(data, work / "data", policy)
            sig = work / "data.sig"
            sig.write_bytes(signature)
            _, status, _ = self._run(["--verify", str(sig), str(source)])
            if status.has("NODATA") and not status.signatures():
                raise _error("CRYPTO_MALFORMED", "not an OpenPGP signature")
            return self._signature(status, sender, policy, now)
