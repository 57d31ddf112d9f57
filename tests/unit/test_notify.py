from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cmohub.errors import SourceError, SourceUnavailable
from cmohub.lake import Lake
from cmohub.notify import Alert, AlertRegister, WebhookNotifier, notify_once


def alert(state: str) -> Alert:
    return Alert(
        key="excursion:SHP-000001:1",
        state=state,
        kind="temperature_excursion",
        severity="critical",
        title="Excursion on SHP-000001 leg 1",
        body="12 min above -150 °C",
    )


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, a: Alert) -> None:
        self.sent.append(a)


def test_an_excursion_alerts_once_when_it_opens_and_once_when_it_closes(tmp_path: Path) -> None:
    lake, recorder = Lake(tmp_path), Recorder()
    for _run in range(3):  # three 15-minute runs see the excursion still open
        notify_once(recorder, AlertRegister(lake, "logistics"), [alert("open")])
    notify_once(recorder, AlertRegister(lake, "logistics"), [alert("open"), alert("closed")])
    notify_once(recorder, AlertRegister(lake, "logistics"), [alert("closed")])
    assert [a.state for a in recorder.sent] == ["open", "closed"]


def test_webhook_posts_json_and_maps_failures() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response({"ok": 200, "down": 503, "no": 403}[request.url.path.strip("/")])

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://hooks.invalid")
    WebhookNotifier("http://hooks.invalid/ok", client).send(alert("open"))
    assert seen[0]["key"] == "excursion:SHP-000001:1"
    with pytest.raises(SourceUnavailable):
        WebhookNotifier("http://hooks.invalid/down", client).send(alert("open"))
    with pytest.raises(SourceError):
        WebhookNotifier("http://hooks.invalid/no", client).send(alert("open"))
