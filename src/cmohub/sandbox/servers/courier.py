"""A sandbox courier API on loopback: shipments with legs, and logger files, per carrier.

Serves ``<program>/courier/<CARRIER>/`` of a generated program:

``POST /oauth/token``
    OAuth 2.0 client credentials (HTTP Basic client authentication); answers
    ``{"access_token", "token_type": "Bearer", "expires_in"}``. Used when the server runs with
    ``auth="oauth2"``; with ``auth="api_key"`` requests carry ``X-Api-Key`` instead.
``GET /v1/shipments?carrier=POLAR&delivered_since=…&delivered_until=…&limit=…&cursor=…``
    ``{"carrier", "shipments": [...], "next_cursor"}``: every shipment that changed in
    [since, until) (UTC) — booked, picked up on a leg, delivered on a leg — as it stood at
    ``until``: only legs already picked up, ``delivered`` only once it happened, ``status``
    BOOKED, IN_TRANSIT or DELIVERED; in the order of their last change, in the courier
    export's own shape; cursor paging (the cursor is opaque and bound to its query).
``GET /v1/loggers?carrier=CRYOWAY&delivered_since=…&delivered_until=…&offset=…&limit=…``
    ``{"carrier", "files": [{"name", "logger", "shipment", "delivered", "size", "sha256",
    "url"}]}``: the logger CSV exports of legs delivered in the window; offset paging.
``GET /v1/loggers/<carrier>/<day>/<logger>.csv``
    One logger export as received (``text/csv``).

Faults come from :class:`~cmohub.sandbox.servers.base.FaultPlan`; ``tokens_issued`` and
``stats`` let tests see how many tokens and requests a sync needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmohub.sandbox.servers.base import FaultPlan, LoopbackServer, Request, Response

MAX_LIMIT = 500


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class _Shipment:
    carrier: str
    delivered: datetime
    body: dict[str, Any]

    def changes(self) -> list[datetime]:
        """When the shipment changed: booked, and each leg picked up and delivered."""
        out = [_utc(self.body["booked"])]
        for leg in self.body.get("legs") or ():
            out.append(_utc(leg["picked_up"]))
            out.append(_utc(leg["delivered"]))
        return sorted(out)

    def as_of(self, moment: datetime | None) -> dict[str, Any]:
        """The shipment as the courier's system showed it at ``moment``."""
        if moment is None or self.delivered < moment:
            return self.body
        legs = []
        for leg in self.body.get("legs") or ():
            if _utc(leg["picked_up"]) >= moment:
                continue
            legs.append(
                leg
                if _utc(leg["delivered"]) < moment
                else {k: v for k, v in leg.items() if k != "delivered"}
            )
        status = "IN_TRANSIT" if legs else "BOOKED"
        return {**self.body, "status": status, "legs": legs}


@dataclass(frozen=True)
class _LoggerFile:
    carrier: str
    name: str  # <day>/<logger>.csv
    logger: str
    shipment: str | None
    delivered: datetime
    data: bytes


def load_courier(program: Path) -> tuple[list[_Shipment], list[_LoggerFile]]:
    shipments: list[_Shipment] = []
    arrivals: dict[str, tuple[str, datetime]] = {}  # logger -> (shipment, delivered)
    for path in sorted((program / "courier").glob("*/shipments/*.json")):
        document = json.loads(path.read_bytes())
        carrier = str(document["carrier"])
        for shipment in document["shipments"]:
            legs = shipment.get("legs") or []
            delivered = (
                max(_utc(leg["delivered"]) for leg in legs) if legs else _utc(shipment["booked"])
            )
            shipments.append(_Shipment(carrier, delivered, shipment))
            for leg in legs:
                arrivals[str(leg["logger"])] = (
                    str(shipment["tracking_no"]),
                    _utc(leg["delivered"]),
                )
    files: list[_LoggerFile] = []
    for path in sorted((program / "courier").glob("*/loggers/*/*.csv")):
        carrier = path.parts[-4]
        logger = path.stem
        shipment, delivered = arrivals.get(
            logger, (None, datetime.fromisoformat(path.parts[-2] + "T23:59:59+00:00"))
        )
        files.append(
            _LoggerFile(
                carrier,
                f"{path.parent.name}/{path.name}",
                logger,
                shipment,
                delivered,
                path.read_bytes(),
            )
        )
    shipments.sort(key=lambda s: (s.delivered, s.body["tracking_no"]))
    files.sort(key=lambda f: (f.delivered, f.name))
    return shipments, files


class CourierServer(LoopbackServer):
    """The sandbox program's courier API (see the module docstring)."""

    def __init__(
        self,
        program: Path,
        *,
        faults: FaultPlan | None = None,
        auth: str = "oauth2",
        client_id: str = "cmohub-sandbox",
        client_secret: str = "sandbox-secret",  # noqa: S107 - a loopback test server's credential
        api_key: str = "sandbox-api-key",
        token_lifetime_s: int = 3600,
    ) -> None:
        super().__init__(faults)
        if auth not in ("oauth2", "api_key", "none"):
            raise ValueError("auth is oauth2, api_key or none")
        self.shipments, self.files = load_courier(program)
        self.auth = auth
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_key = api_key
        self.token_lifetime_s = token_lifetime_s
        self._tokens: set[str] = set()
        self.tokens_issued = 0
        self.route("POST", r"/oauth/token")(self._token)
        self.route("GET", r"/v1/shipments")(self._list_shipments)
        self.route("GET", r"/v1/loggers")(self._list_files)
        self.route(
            "GET", r"/v1/loggers/(?P<carrier>[A-Z0-9]+)/(?P<day>[0-9-]+)/(?P<file>[A-Za-z0-9._-]+)"
        )(self._download)

    def revoke_tokens(self) -> None:
        """Forget every issued token (the next request with one gets 401)."""
        self._tokens.clear()

    # --- auth ----------------------------------------------------------------------------

    def _token(self, request: Request, match: re.Match[str]) -> Response:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return Response.json({"error": "invalid_client"}, status=401)
        if b"grant_type=client_credentials" not in request.body:
            return Response.json({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        self.tokens_issued += 1
        return Response.json(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime_s}
        )

    def _authorized(self, request: Request) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "api_key":
            return request.headers.get("x-api-key") == self.api_key
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self._tokens

    @staticmethod
    def _error(status: int, message: str) -> Response:
        return Response.json({"error": message}, status=status)

    @staticmethod
    def _window(request: Request) -> tuple[datetime | None, datetime | None]:
        since, until = request.arg("delivered_since"), request.arg("delivered_until")
        return (_utc(since) if since else None, _utc(until) if until else None)

    @staticmethod
    def _fingerprint(request: Request, skip: str) -> str:
        filters = sorted((k, v) for k, vs in request.query.items() for v in vs if k != skip)
        return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:12]

    # --- listings ------------------------------------------------------------------------

    def _list_shipments(self, request: Request, match: re.Match[str]) -> Response:
        if not self._authorized(request):
            return self._error(401, "unauthorized")
        try:
            since, until = self._window(request)
            limit = int(request.arg("limit") or 50)
        except ValueError:
            return self._error(400, "bad query parameter")
        if not 1 <= limit <= MAX_LIMIT:
            return self._error(400, f"limit must be 1..{MAX_LIMIT}")
        carrier = request.arg("carrier")
        changed = []
        for shipment in self.shipments:
            if carrier is not None and shipment.carrier != carrier:
                continue
            moments = [
                m
                for m in shipment.changes()
                if (since is None or m >= since) and (until is None or m < until)
            ]
            if moments:
                changed.append((moments[-1], shipment.body["tracking_no"], shipment))
        chosen = [shipment for _, _, shipment in sorted(changed, key=lambda c: (c[0], c[1]))]
        fingerprint = self._fingerprint(request, "cursor")
        offset = 0
        cursor = request.arg("cursor")
        if cursor:
            try:
                state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
                offset, bound = int(state["at"]), str(state["q"])
            except (ValueError, KeyError, TypeError):
                return self._error(400, "bad cursor")
            if bound != fingerprint:
                return self._error(400, "the cursor belongs to another query")
        page = chosen[offset : offset + limit]
        next_cursor = None
        if offset + limit < len(chosen):
            next_cursor = base64.urlsafe_b64encode(
                json.dumps({"at": offset + limit, "q": fingerprint}).encode()
            ).decode()
        return Response.json(
            {
                "carrier": carrier,
                "shipments": [s.as_of(until) for s in page],
                "next_cursor": next_cursor,
            }
        )

    def _list_files(self, request: Request, match: re.Match[str]) -> Response:
        if not self._authorized(request):
            return self._error(401, "unauthorized")
        try:
            since, until = self._window(request)
            offset = int(request.arg("offset") or 0)
            limit = int(request.arg("limit") or 50)
        except ValueError:
            return self._error(400, "bad query parameter")
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            return self._error(400, "bad offset or limit")
        carrier = request.arg("carrier")
        chosen = [
            f
            for f in self.files
            if (carrier is None or f.carrier == carrier)
            and (since is None or f.delivered >= since)
            and (until is None or f.delivered < until)
        ]
        return Response.json(
            {
                "carrier": carrier,
                "files": [
                    {
                        "name": f.name,
                        "logger": f.logger,
                        "shipment": f.shipment,
                        "delivered": f.delivered.isoformat(),
                        "size": len(f.data),
                        "sha256": hashlib.sha256(f.data).hexdigest(),
                        "url": f"/v1/loggers/{f.carrier}/{f.name}",
                    }
                    for f in chosen[offset : offset + limit]
                ],
            }
        )

    def _download(self, request: Request, match: re.Match[str]) -> Response:
        if not self._authorized(request):
            return self._error(401, "unauthorized")
        name = f"{match['day']}/{match['file']}"
        for item in self.files:
            if item.carrier == match["carrier"] and item.name == name:
                return Response(200, item.data, {"Content-Type": "text/csv"})
        return self._error(404, "no such logger file")
