"""Alerts that cannot wait for the nightly run: excursions opening and closing, new deviations
with patient impact.

An :class:`Alert` carries a stable ``key`` (what it is about) and a ``state`` (``open``,
``closed``, ``raised``). :func:`notify_once` sends an alert only when its (key, state) pair has
not been sent before, so a 15-minute sync raises an excursion once when it opens and once more
when it closes — never on every run. Notifiers: :class:`LogNotifier` (embedded default),
:class:`WebhookNotifier` (JSON POST through an ``httpx.Client`` passed in), and the Airflow SMTP
notifier in :mod:`cmohub.airflow.notify`. Alert text names COIs, shipments and batches, never a
patient identifier.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from cmohub.errors import SourceError, SourceUnavailable
from cmohub.lake import Lake
from cmohub.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # e.g. "excursion:SHP-000123:1" or "deviation:DEV-42"
    state: str  # "open", "closed" or "raised"
    kind: str  # e.g. "temperature_excursion", "deviation_patient_impact"
    severity: str
    title: str
    body: str
    links: dict[str, str] = field(default_factory=dict)  # e.g. {"decision packet": "file://..."}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notifier(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogNotifier:
    """Writes alerts to the ``cmohub.alerts`` log (the embedded default)."""

    def __init__(self) -> None:
        self._log = get_logger("cmohub.alerts")

    def send(self, alert: Alert) -> None:
        self._log.warning(
            "ALERT %s %s [%s] %s",
            alert.kind,
            alert.state,
            alert.severity,
            alert.title,
            extra={"alert_key": alert.key},
        )


class WebhookNotifier:
    """POSTs each alert as JSON to a webhook URL (chat, incident tool)."""

    def __init__(self, url: str, client: httpx.Client) -> None:
        self._url = url
        self._client = client

    def send(self, alert: Alert) -> None:
        try:
            response = self._client.post(self._url, json=alert.to_dict())
        except httpx.TransportError as error:
            raise SourceUnavailable(f"webhook unreachable ({type(error).__name__})") from error
        if response.status_code >= 500:
            raise SourceUnavailable(f"webhook answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise SourceError(
                f"webhook refused the alert (HTTP {response.status_code})", code="NOTIFY_REFUSED"
            )


class FanOutNotifier:
    """Sends every alert to each notifier in turn."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self._notifiers = list(notifiers)

    def send(self, alert: Alert) -> None:
        for notifier in self._notifiers:
            notifier.send(alert)


class AlertRegister:
    """Which (key, state) pairs were already sent, kept in the lake's state area."""

    def __init__(self, lake: Lake, scope: str) -> None:
        self._lake = lake
        self._path = lake.state_path(scope, "alerts-sent")
        self._sent: set[str] | None = None

    def _load(self) -> set[str]:
        if self._sent is None:
            self._sent = (
                set(json.loads(self._path.read_bytes())["sent"]) if self._path.exists() else set()
            )
        return self._sent

    def seen(self, alert: Alert) -> bool:
        return f"{alert.key}|{alert.state}" in self._load()

    def mark(self, alert: Alert) -> None:
        sent = self._load()
        sent.add(f"{alert.key}|{alert.state}")
        self._lake.write_json(self._path, {"sent": sorted(sent)})


def notify_once(notifier: Notifier, register: AlertRegister, alerts: Sequence[Alert]) -> int:
    """Send each alert whose (key, state) was never sent; return how many were sent.

    The register is updated after each successful send, so a notifier that fails part-way
    resends only what it did not deliver when the task is retried.
    """
    sent = 0
    for alert in alerts:
        if register.seen(alert):
            continue
        notifier.send(alert)
        register.mark(alert)
        sent += 1
    return sent
