"""Authentication of HTTP sources — FHIR servers, EPCIS repositories, courier APIs — as
``httpx.Auth`` flows. No flow does I/O of its own: a token request goes through the client's
own transport, so tests and loopback servers see it.

* :class:`BearerAuth` — a static bearer token.
* :class:`ApiKeyAuth` — a static key in a header (``X-Api-Key`` unless the API names another).
* :class:`OAuth2ClientCredentials` — RFC 6749 §4.4: the client ID and secret (HTTP Basic) are
  exchanged for an access token.
* :class:`SmartBackendAuth` — SMART Backend Services (HL7 SMART App Launch v2, "client
  credentials with a signed JWT assertion"): the client signs a short-lived JWT with its
  private key (RS384 for RSA keys, ES384 for EC P-384 keys; ``kid`` from the Connection) and
  posts it to the token endpoint with ``grant_type=client_credentials``.

Both token flows keep their access token until shortly (30 s) before its ``expires_in``; a 401
drops it and the request is sent once more with a new one.

:func:`auth_for` builds the flow a connection's ``auth`` names (``none``, ``bearer``,
``api_key``, ``oauth2``, ``smart``); :func:`build_auth` the one a REST mapping's ``auth``
options name, filled from the connection. Errors: :class:`~cmohub.errors.ConfigError`
``SOURCE_AUTH_CONFIG`` (a key or setting is missing or unusable; a REST mapping's missing
credentials are ``SOURCE_CREDENTIALS_MISSING``); a SMART token endpoint that refuses is
:class:`~cmohub.errors.SourceError` ``SOURCE_AUTH_FAILED``; an OAuth2 one is
``SOURCE_AUTH_REFUSED`` or ``SOURCE_AUTH_INVALID`` (an answer without a token), or
:class:`~cmohub.errors.SourceRateLimited` / :class:`~cmohub.errors.SourceUnavailable` (429,
5xx: Transient, retried by :class:`~cmohub.sources.rest.RestClient`). Secrets are
:class:`~cmohub.sensitive.Sensitive`; reprs and messages never carry a token, a key or an
assertion.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cmohub.errors import ConfigError, SourceError, SourceRateLimited, SourceUnavailable
from cmohub.sensitive import Sensitive
from cmohub.sources.endpoint import EndpointLike
from cmohub.sources.rest import options_error, where_of

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SCOPE = "system/*.rs"
ASSERTION_LIFETIME = timedelta(minutes=5)  # the SMART spec's maximum
EXPIRY_MARGIN = timedelta(seconds=30)
REST_STYLES = ("none", "api_key", "bearer", "oauth2")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- static credentials --------------------------------------------------------------------------


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request."""

    def __init__(self, token: Sensitive[str]) -> None:
        self.token = token

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token.reveal()}"
        yield request


class ApiKeyAuth(httpx.Auth):
    """An API key in a header (``X-Api-Key`` unless the API names another)."""

    def __init__(self, key: Sensitive[str], header: str = "X-Api-Key") -> None:
        self.key = key
        self.header = header

    def __repr__(self) -> str:
        return f"ApiKeyAuth(header={self.header!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self.header] = self.key.reveal()
        yield request


# --- tokens from a token endpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    value: Sensitive[str]
    expires_at: float  # on the flow's own clock, in seconds


def _token_fields(response: httpx.Response, default_lifetime: float) -> tuple[str, float] | None:
    """``access_token`` and ``expires_in`` (seconds) of a token endpoint's JSON answer."""
    try:
        body: Any = response.json()
        return str(body["access_token"]), float(body.get("expires_in", default_lifetime))
    except (ValueError, KeyError, TypeError):
        return None


class CachedTokenAuth(httpx.Auth, ABC):
    """A bearer token from a token endpoint, kept until ``margin_seconds`` before it expires;
    a 401 drops it and the request is sent once more with a new one."""

    requires_response_body = True

    def __init__(self, *, token_url: str, margin_seconds: float) -> None:
        self.token_url = token_url
        self.margin_seconds = margin_seconds
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self.tokens_issued = 0  # how many tokens this flow obtained (tests, logs)

    @abstractmethod
    def _seconds(self) -> float:
        """The flow's clock, in seconds."""

    @abstractmethod
    def _token_request(self) -> httpx.Request:
        """The request that asks the token endpoint for a token."""

    @abstractmethod
    def _accept(self, response: httpx.Response) -> tuple[str, float]:
        """The token and its lifetime in seconds; raises when the endpoint refused."""

    def invalidate(self) -> None:
        """Forget the cached token."""
        with self._lock:
            self._token = None

    def _cached(self) -> Sensitive[str] | None:
        with self._lock:
            token = self._token
        if token is not None and self._seconds() < token.expires_at - self.margin_seconds:
            return token.value
        return None

    def _fetch(self, request: httpx.Request) -> httpx.Request:
        fetch = self._token_request()
        # The token request waits as long as the request it authenticates.
        if "timeout" in request.extensions:
            fetch.extensions["timeout"] = request.extensions["timeout"]
        return fetch

    def _keep(self, response: httpx.Response) -> Sensitive[str]:
        value, lifetime = self._accept(response)
        token = _Token(Sensitive(value), self._seconds() + lifetime)
        with self._lock:
            self._token = token
            self.tokens_issued += 1
        return token.value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._cached()
        if token is None:
            token = self._keep((yield self._fetch(request)))
        request.headers["Authorization"] = f"Bearer {token.reveal()}"
        response = yield request
        if response.status_code == 401:
            # The server forgot or revoked the token before its expiry: get a new one, once.
            self.invalidate()
            token = self._keep((yield self._fetch(request)))
            request.headers["Authorization"] = f"Bearer {token.reveal()}"
            yield request


class OAuth2ClientCredentials(CachedTokenAuth):
    """OAuth 2.0 client credentials grant: client ID and secret -> a cached access token."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Sensitive[str],
        scope: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin_seconds: float = 30.0,
    ) -> None:
        super().__init__(token_url=token_url, margin_seconds=margin_seconds)
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(client_id={self.client_id!r}, token_url={self.token_url!r})"
        )

    @property
    def fetched(self) -> int:
        """How many tokens were requested (:attr:`tokens_issued`)."""
        return self.tokens_issued

    def _seconds(self) -> float:
        return self.clock()

    def _token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret.reveal()}".encode())
        return httpx.Request(
            "POST",
            self.token_url,
            data=form,
            headers={"Accept": "application/json", "Authorization": f"Basic {basic.decode()}"},
        )

    def _accept(self, response: httpx.Response) -> tuple[str, float]:
        where = where_of(self.token_url)
        status = response.status_code
        if status == 429:
            header = response.headers.get("Retry-After", "")
            raise SourceRateLimited(
                "the token endpoint rate-limits",
                retry_after_seconds=float(header) if header.isdigit() else None,
                where=where,
            )
        if status >= 500:
            raise SourceUnavailable(f"the token endpoint answered HTTP {status}", where=where)
        if status != 200:
            raise SourceError(
                f"the token endpoint refused the client credentials (HTTP {status})",
                code="SOURCE_AUTH_REFUSED",
                where=where,
            )
        fields = _token_fields(response, default_lifetime=3600)
        if fields is None:
            raise SourceError(
                "the token endpoint answered without an access token",
                code="SOURCE_AUTH_INVALID",
                where=where,
            )
        return fields


def signing_algorithm(private_key_pem: Sensitive[str]) -> str:
    """RS384 for an RSA key, ES384 for an EC P-384 key; ConfigError otherwise."""
    try:
        key = load_pem_private_key(private_key_pem.reveal().encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            "the SMART private key is not an unencrypted PEM private key",
            code="SOURCE_AUTH_CONFIG",
            where="private_key",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return "ES384"
    raise ConfigError(
        "SMART Backend Services needs an RSA or EC P-384 private key",
        code="SOURCE_AUTH_CONFIG",
        where="private_key",
    )


class SmartBackendAuth(CachedTokenAuth):
    """SMART Backend Services: signed JWT client assertion -> a cached access token."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        private_key_pem: Sensitive[str],
        key_id: str | None = None,
        scope: str = DEFAULT_SCOPE,
        clock: Callable[[], datetime] = utc_now,
        new_jti: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        if not token_url or not client_id:
            raise ConfigError(
                "SMART Backend Services needs token_url and a client ID (the login)",
                code="SOURCE_AUTH_CONFIG",
            )
        super().__init__(token_url=token_url, margin_seconds=EXPIRY_MARGIN.total_seconds())
        self.client_id = client_id
        self.scope = scope
        self._key = private_key_pem
        self._key_id = key_id
        self._algorithm = signing_algorithm(private_key_pem)
        self._clock = clock
        self._new_jti = new_jti

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, token_url={self.token_url!r})"

    def _seconds(self) -> float:
        return self._clock().timestamp()

    def client_assertion(self) -> str:
        """A signed JWT (iss = sub = client ID, aud = token URL, 5 minutes, unique jti)."""
        now = self._clock()
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": int((now + ASSERTION_LIFETIME).timestamp()),
            "iat": int(now.timestamp()),
            "jti": self._new_jti(),
        }
        headers = {"typ": "JWT"}
        if self._key_id:
            headers["kid"] = self._key_id
        return jwt.encode(claims, self._key.reveal(), algorithm=self._algorithm, headers=headers)

    def _token_request(self) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.client_assertion(),
            },
            headers={"Accept": "application/json"},
        )

    def _accept(self, response: httpx.Response) -> tuple[str, float]:
        if response.status_code != 200:
            raise SourceError(
                f"the token endpoint answered HTTP {response.status_code}",
                code="SOURCE_AUTH_FAILED",
                where=self.token_url,
            )
        fields = _token_fields(response, default_lifetime=300)
        if fields is None:
            raise SourceError(
                "the token endpoint's answer has no access_token",
                code="SOURCE_AUTH_FAILED",
                where=self.token_url,
            )
        return fields


# --- from configuration --------------------------------------------------------------------------


def auth_for(
    *,
    mode: str,
    base_url: str,
    login: str | None,
    password: Sensitive[str] | None,
    extra: Mapping[str, Any],
    clock: Callable[[], datetime] = utc_now,
) -> httpx.Auth | None:
    """The auth flow ``mode`` names (``none``, ``bearer``, ``api_key``, ``oauth2``, ``smart``),
    from a connection's fields.

    ``bearer``: the token is the password. ``api_key``: the key is the password, sent in
    ``extra.api_key_header`` (default ``X-Api-Key``). ``oauth2``: the client ID is the login,
    the secret the password; ``extra.token_url`` (default ``<base>/oauth/token``),
    ``extra.scope``. ``smart``: the client ID is the login; the private key is
    ``extra.private_key`` (PEM) or the password; ``extra.token_url`` (default
    ``<base>/auth/token``), ``extra.key_id``, ``extra.scope``.
    """
    kind = (mode or "none").strip().lower()
    base = base_url.rstrip("/")
    if kind == "none":
        return None
    if kind == "smart":
        key_text = extra.get("private_key")
        key = Sensitive(str(key_text)) if key_text else password
        if key is None:
            raise ConfigError(
                "auth smart needs a private key (extra.private_key or the password)",
                code="SOURCE_AUTH_CONFIG",
            )
        return SmartBackendAuth(
            token_url=str(extra.get("token_url") or f"{base}/auth/token"),
            client_id=login or "",
            private_key_pem=key,
            key_id=str(extra["key_id"]) if extra.get("key_id") else None,
            scope=str(extra.get("scope") or DEFAULT_SCOPE),
            clock=clock,
        )
    secret_of = {"bearer": "the token", "api_key": "the key", "oauth2": "the client secret"}
    if kind not in secret_of:
        raise ConfigError(
            f"unknown auth mode {kind!r}: use none, bearer, api_key, oauth2 or smart",
            code="SOURCE_AUTH_CONFIG",
        )
    if password is None:
        raise ConfigError(
            f"auth {kind} needs {secret_of[kind]} in the Connection's password",
            code="SOURCE_AUTH_CONFIG",
        )
    if kind == "bearer":
        return BearerAuth(password)
    if kind == "api_key":
        return ApiKeyAuth(password, header=str(extra.get("api_key_header", "X-Api-Key")))
    if not login:
        raise ConfigError(
            "auth oauth2 needs the client ID in the Connection's login", code="SOURCE_AUTH_CONFIG"
        )
    return OAuth2ClientCredentials(
        token_url=str(extra.get("token_url") or f"{base}/oauth/token"),
        client_id=login,
        client_secret=password,
        scope=extra.get("scope") or None,
    )


def build_auth(
    options: Mapping[str, Any], endpoint: EndpointLike | None, base_url: str
) -> httpx.Auth | None:
    """The authentication a REST mapping's ``auth`` options name, with the connection's
    credentials.

    ``style`` (``none``, ``api_key``, ``bearer``, ``oauth2``; the connection's ``extra.auth``
    overrides it), ``header`` (API key), ``token_path`` (default ``oauth/token`` under the base
    URL) and ``scope``; the connection's ``extra.api_key_header``, ``extra.token_url`` and
    ``extra.scope`` override those.
    """
    extra = dict(endpoint.extra) if endpoint is not None else {}
    style = str(extra.get("auth", options.get("style", "none")))
    if style == "none":
        return None
    if endpoint is None or endpoint.password is None:
        raise ConfigError(
            f"auth style {style} needs a secret in the connection's password",
            code="SOURCE_CREDENTIALS_MISSING",
        )
    if style == "oauth2" and not endpoint.login:
        raise ConfigError(
            "oauth2 needs the client ID in the connection's login",
            code="SOURCE_CREDENTIALS_MISSING",
        )
    if style not in REST_STYLES:
        raise options_error(f"unknown auth style {style!r} ({', '.join(REST_STYLES)})")
    token_path = str(options.get("token_path", "oauth/token")).lstrip("/")
    return auth_for(
        mode=style,
        base_url=base_url,
        login=endpoint.login,
        password=endpoint.password,
        extra={
            "api_key_header": extra.get("api_key_header", options.get("header", "X-Api-Key")),
            "token_url": extra.get("token_url") or f"{base_url.rstrip('/')}/{token_path}",
            "scope": extra.get("scope") or options.get("scope"),
        },
    )
