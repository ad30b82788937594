"""Alertmanager routing for certpilot's rules (written to ``alerts/alertmanager.yml``).

The tree, top to bottom (Alertmanager walks it in order; ``continue`` keeps walking):

1. every ``severity="page"|"ticket"`` alert goes to certpilot's remediation webhook
   (``/hooks/alertmanager``, webhook payload v4, bearer token from a file), ``continue: true``;
2. pages then go to the ``slack-pages`` receiver, tickets to ``slack-tickets``;
3. anything else falls back to ``slack-tickets``.

Alerts are grouped by root cause (``alertname``, ``sloth_id``, ``issuer_CN``, ``source``,
``owner``): ten certificates of one issuer expiring together are one notification. A page
inhibits the ticket of the same SLO (``sloth_id``), as the SRE workbook's paired alerts intend,
and the stronger certificate symptom inhibits the weaker one on the same location (``ref``).

Secrets never appear in the file: Slack webhook URLs and the webhook token are read from files
(``api_url_file``, ``credentials_file``) that the deployment provides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:9795/hooks/alertmanager"
DEFAULT_WEBHOOK_TOKEN_FILE = "/etc/certpilot/webhook-token"  # noqa: S105 (a path, not a token)
DEFAULT_SLACK_PAGES_URL_FILE = "/etc/certpilot/slack-pages-webhook-url"
DEFAULT_SLACK_TICKETS_URL_FILE = "/etc/certpilot/slack-tickets-webhook-url"

PAGES_RECEIVER = "slack-pages"
TICKETS_RECEIVER = "slack-tickets"
WEBHOOK_RECEIVER = "certpilot-webhook"

GROUP_BY: tuple[str, ...] = ("alertname", "sloth_id", "issuer_CN", "source", "owner")

# One Slack message per group, each alert with its links (Alertmanager's Go templates).
_SLACK_TEXT = (
    "{{ range .Alerts }}*{{ .Annotations.summary }}*\n"
    "{{ .Annotations.description }}\n"
    "<{{ .Annotations.runbook_url }}|Runbook> | <{{ .Annotations.dashboard_url }}|Dashboard>\n"
    "{{ end }}"
)


def _slack(url_file: str, channel: str) -> dict[str, Any]:
    return {
        "api_url_file": url_file,
        "channel": channel,
        "send_resolved": True,
        "title": '{{ template "slack.default.title" . }}',
        "text": _SLACK_TEXT,
    }


def alertmanager_config(
    *,
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    webhook_token_file: str = DEFAULT_WEBHOOK_TOKEN_FILE,
    slack_pages_url_file: str = DEFAULT_SLACK_PAGES_URL_FILE,
    slack_tickets_url_file: str = DEFAULT_SLACK_TICKETS_URL_FILE,
    pages_channel: str = "#certpilot-pages",
    tickets_channel: str = "#certpilot-tickets",
    group_by: Sequence[str] = GROUP_BY,
) -> dict[str, Any]:
    """The Alertmanager configuration as a dict, in a stable key order."""
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": TICKETS_RECEIVER,
            "group_by": list(group_by),
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {
                    "receiver": WEBHOOK_RECEIVER,
                    "matchers": ['severity=~"page|ticket"'],
                    # The remediator acts on alerts: it should not wait for Slack's batching.
                    "group_wait": "10s",
                    "continue": True,
                },
                {
                    "receiver": PAGES_RECEIVER,
                    "matchers": ['severity="page"'],
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                },
                {
                    "receiver": TICKETS_RECEIVER,
                    "matchers": ['severity="ticket"'],
                    "repeat_interval": "12h",
                },
            ],
        },
        "inhibit_rules": [
            # The page and the ticket of one SLO both fire on a fast burn: notify the page only.
            # sloth_severity exists only on SLO alerts, so symptoms never match here (an
            # ``equal`` label missing on both sides would count as equal).
            {
                "source_matchers": ['sloth_severity="page"'],
                "target_matchers": ['sloth_severity="ticket"'],
                "equal": ["sloth_id"],
            },
            {
                "source_matchers": ['alertname="CertificateExpired"'],
                "target_matchers": [
                    'alertname=~"CertificateExpiringSoon|CertificateExpiringRelative"'
                ],
                "equal": ["ref"],
            },
            {
                "source_matchers": ['alertname="CertificateExpiringSoon"'],
                "target_matchers": ['alertname="CertificateExpiringRelative"'],
                "equal": ["ref"],
            },
            {
                "source_matchers": ['alertname="ScannerSourceDown"'],
                "target_matchers": ['alertname="ScannerErrorsHigh"'],
                "equal": ["source"],
            },
        ],
        "receivers": [
            {
                "name": PAGES_RECEIVER,
                "slack_configs": [_slack(slack_pages_url_file, pages_channel)],
            },
            {
                "name": TICKETS_RECEIVER,
                "slack_configs": [_slack(slack_tickets_url_file, tickets_channel)],
            },
            {
                "name": WEBHOOK_RECEIVER,
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": webhook_token_file,
                            }
                        },
                    }
                ],
            },
        ],
    }
