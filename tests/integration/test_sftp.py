"""The SFTP source against a real OpenSSH server on a loopback port.

The test starts its own ``sshd`` (Debian package openssh-server) with its own configuration,
host key and authorized_keys, serving SFTP (internal-sftp) on 127.0.0.1, and stops it at the end.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.conftest import need

from cmohub.crypto.keyring import Keyring
from cmohub.errors import SourceError, SourceUnavailable
from cmohub.identity import Actor
from cmohub.pipelines import cmo as pipeline
from cmohub.pipelines.context import RunContext
from cmohub.sandbox.deliver import deliver_program
from cmohub.sandbox.generate import generate_program
from cmohub.sensitive import Sensitive
from cmohub.settings import load_settings
from cmohub.sources.delivery import list_complete, load_cmo_feed
from cmohub.sources.sftp import SftpSettings, SftpSource
from cmohub.vault import open_vault
from cmohub.vault.enrollment import load_enrollments

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Server:
    port: int
    user: str
    root: Path  # the folder the CMO's files are in
    host_key: str  # "ssh-ed25519 AAAA..."
    client_key: str  # OpenSSH private key text
    other_key: str  # a key the server does not accept

    def settings(self, **changes: object) -> SftpSettings:
        base = SftpSettings(
            host="127.0.0.1",
            port=self.port,
            username=self.user,
            host_key=self.host_key,
            private_key=Sensitive(self.client_key),
            timeout_seconds=10,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need(Path(SSHD).exists(), "OpenSSH server (sshd) is not installed")
    need(shutil.which("ssh-keygen") is not None, "ssh-keygen is not installed")
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o700)
    host_public = _keygen(folder / "host_ed25519")
    client_public = _keygen(folder / "client")
    _keygen(folder / "other")
    (folder / "authorized_keys").write_text(client_public + "\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_ed25519'}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"AllowUsers {user}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    if os.getuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = folder / "sshd.log"
    process = subprocess.Popen(
        [SSHD, "-D", "-E", str(log), "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if process.poll() is not None:
                pytest.fail(f"sshd did not start: {log.read_text() if log.exists() else ''}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        root = folder / "outbound"
        root.mkdir()
        yield Server(
            port=port,
            user=user,
            root=root,
            host_key=" ".join(host_public.split()[:2]),
            client_key=(folder / "client").read_text(),
            other_key=(folder / "other").read_text(),
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def remote(sshd: Server, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    folder = sshd.root / tmp_path.name
    folder.mkdir()
    yield sshd, folder
    shutil.rmtree(folder, ignore_errors=True)


def test_key_authentication_listing_download_and_upload(remote: tuple[Server, Path]) -> None:
    server, folder = remote
    (folder / "2026-01-20").mkdir()
    (folder / "2026-01-20" / "LIMS_20260120.csv.pgp").write_bytes(b"\x85" * 1000)
    source = SftpSource(server.settings(), str(folder))
    try:
        listed = source.list_files()
        assert [(f.path, f.size) for f in listed] == [("2026-01-20/LIMS_20260120.csv.pgp", 1000)]
        assert source.read(listed[0].path, max_bytes=1000) == b"\x85" * 1000
        with pytest.raises(SourceError) as caught:
            source.read(listed[0].path, max_bytes=999)
        assert caught.value.code == "FILE_TOO_LARGE"
        source.upload("2026-01-21/EM_20260121.csv.pgp", b"data")
        assert (folder / "2026-01-21" / "EM_20260121.csv.pgp").read_bytes() == b"data"
        assert not (folder / "2026-01-21" / "EM_20260121.csv.pgp.part").exists()
        with pytest.raises(SourceError) as caught:
            source.read("../../etc/shadow", max_bytes=100)
        assert caught.value.code == "SOURCE_PATH_INVALID"
    finally:
        source.close()


def test_a_server_with_another_host_key_is_refused(
    remote: tuple[Server, Path], tmp_path: Path
) -> None:
    server, folder = remote
    impostor = _keygen(tmp_path / "impostor")
    with pytest.raises(SourceError) as caught:
        SftpSource(server.settings(host_key=" ".join(impostor.split()[:2])), str(folder))
    assert caught.value.code == "SFTP_HOST_KEY_MISMATCH"


def test_a_key_the_server_does_not_accept_is_refused(remote: tuple[Server, Path]) -> None:
    server, folder = remote
    with pytest.raises(SourceError) as caught:
        SftpSource(server.settings(private_key=Sensitive(server.other_key)), str(folder))
    assert caught.value.code == "SFTP_AUTH_FAILED"


def test_a_server_that_is_down_is_a_transient_error(sshd: Server) -> None:
    with pytest.raises(SourceUnavailable):
        SftpSource(sshd.settings(port=_free_port()), "/")


def test_an_upload_in_progress_is_not_taken(remote: tuple[Server, Path]) -> None:
    server, folder = remote
    growing = folder / "BPR_BOR2600001.xml.pgp"
    growing.write_bytes(b"x" * 100)
    (folder / "RELEASE_20260203.csv.pgp.part").write_bytes(b"y" * 10)
    source = SftpSource(server.settings(), str(folder))
    try:

        def upload_continues(_: float) -> None:
            with growing.open("ab") as handle:
                handle.write(b"more")

        assert list_complete(source, settle_seconds=1.0, sleep=upload_continues) == []
        done = list_complete(source, settle_seconds=1.0, sleep=lambda _: None)
        assert [f.path for f in done] == ["BPR_BOR2600001.xml.pgp"]
    finally:
        source.close()


def test_a_cmo_feed_runs_over_sftp(
    remote: tuple[Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, folder = remote
    program = tmp_path / "program"
    generate_program(program, patients=6, days=4, seed=5, start=date(2026, 1, 5))
    home = tmp_path / "home"
    settings = load_settings(home=home)
    uploader = SftpSource(server.settings(), str(folder))
    try:
        summary = deliver_program(
            program,
            keyring=Keyring.for_settings(settings),
            uploads={"cmo_acme": uploader.upload},
            feeds=["cmo_acme"],
        )
    finally:
        uploader.close()
    config = load_cmo_feed("cmo_acme")
    over_sftp = dataclasses.replace(
        config,
        options=config.options.model_copy(
            update={"transport": "sftp", "remote_dir": str(folder), "settle_seconds": 0.5}
        ),
    )
    monkeypatch.setattr(pipeline, "load_cmo_feed", lambda name: over_sftp)
    endpoint = SimpleNamespace(  # what cmohub.airflow.connections.get_endpoint returns
        conn_id="cmohub_sftp_a9996",
        host="127.0.0.1",
        port=server.port,
        login=server.user,
        password=None,
        extra={"private_key": server.client_key, "host_key": server.host_key},
    )
    actor = Actor("sftp-test", "service")
    vault = open_vault(settings, initialize=True)
    vault.init(actor=actor)
    enrollments = (program / "sponsor" / "enrollments.ndjson").read_text().splitlines()
    vault.enroll_many(load_enrollments(enrollments), actor=actor)
    context = RunContext.for_interval(
        "cmo_acme",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
        run_id="sftp__1",
        settings=settings,
    )
    result = pipeline.ingest_cmo_feed(context, feed="cmo_acme", sftp=endpoint, port=vault)
    assert result["fetch"]["fetched"] == summary.files["cmo_acme"]
    assert result["verify"]["rejected"] == {}
    assert result["stage"]["staged"]["manufacturing.batch"] >= 1
    assert result["stage"]["received"] == (
        result["stage"]["valid"] + result["stage"]["quarantined"] + result["stage"]["duplicates"]
    )
    again = pipeline.ingest_cmo_feed(
        dataclasses.replace(context, run_id="sftp__2"), feed="cmo_acme", sftp=endpoint, port=vault
    )
    assert again["fetch"]["fetched"] == 0  # nothing downloaded twice
