"""Where a source is and how to log in to it, free of Airflow types.

Connectors and pipelines read an :class:`EndpointLike`: inside an Airflow task that is
:class:`cmohub.airflow.connections.Endpoint` (a Connection), everywhere else (CLI, tests, the
embedded sandbox defaults) a :class:`SourceEndpoint`. Secrets stay
:class:`~cmohub.sensitive.Sensitive`; a repr shows the URL only (``extra`` may hold a
private key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cmohub.sensitive import Sensitive


class EndpointLike(Protocol):
    """What a connector needs from a connection: base URL and credentials."""

    @property
    def base_url(self) -> str: ...

    @property
    def login(self) -> str | None: ...

    @property
    def password(self) -> Sensitive[str] | None: ...

    @property
    def extra(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SourceEndpoint:
    """A connection outside Airflow (CLI, tests, embedded defaults): base URL and credentials."""

    url: str
    login: str | None = None
    password: Sensitive[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"SourceEndpoint(url={self.url!r})"
