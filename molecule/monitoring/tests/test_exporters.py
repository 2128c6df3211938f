"""Exporters: each runs under systemd, listens on the private address only,
keeps its credentials in a root-only file, and only the monitoring host
reaches it."""

import pytest

from helpers import assert_unit_running, probe_tcp
from monitoring_api import mon, private_address, svc, variables

UNITS = {
    # unit: (port, inventory groups of the hosts that run it)
    "prometheus-node-exporter": (9100, None),
    "prometheus-postgres-exporter": (9187, {"matcraft_database", "matcraft_database_replica"}),
    "prometheus-redis-exporter": (9121, {"matcraft_redis"}),
    "prometheus-nginx-exporter": (9113, {"matcraft_edge"}),
    "mtail": (3903, {"matcraft_edge"}),
    "prometheus-blackbox-exporter": (9115, {"matcraft_monitoring"}),
}
SECRET_ENV_FILES = ("prometheus-postgres-exporter", "prometheus-redis-exporter")


def _units_of(host):
    groups = set(variables(host)["group_names"])
    return {unit: port for unit, (port, wanted) in UNITS.items() if wanted is None or groups & wanted}


def test_exporters_run_under_systemd(host):
    units = _units_of(host)
    assert units, "no exporter expected on this host?"
    for unit in units:
        assert_unit_running(host, unit)


def test_exporters_listen_on_the_private_address_only(host):
    address = private_address(host)
    listening = host.run("ss -Htln").stdout.split("\n")
    for unit, port in _units_of(host).items():
        local = [line.split()[3] for line in listening if line.strip() and line.split()[3].endswith(":%d" % port)]
        assert local == ["%s:%d" % (address, port)], "%s listens on %s, not only on %s" % (unit, local, address)


def test_credentials_in_root_only_environment_files():
    host = svc()
    for unit in SECRET_ENV_FILES:
        env = host.file("/etc/matcraft/exporters/%s.env" % unit)
        assert env.exists, unit
        assert (env.user, env.group, env.mode) == ("root", "root", 0o600), unit
        unit_text = host.run("systemctl cat %s", unit).stdout
        assert "EnvironmentFile=/etc/matcraft/exporters/%s.env" % unit in unit_text
        # Not on the command line of the running exporter.
        pid = host.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
        cmdline = host.file("/proc/%s/cmdline" % pid).content_string.replace("\0", " ")
        for secret in ("matcraft_db_monitoring_password", "matcraft_redis_exporter_password"):
            assert variables(host)[secret] not in cmdline, unit
    # The database connection of postgres_exporter works with the least-privilege role.
    up = host.run("curl -sS --max-time 10 http://%s:9187/metrics", private_address(host)).stdout
    assert "\npg_up 1" in up, "postgres_exporter cannot connect:\n" + "\n".join(
        line for line in up.splitlines() if line.startswith("pg_up"))
    # The extra queries the replica lag and WAL archive rules read (a primary here).
    for series in ("pg_replication_lag{", "pg_replication_is_replica{", "pg_stat_archiver_failed_count{"):
        assert "\n" + series in up, series
    assert [line for line in up.splitlines() if line.startswith("pg_replication_is_replica{")][0].endswith(" 0")


def test_monitoring_role_is_least_privilege():
    host = svc()
    result = host.run(
        "runuser -u postgres -- psql -XAtc \"SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
        "rolbypassrls, pg_has_role('matcraft_monitor', 'pg_monitor', 'member') FROM pg_roles "
        "WHERE rolname = 'matcraft_monitor'\"")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "f|f|f|f|f|t", result.stdout


def test_redis_exporter_counts_the_celery_queues():
    host = svc()
    metrics = host.run("curl -sS --max-time 10 http://%s:9121/metrics", private_address(host)).stdout
    assert "\nredis_up 1" in metrics
    for queue in ("default", "gpu_training", "high_priority", "low_priority"):
        assert 'redis_key_size{db="db0",key="%s"}' % queue in metrics, queue


@pytest.mark.parametrize("port", [9100, 9115, 9090, 9093])
def test_only_monitoring_hosts_reach_the_monitoring_host(port):
    """monitoring-svc is in no group allowed to the monitoring host's ports."""
    target = private_address(mon())
    assert probe_tcp(mon(), target, port), "port %d does not listen on the monitoring host" % port
    assert not probe_tcp(svc(), target, port), "monitoring-svc reached %s:%d" % (target, port)


def test_monitoring_host_reaches_the_exporters():
    target = private_address(svc())
    for unit, (port, _) in UNITS.items():
        if unit == "prometheus-blackbox-exporter":
            continue
        assert probe_tcp(mon(), target, port), "the monitoring host cannot reach %s on %s:%d" % (unit, target, port)
