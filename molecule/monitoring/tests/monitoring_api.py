"""Helpers of the monitoring scenario's tests: Prometheus and Alertmanager APIs
queried from the monitoring host, the test webhook receiver, waiting."""

from __future__ import annotations

import json

import pytest

import helpers
from helpers import peer, probe_tcp

MON = "monitoring-mon"
SVC = "monitoring-svc"
WEBHOOK_UNIT = "matcraft-test-webhook"
WEBHOOK_OUTPUT = "/run/matcraft-test-webhook.jsonl"


def mon():
    return peer(MON)


def svc():
    return peer(SVC)


def variables(host):
    return host.ansible.get_variables()


def private_address(host):
    return host.run("hostname -I").stdout.split()[0]


def prometheus_get(path, params=None, auth=True):
    """GET the Prometheus API on the monitoring host; returns (status, parsed JSON or text)."""
    host = mon()
    url = "http://%s:9090%s" % (private_address(host), path)
    args = ["curl", "-sS", "-G", "--max-time", "15", "-o", "/dev/stdout", "-w", "\n%{http_code}"]
    if auth:
        v = variables(host)
        # Test-only credentials from the scenario's inventory.
        args += ["-u", "%s:%s" % ("matcraft", v["matcraft_monitoring_web_password"])]
    for key, value in (params or {}).items():
        args += ["--data-urlencode", "%s=%s" % (key, value)]
    args.append(url)
    result = host.run(" ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), body


def query(expr):
    """Instant query: the result list."""
    status, body = prometheus_get("/api/v1/query", {"query": expr})
    assert status == 200 and body["status"] == "success", (expr, status, body)
    return body["data"]["result"]


def alertmanager_status(path, auth=True):
    """(HTTP status, body text) of a GET of the Alertmanager API on the monitoring host."""
    host = mon()
    url = "http://%s:9093%s" % (private_address(host), path)
    args = ["curl", "-sS", "--max-time", "15", "-o", "/dev/stdout", "-w", "\n%{http_code}"]
    if auth:
        # Test-only credentials from the scenario's inventory (the monitoring login).
        args += ["-u", "%s:%s" % ("matcraft", variables(host)["matcraft_monitoring_web_password"])]
    args.append(url)
    result = host.run(" ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def alertmanager_get(path):
    status, body = alertmanager_status(path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def wait_for(what, check, timeout, interval=3):
    """helpers.wait_for with this scenario's 3 s polling interval."""
    return helpers.wait_for(what, check, timeout, interval)


def webhook_notifications():
    """Every notification the test webhook received so far (parsed JSON)."""
    content = mon().run("cat %s", WEBHOOK_OUTPUT).stdout
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def notified_alerts(alertname, severity=None, status="firing"):
    """Alerts with that name (and severity) among the webhook's notifications."""
    found = []
    for notification in webhook_notifications():
        for alert in notification.get("alerts", []):
            labels = alert.get("labels", {})
            if labels.get("alertname") != alertname or alert.get("status") != status:
                continue
            if severity and labels.get("severity") != severity:
                continue
            found.append(alert)
    return found


@pytest.fixture(scope="session")
def webhook():
    """Run the webhook receiver that Alertmanager's receiver test-webhook posts to (bounded: 15 min)."""
    host = mon()
    host.run("systemctl stop %s", WEBHOOK_UNIT)
    host.run("systemctl reset-failed %s", WEBHOOK_UNIT)
    host.run("rm -f %s", WEBHOOK_OUTPUT)
    start = host.run(
        "systemd-run --unit=%s --property=RuntimeMaxSec=900 /usr/bin/python3 /usr/local/lib/webhook_recorder.py "
        "--listen 127.0.0.1:9999 --output %s", WEBHOOK_UNIT, WEBHOOK_OUTPUT)
    assert start.rc == 0, start.stderr
    for _ in range(30):
        if probe_tcp(host, "127.0.0.1", 9999, timeout=1):
            break
    else:
        raise AssertionError("the test webhook receiver did not start")
    yield host
    host.run("systemctl stop %s", WEBHOOK_UNIT)
