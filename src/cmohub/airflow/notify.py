"""Alerts from Airflow tasks: e-mail through Airflow's SMTP connection (``smtp_default`` unless
configured), and :func:`alert_notifier`, the notifiers a deployment configured."""

from __future__ import annotations

import html
from collections.abc import Sequence

from cmohub.notify import Alert, Notifier


class SmtpNotifier:
    """Sends each alert as an HTML email using an Airflow SMTP connection."""

    def __init__(self, to: Sequence[str], *, conn_id: str = "smtp_default") -> None:
        self._to = list(to)
        self._conn_id = conn_id

    def send(self, alert: Alert) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        links = "".join(
            f'<li><a href="{html.escape(url)}">{html.escape(name)}</a></li>'
            for name, url in sorted(alert.links.items())
        )
        body = (
            f"<h2>{html.escape(alert.title)}</h2><p>{html.escape(alert.body)}</p>"
            f"<p>severity: {html.escape(alert.severity)} — state: {html.escape(alert.state)}</p>"
            f"<ul>{links}</ul>"
        )
        with SmtpHook(smtp_conn_id=self._conn_id) as hook:
            hook.send_email_smtp(
                to=self._to,
                subject=f"[cmohub] {alert.severity.upper()} {alert.title} ({alert.state})",
                html_content=body,
            )


#: Comma-separated e-mail recipients of alerts (sent through ``smtp_default``).
RECIPIENTS_ENV = "CMOHUB_ALERT_EMAILS"
#: Connection whose host (and scheme, port, extra ``base_path``) is the alert webhook URL.
WEBHOOK_CONN_ID = "cmohub_alert_webhook"


def alert_notifier(
    *,
    recipients_env: str = RECIPIENTS_ENV,
    webhook_conn_id: str = WEBHOOK_CONN_ID,
    smtp_conn_id: str = "smtp_default",
) -> Notifier:
    """The notifiers configured for this deployment, inside a task.

    Alerts always go to the log (the embedded default needs nothing else); to e-mail as well
    when ``CMOHUB_ALERT_EMAILS`` lists recipients (through Airflow's SMTP connection); to a
    webhook as well when the ``cmohub_alert_webhook`` connection exists.
    """
    import os

    import httpx

    from cmohub.airflow.connections import get_endpoint
    from cmohub.notify import FanOutNotifier, LogNotifier, WebhookNotifier

    notifiers: list[Notifier] = [LogNotifier()]
    recipients = [r.strip() for r in os.environ.get(recipients_env, "").split(",") if r.strip()]
    if recipients:
        notifiers.append(SmtpNotifier(recipients, conn_id=smtp_conn_id))
    webhook = get_endpoint(webhook_conn_id)
    if webhook is not None:
        notifiers.append(WebhookNotifier(webhook.base_url, httpx.Client(timeout=10.0)))
    return notifiers[0] if len(notifiers) == 1 else FanOutNotifier(notifiers)
