"""Least network (docs/security.md, item 6), on the deployed small tier: only the hosts that need a
port reach it, and the API, worker and sidecar units reach only the addresses they need.

The exporters run on the data hosts and read PostgreSQL and Redis locally, so the monitoring host
reaches neither (while Prometheus still scrapes both exporters); the worker sidecar is for the
monitoring host, not the edge. The units' IPAddressDeny=any / IPAddressAllow= are proven by the
kernel: a process put into the running unit's cgroup reaches an allowed address and not another
one that the same host reaches from outside the unit (sshd of another scenario host, which the
firewall opens to the scenario network), while the services themselves answer end to end.
This file runs before test_monitoring_checks.py and test_site.py and breaks nothing.
"""

import json
import os

import pytest
import yaml

from helpers import address_of, peer, probe_tcp, wait_for

testinfra_hosts = ["site-monitor1"]

SCENARIO_VARS = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "group_vars", "all", "zz_molecule.yml")))
WORKERS = ("site-worker1", "site-worker2")


def ip(name):
    return address_of(peer(name))


def prometheus_query(host, expr):
    args = ["curl", "-sS", "-G", "--max-time", "15", "-u", "matcraft:" + SCENARIO_VARS["matcraft_monitoring_web_password"],
            "--data-urlencode", "query=" + expr, "--cacert", "/etc/matcraft/pki/ca.crt",
            "https://%s:9090/api/v1/query" % address_of(host)]
    result = host.run(" ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "success", body
    return body["data"]["result"]


def connect_from_unit(node, unit, address, port, timeout=3):
    """(connected, cgroup) of a TCP connection to address:port opened by a root shell that first moves
    itself into the cgroup of the running unit (the unified hierarchy, where systemd attaches the
    IPAddressDeny/IPAddressAllow BPF programs); cgroup is where the shell ran, to check the move."""
    pid = node.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
    assert pid not in ("", "0"), "%s is not running" % unit
    cgroup = node.run("sed -n 's/^0:://p' /proc/%s/cgroup", pid).stdout.strip()
    assert cgroup.endswith("/%s.service" % unit), (unit, cgroup)
    root = "/sys/fs/cgroup/unified" if node.file("/sys/fs/cgroup/unified/cgroup.procs").exists else "/sys/fs/cgroup"
    # Quoted: a template unit's slice has an escaped name (system-matcraft\x2dworker.slice).
    script = ("echo $$ > '%s%s/cgroup.procs' && sed -n 's/^0:://p' /proc/self/cgroup && "
              "exec timeout %d bash -c 'exec 3<>/dev/tcp/%s/%d'") % (root, cgroup, timeout, address, port)
    run = node.run("sh -c %s", script)
    return run.rc == 0, run.stdout.strip()


def test_the_monitoring_host_reaches_neither_postgresql_nor_redis_and_the_exporters_are_up(host):
    """postgres_exporter and redis_exporter run on site-db1 and site-redis1 and connect locally:
    the firewall keeps the monitoring host out of 5432 and 6380 (both ports answer the API host),
    pg_hba.conf admits the monitoring role from loopback only, and Prometheus still has both
    exporters up and connected to their services."""
    api = peer("site-api1")
    for name, port in (("site-db1", 5432), ("site-redis1", 6380)):
        assert probe_tcp(api, ip(name), port), "%s:%d does not answer the API host" % (name, port)
        assert not probe_tcp(host, ip(name), port), "the monitoring host reached %s:%d" % (name, port)
    hba = peer("site-db1").run("grep -h matcraft_monitor /etc/postgresql/15/main/pg_hba.conf").stdout.split("\n")
    sources = sorted(line.split()[3] for line in hba if line.startswith("hostssl"))
    assert sources == ["127.0.0.1/32", "::1/128"], hba
    for job, connected in (("postgres", "pg_up"), ("redis", "redis_up")):
        wait_for("%s exporter up and connected" % job, lambda j=job, c=connected: (
            [r for r in prometheus_query(host, 'up{job="%s"}' % j) if r["value"][1] == "1"]
            and [r for r in prometheus_query(host, '%s{job="%s"}' % (c, j)) if r["value"][1] == "1"]), 90, 3)


def test_the_worker_sidecar_is_for_the_monitoring_host_not_the_edge(host):
    edge = peer("site-api1")
    for name in WORKERS:
        assert probe_tcp(host, ip(name), 9808), "the monitoring host does not reach the sidecar of " + name
        assert not probe_tcp(edge, ip(name), 9808), "the edge reached the sidecar of " + name
    probes = prometheus_query(host, 'probe_success{job="worker_health"}')
    assert sorted(r["metric"]["matcraft_host"] for r in probes if r["value"][1] == "1") == list(WORKERS), probes


@pytest.mark.parametrize("name, unit, allowed, denied", [
    ("site-api1", "matcraft-api", [("site-db1", 5432), ("site-redis1", 6380)], ("site-worker1", 22)),
    ("site-worker1", "matcraft-worker@default", [("site-db1", 5432), ("site-redis1", 6380)], ("site-api1", 22)),
    ("site-worker1", "matcraft-worker-health", [("site-redis1", 6380)], ("site-api1", 22)),
])
def test_units_reach_only_the_addresses_they_need(host, name, unit, allowed, denied):
    node = peer(name)
    for target, port in allowed:
        connected, where = connect_from_unit(node, unit, ip(target), port)
        assert connected, "%s (%s) did not reach %s:%d" % (unit, where, target, port)
    target, port = denied
    assert probe_tcp(node, ip(target), port), "%s does not reach %s:%d even outside %s" % (name, target, port, unit)
    connected, where = connect_from_unit(node, unit, ip(target), port)
    assert where.endswith("/%s.service" % unit), where
    assert not connected, "%s reached %s:%d from the cgroup of %s" % (name, target, port, unit)


def test_the_limited_services_still_work_end_to_end(host):
    """The API answers /health (database and Redis checked) to the edge's client certificate (the
    only one it accepts: test_site.py) and the sidecar of each worker answers 200 to the monitoring
    host (celery inspect ping over the broker, a consumer for every queue); a job through the edge
    is in test_site.py."""
    edge = peer("site-api1")
    for name in ("site-api1",):
        check = edge.run("curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt --cert /etc/matcraft/edge-client/client.crt "
                         "--key /etc/matcraft/edge-client/client.key -o /dev/null -w '%%{http_code}' "
                         "https://%s:8000/health", ip(name))
        assert check.stdout == "200", (name, check.stdout, check.stderr)
    for name in WORKERS:
        check = host.run("curl -sS --max-time 15 -o /dev/null -w '%%{http_code}' http://%s:9808/health", ip(name))
        assert check.stdout == "200", (name, check.stdout, check.stderr)
    for name, unit in (("site-api1", "matcraft-api"), ("site-worker1", "matcraft-worker@default"),
                       ("site-worker1", "matcraft-worker-health")):
        shown = peer(name).run("systemctl show -p IPAddressDeny -p IPAddressAllow %s", unit).stdout
        assert "IPAddressDeny=::/0 0.0.0.0/0" in shown or "IPAddressDeny=0.0.0.0/0 ::/0" in shown, (unit, shown)
        assert "127.0.0.0/8" in shown and ip("site-db1") in shown and ip("site-redis1") in shown, (unit, shown)
