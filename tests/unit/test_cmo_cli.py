"""``cmohub keys``, ``cmohub pgp`` and ``cmohub cmo`` as a person runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PASSPHRASE = "a passphrase that never appears on a command line"


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "CMOHUB_HOME": str(home), **(env or {})},
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A protected hub key and an unprotected CMO key, made through the CLI."""
    folder = tmp_path_factory.mktemp("keys")
    home = folder / "home"
    made = run_cli(
        "keys", "generate", "--name", "Hub", "--email", "hub@sandbox.invalid", "--out",
        str(folder), "--passphrase-env", "HUB_PASS", home=home, env={"HUB_PASS": PASSPHRASE},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "fingerprint" in made.stdout and PASSPHRASE not in made.stdout
    made = run_cli(
        "keys", "generate", "--name", "Acme exchange", "--email", "x@acme.invalid",
        "--out", str(folder), home=home,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (folder / "pass.txt").write_text(PASSPHRASE + "\n")
    return folder


def test_generated_secret_keys_are_private_and_protected(keys: Path) -> None:
    secret = keys / "hub.sec.asc"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert (keys / "hub.pub.asc").read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK")
    assert PASSPHRASE.encode() not in secret.read_bytes()


def test_sign_encrypt_then_verify_decrypt_round_trips(keys: Path, tmp_path: Path) -> None:
    source = tmp_path / "RELEASE_20260203.csv"
    source.write_bytes(b"BatchRef;COI;Decision\nBOR2600101;CHA999926BX0001F;RELEASED\n")
    sent = run_cli(
        "pgp", "sign-encrypt", str(source), "--signer-key", str(keys / "acme-exchange.sec.asc"),
        "--recipient-key", str(keys / "hub.pub.asc"), "--out", str(tmp_path / "r.pgp"),
        home=tmp_path / "home",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    out = tmp_path / "plain" / "release.csv"
    opened = run_cli(
        "pgp", "verify-decrypt", str(tmp_path / "r.pgp"),
        "--sender-key", str(keys / "acme-exchange.pub.asc"),
        "--recipient-key", str(keys / "hub.sec.asc"),
        "--passphrase-file", str(keys / "pass.txt"), "--out", str(out),
        home=tmp_path / "home",
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    assert out.read_bytes() == source.read_bytes()
    assert "verified" in opened.stdout


def test_a_tampered_file_prints_its_code_and_writes_nothing(keys: Path, tmp_path: Path) -> None:
    source = tmp_path / "LIMS.csv"
    source.write_bytes(b"a;b\n" * 500)
    message = tmp_path / "LIMS.csv.pgp"
    sent = run_cli(
        "pgp", "sign-encrypt", str(source), "--signer-key", str(keys / "acme-exchange.sec.asc"),
        "--recipient-key", str(keys / "hub.pub.asc"), "--out", str(message), "--no-compress",
        home=tmp_path / "home",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    data = bytearray(message.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF
    message.write_bytes(bytes(data))
    out = tmp_path / "out" / "LIMS.csv"
    opened = run_cli(
        "pgp", "verify-decrypt", str(message), "--sender-key", str(keys / "acme-exchange.pub.asc"),
        "--recipient-key", str(keys / "hub.sec.asc"), "--out", str(out),
        home=tmp_path / "home", env={"CMOHUB_OPENPGP_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert opened.returncode == 1
    assert "CRYPTO_TAMPERED" in opened.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_wrong_pin_or_passphrase_is_refused(keys: Path, tmp_path: Path) -> None:
    common = [
        "pgp", "verify-decrypt", str(tmp_path / "x.pgp"),
        "--sender-key", str(keys / "acme-exchange.pub.asc"),
        "--recipient-key", str(keys / "hub.sec.asc"), "--out", str(tmp_path / "x"),
    ]  # fmt: skip
    (tmp_path / "x.pgp").write_bytes(b"\x85\x01\x00")
    pinned = run_cli(*common, "--fingerprint", "0" * 40, home=tmp_path / "home")
    assert pinned.returncode == 1 and "CRYPTO_PIN_MISMATCH" in pinned.stderr
    unlocked = run_cli(*common, home=tmp_path / "home")  # no passphrase anywhere
    assert unlocked.returncode == 1 and "CRYPTO_PASSPHRASE" in unlocked.stderr
    argv = run_cli(*common, "--passphrase", PASSPHRASE, home=tmp_path / "home")
    assert argv.returncode == 2  # there is no option that takes a passphrase on argv


def test_sandbox_deliveries_ingested_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    program = tmp_path / "sbx"
    steps = [
        ("sandbox", "generate", "--patients", "6", "--days", "4", "--out", str(program)),
        ("cmo", "sandbox-deliver", "--program", str(program), "--feed", "cmo_acme"),
        ("vault", "init"),
        ("vault", "enroll", str(program / "sponsor" / "enrollments.ndjson")),
    ]
    for step in steps:
        done = run_cli(*step, home=home)
        assert done.returncode == 0, (step, done.stderr)
    listed = run_cli("cmo", "feeds", home=home)
    assert "cmo_acme" in listed.stdout and "ACME_LIMS_*.csv" in listed.stdout
    ingested = run_cli("cmo", "ingest", "cmo_acme", "--since", "2026-01-01", "--until",
                       "2027-01-01", home=home)  # fmt: skip
    assert ingested.returncode == 0, ingested.stderr
    assert "staged    manufacturing.batch" in ingested.stdout
    assert "received =" in ingested.stdout and "ledger    runs/" in ingested.stdout
    keys = run_cli("keys", "list", home=home)
    assert "cmo_acme" in keys.stdout and "hub" in keys.stdout
