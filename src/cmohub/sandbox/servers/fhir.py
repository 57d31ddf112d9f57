"""A FHIR R4 server on loopback serving a generated program's ``clinical/fhir/*.ndjson``.

What it speaks (enough for the hub's FHIR source, and no more):

================================================ ==============================================
``GET  /r4/metadata``                            a CapabilityStatement (no auth)
``GET  /r4/.well-known/smart-configuration``     SMART discovery: the token endpoint (no auth)
``POST /auth/token``                             SMART Backend Services: a signed JWT client
                                                 assertion (RS384/ES384) for an access token
``GET  /r4/<Type>``                              search: ``_lastUpdated`` (ge/gt/le/lt/eq,
                                                 repeatable), ``_id``, ``_count``,
                                                 ``_include=<Type>:subject|patient``; paged
                                                 with ``link[next]`` under its own base URL
``GET  /r4/<Type>/<id>``                         read
``GET  /r4/$export``                             Bulk Data kick-off (``_type``, ``_since``):
                                                 202 + Content-Location
``GET  /r4/$export-status/<job>``                202 with Retry-After and X-Progress for
                                                 ``export_polls`` polls, then the manifest
``GET  /r4/$export-files/<job>/<Type>.ndjson``   NDJSON output
``DELETE /r4/$export-status/<job>``              forget the job
================================================ ==============================================

Authentication (``auth``): ``none``; ``bearer`` (a fixed token); ``smart`` (tokens issued by
``/auth/token`` to registered clients, expiring after ``token_lifetime`` seconds). Requests
without a valid token get 401 with an OperationOutcome.

Faults come from :class:`~cmohub.sandbox.servers.base.FaultPlan`: every Nth request 429 with
Retry-After, every Mth 503, slow answers, and paths whose first answer is cut in half (a
malformed page). The resources are served as the generator wrote them, in file order.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt

from cmohub.sandbox.servers.base import FaultPlan, LoopbackServer, Request, Response

FHIR_JSON = "application/fhir+json"
BASE_PATH = "/r4"
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.+)$")
_INCLUDE_TARGETS = {"subject", "patient"}
CLOCK_SKEW_SECONDS = 300  # tolerated difference between a client's clock and ours


def outcome(code: str, diagnostics: str, status: int, **headers: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return Response.json(body, status=status, **headers)


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _matches(last_updated: datetime, filters: list[tuple[str, datetime]]) -> bool:
    for prefix, bound in filters:
        if prefix == "ge" and not last_updated >= bound:
            return False
        if prefix == "gt" and not last_updated > bound:
            return False
        if prefix == "le" and not last_updated <= bound:
            return False
        if prefix == "lt" and not last_updated < bound:
            return False
        if prefix in ("eq", "") and last_updated != bound:
            return False
    return True


@dataclass
class _Stored:
    line: bytes
    resource: dict[str, Any]
    last_updated: datetime | None


@dataclass
class _Job:
    types: list[str]
    since: datetime | None
    polls_left: int


class FhirSandboxServer(LoopbackServer):
    """The sandbox program's clinical platform, as a FHIR R4 REST server on 127.0.0.1."""

    def __init__(
        self,
        program: Path,
        *,
        faults: FaultPlan | None = None,
        auth: str = "none",
        bearer_token: str | None = None,
        smart_clients: Mapping[str, str] | None = None,
        token_lifetime: int = 300,
        export_polls: int = 2,
        export_retry_after: int = 1,
        default_count: int = 100,
    ) -> None:
        super().__init__(faults)
        if auth not in ("none", "bearer", "smart"):
            raise ValueError("auth must be none, bearer or smart")
        self.program = Path(program)
        self.auth = auth
        self.bearer_token = bearer_token or "sandbox-bearer-token"
        self.smart_clients = dict(smart_clients or {})
        self.token_lifetime = token_lifetime
        self.export_polls = export_polls
        self.export_retry_after = export_retry_after
        self.default_count = default_count
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic seconds)
        self._jobs: dict[str, _Job] = {}
        self._job_counter = 0
        self._state = threading.Lock()
        self._resources: dict[str, list[_Stored]] = {}
        self._by_id: dict[str, dict[str, _Stored]] = {}
        self._load()
        self._routes_for_fhir()

    # --- data ------------------------------------------------------------------------------

    def _load(self) -> None:
        folder = self.program / "clinical" / "fhir"
        if not folder.is_dir():
            raise FileNotFoundError(f"no clinical/fhir folder in {self.program}")
        for path in sorted(folder.glob("*.ndjson")):
            stored: list[_Stored] = []
            for line in path.read_bytes().splitlines():
                if not line.strip():
                    continue
                resource = json.loads(line)
                meta = resource.get("meta") or {}
                updated = meta.get("lastUpdated")
                stored.append(_Stored(line, resource, _instant(updated) if updated else None))
            self._resources[path.stem] = stored
            self._by_id[path.stem] = {
                str(s.resource.get("id")): s for s in stored if s.resource.get("id")
            }

    def start(self) -> FhirSandboxServer:
        super().start()
        return self

    @contextmanager
    def running(self) -> Iterator[FhirSandboxServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}{BASE_PATH}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/token"

    # --- auth ------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> Response | None:
        if self.auth == "none":
            return None
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if self.auth == "bearer" and token == self.bearer_token:
            return None
        if self.auth == "smart":
            with self._state:
                expiry = self._tokens.get(token)
            if expiry is not None and time.monotonic() < expiry:
                return None
        return outcome("login", "a valid bearer token is required", 401)

    def _token(self, request: Request) -> Response:
        if self.auth != "smart":
            return outcome("not-supported", "this server does not issue tokens", 404)
        form = {k: v[0] for k, v in parse_qs(request.body.decode("ascii", "replace")).items()}
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return Response.json({"error": "invalid_request"}, status=400)
        assertion = form.get("client_assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            client_id = str(unverified.get("iss"))
            key = self.smart_clients[client_id]
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS384", "ES384"],
                audience=self.token_url,
                issuer=client_id,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "jti", "sub"]},
            )
        except (jwt.PyJWTError, KeyError):
            return Response.json({"error": "invalid_client"}, status=401)
        if claims.get("sub") != client_id:
            return Response.json({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(24)
        with self._state:
            self._tokens[token] = time.monotonic() + self.token_lifetime
            self.tokens_issued += 1
        return Response.json(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_lifetime,
                "scope": form.get("scope", "system/*.rs"),
            }
        )

    def revoke_tokens(self) -> None:
        """Forget every issued token (tests: a token the server no longer knows)."""
        with self._state:
            self._tokens.clear()

    # --- routes ----------------------------------------------------------------------------

    def _routes_for_fhir(self) -> None:
        base = re.escape(BASE_PATH)
        self.route("GET", f"{base}/metadata")(lambda r, m: self._metadata())
        self.route("GET", f"{base}/.well-known/smart-configuration")(
            lambda r, m: self._smart_configuration()
        )
        self.route("POST", "/auth/token")(lambda r, m: self._token(r))
        self.route("GET", rf"{base}/\$export")(self._guard(self._kick_off))
        self.route("GET", rf"{base}/\$export-status/(?P<job>[A-Za-z0-9-]+)")(
            self._guard(self._status)
        )
        self.route("DELETE", rf"{base}/\$export-status/(?P<job>[A-Za-z0-9-]+)")(
            self._guard(self._delete)
        )
        self.route(
            "GET", rf"{base}/\$export-files/(?P<job>[A-Za-z0-9-]+)/(?P<type>[A-Za-z]+)\.ndjson"
        )(self._guard(self._file))
        self.route("GET", rf"{base}/(?P<type>[A-Za-z]+)")(self._guard(self._search))
        self.route("GET", rf"{base}/(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9.-]+)")(
            self._guard(self._read)
        )

    def _guard(self, handler: Any) -> Any:
        def guarded(request: Request, match: re.Match[str]) -> Response:
            refused = self._authorized(request)
            return refused if refused is not None else handler(request, match)

        return guarded

    def _metadata(self) -> Response:
        return Response.json(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                            for t in sorted(self._resources)
                        ],
                    }
                ],
            }
        )

    def _smart_configuration(self) -> Response:
        return Response.json(
            {
                "token_endpoint": self.token_url,
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "scopes_supported": ["system/*.rs", "system/*.read"],
            }
        )

    # --- search and read -------------------------------------------------------------------

    def _filters(self, request: Request) -> list[tuple[str, datetime]] | Response:
        filters = []
        for value in request.query.get("_lastUpdated", []):
            match = _PREFIX.match(value)
            if match is None:
                return outcome("invalid", "_lastUpdated is not a date", 400)
            try:
                filters.append((match[1] or "", _instant(match[2])))
            except ValueError:
                return outcome("invalid", "_lastUpdated is not a date", 400)
        return filters

    def _search(self, request: Request, match: re.Match[str]) -> Response:
        resource_type = match["type"]
        if not resource_type[0].isupper():
            return outcome("not-supported", "unknown resource type", 404)
        stored = self._resources.get(resource_type, [])
        filters = self._filters(request)
        if isinstance(filters, Response):
            return filters
        ids = {i for v in request.query.get("_id", []) for i in v.split(",") if i}
        selected = [
            s
            for s in stored
            if (not ids or str(s.resource.get("id")) in ids)
            and (s.last_updated is None or _matches(s.last_updated, filters))
        ]
        try:
            count = min(int(request.arg("_count") or self.default_count), 1000)
            page = max(int(request.arg("_page") or 1), 1)
        except ValueError:
            return outcome("invalid", "_count and _page must be numbers", 400)
        count = max(count, 1)
        chunk = selected[(page - 1) * count : page * count]
        includes = self._includes(resource_type, chunk, request.query.get("_include", []))
        base = self.fhir_base
        query = [
            (k, v) for k, values in sorted(request.query.items()) if k != "_page" for v in values
        ]

        def page_url(number: int) -> str:
            return f"{base}/{resource_type}?{urlencode([*query, ('_page', str(number))])}"

        links = [{"relation": "self", "url": page_url(page)}]
        if page * count < len(selected):
            links.append({"relation": "next", "url": page_url(page + 1)})
        entries = [
            {
                "fullUrl": f"{base}/{resource_type}/{s.resource.get('id')}",
                "resource": s.resource,
                "search": {"mode": "match"},
            }
            for s in chunk
        ] + [
            {
                "fullUrl": f"{base}/Patient/{p.resource.get('id')}",
                "resource": p.resource,
                "search": {"mode": "include"},
            }
            for p in includes
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(selected),
            "link": links,
            "entry": entries,
        }
        return Response(
            200, json.dumps(bundle, separators=(",", ":")).encode(), {"Content-Type": FHIR_JSON}
        )

    def _includes(
        self, resource_type: str, chunk: list[_Stored], wanted: list[str]
    ) -> list[_Stored]:
        targets = set()
        for value in wanted:
            source, _, element = value.partition(":")
            if source == resource_type and element in _INCLUDE_TARGETS:
                targets.add(element)
        if not targets:
            return []
        patients = self._by_id.get("Patient", {})
        seen: dict[str, _Stored] = {}
        for item in chunk:
            subject = item.resource.get("subject") or {}
            reference = subject.get("reference") if isinstance(subject, dict) else None
            if isinstance(reference, str) and reference.startswith("Patient/"):
                patient = patients.get(reference.split("/", 1)[1])
                if patient is not None:
                    seen.setdefault(reference, patient)
        return list(seen.values())

    def _read(self, request: Request, match: re.Match[str]) -> Response:
        stored = self._by_id.get(match["type"], {}).get(match["id"])
        if stored is None:
            return outcome("not-found", "no such resource", 404)
        return Response(200, stored.line, {"Content-Type": FHIR_JSON})

    # --- bulk export -----------------------------------------------------------------------

    def _kick_off(self, request: Request, match: re.Match[str]) -> Response:
        if "respond-async" not in request.headers.get("prefer", ""):
            return outcome("invalid", "Prefer: respond-async is required", 400)
        types = [t for v in request.query.get("_type", []) for t in v.split(",") if t]
        since_text = request.arg("_since")
        try:
            since = _instant(since_text) if since_text else None
        except ValueError:
            return outcome("invalid", "_since is not an instant", 400)
        with self._state:
            self._job_counter += 1
            job = f"job-{self._job_counter}"
            self._jobs[job] = _Job(types or sorted(self._resources), since, self.export_polls)
        return Response(
            202,
            b"",
            {"Content-Location": f"{self.fhir_base}/$export-status/{job}"},
        )

    def _status(self, request: Request, match: re.Match[str]) -> Response:
        with self._state:
            job = self._jobs.get(match["job"])
            if job is None:
                return outcome("not-found", "no such export", 404)
            if job.polls_left > 0:
                job.polls_left -= 1
                return Response(
                    202,
                    b"",
                    {
                        "Retry-After": str(self.export_retry_after),
                        "X-Progress": f"{self.export_polls - job.polls_left} of "
                        f"{self.export_polls}",
                    },
                )
        output = []
        files = f"{self.fhir_base}/$export-files/{match['job']}"
        latest: datetime | None = None
        for resource_type in job.types:
            lines = self._export_lines(resource_type, job.since)
            for s in lines:
                if s.last_updated is not None and (latest is None or s.last_updated > latest):
                    latest = s.last_updated
            if lines:
                output.append(
                    {
                        "type": resource_type,
                        "url": f"{files}/{resource_type}.ndjson",
                        "count": len(lines),
                    }
                )
        manifest = {
            "transactionTime": (latest or datetime(2000, 1, 1, tzinfo=UTC)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "request": f"{self.fhir_base}/$export",
            "requiresAccessToken": self.auth != "none",
            "output": output,
            "error": [],
        }
        return Response.json(manifest)

    def _export_lines(self, resource_type: str, since: datetime | None) -> list[_Stored]:
        return [
            s
            for s in self._resources.get(resource_type, [])
            if since is None or s.last_updated is None or s.last_updated >= since
        ]

    def _file(self, request: Request, match: re.Match[str]) -> Response:
        with self._state:
            job = self._jobs.get(match["job"])
        if job is None or match["type"] not in job.types:
            return outcome("not-found", "no such export file", 404)
        lines = self._export_lines(match["type"], job.since)
        body = b"".join(s.line + b"\n" for s in lines)
        return Response(200, body, {"Content-Type": "application/fhir+ndjson"})

    def _delete(self, request: Request, match: re.Match[str]) -> Response:
        with self._state:
            self._jobs.pop(match["job"], None)
        return Response(202, b"")
