"""The sandbox FHIR server and the clients that talk to it: search with paging and
_lastUpdated, _include of subjects, faults, bearer and SMART Backend Services auth (token
cached until expiry), and Bulk Data $export with polling and resume."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cmohub.errors import ConfigError, SourceError, SourceUnavailable
from cmohub.sandbox.servers.base import FaultPlan
from cmohub.sandbox.servers.fhir import FhirSandboxServer
from cmohub.sensitive import Sensitive
from cmohub.sources.auth import BearerAuth, SmartBackendAuth, auth_for, signing_algorithm
from cmohub.sources.fhir import FhirClient, RetryPolicy, SearchWindow
from cmohub.sources.fhir_bulk import BulkExport, MemoryStateStore

UNTIL = datetime(2026, 12, 31, tzinfo=UTC)


def pem_pair(kind: str = "rsa") -> tuple[str, str]:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
def server(sandbox_program: Path) -> Iterator[FhirSandboxServer]:
    with FhirSandboxServer(sandbox_program, export_retry_after=0).running() as running:
        yield running


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(server: FhirSandboxServer, auth: httpx.Auth | None = None) -> FhirClient:
    http = httpx.Client(auth=auth, timeout=10)
    _OPEN.append(http)
    return FhirClient(
        http, server.fhir_base, retry=RetryPolicy.for_fhir(sleep=lambda seconds: None)
    )


def count_matches(pages: list, resource_type: str) -> int:  # type: ignore[type-arg]
    return sum(
        1
        for p in pages
        for e in p.payload.entries
        if e.resource_type == resource_type and e.mode == "match"
    )


def test_search_pages_and_includes_every_subject(server: FhirSandboxServer) -> None:
    fhir = client(server)
    window = SearchWindow(None, UNTIL)
    pages = list(fhir.search("Specimen", window.params(count=7, include=["Specimen:subject"])))
    assert len(pages) == 6  # 40 specimens, 7 per page
    assert count_matches(pages, "Specimen") == 40
    for page in pages:
        subjects = {
            e.resource["subject"]["reference"] for e in page.payload.entries if e.mode == "match"
        }  # type: ignore[index]
        included = {
            f"Patient/{e.resource['id']}" for e in page.payload.entries if e.mode == "include"
        }  # type: ignore[index]
        assert subjects == included
        assert all(
            e.full_url and e.full_url.startswith(server.fhir_base) for e in page.payload.entries
        )


def test_last_updated_bounds_select_and_repeat(server: FhirSandboxServer) -> None:
    fhir = client(server)
    everything = list(fhir.search("Procedure", SearchWindow(None, UNTIL).params()))
    stamps = sorted(
        e.resource["meta"]["lastUpdated"]  # type: ignore[index]
        for p in everything
        for e in p.payload.entries
    )
    middle = datetime.fromisoformat(stamps[len(stamps) // 2].replace("Z", "+00:00"))
    early = SearchWindow(None, middle)
    late = SearchWindow(middle, UNTIL)
    first = count_matches(list(fhir.search("Procedure", early.params())), "Procedure")
    second = count_matches(list(fhir.search("Procedure", late.params())), "Procedure")
    assert first + second == len(stamps) and 0 < first < len(stamps)
    again = count_matches(list(fhir.search("Procedure", early.params())), "Procedure")
    assert again == first


def test_faults_are_survived(sandbox_program: Path) -> None:
    faults = FaultPlan(
        rate_limit_every=3,
        retry_after_seconds=0,
        unavailable_every=5,
        slow_every=4,
        slow_seconds=0.05,
        malformed_paths={"/r4/ServiceRequest"},
    )
    with FhirSandboxServer(sandbox_program, faults=faults).running() as server:
        fhir = client(server)
        pages = list(fhir.search("ServiceRequest", SearchWindow(None, UNTIL).params(count=10)))
        assert count_matches(pages, "ServiceRequest") == 28
        assert server.stats.faults.get("malformed") == 1
        assert fhir.retries.get("malformed") == 1 and fhir.retries.get("429", 0) >= 1


def test_an_unknown_resource_type_is_a_typed_error(server: FhirSandboxServer) -> None:
    with pytest.raises(SourceError) as raised:
        list(client(server).search("foo", []))
    assert raised.value.code == "SOURCE_FHIR_NOT_FOUND"


def test_bearer_auth(sandbox_program: Path) -> None:
    with FhirSandboxServer(
        sandbox_program, auth="bearer", bearer_token="t0ken"
    ).running() as server:
        with pytest.raises(SourceError) as raised:
            list(client(server).search("Procedure", []))
        assert raised.value.code == "SOURCE_FHIR_AUTH"
        pages = list(client(server, BearerAuth(Sensitive("t0ken"))).search("Procedure", []))
        assert count_matches(pages, "Procedure") == 41


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_smart_backend_services_token_is_cached_until_expiry(
    sandbox_program: Path, kind: str
) -> None:
    private, public = pem_pair(kind)
    now = [datetime.now(UTC)]  # the server checks the assertion's expiry on its own clock
    with FhirSandboxServer(
        sandbox_program, auth="smart", smart_clients={"cmohub-client": public}, token_lifetime=300
    ).running() as server:
        auth = SmartBackendAuth(
            token_url=server.token_url,
            client_id="cmohub-client",
            private_key_pem=Sensitive(private),
            key_id="k1",
            clock=lambda: now[0],
        )
        fhir = client(server, auth)
        for _ in range(3):
            list(fhir.search("ServiceRequest", []))
        assert auth.tokens_issued == 1 and server.tokens_issued == 1
        now[0] += timedelta(seconds=280)  # within the expiry margin: a new token
        list(fhir.search("ServiceRequest", []))
        assert auth.tokens_issued == 2
        server.revoke_tokens()
        list(fhir.search("ServiceRequest", []))  # 401 -> one new token -> retried
        assert auth.tokens_issued == 3


def test_the_client_assertion_is_what_smart_asks_for() -> None:
    private, public = pem_pair("rsa")
    auth = SmartBackendAuth(
        token_url="https://auth.invalid/token",
        client_id="c1",
        private_key_pem=Sensitive(private),
        key_id="kid-1",
        clock=lambda: datetime(2026, 3, 1, tzinfo=UTC),
        new_jti=lambda: "jti-1",
    )
    token = auth.client_assertion()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS384" and header["kid"] == "kid-1"
    claims = jwt.decode(
        token,
        public,
        algorithms=["RS384"],
        audience="https://auth.invalid/token",
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "c1" and claims["jti"] == "jti-1"
    assert claims["exp"] - claims["iat"] == 300
    assert "private" not in repr(auth).lower() or "BEGIN" not in repr(auth)


def test_a_refused_client_is_a_typed_error(sandbox_program: Path) -> None:
    private, _ = pem_pair("rsa")
    _, other_public = pem_pair("rsa")
    with FhirSandboxServer(
        sandbox_program, auth="smart", smart_clients={"c": other_public}
    ).running() as server:
        auth = SmartBackendAuth(
            token_url=server.token_url,
            client_id="c",
            private_key_pem=Sensitive(private),
        )
        with pytest.raises(SourceError) as raised:
            list(client(server, auth).search("Procedure", []))
    assert raised.value.code == "SOURCE_AUTH_FAILED"


def test_auth_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        signing_algorithm(Sensitive("not a key"))
    with pytest.raises(ConfigError):
        auth_for(mode="bearer", base_url="x", login=None, password=None, extra={})
    with pytest.raises(ConfigError):
        auth_for(mode="kerberos", base_url="x", login=None, password=None, extra={})
    assert auth_for(mode="none", base_url="x", login=None, password=None, extra={}) is None


def test_bulk_export_polls_downloads_and_resumes(sandbox_program: Path) -> None:
    with FhirSandboxServer(
        sandbox_program, export_polls=3, export_retry_after=0
    ).running() as server:
        fhir = client(server)
        store = MemoryStateStore()
        interrupted = BulkExport(fhir, store, max_polls=2)
        interrupted.kick_off(["Patient", "Specimen"], None)
        with pytest.raises(SourceUnavailable) as pending:
            interrupted.wait()
        assert pending.value.code == "SOURCE_BULK_PENDING" and pending.value.retryable
        resumed = BulkExport(fhir, store)
        assert resumed.kick_off(["Patient", "Specimen"], None) == interrupted.state.status_url
        files = list(resumed.files())
        assert {f.resource_type: len((f.data or b"").splitlines()) for f in files} == {
            "Patient": 40,
            "Specimen": 40,
        }
        resumed.mark_downloaded(files[0].url, "a" * 64)
        again = BulkExport(fhir, store)
        kept = [f for f in again.files(have=lambda url, sha: sha == "a" * 64) if f.data is None]
        assert [f.url for f in kept] == [files[0].url]
        kick_offs = [p for p in server.stats.paths if p.endswith("/$export")]
        assert len(kick_offs) == 1
        again.finish()


def test_bulk_since_limits_the_files(sandbox_program: Path) -> None:
    with FhirSandboxServer(sandbox_program, export_polls=0).running() as server:
        export = BulkExport(client(server), MemoryStateStore())
        export.kick_off(["Procedure"], datetime(2030, 1, 1, tzinfo=UTC))
        assert list(export.files()) == []


def test_retry_policy_defaults_are_bounded() -> None:
    policy = RetryPolicy.for_fhir()
    assert policy.attempts >= 2 and policy.max_wait_seconds <= 300
