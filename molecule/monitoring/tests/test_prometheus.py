"""Prometheus and Alertmanager: every target up with the label contract, the
web UI behind basic auth, the rules loaded, Alertmanager's inhibition, and
two alerts end to end (API error rate, Celery queue depth) that reach the
webhook receiver run by the tests."""

import json

import yaml

from helpers import assert_unit_running
from monitoring_api import (alertmanager_get, alertmanager_status, mon, notified_alerts, private_address,
                            prometheus_get, query, svc, variables, wait_for)
from monitoring_api import webhook  # noqa: F401 - pytest fixture

# job -> number of targets in this scenario
EXPECTED_JOBS = {
    "prometheus": 1, "node": 2, "postgres": 1, "redis": 1, "nginx": 1, "mtail": 1, "worker": 1,
    "blackbox": 1, "alertmanager": 1, "worker_health": 1, "public_health": 1,
}
ROLES = {"monitoring-mon": "monitoring", "monitoring-svc": "database", "matcraft.test": "edge"}


def test_servers_run_under_systemd():
    host = mon()
    for unit in ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter"):
        assert_unit_running(host, unit)


def test_every_target_is_up_with_the_label_contract():
    def targets_up():
        status, body = prometheus_get("/api/v1/targets", {"state": "active"})
        assert status == 200, body
        active = body["data"]["activeTargets"]
        if any(target["health"] != "up" for target in active):
            return None
        return active

    try:
        active = wait_for("every target to be up", targets_up, timeout=120)
    except AssertionError:
        _, body = prometheus_get("/api/v1/targets", {"state": "active"})
        down = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t["lastError"])
                for t in body["data"]["activeTargets"] if t["health"] != "up"]
        raise AssertionError("targets not up: %r" % down) from None
    jobs = {}
    for target in active:
        labels = target["labels"]
        jobs[labels["job"]] = jobs.get(labels["job"], 0) + 1
        assert ROLES.get(labels.get("matcraft_host")) == labels.get("matcraft_role"), labels
    assert jobs == EXPECTED_JOBS


def test_probes_succeed():
    def probes():
        results = query("probe_success")
        return results if len(results) == 2 and all(r["value"][1] == "1" for r in results) else None

    results = wait_for("both blackbox probes to succeed", probes, timeout=60)
    assert {r["metric"]["job"] for r in results} == {"worker_health", "public_health"}
    # TLS expiry of the public name is known and far away (the pki certificate).
    expiry = query('probe_ssl_earliest_cert_expiry{job="public_health"} - time()')
    assert expiry and float(expiry[0]["value"][1]) > 14 * 86400, expiry


def test_web_ui_needs_basic_auth_and_the_hash_is_not_the_password():
    status, _ = prometheus_get("/api/v1/status/buildinfo", auth=False)
    assert status == 401
    status, body = prometheus_get("/api/v1/status/buildinfo")
    assert status == 200, body
    host = mon()
    web = host.file("/etc/prometheus/web.yml")
    assert (web.user, web.group, web.mode) == ("root", "prometheus", 0o640)
    content = web.content_string
    assert "$2b$" in content
    assert variables(host)["matcraft_monitoring_web_password"] not in content
    address = private_address(host)
    listening = [line.split()[3] for line in host.run("ss -Htln").stdout.splitlines() if line.strip()]
    assert "%s:9090" % address in listening
    assert not [a for a in listening if a.endswith(":9090") and a != "%s:9090" % address], listening


def test_all_rules_are_loaded():
    status, body = prometheus_get("/api/v1/rules")
    assert status == 200, body
    names = {rule["name"] for group in body["data"]["groups"] for rule in group["rules"]}
    for name in ("MatcraftApiErrorRateHigh", "MatcraftApiLatencyHigh", "MatcraftWorkerQueueDepthHigh",
                 "MatcraftDatabaseConnectionsHigh", "MatcraftDatabaseDiskUsageHigh", "MatcraftRedisMemoryHigh",
                 "MatcraftTargetDown", "MatcraftWorkerHealthProbeFailed", "MatcraftWorkerDown",
                 "MatcraftDatabaseWalArchivingFailing", "MatcraftBackupFullTooOld", "MatcraftDatabaseReplicaLagHigh",
                 "MatcraftTlsCertificateExpiringSoon", "MatcraftHostDiskUsageHigh", "MatcraftHostMemoryLow"):
        assert name in names, name
    errors = [rule for group in body["data"]["groups"] for rule in group["rules"] if rule.get("health") == "err"]
    assert not errors, errors


def test_alertmanager_configuration():
    host = mon()
    status = alertmanager_get("/api/v2/status")
    config = yaml.safe_load(status["config"]["original"])
    inhibit = config["inhibit_rules"]
    assert len(inhibit) == 3
    assert inhibit[0]["equal"] == ["alertname", "job", "instance", "mountpoint", "db", "key"]
    assert [r["equal"] for r in inhibit[1:]] == [["matcraft_host"], ["matcraft_host"]]
    assert config["receivers"][0]["webhook_configs"][0]["url"] == "http://127.0.0.1:9999/alerts"
    conf = host.file("/etc/prometheus/alertmanager.yml")
    assert (conf.user, conf.group, conf.mode) == ("root", "prometheus", 0o640)
    # UI on the private address only; no cluster (gossip) port.
    listening = [line.split()[3] for proto in ("-Htln", "-Huln")
                 for line in host.run("ss %s", proto).stdout.splitlines() if line.strip()]
    assert "%s:9093" % private_address(host) in listening
    assert not [a for a in listening if a.endswith(":9094")], listening
    # Prometheus sends to it.
    _, body = prometheus_get("/api/v1/alertmanagers")
    assert [a["url"] for a in body["data"]["activeAlertmanagers"]] == [
        "http://%s:9093/api/v2/alerts" % private_address(host)]
    # Its UI and API ask for the monitoring login (matcraft_monitoring_web_password).
    status, _ = alertmanager_status("/api/v2/status", auth=False)
    assert status == 401, status
    web = host.file("/etc/prometheus/alertmanager-web.yml")
    assert (web.user, web.group, web.mode) == ("root", "prometheus", 0o640)
    assert variables(host)["matcraft_monitoring_web_password"] not in web.content_string


def test_api_error_rate_alert_reaches_the_webhook(webhook):
    """The API answers 500 for a while; MatcraftApiErrorRateHigh (critical) reaches the webhook."""
    host = mon()
    load_unit = "matcraft-test-load"
    host.run("systemctl stop %s", load_unit)
    host.run("systemctl reset-failed %s", load_unit)
    fault = host.run(
        "curl -sS --max-time 10 -X POST -H 'Content-Type: application/json' "
        "-d '{\"status\": 500, \"seconds\": 150}' https://matcraft.test/v1/admin/fault")
    assert fault.rc == 0 and '"status": 500' in fault.stdout, fault.stdout + fault.stderr
    # Bounded load: at most 750 requests, at most 150 seconds.
    load = host.run(
        "systemd-run --unit=%s --property=RuntimeMaxSec=150 /bin/bash -c "
        "'for i in $(seq 1 750); do curl -s -o /dev/null --max-time 2 https://matcraft.test/v1/campaigns; "
        "sleep 0.2; done'", load_unit)
    assert load.rc == 0, load.stderr
    try:
        alerts = wait_for(
            "MatcraftApiErrorRateHigh (critical) at the webhook",
            lambda: notified_alerts("MatcraftApiErrorRateHigh", "critical"), timeout=150)
        assert "runbook_url" in alerts[0]["annotations"]
        # The warning fires as well, and Alertmanager inhibits it (critical of the same alert).
        def warning_suppressed():
            for alert in alertmanager_get('/api/v2/alerts?filter=alertname%3D%22MatcraftApiErrorRateHigh%22'):
                if alert["labels"].get("severity") == "warning":
                    return alert if alert["status"]["inhibitedBy"] else None
            return None

        warning = wait_for("the warning to be inhibited", warning_suppressed, timeout=30)
        assert warning["status"]["state"] == "suppressed"
    finally:
        host.run("systemctl stop %s", load_unit)
        host.run("curl -sS --max-time 10 -X POST -H 'Content-Type: application/json' "
                 "-d '{\"status\": 500, \"seconds\": 0}' https://matcraft.test/v1/admin/fault")


def _celery_message(number, queue):
    """A Celery protocol 2 message as kombu's Redis transport stores it."""
    import base64
    import uuid

    task_id = str(uuid.UUID(int=number))
    body = base64.b64encode(json.dumps([[number, 1.0], {}, {"callbacks": None, "errbacks": None,
                                                             "chain": None, "chord": None}]).encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "materia.tasks.run_job", "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "argsrepr": "(%d, 1.0)" % number,
                    "kwargsrepr": "{}", "origin": "monitoring-test"},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })


def test_queue_depth_alert_with_no_worker(webhook):
    """12 tasks pushed to the default queue, no worker consumes them: the queue-depth alert fires."""
    host = svc()
    password = variables(host)["matcraft_redis_password"]
    critical = variables(host)["prometheus_alert_worker_queue_depth_critical"]
    messages = [_celery_message(n, "default") for n in range(1, critical + 3)]
    push = host.run("REDISCLI_AUTH=%s redis-cli --no-auth-warning --user matcraft -n 0 LPUSH default "
                    + " ".join(["%s"] * len(messages)), password, *messages)
    assert push.rc == 0 and push.stdout.strip() == str(len(messages)), push.stdout + push.stderr
    try:
        alerts = wait_for(
            "MatcraftWorkerQueueDepthHigh (critical, queue default) at the webhook",
            lambda: [a for a in notified_alerts("MatcraftWorkerQueueDepthHigh", "critical")
                     if a["labels"].get("key") == "default"], timeout=120)
        assert alerts[0]["labels"]["db"] == "db0"
        firing = query('ALERTS{alertname="MatcraftWorkerQueueDepthHigh", alertstate="firing", key="default"}')
        assert {a["metric"]["severity"] for a in firing} == {"warning", "critical"}, firing
        # The other queues are empty: no alert for them.
        assert not [a for a in notified_alerts("MatcraftWorkerQueueDepthHigh") if a["labels"].get("key") != "default"]
    finally:
        host.run("REDISCLI_AUTH=%s redis-cli --no-auth-warning --user matcraft -n 0 DEL default", password)
