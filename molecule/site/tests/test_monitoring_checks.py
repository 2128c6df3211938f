"""Monitoring checks against the real services of the small tier (this file runs before test_site.py, on the deployed hosts):
exporters on the private address only, exporter credentials in root-only files and never on a
command line, the least-privilege monitoring role, the monitoring host's firewall, and
Alertmanager's inhibition rules at work on live alerts."""

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from helpers import address_of, peer, probe_tcp, wait_for

testinfra_hosts = ["site-monitor1"]

SCENARIO_VARS = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "group_vars", "all", "zz_molecule.yml")))
EXPORTER_SECRETS = ("matcraft_db_monitoring_password", "matcraft_redis_exporter_password")
# Every exporter of the small tier: host -> {unit: port}.
EXPORTERS = {
    "site-api1": {"prometheus-node-exporter": 9100, "prometheus-nginx-exporter": 9113, "mtail": 3903},
    "site-worker1": {"prometheus-node-exporter": 9100},
    "site-worker2": {"prometheus-node-exporter": 9100},
    "site-db1": {"prometheus-node-exporter": 9100, "prometheus-postgres-exporter": 9187},
    "site-redis1": {"prometheus-node-exporter": 9100, "prometheus-redis-exporter": 9121},
    "site-monitor1": {"prometheus-node-exporter": 9100, "prometheus-blackbox-exporter": 9115},
}


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_exporters_listen_on_the_private_address_only(name):
    node = peer(name)
    address = address_of(node)
    listening = [line.split()[3] for line in node.run("ss -Htln").stdout.splitlines() if line.strip()]
    for unit, port in EXPORTERS[name].items():
        local = [entry for entry in listening if entry.endswith(":%d" % port)]
        assert local == ["%s:%d" % (address, port)], "%s on %s listens on %s, not only on %s" % (unit, name, local, address)


@pytest.mark.parametrize("name, unit", [("site-db1", "prometheus-postgres-exporter"),
                                        ("site-redis1", "prometheus-redis-exporter")])
def test_exporter_credentials_in_root_only_files_and_not_on_the_command_line(name, unit):
    node = peer(name)
    env = node.file("/etc/matcraft/exporters/%s.env" % unit)
    assert env.exists, unit
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600), unit
    assert "EnvironmentFile=/etc/matcraft/exporters/%s.env" % unit in node.run("systemctl cat %s", unit).stdout
    pid = node.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
    assert pid not in ("", "0"), "%s is not running" % unit
    cmdline = node.file("/proc/%s/cmdline" % pid).content_string.replace("\0", " ")
    for secret in EXPORTER_SECRETS:
        assert SCENARIO_VARS[secret] not in cmdline, "%s has a secret on its command line" % unit
    # And it works with them: the exporter is connected to its service.
    metrics = node.run("curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt https://%s:%s/metrics",
                       address_of(node), "9187" if "postgres" in unit else "9121").stdout
    assert ("\npg_up 1" if "postgres" in unit else "\nredis_up 1") in metrics, metrics[-800:]


def test_the_monitoring_role_is_least_privilege():
    result = peer("site-db1").run(
        "runuser -u postgres -- psql -XAtc \"SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
        "rolbypassrls, pg_has_role('matcraft_monitor', 'pg_monitor', 'member') FROM pg_roles "
        "WHERE rolname = 'matcraft_monitor'\"")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "f|f|f|f|f|t", result.stdout


@pytest.mark.parametrize("port", [9090, 9093, 9100, 9115])
def test_only_the_monitoring_host_reaches_its_ports(host, port):
    """site-worker1, site-db1 and site-api1 are in no group the monitoring host lets in."""
    target = address_of(host)
    assert probe_tcp(host, target, port), "port %d does not listen on the monitoring host" % port
    for outsider in ("site-worker1", "site-db1", "site-api1"):
        assert not probe_tcp(peer(outsider), target, port), "%s reached %s:%d" % (outsider, target, port)


def _alertmanager(host, method, path, body=None):
    args = ["curl", "-sS", "--max-time", "10", "--cacert", "/etc/matcraft/pki/ca.crt",
            "-u", "matcraft:" + SCENARIO_VARS["matcraft_monitoring_web_password"], "-X", method]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    args.append("https://%s:9093%s" % (address_of(host), path))
    result = host.run(" ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_alertmanager_inhibits_what_a_more_serious_alert_explains(host):
    """Live alerts through the real Alertmanager: a critical alert silences the warning of the same
    alert on the same target; MatcraftTargetDown silences every other alert of its host;
    MatcraftWorkerDown silences the health-probe alert of its host. Alerts of another host and
    the source alerts themselves stay active."""
    ends = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
    base = {"job": "node", "instance": "inhibit-test:9100", "matcraft_host": "inhibit-test"}
    alerts = {
        "critical": dict(base, alertname="InhibitTestDisk", severity="critical"),
        "warning": dict(base, alertname="InhibitTestDisk", severity="warning"),
        "target_down": dict(base, alertname="MatcraftTargetDown", severity="critical", matcraft_host="inhibit-down",
                            instance="inhibit-down:9100"),
        "same_host": dict(base, alertname="InhibitTestOther", severity="warning", job="postgres",
                          matcraft_host="inhibit-down", instance="inhibit-down:9187"),
        "other_host": dict(base, alertname="InhibitTestOther", severity="warning", matcraft_host="inhibit-up",
                           instance="inhibit-up:9100"),
        "worker_down": dict(base, alertname="MatcraftWorkerDown", severity="critical", matcraft_host="inhibit-w"),
        "probe_failed": dict(base, alertname="MatcraftWorkerHealthProbeFailed", severity="warning",
                             matcraft_host="inhibit-w"),
    }
    _alertmanager(host, "POST", "/api/v2/alerts", [{"labels": labels, "endsAt": ends} for labels in alerts.values()])
    names = set(label["alertname"] for label in alerts.values())

    def states():
        found = _alertmanager(host, "GET", "/api/v2/alerts")
        by_labels = {}
        for alert in found:
            if alert["labels"].get("alertname") in names:
                by_labels[json.dumps(alert["labels"], sort_keys=True)] = alert["status"]
        return {key: by_labels.get(json.dumps(labels, sort_keys=True)) for key, labels in alerts.items()}

    expected = {"critical": "active", "warning": "suppressed", "target_down": "active", "same_host": "suppressed",
                "other_host": "active", "worker_down": "active", "probe_failed": "suppressed"}
    try:
        got = wait_for("Alertmanager's inhibitions", lambda: (lambda s: s if all(s.values()) and {
            key: status["state"] for key, status in s.items()} == expected else None)(states()), 60, 2)
        assert all(got[key]["inhibitedBy"] for key, state in expected.items() if state == "suppressed"), got
    finally:
        now = datetime.now(timezone.utc).isoformat()
        _alertmanager(host, "POST", "/api/v2/alerts",
                      [{"labels": labels, "startsAt": now, "endsAt": now} for labels in alerts.values()])
        time.sleep(1)
