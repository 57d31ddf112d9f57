"""Read endpoints and credentials from Airflow Connections, inside a task.

Pipelines never import Airflow, so a DAG task turns a Connection into a plain
:class:`Endpoint` and passes it to its pipeline function. A missing connection gives ``None``:
the embedded default (``cmohub demo``) defines its sandbox connections as ``AIRFLOW_CONN_*``
environment variables pointing at loopback servers, so a newcomer creates none.

Connection fields used: ``schema`` is the URL scheme (``http``/``https``; ``sftp`` for SFTP),
``host``, ``port``, ``login``/``password`` (client ID and secret, user and password, or empty),
and ``extra`` (JSON) for anything else: ``base_path``, ``auth`` (``none``, ``bearer``,
``smart``, ``oauth2``, ``api_key``), ``token_url``, ``scope``, ``private_key`` (PEM, SMART
Backend Services), ``host_key`` (SFTP pinned host key), ``fhir_version`` (``R4``/``R5``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cmohub.sensitive import Sensitive


@dataclass(frozen=True)
class Endpoint:
    """A source's address and credentials, free of Airflow types (secrets stay Sensitive)."""

    conn_id: str
    scheme: str
    host: str
    port: int | None
    login: str | None = None
    password: Sensitive[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        port = f":{self.port}" if self.port else ""
        path = str(self.extra.get("base_path", "")).rstrip("/")
        return f"{self.scheme}://{self.host}{port}{path}"

    def __repr__(self) -> str:
        return f"Endpoint(conn_id={self.conn_id!r}, url={self.base_url!r})"


def get_endpoint(conn_id: str) -> Endpoint | None:
    """The Connection ``conn_id`` as an :class:`Endpoint`, or None when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return Endpoint(
        conn_id=conn_id,
        scheme=connection.schema or connection.conn_type or "http",
        host=connection.host or "",
        port=connection.port,
        login=connection.login,
        password=Sensitive(connection.password) if connection.password else None,
        extra=dict(connection.extra_dejson or {}),
    )


def connection_env(
    conn_id: str,
    *,
    scheme: str,
    host: str,
    port: int,
    login: str | None = None,
    password: str | None = None,
    **extra: Any,
) -> tuple[str, str]:
    """The ``AIRFLOW_CONN_<ID>`` variable (name, JSON value) for a loopback sandbox endpoint."""
    value: dict[str, Any] = {
        "conn_type": "http",
        "schema": scheme,
        "host": host,
        "port": port,
        "extra": extra,
    }
    if login is not None:
        value["login"] = login
    if password is not None:
        value["password"] = password
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value, sort_keys=True)
