from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import pytest

from cmohub.errors import CryptoError
from cmohub.publish.release import MANIFEST, SIGNATURE, ReleaseFile, verify_release, write_release

KEY = b"test-signing-key"


class HmacSigner:
    """A stand-in for the sponsor's OpenPGP key (the real one is tested with GnuPG)."""

    fingerprint = "TEST"

    def sign_detached(self, data: bytes) -> bytes:
        return hmac.new(KEY, data, hashlib.sha256).hexdigest().encode()

    def verify_detached(self, data: bytes, signature: bytes) -> None:
        if not hmac.compare_digest(self.sign_detached(data), signature):
            raise CryptoError("bad signature", code="CRYPTO_SIGNATURE_INVALID")


def files(version: str = "a") -> list[ReleaseFile]:
    return [
        ReleaseFile(
            "datasets/exceptions.parquet",
            f"PAR1-{version}".encode(),
            rows=3,
            dataset="exceptions",
            contract_version="1.0.0",
        ),
        ReleaseFile("report/index.html", b"<html></html>"),
    ]


HEADER = {"interval": {"start": "2026-03-01T00:00:00+00:00", "end": "2026-03-02T00:00:00+00:00"}}


def test_release_verifies_and_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    first = write_release(tmp_path / "a", "2026-03-01", files(), HEADER, HmacSigner())
    second = write_release(tmp_path / "b", "2026-03-01", files(), HEADER, HmacSigner())
    assert first.manifest_sha256 == second.manifest_sha256
    assert (first.path / SIGNATURE).read_bytes() == (second.path / SIGNATURE).read_bytes()
    result = verify_release(first.path, HmacSigner())
    assert result.ok and result.checked_files == 2
    assert result.manifest["files"][0]["rows"] == 3


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (
            lambda d: (d / "report/index.html").write_bytes(b"<html>changed</html>"),
            "PUBLISH_HASH_MISMATCH",
        ),
        (lambda d: (d / "report/index.html").unlink(), "PUBLISH_FILE_MISSING"),
        (lambda d: (d / "datasets/extra.parquet").write_bytes(b"x"), "PUBLISH_FILE_UNLISTED"),
        (
            lambda d: (d / MANIFEST).write_bytes(
                (d / MANIFEST).read_bytes().replace(b'"rows": 3', b'"rows": 4')
            ),
            "CRYPTO_SIGNATURE_INVALID",
        ),
        (lambda d: (d / SIGNATURE).unlink(), "PUBLISH_SIGNATURE_MISSING"),
        (lambda d: (d / MANIFEST).unlink(), "PUBLISH_MANIFEST_MISSING"),
    ],
)
def test_every_kind_of_tampering_is_named(tmp_path: Path, tamper: object, code: str) -> None:
    release = write_release(tmp_path, "2026-03-01", files(), HEADER, HmacSigner()).path
    tamper(release)  # type: ignore[operator]
    result = verify_release(release, HmacSigner())
    assert not result.ok
    assert result.failure is not None and result.failure.startswith(code)


def test_a_rerun_replaces_the_release_whole(tmp_path: Path) -> None:
    write_release(tmp_path, "2026-03-01", files("a"), HEADER, HmacSigner())
    again = write_release(tmp_path, "2026-03-01", files("b"), HEADER, HmacSigner())
    assert again.replaced
    assert (again.path / "datasets/exceptions.parquet").read_bytes() == b"PAR1-b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-03-01"]


KILLER = """
import os, signal, sys
from pathlib import Path
from cmohub.publish.release import ReleaseFile, write_release
files = [ReleaseFile("datasets/exceptions.parquet", b"PAR1-new", rows=9)]
write_release(Path(sys.argv[1]), "2026-03-01", files, {}, None,
              before_visible=lambda staging: os.kill(os.getpid(), signal.SIGKILL))
"""


def run_killed(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(root)], check=False, capture_output=True
    )
    assert (
        result.returncode == -9
    )  # killed at the worst moment: everything written, nothing visible


def test_a_run_killed_while_publishing_leaves_no_partial_release(tmp_path: Path) -> None:
    run_killed(tmp_path)
    assert not (tmp_path / "2026-03-01").exists()
    write_release(tmp_path, "2026-03-01", files("a"), HEADER, HmacSigner())
    run_killed(tmp_path)
    assert verify_release(tmp_path / "2026-03-01", HmacSigner()).ok  # the previous release stands
    assert (tmp_path / "2026-03-01/datasets/exceptions.parquet").read_bytes() == b"PAR1-a"
    write_release(tmp_path, "2026-03-01", files("b"), HEADER, HmacSigner())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging cleaned up
