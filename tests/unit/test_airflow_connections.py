from __future__ import annotations

import pytest

from cmohub.airflow.connections import connection_env, get_endpoint


def test_a_sandbox_connection_from_the_environment_becomes_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, value = connection_env(
        "cmohub_fhir", scheme="http", host="127.0.0.1", port=8765, base_path="/r4", auth="none"
    )
    monkeypatch.setenv(name, value)
    endpoint = get_endpoint("cmohub_fhir")
    assert endpoint is not None
    assert endpoint.base_url == "http://127.0.0.1:8765/r4"
    assert endpoint.extra["auth"] == "none"
    assert get_endpoint("cmohub_not_defined") is None


def test_secrets_stay_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CMOHUB_COURIER",
        '{"conn_type":"http","schema":"https","host":"courier.invalid","login":"client","password":"CANARY-SECRET-1"}',
    )
    endpoint = get_endpoint("cmohub_courier")
    assert endpoint is not None and endpoint.password is not None
    assert "CANARY-SECRET-1" not in repr(endpoint)
    assert endpoint.password.reveal() == "CANARY-SECRET-1"
