"""`cmohub vault`: the README flow, exit codes, and no identifier in any output but reveal's."""

from __future__ import annotations

import io
import sqlite3
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.vault_support import SYSTEM

from cmohub.identifiers import Coi, parse_coi

with warnings.catch_warnings():
    # cmohub.cli imports every command group; the contracts group imports Great Expectations,
    # which imports the stdlib's deprecated sre_constants and sre_parse at import (GX 1.24).
    warnings.filterwarnings(
        "ignore", r"module 'sre_(constants|parse)' is deprecated", DeprecationWarning
    )
    from cmohub.cli import main

CANARY = "CANARY-MRN-CLI-0042"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(cmohub_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    outputs: list[Run] = []

    def run(*argv: str, stdin: str = "") -> Run:
        monkeypatch.setattr(sys, "argv", ["cmohub", *argv])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        result = Run(code, captured.out, captured.err)
        outputs.append(result)
        return result

    run.outputs = outputs  # type: ignore[attr-defined]
    return run


def test_the_readme_flow(cli, cmohub_home: Path) -> None:  # type: ignore[no-untyped-def]
    init = cli("vault", "init", "--privacy-officer", "alice")
    assert init.code == 0 and "vault initialized" in init.out
    for name in ("vault.sqlite", "roles.yaml", "keys/index.v1.key", "keys/kek.v1.key"):
        assert stat.S_IMODE((cmohub_home / name).stat().st_mode) == 0o600, name
    assert "already initialized" in cli("vault", "init").out

    first = cli("vault", "tokenize", "--system", SYSTEM, "--event", "ENR-1", "--actor", "bob",
                stdin=f"{CANARY}\n")  # fmt: skip
    assert first.code == 0
    coi = parse_coi(first.out.strip())
    again = cli("vault", "tokenize", "--system", SYSTEM, "--event", "ENR-1", stdin=f" {CANARY}\n")
    assert parse_coi(again.out.strip()) == coi

    refused = cli("vault", "reveal", str(coi), "--purpose", "AE follow-up", "--ticket", "PV-1",
                  "--actor", "bob", "--allow-pipe")  # fmt: skip
    assert refused.code == 1 and "VAULT_ACCESS_DENIED" in refused.err
    # Into a pipe, without --allow-pipe: who may not re-identify is told that first.
    piped = cli(
        "vault", "reveal", str(coi), "--purpose", "AE", "--ticket", "PV-1", "--actor", "bob"
    )
    assert piped.code == 1 and "VAULT_ACCESS_DENIED" in piped.err
    not_tty = cli(
        "vault", "reveal", str(coi), "--purpose", "AE", "--ticket", "PV-1", "--actor", "alice"
    )
    assert not_tty.code == 1 and "VAULT_REVEAL_NOT_A_TERMINAL" in not_tty.err
    granted = cli("vault", "reveal", str(coi), "--purpose", "AE follow-up", "--ticket", "PV-1",
                  "--actor", "alice", "--allow-pipe")  # fmt: skip
    assert granted.code == 0 and CANARY in granted.out and SYSTEM in granted.out

    assert "rotated v1 -> v2: 1 rows re-indexed" in cli("vault", "rotate", "index").out
    assert "kek key rotated v1 -> v2" in cli("vault", "rotate", "kek").out
    status = cli("vault", "status")
    assert "index v2, kek v2, audit v1" in status.out and "1 active" in status.out
    assert '"index": 2' in cli("vault", "status", "--json").out
    # The COI still reveals after both rotations.
    assert CANARY in cli("vault", "reveal", str(coi), "--purpose", "p", "--ticket", "t",
                         "--actor", "alice", "--allow-pipe").out  # fmt: skip

    verify = cli("vault", "audit", "verify")
    assert verify.code == 0 and verify.out.startswith("intact")
    checkpoint = cli("vault", "audit", "checkpoint")
    assert checkpoint.code == 0 and '"signature"' in checkpoint.out
    csv_report = cli("vault", "audit", "report", "--since", "2000-01-01", "--actor", "alice")
    assert csv_report.code == 0
    lines = csv_report.out.splitlines()
    assert lines[0].startswith("section,seq,time")
    assert sum(",refuse,bob," in line and "VAULT_ACCESS_DENIED" in line for line in lines) == 2
    # The refusal to print into a pipe is an attempt too: audited, with its purpose and ticket.
    assert any(
        ",refuse,alice," in line and ",AE,PV-1," in line and "VAULT_REVEAL_NOT_A_TERMINAL" in line
        for line in lines
    )
    assert sum(",reveal,alice,privacy_officer," in line for line in lines) == 2
    assert sum(line.startswith("keys,") for line in lines) == 2
    assert any(line.startswith("tokenize,") and ",cli," in line for line in lines)
    html = cli("vault", "audit", "report", "--since", "2000-01-01", "--format", "html",
               "-o", str(cmohub_home / "audit.html"))  # fmt: skip
    assert html.code == 0
    page = (cmohub_home / "audit.html").read_text(encoding="utf-8")
    assert "Re-identification" in page and "VAULT_ACCESS_DENIED" in page

    withdrawn = cli(
        "vault", "withdraw", str(coi), "--reason", "consent withdrawn", "--actor", "alice"
    )
    assert withdrawn.code == 0 and "withdrawn" in withdrawn.out
    assert cli("vault", "reveal", str(coi), "--purpose", "p", "--ticket", "t", "--actor", "alice",
               "--allow-pipe").code == 1  # fmt: skip

    printed = [r for r in cli.outputs if CANARY in r.out + r.err]
    assert len(printed) == 2  # the two granted reveals, on stdout, and nothing else
    assert all(r.code == 0 and r.out.startswith("COI ") and CANARY not in r.err for r in printed)
    assert CANARY not in page


def test_tokenize_reads_one_value_from_stdin_only(cli) -> None:  # type: ignore[no-untyped-def]
    cli("vault", "init")
    two = cli("vault", "tokenize", "--system", SYSTEM, stdin=f"{CANARY}\nOTHER\n")
    assert two.code == 1 and "VAULT_IDENTIFIER_INVALID" in two.err
    unknown = cli("vault", "tokenize", "--system", "https://h.example/mrn", stdin=f"{CANARY}\n")
    assert unknown.code == 1 and "VAULT_UNKNOWN_SYSTEM" in unknown.err
    for run in (two, unknown):
        assert CANARY not in run.out + run.err


def test_audit_verify_exit_codes(cli, cmohub_home: Path) -> None:  # type: ignore[no-untyped-def]
    cli("vault", "init")
    for i in range(3):
        cli("vault", "tokenize", "--system", SYSTEM, "--event", f"E{i}", stdin=f"{CANARY}\n")
    assert cli("vault", "audit", "verify").code == 0
    with sqlite3.connect(cmohub_home / "vault.sqlite") as con:
        con.execute("UPDATE vault_audit SET actor = 'mallory' WHERE seq = 3")
    tampered = cli("vault", "audit", "verify")
    assert tampered.code == 1 and "first bad event: 3" in tampered.out
    (cmohub_home / "keys" / "audit.v1.key").rename(cmohub_home / "audit.v1.key.bak")
    missing = cli("vault", "audit", "verify")
    assert missing.code == 2 and "cannot verify" in missing.err
    (cmohub_home / "audit.v1.key.bak").rename(cmohub_home / "keys" / "audit.v1.key")
    (cmohub_home / "vault.sqlite").unlink()
    assert cli("vault", "audit", "verify").code == 2


def test_a_world_readable_key_file_stops_the_vault(cli, cmohub_home: Path) -> None:  # type: ignore[no-untyped-def]
    cli("vault", "init")
    (cmohub_home / "keys" / "index.v1.key").chmod(0o644)
    run = cli("vault", "tokenize", "--system", SYSTEM, stdin=f"{CANARY}\n")
    assert run.code == 1 and "VAULT_KEY_PERMISSIONS" in run.err and "chmod 600" in run.err
    assert CANARY not in run.out + run.err


def test_enroll_imports_the_sponsor_register(cli, cmohub_home: Path) -> None:  # type: ignore[no-untyped-def]
    cli("vault", "init")
    register = cmohub_home / "enrollments.ndjson"
    coi = str(Coi("A9991", "26", "34LT9B"))
    record = (
        '{"therapy_event":"SBX-TE-000001","subject":{"system":"urn:cmohub:sandbox:mrn:A9991",'
        f'"value":"{CANARY}"}},"coi":"{coi}","site":"A9991"}}\n'
    )
    register.write_text(record * 2, encoding="utf-8")
    first = cli("vault", "enroll", str(register))
    assert first.code == 0 and first.out.strip() == "1 enrolled, 1 already in the vault"
    again = cli("vault", "enroll", str(register))
    assert again.out.strip() == "0 enrolled, 2 already in the vault"
    run = cli("vault", "tokenize", "--system", "urn:cmohub:sandbox:mrn:A9991",
              "--event", "SBX-TE-000001", stdin=CANARY)  # fmt: skip
    assert run.out.strip() == coi


def test_backup_prints_where_and_what_it_checked_and_never_an_identifier(  # type: ignore[no-untyped-def]
    cli, cmohub_home: Path, tmp_path: Path
) -> None:
    cli("vault", "init", "--privacy-officer", "alice")
    cli("vault", "tokenize", "--system", SYSTEM, "--event", "ENR-1", stdin=f"{CANARY}\n")
    target = tmp_path / "vault-backup.sqlite"
    made = cli("vault", "backup", str(target), "--actor", "bob")
    assert made.code == 0, made.err
    assert made.out.startswith(f"backup written: {target} (")
    assert "audit log intact" in made.out and "1 active COIs" in made.out
    assert "not in the backup: it needs index v1, kek v1, audit v1" in made.out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    again = cli("vault", "backup", str(target))
    assert again.code == 1 and "VAULT_BACKUP_EXISTS" in again.err
    report = cli("vault", "audit", "report", "--since", "2000-01-01")
    assert any(line.startswith("export,") and ",bob," in line and "database backup" in line
               for line in report.out.splitlines())  # fmt: skip
    assert all(CANARY not in r.out + r.err for r in cli.outputs)
    assert CANARY.encode() not in target.read_bytes()  # sealed, as in the vault


def test_restore_names_what_it_replaced_and_lost_and_never_an_identifier(  # type: ignore[no-untyped-def]
    cli, cmohub_home: Path, tmp_path: Path
) -> None:
    cli("vault", "init", "--privacy-officer", "alice")
    cli("vault", "tokenize", "--system", SYSTEM, "--event", "ENR-1", stdin=f"{CANARY}\n")
    backup = tmp_path / "vault-backup.sqlite"
    assert cli("vault", "backup", str(backup)).code == 0
    later = cli("vault", "tokenize", "--system", SYSTEM, "--event", "ENR-2", stdin=f"{CANARY}\n")
    witness = tmp_path / "checkpoint.json"
    witness.write_text(cli("vault", "audit", "checkpoint").out)
    lost_file = tmp_path / "lost.csv"

    refused = cli("vault", "restore", str(backup))
    assert (
        refused.code == 1 and "VAULT_RESTORE_EXISTS" in refused.err and "--replace" in refused.err
    )
    restored = cli("vault", "restore", str(backup), "--replace", "--witness", str(witness),
                   "--lost-cois", str(lost_file), "--actor", "bob")  # fmt: skip

    assert restored.code == 0, restored.err
    assert restored.out.startswith(f"vault restored: {cmohub_home / 'vault.sqlite'}\n")
    assert "audit log intact (3 events)" in restored.out
    assert "the backup lacks 1 events a witness checkpoint signs" in restored.out
    assert f"moved aside to {cmohub_home / 'vault.sqlite.replaced-'}" in restored.out
    assert "audit log has 1 events after the backup's (tokenize 1)" in restored.out
    assert "1 COIs the replaced vault held are not in the backup" in restored.out
    assert f"{later.out.strip()} (active)" in restored.out
    assert lost_file.read_text() == f"coi,status\n{later.out.strip()},active\n"
    assert stat.S_IMODE(lost_file.stat().st_mode) == 0o600
    assert cli("vault", "audit", "verify").code == 0
    report = cli("vault", "audit", "report", "--since", "2000-01-01")
    assert any(line.startswith("restore,") and ",bob," in line and backup.name in line
               for line in report.out.splitlines())  # fmt: skip
    status = cli("vault", "status")
    (line,) = [line for line in status.out.splitlines() if line.startswith("backups ")]
    assert f"({backup.name}); restored 20" in line and line.endswith(f"from {backup.name}")
    again = cli("vault", "restore", str(backup), "--replace", "--lost-cois", str(lost_file))
    assert again.code == 2 and "--lost-cois" in again.err  # never replaces that file either
    assert all(CANARY not in r.out + r.err for r in cli.outputs)
