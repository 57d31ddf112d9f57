from __future__ import annotations

import re

import httpx

from cmohub.sandbox.servers.base import FaultPlan, LoopbackServer, Request, Response


def make_server(faults: FaultPlan | None = None) -> LoopbackServer:
    server = LoopbackServer(faults)

    @server.route("GET", r"/items/(?P<n>\d+)")
    def item(request: Request, match: re.Match[str]) -> Response:
        return Response.json({"n": int(match["n"]), "q": request.arg("q")})

    return server


def test_routes_answer_on_loopback_only() -> None:
    with make_server().running() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            assert client.get("/items/7", params={"q": "x"}).json() == {"n": 7, "q": "x"}
            assert client.get("/nowhere").status_code == 404


def test_faults_are_deterministic_by_request_number() -> None:
    plan = FaultPlan(
        rate_limit_every=3, retry_after_seconds=2, unavailable_every=5, malformed_paths={"/items/1"}
    )
    with (
        make_server(plan).running() as server,
        httpx.Client(base_url=server.base_url, timeout=5) as client,
    ):
        statuses = [client.get("/items/2").status_code for _ in range(6)]
        assert statuses == [200, 200, 429, 200, 503, 429]
        first, second = client.get("/items/1"), client.get("/items/1")
    assert first.status_code == 200 and first.content != second.content  # malformed once
    assert second.json() == {"n": 1, "q": None}
    assert server.stats.faults == {"429": 2, "503": 1, "malformed": 1}
