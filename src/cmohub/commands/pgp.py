"""``cmohub pgp``: verify and decrypt a delivery, or sign and encrypt a file, by hand.

The same checks as the ingest pipelines (pinned sender, integrity protection, AES-256, expiry
at signing time, revocation, size limit). On any failure the command prints the error code and
writes nothing. Passphrases come from ``--passphrase-env`` / ``--passphrase-file`` (default:
the variable ``CMOHUB_OPENPGP_PASSPHRASE``), never from argv.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cmohub.crypto.openpgp import Backend
    from cmohub.sensitive import Sensitive

app = typer.Typer(help="Verify/decrypt and sign/encrypt OpenPGP files.", no_args_is_help=True)

DEFAULT_PASSPHRASE_ENV = "CMOHUB_OPENPGP_PASSPHRASE"  # noqa: S105 - a variable's name


class BackendChoice(StrEnum):
    AUTO = "auto"
    PGPY = "pgpy"
    GNUPG = "gnupg"


PASSPHRASE_ENV = typer.Option(
    "--passphrase-env", help="Variable holding the secret key's passphrase."
)
PASSPHRASE_FILE = typer.Option("--passphrase-file", help="File whose first line is the passphrase.")
BACKEND = typer.Option("--backend", help="auto: pgpy for small files, GnuPG above 8 MiB.")


def _passphrase(env: str | None, file: Path | None) -> Sensitive[str] | None:
    from cmohub.crypto.keyring import read_passphrase

    return read_passphrase(env=env or DEFAULT_PASSPHRASE_ENV, file=file)


def _backend(choice: BackendChoice) -> Backend | None:
    from cmohub.crypto.openpgp import gnupg_backend, pgpy_backend

    if choice is BackendChoice.PGPY:
        return pgpy_backend()
    if choice is BackendChoice.GNUPG:
        return gnupg_backend()
    return None


@app.command("verify-decrypt")
def verify_decrypt_command(
    file: Annotated[Path, typer.Argument(help="The delivered file (.pgp, .gpg or .asc).")],
    *,
    sender_key: Annotated[Path, typer.Option("--sender-key", help="The sender's public key.")],
    recipient_key: Annotated[Path, typer.Option("--recipient-key", help="Our secret key.")],
    out: Annotated[Path, typer.Option("--out", help="Where the verified plaintext goes.")],
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Pin: the sender key's full fingerprint.")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", min=1, help="Size limit (default 256 MiB).")
    ] = None,
    passphrase_env: Annotated[str | None, PASSPHRASE_ENV] = None,
    passphrase_file: Annotated[Path | None, PASSPHRASE_FILE] = None,
    backend: Annotated[BackendChoice, BACKEND] = BackendChoice.AUTO,
) -> None:
    """Verify the signature and decrypt FILE to OUT; on any failure print the code, write nothing.

    Example:  cmohub pgp verify-decrypt LIMS_20260131.csv.pgp --sender-key borealis.pub.asc \\
                --recipient-key sponsor.sec.asc --passphrase-file pass.txt --out LIMS.csv
    """
    from cmohub.crypto.openpgp import (
        DEFAULT_POLICY,
        load_public_key,
        load_secret_key,
        verify_decrypt,
    )

    sender = load_public_key(sender_key, pinned=fingerprint)
    recipient = load_secret_key(
        recipient_key, passphrase=_passphrase(passphrase_env, passphrase_file)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    verified = verify_decrypt(
        file,
        sender=sender,
        recipient=recipient,
        policy=DEFAULT_POLICY.with_max_bytes(max_bytes),
        out=out,
        backend=_backend(backend),
    )
    signature = verified.signature
    typer.echo(f"verified   signed by {signature.signer} at {signature.signed_at.isoformat()}")
    typer.echo(f"decrypted  {out} ({verified.size} bytes, sha256 {verified.sha256})")


@app.command("sign-encrypt")
def sign_encrypt_command(
    file: Annotated[Path, typer.Argument(help="The file to send.")],
    *,
    signer_key: Annotated[Path, typer.Option("--signer-key", help="Our secret key.")],
    recipient_key: Annotated[
        list[Path], typer.Option("--recipient-key", help="A recipient's public key (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The signed and encrypted file.")],
    passphrase_env: Annotated[str | None, PASSPHRASE_ENV] = None,
    passphrase_file: Annotated[Path | None, PASSPHRASE_FILE] = None,
    compress: Annotated[
        bool | None,
        typer.Option("--compress/--no-compress", help="Default: only if not already compressed."),
    ] = None,
    backend: Annotated[BackendChoice, BACKEND] = BackendChoice.AUTO,
) -> None:
    """Sign FILE (SHA-512) and encrypt it to each recipient with AES-256.

    Example:  cmohub pgp sign-encrypt release.parquet --signer-key sponsor.sec.asc \\
                --recipient-key acme.pub.asc --passphrase-env HUB_PASS --out release.parquet.pgp
    """
    from cmohub.crypto.openpgp import load_public_key, load_secret_key, sign_encrypt

    signer = load_secret_key(signer_key, passphrase=_passphrase(passphrase_env, passphrase_file))
    recipients = [load_public_key(path) for path in recipient_key]
    out.parent.mkdir(parents=True, exist_ok=True)
    sign_encrypt(
        file,
        signer=signer,
        recipients=recipients,
        compress=compress,
        file_name=file.name,
        out=out,
        backend=_backend(backend),
    )
    names = ", ".join(r.fingerprint for r in recipients)
    typer.echo(f"signed by {signer.fingerprint}, encrypted to {names}: {out}")
