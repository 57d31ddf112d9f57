"""A small threaded HTTP server on 127.0.0.1 with deterministic fault injection.

Each sandbox server (FHIR, EPCIS query, courier API) is a :class:`LoopbackServer` with routes;
:class:`FaultPlan` makes it misbehave on purpose, by request number rather than by chance so
that tests are repeatable: every Nth request answered 429 with ``Retry-After``, every Mth 503,
some requests delayed, and chosen paths served malformed once. Traffic never leaves loopback.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> Response:
        return cls(
            status,
            json.dumps(data, separators=(",", ":")).encode(),
            {"Content-Type": "application/json", **headers},
        )


Handler = Callable[[Request, re.Match[str]], Response]


@dataclass
class FaultPlan:
    """Deterministic misbehaviour: counted over all requests the server receives."""

    rate_limit_every: int = 0  # every Nth request: 429 with Retry-After
    retry_after_seconds: int = 1
    unavailable_every: int = 0  # every Mth request: 503
    slow_every: int = 0  # every Kth request is delayed by slow_seconds
    slow_seconds: float = 0.0
    malformed_paths: set[str] = field(default_factory=set)  # served truncated, once each


@dataclass
class ServerStats:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


class LoopbackServer:
    """Routes (method, path regex) -> handler; start() binds 127.0.0.1 on a free port."""

    def __init__(self, faults: FaultPlan | None = None) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults = faults or FaultPlan()
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._malformed_served: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._routes.append((method.upper(), re.compile(f"^{pattern}$"), handler))
            return handler

        return register

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _fault(self, number: int, path: str) -> Response | None:
        plan = self.faults
        if plan.slow_every and number % plan.slow_every == 0:
            self._count("slow")
            time.sleep(plan.slow_seconds)
        if plan.rate_limit_every and number % plan.rate_limit_every == 0:
            self._count("429")
            return Response.json(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "throttled", "diagnostics": "rate limited"}
                    ],
                },
                status=429,
                **{"Retry-After": str(plan.retry_after_seconds)},
            )
        if plan.unavailable_every and number % plan.unavailable_every == 0:
            self._count("503")
            return Response(503, b"service unavailable", {"Retry-After": "1"})
        return None

    def _count(self, name: str) -> None:
        self.stats.faults[name] = self.stats.faults.get(name, 0) + 1

    def dispatch(self, request: Request) -> Response:
        with self._lock:
            self.stats.requests += 1
            number = self.stats.requests
            self.stats.paths.append(request.path)
            malformed = (
                request.path in self.faults.malformed_paths
                and request.path not in self._malformed_served
            )
            if malformed:
                self._malformed_served.add(request.path)
        injected = self._fault(number, request.path)
        if injected is not None:
            return injected
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if method == request.method and match:
                response = handler(request, match)
                if malformed:
                    with self._lock:
                        self._count("malformed")
                    response.body = response.body[: max(1, len(response.body) // 2)]
                return response
        return Response.json({"error": "not found", "path": request.path}, status=404)

    def start(self) -> LoopbackServer:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                response = server.dispatch(request)
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: tests and the demo count requests through ServerStats

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @contextmanager
    def running(self) -> Iterator[LoopbackServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
