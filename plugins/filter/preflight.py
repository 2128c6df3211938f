# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""The preflight role's inventory checks, as filters (unit tests: tests/unit/test_preflight_filters.py).

preflight_problems   hostvars, play hosts, groups, settings -> one message per mistake
                     ("<variable>: <what is wrong>. Fix: <how>"), never a secret value
preflight_warnings   hostvars, play hosts, settings, groups -> warnings (SSH open to the world
                     or an unencrypted backup repository on purpose, unknown variables, typos,
                     removed variables)
preflight_known_variables  the variable names the collection's roles declare
preflight_host_problems  one host's facts, name, groups, settings -> {problems, warnings}:
                     an operating system not supported (or untested: a warning), a host
                     smaller than its tier's specification (a warning, or a problem when strict)
preflight_secret_problems  the secrets (name -> value) -> one message per weak, placeholder or
                     shared secret, naming it, never its value

Every check reads only what the inventory sets (group_vars, host_vars, extra
vars: hostvars hold no role defaults); an unset variable keeps its role
default, which is valid. Checks of a value run on every host; a problem that
only some hosts have names them ("<variable> on host db1: ...").
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping

try:
    from ansible_collections.matcraft.deploy.plugins.filter.matcraft import (
        duplicate_secrets, fqdn_problem, origin_problem, secret_problem)
except ImportError:  # unit tests: plugins/filter is on sys.path
    from matcraft import (  # type: ignore[no-redef]
        duplicate_secrets, fqdn_problem, origin_problem, secret_problem)

try:
    from jinja2 import Undefined
except ImportError:  # pragma: no cover - ansible-core depends on Jinja2
    class Undefined(object):  # type: ignore[no-redef]
        """Stand-in: nothing is undefined without Jinja2."""

try:
    import yaml
except ImportError:  # pragma: no cover - ansible-core depends on PyYAML
    yaml = None


MISSING = object()

# Role prefixes of the collection (roles/<name>) and the prefix of its shared inputs.
ROLE_PREFIXES = ("common", "pki", "redis", "postgresql", "app", "api", "worker", "nginx",
                 "exporters", "prometheus", "alertmanager", "grafana", "preflight")

# The shared inputs of the collection (group_vars/all): the roles' defaults and the
# playbooks read them; documented in the README, docs/ and the example inventories.
MATCRAFT_INPUTS = (
    "matcraft_acme_email", "matcraft_api_tls", "matcraft_api_tls_client_auth", "matcraft_api_tls_name", "matcraft_cors_origins",
    "matcraft_db_monitoring_password", "matcraft_db_password", "matcraft_db_replication_password",
    "matcraft_domain", "matcraft_edge_access_log", "matcraft_environment",
    "matcraft_grafana_admin_password", "matcraft_grafana_enabled", "matcraft_monitoring_tls",
    "matcraft_monitoring_web_password", "matcraft_pgbackrest_cipher_pass", "matcraft_pki_ca_passphrase",
    "matcraft_pki_ca_passphrase_previous", "matcraft_private_address",
    "matcraft_redis_exporter_password", "matcraft_redis_password", "matcraft_secret_key",
    "matcraft_sentry_dsn", "matcraft_tier", "matcraft_tls_mode", "matcraft_version",
)
# Facts the playbooks and this role set (present in hostvars later in a run),
# and the playbooks' own variables (matcraft_baseline_hosts: baseline.yml's
# hosts, set by the layer playbooks that import it).
INTERNAL_FACTS = (
    "matcraft_baseline_done", "matcraft_baseline_hosts", "matcraft_app_current", "matcraft_app_waiting_for",
    "preflight_passed", "preflight_inventory_problems",
    "preflight_secret_problems", "preflight_host_result", "preflight_inventory_warnings",
)

ENVIRONMENT_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

# --- Numbers ------------------------------------------------------------------
# name -> (lowest, highest, what the number counts, the role's default).
PORT = (1, 65535, "a TCP port")
_PORTS = {
    "alertmanager_port": 9093, "api_port": 8000, "app_database_port": 5432, "app_redis_port": 6379,
    "app_redis_tls_port": 6380, "common_firewall_ssh_port": 22, "exporters_blackbox_port": 9115,
    "exporters_mtail_port": 3903, "exporters_nginx_port": 9113, "exporters_node_port": 9100,
    "exporters_postgres_port": 9187, "exporters_postgres_server_port": 5432, "exporters_redis_port": 9121,
    "exporters_redis_tls_port": 6380, "grafana_port": 3000, "nginx_stub_status_port": 8080,
    "nginx_upstream_port": 8000, "postgresql_drill_port": 55432, "postgresql_pgbackrest_ssh_port": 22,
    "postgresql_port": 5432, "prometheus_alertmanager_port": 9093, "prometheus_port": 9090,
    "prometheus_worker_health_port": 9808, "redis_port": 6379, "redis_tls_port": 6380,
    "worker_health_port": 9808,
}
INTEGERS = {name: PORT + (default,) for name, default in _PORTS.items()}
INTEGERS.update({
    # Backups and recovery.
    "postgresql_pgbackrest_retention_full_days": (1, 3650, "days", 7),
    "postgresql_archive_timeout": (1, 86400, "seconds", 60),
    "postgresql_restore_timeout": (60, 604800, "seconds", 3600),
    "postgresql_drill_timeout": (60, 604800, "seconds", 3600),
    # PostgreSQL sizing.
    "postgresql_max_connections": (20, 10000, "connections", 100),
    "postgresql_max_connections_min": (20, 10000, "connections", 100),
    "postgresql_reserved_connections": (3, 1000, "connections", 10),
    "postgresql_memory_mb": (256, 16777216, "MiB", "the host's RAM"),
    "postgresql_vcpus": (1, 1024, "vCPUs", "the host's vCPUs"),
    # API (gunicorn) and its service.
    "api_workers": (1, 64, "processes", "from the tier"),
    "api_timeout": (1, 3600, "seconds", 60),
    "api_graceful_timeout": (1, 3600, "seconds", 30),
    "api_keepalive": (1, 3600, "seconds", 5),
    "api_max_requests": (0, 10000000, "requests (0: never)", 2000),
    "api_max_requests_jitter": (0, 10000000, "requests", 200),
    "api_start_timeout": (1, 3600, "seconds", 90),
    "api_restart_sec": (0, 3600, "seconds", 2),
    "api_start_limit_interval": (1, 86400, "seconds", 300),
    "api_start_limit_burst": (1, 1000, "starts", 5),
    "api_health_retries": (1, 1000, "attempts", 30),
    "api_health_delay": (1, 600, "seconds", 2),
    # Releases and Redis database.
    "app_keep_releases": (2, 100, "releases", 3),
    "app_redis_db": (0, 15, "a Redis database number", 0),
    # Workers (Celery) and the health sidecar.
    "worker_concurrency": (1, 256, "processes", "from the tier"),
    "worker_time_limit": (1, 604800, "seconds", 3600),
    "worker_soft_time_limit": (1, 604800, "seconds", 3000),
    "worker_prefetch_multiplier": (1, 100, "tasks", 1),
    "worker_stop_timeout": (1, 604800, "seconds", 3660),
    "worker_restart_sec": (0, 3600, "seconds", 5),
    "worker_start_limit_interval": (1, 86400, "seconds", 300),
    "worker_start_limit_burst": (1, 1000, "starts", 5),
    "worker_health_timeout": (2, 60, "seconds", 3),
    "worker_health_cache_ttl": (0, 3600, "seconds", 2),
    "worker_health_retries": (1, 1000, "attempts", 30),
    "worker_health_delay": (1, 600, "seconds", 2),
    # Edge.
    "nginx_worker_connections": (64, 1048576, "connections", "from the tier"),
    "nginx_hsts_max_age": (0, 315360000, "seconds", 63072000),
    "nginx_upstream_max_fails": (0, 1000, "failures (0: never marked down)", 3),
    "nginx_upstream_keepalive": (1, 10000, "connections", 32),
    "nginx_proxy_next_upstream_tries": (0, 100, "tries (0: no limit)", 2),
    "nginx_client_max_body_size_mb": (1, 102400, "MiB", 1),
    "nginx_rate_limit_burst": (0, 1000000, "requests", 40),
    "nginx_conn_limit_per_ip": (1, 1000000, "connections", 100),
    "nginx_rate_limit_retry_after": (1, 3600, "seconds", 1),
    "nginx_waf_paranoia_level": (1, 4, "a CRS paranoia level", 1),
    "nginx_waf_inbound_anomaly_threshold": (1, 10000, "points", 5),
    "nginx_waf_body_nofiles_limit_kb": (1, 1048576, "KiB", 10240),
    # Certificates.
    "pki_ca_valid_days": (1, 36500, "days", 3650),
    "pki_cert_valid_days": (1, 3650, "days", 90),
    "pki_renew_before_days": (1, 3650, "days", 30),
    # Baseline, exporters, monitoring.
    "common_apt_cache_valid_time": (0, 604800, "seconds", 3600),
    "exporters_restart_sec": (0, 3600, "seconds", 5),
    "exporters_start_limit_interval_sec": (1, 86400, "seconds", 300),
    "exporters_start_limit_burst": (1, 1000, "starts", 10),
    "exporters_postgres_connection_limit": (1, 100, "connections", 5),
    "redis_vm_overcommit_memory": (0, 2, "a vm.overcommit_memory mode", 1),
    "prometheus_web_bcrypt_rounds": (4, 15, "a bcrypt cost", 10),
    "alertmanager_web_bcrypt_rounds": (4, 15, "a bcrypt cost", 10),
    "prometheus_alert_api_error_rate_warning_percent": (0, 100, "percent", 1),
    "prometheus_alert_api_error_rate_critical_percent": (0, 100, "percent", 5),
    "prometheus_alert_api_error_rate_min_requests_per_second": (0, 1000000, "requests per second", 0),
    "prometheus_alert_api_latency_p95_warning_ms": (1, 600000, "milliseconds", 500),
    "prometheus_alert_api_latency_p95_critical_ms": (1, 600000, "milliseconds", 2000),
    "prometheus_alert_worker_queue_depth_warning": (1, 10000000, "tasks", 50),
    "prometheus_alert_worker_queue_depth_critical": (1, 10000000, "tasks", 200),
    "prometheus_alert_database_connections_warning_percent": (1, 100, "percent", 80),
    "prometheus_alert_database_connections_critical_percent": (1, 100, "percent", 95),
    "prometheus_alert_database_disk_warning_percent": (1, 100, "percent", 70),
    "prometheus_alert_database_disk_critical_percent": (1, 100, "percent", 85),
    "prometheus_alert_redis_memory_warning_percent": (1, 100, "percent", 70),
    "prometheus_alert_redis_memory_critical_percent": (1, 100, "percent", 85),
    "prometheus_alert_host_disk_warning_percent": (1, 100, "percent", 80),
    "prometheus_alert_host_disk_critical_percent": (1, 100, "percent", 90),
    "prometheus_alert_host_memory_available_percent": (1, 99, "percent", 10),
    "prometheus_alert_wal_archive_timeout_seconds": (1, 86400, "seconds", 60),
    "prometheus_alert_backup_full_max_age_hours": (1, 8760, "hours", 26),
    "prometheus_alert_replica_lag_seconds": (1, 86400, "seconds", 120),
    "prometheus_alert_tls_certificate_expiry_days": (1, 365, "days", 14),
})
# Fractions: name -> (lowest, highest, meaning, default).
FRACTIONS = {
    "postgresql_connection_headroom": (1.0, 4.0, "a factor", 1.25),
    "redis_maxmemory_ram_share": (0.05, 0.95, "a share of the host's RAM", 0.75),
}
# Per-tier dictionaries of whole numbers: name -> (lowest, highest, meaning).
TIER_INTEGERS = {
    "worker_concurrency_by_tier": (1, 256, "processes"),
    "nginx_worker_connections_by_tier": (64, 1048576, "connections"),
}

# --- Durations and sizes --------------------------------------------------------
_PROM_UNITS = ("ms", "s", "m", "h", "d", "w", "y")
_PROM_DURATION = re.compile(r"^(?:(\d+)(ms|s|m|h|d|w|y))+$")
_NGINX_TIME = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|M|y)?\s*)+$")
_SYSTEMD_TIME = re.compile(
    r"^(?:\d+(?:\.\d+)?\s*(?:us|usec|ms|msec|s|sec|second|seconds|m|min|minute|minutes|h|hr|hour|hours"
    r"|d|day|days|w|week|weeks|M|month|months|y|year|years)?\s*)+$")
# Prometheus durations (a number and a unit, such as 30s, 15d or 1h30m).
PROM_DURATIONS = {
    "prometheus_retention": "15d", "alertmanager_data_retention": "120h",
    "prometheus_scrape_interval": "30s", "prometheus_scrape_timeout": "10s",
    "prometheus_evaluation_interval": "30s", "grafana_prometheus_scrape_interval": "30s",
    "exporters_blackbox_probe_timeout": "5s", "alertmanager_group_wait": "30s",
    "alertmanager_group_interval": "5m", "alertmanager_repeat_interval": "4h",
    "alertmanager_resolve_timeout": "5m", "prometheus_alert_api_error_rate_for": "5m",
    "prometheus_alert_api_rate_window": "5m", "prometheus_alert_api_latency_for": "5m",
    "prometheus_alert_worker_queue_depth_for": "10m", "prometheus_alert_database_connections_for": "5m",
    "prometheus_alert_database_disk_for": "10m", "prometheus_alert_redis_memory_for": "5m",
    "prometheus_alert_target_down_for": "2m", "prometheus_alert_worker_health_for": "2m",
    "prometheus_alert_wal_archiving_failures_window": "5m", "prometheus_alert_wal_archiving_failing_for": "10m",
    "prometheus_alert_wal_archive_stale_for": "5m", "prometheus_alert_backup_full_too_old_for": "10m",
    "prometheus_alert_replica_lag_for": "5m", "prometheus_alert_replica_not_streaming_for": "2m",
    "prometheus_alert_tls_certificate_expiry_for": "10m", "prometheus_alert_host_disk_for": "10m",
    "prometheus_alert_host_memory_for": "10m",
}
# nginx times (a number with an optional unit: 60s, 5m; a plain number is seconds).
NGINX_TIMES = {
    "nginx_upstream_fail_timeout": "10s", "nginx_upstream_keepalive_timeout": "60s",
    "nginx_proxy_connect_timeout": "5s", "nginx_proxy_send_timeout": "60s",
    "nginx_proxy_read_timeout": "60s", "nginx_proxy_next_upstream_timeout": "15s",
    "nginx_client_body_timeout": "60s", "nginx_client_header_timeout": "15s",
    "nginx_keepalive_timeout": "65s", "nginx_websocket_timeout": "3600s",
}
# systemd time spans (10min, 12h, 0).
SYSTEMD_TIMES = {"postgresql_backup_randomized_delay": "10min", "postgresql_backup_timeout": "12h"}
_REDIS_SIZE = re.compile(r"^(\d+)\s*(b|k|kb|m|mb|g|gb)?$", re.I)

# --- Addresses --------------------------------------------------------------------
# Lists of networks (CIDRs; a bare address is a single-host network).
CIDR_LISTS = (
    "common_firewall_ssh_cidrs", "redis_firewall_from_cidrs", "api_firewall_from_cidrs",
    "worker_health_firewall_from_cidrs", "exporters_scrape_cidrs", "grafana_allowed_cidrs",
    "prometheus_web_allowed_cidrs", "alertmanager_allowed_cidrs", "nginx_rate_limit_trusted_cidrs",
    "nginx_firewall_cidrs", "nginx_real_ip_from", "nginx_admin_allowed_cidrs",
)
# Single addresses a host listens on (set per host when the inventory overrides them).
ADDRESSES = (
    "matcraft_private_address", "api_bind_address", "redis_private_address", "postgresql_listen_address",
    "exporters_listen_address", "prometheus_listen_address", "alertmanager_listen_address",
    "grafana_listen_address", "worker_health_address",
)

# Alert thresholds whose warning must stay below (or at) the critical one.
WARNING_CRITICAL = (
    ("prometheus_alert_api_error_rate_warning_percent", "prometheus_alert_api_error_rate_critical_percent", 1, 5),
    ("prometheus_alert_api_latency_p95_warning_ms", "prometheus_alert_api_latency_p95_critical_ms", 500, 2000),
    ("prometheus_alert_worker_queue_depth_warning", "prometheus_alert_worker_queue_depth_critical", 50, 200),
    ("prometheus_alert_database_connections_warning_percent",
     "prometheus_alert_database_connections_critical_percent", 80, 95),
    ("prometheus_alert_database_disk_warning_percent", "prometheus_alert_database_disk_critical_percent", 70, 85),
    ("prometheus_alert_redis_memory_warning_percent", "prometheus_alert_redis_memory_critical_percent", 70, 85),
    ("prometheus_alert_host_disk_warning_percent", "prometheus_alert_host_disk_critical_percent", 80, 90),
)


# --- Helpers ------------------------------------------------------------------------
def _get(variables, name, default=MISSING):
    """A variable of one host's inventory, or default. A value that cannot be
    templated (an undefined variable in it) counts as unset: the role reports it."""
    try:
        if name not in variables:
            return default
        value = variables[name]
    except Exception:  # pylint: disable=broad-except
        return default
    # ansible-core 2.19 hands over an undefined value as a marker (a Jinja2 Undefined).
    return default if isinstance(value, Undefined) else value


def _show(value):
    """A value as a message shows it (short; strings quoted)."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _whole_number(value):
    """int for a whole number (int, integral float, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _truthy(value):
    """Ansible's bool filter for the values an inventory writes."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true", "y", "t")
    return bool(value)


def _is_list(value):
    return isinstance(value, (list, tuple))


def prom_duration_seconds(value):
    """Seconds of a Prometheus duration such as '1h30m'; None when it is not one."""
    if not isinstance(value, str) or not _PROM_DURATION.fullmatch(value.strip()):
        return None
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * factor[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", value.strip()))


def redis_size_bytes(value):
    """Bytes of a Redis memory size (1gb, 512mb, 1073741824; binary units); None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    match = _REDIS_SIZE.fullmatch(str(value).strip())
    if not match:
        return None
    unit = (match.group(2) or "b").lower()[0]
    return int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]


def network_problem(value):
    """Why value is not an IPv4/IPv6 network (CIDR) or address; '' when it is one."""
    if not isinstance(value, str) or not value.strip():
        return "is empty" if value in (None, "") else "is not a string"
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return "is not an IPv4 or IPv6 network"
    return ""


def address_problem(value):
    """Why value is not a usable IP address of a host; '' when it is one."""
    if not isinstance(value, str) or not value.strip():
        return "is empty"
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return "is not an IPv4 or IPv6 address"
    if address.is_unspecified:
        return "is the wildcard address (every interface), not this host's private address"
    return ""


# --- The checks of one host's inventory ---------------------------------------------
def _integer_problems(variables):
    problems = []
    for name, (low, high, unit, default) in INTEGERS.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        number = _whole_number(value)
        scope = "whole number of %s" % unit if not unit.startswith("a ") else "whole number (%s)" % unit
        want = "it must be a %s from %d to %d" % (scope, low, high)
        if number is None:
            problems.append("%s: %s is not a whole number; %s. Fix: write a plain number, such as %s (the default)."
                            % (name, _show(value), want, default))
        elif not low <= number <= high:
            problems.append("%s: %d is out of range; %s. Fix: set a value in that range, such as %s (the default)."
                            % (name, number, want, default))
    for name, (low, high, meaning, default) in FRACTIONS.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        number = _number(value)
        if number is None or not low <= number <= high:
            problems.append("%s: %s is not %s from %s to %s. Fix: set a number in that range, such as %s (the default)."
                            % (name, _show(value), meaning, low, high, default))
    for name, (low, high, unit) in TIER_INTEGERS.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        if not isinstance(value, dict):
            problems.append("%s: is not a dictionary of tier -> number. Fix: write it as {small: N, medium: N}."
                            % name)
            continue
        for tier, item in value.items():
            number = _whole_number(item)
            if number is None or not low <= number <= high:
                problems.append("%s: %s of tier %s is not a whole number of %s from %d to %d. Fix: set each tier "
                                "to a number in that range." % (name, _show(item), tier, unit, low, high))
    return problems


def _duration_problems(variables):
    problems = []
    for name, default in PROM_DURATIONS.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        seconds = prom_duration_seconds(value)
        if seconds is None or seconds <= 0:
            problems.append("%s: %s is not a Prometheus duration above zero (a number and a unit of %s, "
                            "such as 30s, 5m or 1h30m). Fix: write it as such, for example %s (the default)."
                            % (name, _show(value), "/".join(_PROM_UNITS), default))
    value = _get(variables, "prometheus_retention_by_tier")
    if value is not MISSING:
        if not isinstance(value, dict):
            problems.append("prometheus_retention_by_tier: is not a dictionary of tier -> duration. "
                            "Fix: write it as {small: 15d, medium: 30d}.")
        else:
            for tier, item in value.items():
                seconds = prom_duration_seconds(item)
                if seconds is None or seconds <= 0:
                    problems.append("prometheus_retention_by_tier: %s of tier %s is not a Prometheus duration above "
                                    "zero. Fix: write a number of days such as 15d." % (_show(item), tier))
    for name, default in NGINX_TIMES.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        if isinstance(value, bool) or not _NGINX_TIME.fullmatch(str(value).strip()):
            problems.append("%s: %s is not an nginx time (a number with an optional unit ms, s, m, h, d). "
                            "Fix: write it as such, for example %s (the default)." % (name, _show(value), default))
    for name, default in SYSTEMD_TIMES.items():
        value = _get(variables, name)
        if value is MISSING:
            continue
        if isinstance(value, bool) or not _SYSTEMD_TIME.fullmatch(str(value).strip()):
            problems.append("%s: %s is not a systemd time span (such as 0, 30s, 10min or 12h). "
                            "Fix: write it as such, for example %s (the default)." % (name, _show(value), default))
    for name in ("redis_maxmemory",):
        value = _get(variables, name)
        if value is not MISSING and redis_size_bytes(value) is None:
            problems.append("redis_maxmemory: %s is not a memory size; it must be a whole number of bytes or a size "
                            "with a unit b, kb, mb or gb (binary), such as 1gb. Fix: write it as such, or remove it "
                            "to take the tier's size." % _show(value))
    value = _get(variables, "redis_maxmemory_by_tier")
    if value is not MISSING:
        if not isinstance(value, dict):
            problems.append("redis_maxmemory_by_tier: is not a dictionary of tier -> size. "
                            "Fix: write it as {small: 1gb, medium: 2gb}.")
        else:
            for tier, item in value.items():
                if not redis_size_bytes(item):
                    problems.append("redis_maxmemory_by_tier: %s of tier %s is not a memory size above zero (such as "
                                    "1gb or 512mb). Fix: write it as such." % (_show(item), tier))
    return problems


def _address_problems(variables):
    problems = []
    for name in CIDR_LISTS:
        value = _get(variables, name)
        if value is MISSING:
            continue
        if not _is_list(value):
            problems.append("%s: is %s; it must be a list of networks. Fix: write it as a YAML list, such as "
                            "[\"192.0.2.0/24\"]." % (name, "a string" if isinstance(value, str) else "not a list"))
            continue
        for item in value:
            why = network_problem(item)
            if why and not (name == "nginx_real_ip_from" and str(item).startswith("unix:")):
                problems.append("%s: %s %s. Fix: write each entry as an address or network in CIDR form, such as "
                                "192.0.2.0/24 or 2001:db8::/32." % (name, _show(item), why))
    for name in ADDRESSES:
        value = _get(variables, name)
        if value is MISSING:
            continue
        why = address_problem(value if isinstance(value, str) else str(value))
        if why:
            problems.append("%s: %s %s. Fix: set it to this host's private IP address, such as 10.0.0.12."
                            % (name, _show(value), why))
    value = _get(variables, "redis_bind_addresses")
    if value is not MISSING:
        if not _is_list(value):
            problems.append("redis_bind_addresses: is not a list. Fix: write it as a YAML list of addresses.")
        else:
            for item in value:
                why = address_problem(str(item))
                if why:
                    problems.append("redis_bind_addresses: %s %s. Fix: list this host's private address and "
                                    "127.0.0.1." % (_show(item), why))
    value = _get(variables, "pki_extra_sans")
    if value is not MISSING:
        if not _is_list(value):
            problems.append("pki_extra_sans: is not a list. Fix: write it as a YAML list of names and addresses.")
        else:
            for item in value:
                text = str(item)
                if network_problem(text) == "" and "/" not in text:
                    continue
                if fqdn_problem(text + ".internal" if "." not in text else text):
                    problems.append("pki_extra_sans: %s is neither a DNS name nor an IP address. Fix: list DNS names "
                                    "(such as api.example.org) or IP addresses only." % _show(item))
    for section in ("common_firewall_rules_custom", "common_firewall_rules_default"):
        rules = _get(variables, section)
        if rules is MISSING:
            continue
        if not _is_list(rules):
            problems.append("%s: is not a list. Fix: write a YAML list of {name, ports, proto, from_groups, "
                            "from_cidrs}." % section)
            continue
        for index, rule in enumerate(rules):
            label = rule.get("name", "#%d" % (index + 1)) if isinstance(rule, dict) else "#%d" % (index + 1)
            if not isinstance(rule, dict):
                problems.append("%s: rule %s is not a dictionary. Fix: write it as {name, ports, proto, "
                                "from_groups, from_cidrs}." % (section, label))
                continue
            ports = rule.get("ports", [])
            for port in ports if _is_list(ports) else [ports]:
                number = _whole_number(port)
                if number is None or not 1 <= number <= 65535:
                    problems.append("%s: rule %s has port %s; a port is a whole number from 1 to 65535. Fix: "
                                    "correct it." % (section, label, _show(port)))
            cidrs = rule.get("from_cidrs", [])
            for item in cidrs if _is_list(cidrs) else [cidrs]:
                why = network_problem(item)
                if why:
                    problems.append("%s: rule %s: from_cidrs entry %s %s. Fix: write it in CIDR form, such as "
                                    "192.0.2.0/24." % (section, label, _show(item), why))
    return problems


def _in_range(name, value):
    """The whole number of an INTEGERS setting when it is valid; None otherwise
    (its own check reports it: a pair is only compared when both are valid)."""
    number = _whole_number(value)
    low, high = INTEGERS[name][:2]
    return number if number is not None and low <= number <= high else None


def _pair_problems(variables):
    problems = []

    def value(name, default):
        return _get(variables, name, default)

    # Redis TLS.
    tls_enabled = _truthy(value("redis_tls_enabled", False))
    if _truthy(value("redis_tls_only", False)) and not tls_enabled:
        problems.append("redis_tls_only: is true, but redis_tls_enabled is not: the only port (plain) would be "
                        "closed. Fix: set redis_tls_enabled: true as well, or redis_tls_only: false.")
    if tls_enabled:
        plain = _in_range("redis_port", value("redis_port", 6379))
        tls = _in_range("redis_tls_port", value("redis_tls_port", 6380))
        if plain is not None and plain == tls:
            problems.append("redis_tls_port: is %d, the same port as redis_port. Fix: give TLS a port of its own, "
                            "such as 6380 (the default)." % tls)
    for name in ("app_redis_tls", "exporters_redis_tls"):
        explicit = value(name, MISSING)
        if explicit is not MISSING and _truthy(explicit) and not tls_enabled:
            problems.append("%s: is true, but redis_tls_enabled is not: Redis has no TLS port to connect to. Fix: set "
                            "redis_tls_enabled: true, or remove %s (it follows redis_tls_enabled)." % (name, name))
        if explicit is not MISSING and not _truthy(explicit) and _truthy(value("redis_tls_only", False)) \
                and tls_enabled:
            problems.append("%s: is false, but redis_tls_only closes Redis' plain port. Fix: remove %s (it follows "
                            "redis_tls_enabled), or set redis_tls_only: false." % (name, name))
    # Public TLS mode provided: the certificate and its key (presence only: never their content).
    mode = value("nginx_tls_mode", MISSING)
    if mode is MISSING:
        mode = value("matcraft_tls_mode", "letsencrypt")
    if mode == "provided":
        for name in ("nginx_tls_certificate", "nginx_tls_private_key"):
            if not value(name, ""):
                problems.append("%s: not set, and matcraft_tls_mode provided needs it. Fix: put the PEM text of your "
                                "%s in the vault file as %s, or choose another matcraft_tls_mode."
                                % (name, "certificate chain" if name.endswith("certificate") else "private key", name))
    # The edge and the API agree on TLS between them.
    shared = value("matcraft_api_tls", True)
    api_tls, upstream_tls = value("api_tls", shared), value("nginx_upstream_tls", shared)
    if _truthy(api_tls) != _truthy(upstream_tls):
        problems.append("nginx_upstream_tls: is %s while api_tls is %s: the edge would speak %s to an API that "
                        "serves %s. Fix: set matcraft_api_tls once for both and remove api_tls and "
                        "nginx_upstream_tls." % (_truthy(upstream_tls), _truthy(api_tls),
                                                 "HTTPS" if _truthy(upstream_tls) else "HTTP",
                                                 "HTTPS" if _truthy(api_tls) else "HTTP"))
    # Mutual TLS: an API that requires the edge's certificate gets it.
    shared = value("matcraft_api_tls_client_auth", True)
    required, presented = value("api_tls_client_auth", shared), value("nginx_upstream_tls_client_auth", shared)
    if _truthy(api_tls) and _truthy(required) and not _truthy(presented):
        problems.append("nginx_upstream_tls_client_auth: is False while api_tls_client_auth is True: the API would "
                        "refuse every request from the edge, which would not present its client certificate. Fix: "
                        "set matcraft_api_tls_client_auth once for both and remove api_tls_client_auth and "
                        "nginx_upstream_tls_client_auth.")
    # Monitoring TLS: Prometheus scrapes and pushes over TLS exactly when the servers serve it.
    shared = value("matcraft_monitoring_tls", False)
    switches = {name: _truthy(value(name, shared))
                for name in ("prometheus_scrape_tls", "exporters_tls", "alertmanager_tls")}
    if len(set(switches.values())) > 1:
        problems.append("prometheus_scrape_tls: is %s while %s: Prometheus and the servers it scrapes would not "
                        "agree on HTTPS. Fix: set matcraft_monitoring_tls once and remove prometheus_scrape_tls, "
                        "exporters_tls and alertmanager_tls." % (
                            switches["prometheus_scrape_tls"],
                            " and ".join("%s is %s" % (k, v) for k, v in switches.items()
                                         if k != "prometheus_scrape_tls")))
    # Celery time limits.
    hard = _in_range("worker_time_limit", value("worker_time_limit", 3600))
    soft = _in_range("worker_soft_time_limit", value("worker_soft_time_limit", 3000))
    if hard is not None and soft is not None and soft >= hard:
        problems.append("worker_soft_time_limit: %d is not below worker_time_limit (%d): a task is killed before "
                        "it is warned. Fix: keep the soft limit below the hard one, such as 3000 and 3600."
                        % (soft, hard))
    # Certificates renewed before they expire, not on every run.
    valid = _in_range("pki_cert_valid_days", value("pki_cert_valid_days", 90))
    renew = _in_range("pki_renew_before_days", value("pki_renew_before_days", 30))
    if valid is not None and renew is not None and renew >= valid:
        problems.append("pki_renew_before_days: %d is not below pki_cert_valid_days (%d): every run would re-issue "
                        "every certificate. Fix: keep it below the validity, such as 30 and 90." % (renew, valid))
    # Prometheus refuses a scrape timeout longer than the interval.
    interval = prom_duration_seconds(value("prometheus_scrape_interval", "30s"))
    timeout = prom_duration_seconds(value("prometheus_scrape_timeout", "10s"))
    if interval and timeout and timeout > interval:
        problems.append("prometheus_scrape_timeout: %s is longer than prometheus_scrape_interval (%s), which "
                        "Prometheus refuses. Fix: keep the timeout at or below the interval."
                        % (value("prometheus_scrape_timeout", "10s"), value("prometheus_scrape_interval", "30s")))
    # The stale-archive alert assumes PostgreSQL's archive_timeout.
    archive = _in_range("postgresql_archive_timeout", value("postgresql_archive_timeout", 60))
    alert = _in_range("prometheus_alert_wal_archive_timeout_seconds",
                      value("prometheus_alert_wal_archive_timeout_seconds", 60))
    if archive is not None and alert is not None and archive != alert:
        problems.append("prometheus_alert_wal_archive_timeout_seconds: %d differs from postgresql_archive_timeout "
                        "(%d): the WAL archive alert would fire too early or too late. Fix: set both to the same "
                        "number of seconds." % (alert, archive))
    # Alert thresholds: warning before critical.
    for warning, critical, warning_default, critical_default in WARNING_CRITICAL:
        low = _in_range(warning, value(warning, warning_default))
        high = _in_range(critical, value(critical, critical_default))
        if low is not None and high is not None and low > high:
            problems.append("%s: %s is above %s (%s): the warning would come after the critical alert. Fix: keep "
                            "the warning threshold below the critical one."
                            % (warning, _show(value(warning, warning_default)), critical,
                               _show(value(critical, critical_default))))
    return problems


def _environment_problems(variables):
    value = _get(variables, "matcraft_environment")
    if value is MISSING:
        return []
    if value is None or (isinstance(value, str) and not value.strip()):
        return ["matcraft_environment: is empty, and the internal CA's name is made from it. Fix: set it "
                "to a short lowercase name such as production or staging (letters, digits and -, at most 32, starting "
                "with a letter)."]
    if not isinstance(value, str) or not ENVIRONMENT_PATTERN.fullmatch(value):
        return ["matcraft_environment: %s is not a short lowercase name. Fix: use letters a-z, digits and -, at "
                "most 32 characters, starting with a letter, such as production or staging." % _show(value)]
    return []


# The application's database role: its login roles are named <role>_<10 hex>
# (matcraft.deploy.db_login_name), and the SQL of the roles quotes it plainly.
DATABASE_ROLE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,51}$")
DATABASE_ROLE_VARIABLES = ("postgresql_app_user", "app_database_user")


def _database_role_problems(variables):
    problems = []
    for name in DATABASE_ROLE_VARIABLES:
        value = _get(variables, name)
        if value is not MISSING and (not isinstance(value, str) or not DATABASE_ROLE_PATTERN.fullmatch(value)):
            problems.append("%s: %s is not a plain database role name. Fix: use lowercase letters, digits and _, "
                            "at most 52 characters, not starting with a digit (the login roles add 11)." % (name, _show(value)))
    first, second = (_get(variables, name, "matcraft") for name in DATABASE_ROLE_VARIABLES)
    if not problems and first != second:
        problems.append("app_database_user: %s differs from postgresql_app_user %s, so the application would log in "
                        "through a role the database does not have. Fix: set both to the same name, or neither."
                        % (_show(second), _show(first)))
    return problems


def host_variable_problems(variables):
    """Problems of one host's inventory variables (a mapping name -> value)."""
    return (_environment_problems(variables) + _database_role_problems(variables) + _integer_problems(variables)
            + _duration_problems(variables) + _address_problems(variables) + _pair_problems(variables))


# --- The checks of the inventory as a whole (the first host's values) ---------------
DEFAULT_SETTINGS = {
    "tiers": ["small", "medium"],
    "group_min_hosts_by_tier": {},
    "groups": None,
    "check_domain": True,
    "tls_modes": ["letsencrypt", "provided", "internal"],
    # The common role's default of common_firewall_ssh_cidrs (hostvars hold no role
    # defaults) and the preflight role's default of the acknowledgement.
    "ssh_cidrs_default": ["0.0.0.0/0", "::/0"],
    "ssh_open_to_world_acknowledged": False,
    # The preflight role's preflight_backup_unencrypted_acknowledged, preflight_check_secrets
    # and preflight_secret_min_bytes.
    "backup_unencrypted_acknowledged": False,
    "check_secrets": True,
    "secret_min_bytes": 32,
    # The preflight role's preflight_public_address_acknowledged.
    "public_address_acknowledged": False,
}


def _global_problems(variables, groups, settings):
    problems = []
    tier = _get(variables, "matcraft_tier", "small")
    if tier not in settings["tiers"]:
        problems.append("matcraft_tier: '%s' is not a tier. Fix: set matcraft_tier to one of %s in group_vars/all."
                        % (tier, ", ".join(settings["tiers"])))
    else:
        mins = settings["group_min_hosts_by_tier"].get(tier, {})
        wanted = settings["groups"]
        if wanted is None:
            wanted = list(mins)
        for group in wanted:
            want = mins.get(group, 1)
            have = len(groups.get(group, []))
            if group not in groups:
                problems.append("inventory group %s: missing; the %s tier needs at least %s host(s) in it. Fix: add "
                                "the group to hosts.yml with its hosts." % (group, tier, want))
            elif have < want:
                problems.append("inventory group %s: has %d host(s); the %s tier needs at least %s. Fix: add hosts "
                                "to %s in hosts.yml, or choose another matcraft_tier."
                                % (group, have, tier, want, group))
    if _truthy(settings["check_domain"]):
        domain = _get(variables, "matcraft_domain", "")
        if not domain:
            problems.append("matcraft_domain: not set. Fix: set it to the public DNS name of the API, such as "
                            "matcraft.example.org.")
        else:
            why = fqdn_problem(domain)
            if why:
                problems.append("matcraft_domain: '%s' %s. Fix: set it to the public DNS name of the API, such as "
                                "matcraft.example.org." % (domain, why))
        mode = _get(variables, "matcraft_tls_mode", "letsencrypt")
        if mode not in settings["tls_modes"]:
            problems.append("matcraft_tls_mode: '%s' is not a mode. Fix: use one of %s."
                            % (mode, ", ".join(settings["tls_modes"])))
        elif mode == "letsencrypt":
            email = _get(variables, "matcraft_acme_email", "")
            if not email:
                problems.append("matcraft_acme_email: not set, and Let's Encrypt needs a contact address. Fix: set "
                                "matcraft_acme_email to an address that receives expiry notices, or choose another "
                                "matcraft_tls_mode.")
            elif not re.search(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", str(email)) \
                    or re.search(r"@example\.(com|org|net)$", str(email)):
                problems.append("matcraft_acme_email: '%s' is not a real e-mail address. Fix: give an address that "
                                "receives Let's Encrypt expiry notices." % email)
    origins = _get(variables, "matcraft_cors_origins", [])
    if isinstance(origins, str):
        problems.append("matcraft_cors_origins: is a string; it must be a list. Fix: write it as a YAML list, such "
                        "as [\"https://dashboard.example.org\"].")
    else:
        for origin in origins or []:
            why = origin_problem(origin)
            if why:
                problems.append("matcraft_cors_origins: '%s' %s. Fix: list only the dashboard's exact origin, such "
                                "as https://dashboard.example.org." % (origin, why))
    return problems


def _merge_per_host(per_host):
    """Messages found on some hosts: once each, naming the hosts unless all have it."""
    hosts = list(per_host)
    seen = {}
    for host in hosts:
        for message in per_host[host]:
            seen.setdefault(message, [])
            if host not in seen[message]:
                seen[message].append(host)
    merged = []
    for message, where in seen.items():
        if len(where) == len(hosts):
            merged.append(message)
        else:
            name, rest = message.split(": ", 1)
            merged.append("%s on host%s %s: %s" % (name, "s" if len(where) > 1 else "", ", ".join(where), rest))
    return merged


# --- SSH open to the world -------------------------------------------------------------
SSH_ACKNOWLEDGEMENT = "preflight_ssh_open_to_world_acknowledged"


def ssh_world_cidrs(cidrs):
    """The entries of a list of networks that admit every address of their family
    (prefix length 0: 0.0.0.0/0, ::/0, or another spelling of them such as ::0/0
    or 10.0.0.0/0); entries that are not networks are left to the address check."""
    found = []
    for item in cidrs if _is_list(cidrs) else []:
        if not isinstance(item, str) or network_problem(item):
            continue
        if ipaddress.ip_network(item.strip(), strict=False).prefixlen == 0:
            found.append(item.strip())
    return found


def ssh_open_to_world(variables, settings=None):
    """SSH open to the whole Internet on one host: None when it is not, else
    (message, acknowledged). It is open when the common role's firewall is on
    (common_firewall_enabled, default true) and common_firewall_ssh_cidrs (or,
    unset, the common role's default in settings["ssh_cidrs_default"]) has a
    network of prefix length 0. acknowledged: preflight_ssh_open_to_world_acknowledged
    of the host, or settings["ssh_open_to_world_acknowledged"] (the role's value)."""
    config = dict(DEFAULT_SETTINGS)
    config.update(settings or {})
    if not _truthy(_get(variables, "common_firewall_enabled", True)):
        return None
    cidrs = _get(variables, "common_firewall_ssh_cidrs")
    if cidrs is MISSING:
        try:
            if "common_firewall_ssh_cidrs" in variables:
                return None  # set, but it cannot be templated: the common role reports it
        except Exception:  # pylint: disable=broad-except
            return None
        cidrs, unset = config["ssh_cidrs_default"], True
    else:
        unset = False
    world = ssh_world_cidrs(cidrs)
    if not world:
        return None
    port = _get(variables, "common_firewall_ssh_port", 22)
    what = "%s to SSH (port %s): the whole Internet may try to log in" % (" and ".join(world), port)
    what = ("not set, so the common role's default admits " if unset else "admits ") + what
    acknowledged = _truthy(_get(variables, SSH_ACKNOWLEDGEMENT, config["ssh_open_to_world_acknowledged"]))
    if acknowledged:
        message = ("common_firewall_ssh_cidrs: %s; %s is true, so the run goes on. Fix: narrow it to your admin "
                   "networks in the inventory's group_vars/all/main.yml." % (what, SSH_ACKNOWLEDGEMENT))
    else:
        message = ("common_firewall_ssh_cidrs: %s. Fix: set it to your admin networks in the inventory's "
                   "group_vars/all/main.yml, such as [\"192.0.2.0/24\"]; to keep SSH open to the world on purpose, "
                   "set %s: true." % (what, SSH_ACKNOWLEDGEMENT))
    return message, acknowledged


def _ssh_messages(hostvars, hosts, settings, acknowledged):
    """The SSH-open messages per host: the refused ones, or the acknowledged ones."""
    found = {}
    for host in hosts:
        result = ssh_open_to_world(hostvars[host], settings)
        found[host] = [result[0]] if result and result[1] == acknowledged else []
    return found


# --- Backups off the database host are encrypted ------------------------------------------
BACKUP_ACKNOWLEDGEMENT = "preflight_backup_unencrypted_acknowledged"
CIPHER_SECRET = "matcraft_pgbackrest_cipher_pass"
CIPHER_VARIABLE = "postgresql_pgbackrest_cipher_pass"
ENCRYPT_SWITCH = "postgresql_pgbackrest_encrypt"
# Repository types of the postgresql role that keep the backups off the database host.
OFF_HOST_REPOSITORIES = {"host": "on the backup host (over SSH)", "s3": "in the S3 object store"}
_CIPHER_RUNBOOK = "docs/runbooks/backup-restore.md"


def backup_encryption(variables, settings=None, backup_host=False):
    """The encryption of the pgBackRest repository of one database host (backup_host:
    one backup host, whose repository is off the database host whatever its
    postgresql_pgbackrest_repo_type says). None when nothing is wrong, else
    (message, acknowledged).

    The passphrase is postgresql_pgbackrest_cipher_pass when the inventory sets it,
    else matcraft_pgbackrest_cipher_pass (the vault secret the role's default takes).
    A repository off the database host (repo type host or s3) is encrypted unless
    postgresql_pgbackrest_encrypt is false; one that would not be (no passphrase, or the
    switch off) is a mistake, or a warning when preflight_backup_unencrypted_acknowledged
    (of the host, or settings["backup_unencrypted_acknowledged"]) is true. A passphrase
    that is set must be as strong as every secret (settings["check_secrets"],
    settings["secret_min_bytes"]). A local (posix) repository needs nothing, but one
    the inventory gave a passphrase of its own (encrypted before the switch existed)
    must say postgresql_pgbackrest_encrypt: true, or it would lose its cipher."""
    config = dict(DEFAULT_SETTINGS)
    config.update(settings or {})
    repo_type = "host" if backup_host else _get(variables, "postgresql_pgbackrest_repo_type", "posix")
    own = _get(variables, CIPHER_VARIABLE)
    if own is not MISSING:
        name, passphrase = CIPHER_VARIABLE, own
    else:
        name, passphrase = CIPHER_SECRET, _get(variables, CIPHER_SECRET, "")
    passphrase = "" if passphrase is None else passphrase
    if passphrase and _truthy(config["check_secrets"]):
        why = secret_problem(passphrase, int(config["secret_min_bytes"]))
        if why:
            return ("%s: %s. Fix: generate it with the other secrets (ansible-playbook matcraft.deploy.secrets, "
                    "docs/secrets.md) and keep it in the vault file of this environment only; a repository "
                    "encrypted with the old one needs a new repository path or bucket (%s)."
                    % (name, why, _CIPHER_RUNBOOK), False)
    switch = _get(variables, ENCRYPT_SWITCH)
    off_host = repo_type in OFF_HOST_REPOSITORIES
    wanted = off_host if switch is MISSING else _truthy(switch)
    if not off_host:
        if not wanted and own not in (MISSING, None, "") and switch is MISSING:
            return ("%s: is set for the local (posix) repository, which the postgresql role encrypts only when "
                    "%s is true (repositories off the database host are encrypted by default, local ones are "
                    "not). Fix: set %s: true to keep encrypting this repository with the same passphrase, or "
                    "remove %s." % (CIPHER_VARIABLE, ENCRYPT_SWITCH, ENCRYPT_SWITCH, CIPHER_VARIABLE), False)
        if not wanted or passphrase:
            return None
    elif wanted and passphrase:
        return None
    where = OFF_HOST_REPOSITORIES.get(repo_type, "on the database host")
    acknowledged = _truthy(_get(variables, BACKUP_ACKNOWLEDGEMENT, config["backup_unencrypted_acknowledged"]))
    if not wanted:
        what = ("%s: is false, so the pgBackRest repository %s (postgresql_pgbackrest_repo_type %s) holds the "
                "database's backups and WAL unencrypted" % (ENCRYPT_SWITCH, where, repo_type))
        fix = ("remove %s (off the database host, encryption is the default), set %s for a new repository path "
               "or bucket and take a full backup there (%s)" % (ENCRYPT_SWITCH, CIPHER_SECRET, _CIPHER_RUNBOOK))
    else:
        what = ("%s: not set, so the pgBackRest repository %s (postgresql_pgbackrest_repo_type %s) would hold the "
                "database's backups and WAL unencrypted" % (CIPHER_SECRET, where, repo_type))
        fix = ("generate it with the other secrets (ansible-playbook matcraft.deploy.secrets, docs/secrets.md) "
               "or add 48 random letters and digits to the vault file as %s; an existing unencrypted repository "
               "moves to a new repository path or bucket first (%s)" % (CIPHER_SECRET, _CIPHER_RUNBOOK))
    if acknowledged:
        message = "%s; %s is true, so the run goes on. Fix: %s." % (what, BACKUP_ACKNOWLEDGEMENT, fix)
    else:
        message = ("%s. Fix: %s. To keep an existing unencrypted repository on purpose, set %s: false and %s: true."
                   % (what, fix, ENCRYPT_SWITCH, BACKUP_ACKNOWLEDGEMENT))
    return message, acknowledged


# --- Listening on a public address ---------------------------------------------------
PUBLIC_ACKNOWLEDGEMENT = "preflight_public_address_acknowledged"


def address_is_public(value):
    """True when value is an IP address of the public Internet (ipaddress's is_global:
    not private as RFC 1918, RFC 6598's shared space, IPv6 unique local, loopback,
    link-local or documentation ranges are). Anything that is not an address is False
    (the address check reports it)."""
    try:
        address = ipaddress.ip_address(str(value).strip())
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return address.is_global


def _guessed_address(variables):
    """The address the roles fall back to (the default route's IPv4 address) when
    matcraft_private_address is not set; MISSING when the facts do not say."""
    facts = _get(variables, "ansible_facts", {})
    route = facts.get("default_ipv4") if isinstance(facts, dict) else None
    if not isinstance(route, dict) or not route.get("address"):
        route = _get(variables, "ansible_default_ipv4", {})
    if isinstance(route, dict) and route.get("address"):
        return str(route["address"])
    return MISSING


def public_addresses(variables, settings=None):
    """The listen addresses of one host that are public: [(message, acknowledged)].

    Every service of the collection listens on matcraft_private_address, or, when the
    inventory does not set it, on the address of the default route (the facts). A public
    address set on purpose (matcraft_private_address or a service's own listen address)
    is a mistake unless preflight_public_address_acknowledged is true (of the host, or
    settings["public_address_acknowledged"]); then it is a warning. A public address the
    roles would only guess is always a mistake: the operator states the address."""
    config = dict(DEFAULT_SETTINGS)
    config.update(settings or {})
    acknowledged = _truthy(_get(variables, PUBLIC_ACKNOWLEDGEMENT, config["public_address_acknowledged"]))
    found = []
    stated = _get(variables, "matcraft_private_address")
    if stated is MISSING:
        guessed = _guessed_address(variables)
        if guessed is not MISSING and address_is_public(guessed):
            found.append(("matcraft_private_address: not set, so the services would listen on %s, the address of "
                          "the default route, which is public. Fix: set matcraft_private_address to this host's "
                          "address on the private network, such as 10.0.0.12; to listen on a public address on "
                          "purpose, set matcraft_private_address to it and %s: true."
                          % (guessed, PUBLIC_ACKNOWLEDGEMENT), False))
    for name in ADDRESSES:
        value = _get(variables, name)
        if value is MISSING or not address_is_public(value):
            continue
        if acknowledged:
            message = ("%s: %s is a public address; %s is true, so the run goes on and the service listens "
                       "there. Fix: use this host's private address, such as 10.0.0.12."
                       % (name, _show(value), PUBLIC_ACKNOWLEDGEMENT))
        else:
            message = ("%s: %s is a public address, so the service would listen where the whole Internet can "
                       "reach it. Fix: set it to this host's address on the private network, such as 10.0.0.12; "
                       "to listen there on purpose, set %s: true." % (name, _show(value), PUBLIC_ACKNOWLEDGEMENT))
        found.append((message, acknowledged))
    return found


def _public_messages(hostvars, hosts, settings, acknowledged):
    """The public-address messages per host: the refused ones, or the acknowledged ones."""
    return {host: [message for message, ack in public_addresses(hostvars[host], settings) if ack == acknowledged]
            for host in hosts}


def _in_group(host, groups, group):
    return isinstance(group, str) and host in ((groups or {}).get(group) or [])


def _backup_messages(hostvars, hosts, groups, settings, acknowledged):
    """The backup encryption messages per host (database and backup hosts only, as
    their postgresql_primary_group, _replica_group and _backup_group say): the
    refused ones, or the acknowledged ones."""
    found = {}
    for host in hosts:
        variables = hostvars[host]
        backup_host = _in_group(host, groups, _get(variables, "postgresql_backup_group", "matcraft_backup"))
        database = any(_in_group(host, groups, _get(variables, name, default)) for name, default in (
            ("postgresql_primary_group", "matcraft_database"),
            ("postgresql_replica_group", "matcraft_database_replica")))
        result = backup_encryption(variables, settings, backup_host) if backup_host or database else None
        found[host] = [result[0]] if result and result[1] == acknowledged else []
    return found


def preflight_problems(hostvars, hosts, groups, settings=None):
    """Every mistake of the inventory: one message per mistake, in a stable order.

    hostvars: the hostvars (or a dict host -> variables); hosts: the hosts to check
    (the play's); groups: inventory groups; settings: the preflight role's
    tiers, group_min_hosts_by_tier, groups, check_domain, tls_modes,
    ssh_cidrs_default, ssh_open_to_world_acknowledged, backup_unencrypted_acknowledged,
    check_secrets, secret_min_bytes, public_address_acknowledged.
    """
    config = dict(DEFAULT_SETTINGS)
    config.update(settings or {})
    hosts = [h for h in (hosts or []) if h in hostvars]
    if not hosts:
        return []
    problems = _global_problems(hostvars[hosts[0]], groups or {}, config)
    ssh = _ssh_messages(hostvars, hosts, config, acknowledged=False)
    backup = _backup_messages(hostvars, hosts, groups, config, acknowledged=False)
    public = _public_messages(hostvars, hosts, config, acknowledged=False)
    problems += _merge_per_host({host: host_variable_problems(hostvars[host]) + ssh[host] + backup[host]
                                 + public[host] for host in hosts})
    return problems


# --- Unknown variables ----------------------------------------------------------------
_KNOWN_CACHE = {}


def _collection_roles_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")


def preflight_known_variables(roles_dir=None):
    """Every variable a role of the collection declares (argument specs of every
    entry point, defaults), the collection's shared matcraft_* inputs and the
    facts its playbooks set: a sorted list, read from roles/ next to this plugin."""
    roles_dir = roles_dir or _collection_roles_dir()
    if roles_dir in _KNOWN_CACHE:
        return list(_KNOWN_CACHE[roles_dir])
    names = set(MATCRAFT_INPUTS) | set(INTERNAL_FACTS)
    if yaml is not None and os.path.isdir(roles_dir):
        for role in sorted(os.listdir(roles_dir)):
            for part in (("meta", "argument_specs.yml"), ("defaults", "main.yml")):
                path = os.path.join(roles_dir, role, *part)
                if not os.path.exists(path):
                    continue
                with open(path) as handle:
                    data = yaml.safe_load(handle) or {}
                if part[0] == "defaults":
                    names.update(data)
                    with open(path) as handle:
                        names.update(matcraft_variables_read(handle.read()))
                else:
                    for entry in (data.get("argument_specs") or {}).values():
                        names.update((entry or {}).get("options") or {})
    _KNOWN_CACHE[roles_dir] = sorted(names)
    return list(_KNOWN_CACHE[roles_dir])


def matcraft_variables_read(text):
    """The matcraft_* names a YAML text reads as variables inside Jinja
    expressions (quoted group names and file names left out)."""
    names = set()
    for expression in re.findall(r"\{\{.*?\}\}|\{%.*?%\}", text, re.S):
        names.update(re.findall(r"(?<![\w.'\"/-])matcraft_[a-z0-9_]+(?![\w'\".-])", expression))
    return names


def _watched(name):
    return name.startswith("matcraft_") or any(name.startswith(prefix + "_") for prefix in ROLE_PREFIXES)


# Variables the collection no longer reads: name -> what replaced them (a warning
# says so, instead of a guess at a close name).
REMOVED_VARIABLES = {
    "prometheus_self_scrape_password_file": ("the password Prometheus logs in with rests encrypted, as the systemd "
                                             "credential prometheus_web_password_credential"),
    "redis_admin_password_file": ("the Redis admin password rests encrypted, as the systemd credential "
                                  "redis_admin_credential; the next run moves the file's password into it"),
    "preflight_warn_ssh_open": ("SSH open to the world now stops the run unless %s is true (then it warns)"
                                % SSH_ACKNOWLEDGEMENT),
}


def preflight_warnings(hostvars, hosts, known=None, settings=None, groups=None):
    """Warnings (the run goes on): SSH open to the world and, given the inventory's
    groups, a backup repository off the database host left unencrypted, with their
    acknowledgements (settings as for preflight_problems); variables of the inventory that look like
    the collection's (matcraft_ or a role's prefix) but that no role declares."""
    known = list(known) if known is not None else preflight_known_variables()
    # Without the roles' specs (a partial copy of the collection) every name would look unknown.
    known_set = set(known) if set(known) - set(MATCRAFT_INPUTS) - set(INTERNAL_FACTS) else None
    hosts = [h for h in (hosts or []) if h in hostvars]
    found = {}
    for host in hosts if known_set is not None else []:
        for name in hostvars[host]:
            if isinstance(name, str) and _watched(name) and name not in known_set:
                found.setdefault(name, []).append(host)
    config = dict(DEFAULT_SETTINGS)
    config.update(settings or {})
    warnings = _merge_per_host(_ssh_messages(hostvars, hosts, config, acknowledged=True)) if hosts else []
    if hosts and groups is not None:
        warnings += _merge_per_host(_backup_messages(hostvars, hosts, groups, config, acknowledged=True))
    if hosts:
        warnings += _merge_per_host(_public_messages(hostvars, hosts, config, acknowledged=True))
    if hosts and _get(hostvars[hosts[0]], "matcraft_environment") is MISSING:
        warnings.append("matcraft_environment: not set, so the internal CA is named for 'production'. Fix: set it "
                        "in group_vars/all to this environment's short lowercase name, such as production or "
                        "staging.")
    for name in sorted(found):
        where = "" if len(found[name]) == len(hosts) else " on host%s %s" % (
            "s" if len(found[name]) > 1 else "", ", ".join(found[name]))
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if name in REMOVED_VARIABLES:
            warnings.append("%s%s: was removed from matcraft.deploy, so it changes nothing: %s. Fix: remove it."
                            % (name, where, REMOVED_VARIABLES[name]))
            continue
        if close:
            fix = "did you mean %s? Rename it" % close[0]
        else:
            fix = "check its name in the roles' README files, or remove it"
        warnings.append("%s%s: no role of matcraft.deploy reads this variable, so it changes nothing. Fix: %s."
                        % (name, where, fix))
    return warnings


# --- One host: its operating system and its size (the facts) ------------------------------
HOST_SETTINGS = {
    # The preflight role's preflight_check_os, _supported_os, _untested_os, _check_resources,
    # _resources_strict, _tier_specs, _memory_tolerance_mb and the host's matcraft_tier.
    "check_os": True,
    "supported_os": {},
    "untested_os": {},
    "check_resources": True,
    "resources_strict": False,
    "tier": "small",
    "tier_specs": {},
    "memory_tolerance_mb": 256,
}


def _os_versions(systems, dist):
    """The major versions systems (distribution -> versions) lists for dist, as strings."""
    return [str(version) for version in systems[dist]] if dist in systems else []


def _os_list(systems, separator):
    """'Debian 12, Ubuntu 22/24': each distribution with its major versions."""
    return separator.join("%s %s" % (dist, "/".join(str(v) for v in versions)) for dist, versions in systems.items())


def _os_messages(facts, host, supported, untested):
    """(problems, warnings) of the host's operating system."""
    dist = facts.get("distribution", "unknown")
    major = str(facts.get("distribution_major_version", "?"))
    if major in _os_versions(untested, dist) and major not in _os_versions(supported, dist):
        return [], ["host %s: runs %s %s, which the roles are written for but no test of this collection runs on "
                    "(tested: %s). Run the Molecule scenarios on it first (docs/testing.md), or use a tested system."
                    % (host, dist, major, _os_list(supported, ", "))]
    if major not in _os_versions(supported, dist):
        return ["host %s: runs %s %s, which is not supported. Fix: use %s (preflight_supported_os lists them)."
                % (host, dist, major, _os_list(supported, " or "))], []
    return [], []


def _shortfalls(facts, spec, tolerance_mb):
    """What the host lacks of one group's specification: ['1 vCPU < 2', ...]."""
    short = []
    vcpus = facts.get("processor_vcpus", 0)
    if "vcpus" in spec and vcpus < spec["vcpus"]:
        short.append("%s vCPU < %s" % (vcpus, spec["vcpus"]))
    memory = facts.get("memtotal_mb", 0)
    if "memory_mb" in spec and memory + tolerance_mb < spec["memory_mb"]:
        short.append("%s MiB RAM < %s" % (memory, spec["memory_mb"]))
    if "disk_gb" in spec:
        # The biggest file system stands for the data disk.
        biggest = max((mount.get("size_total", 0) for mount in facts.get("mounts") or []), default=0)
        if biggest / 1000000000 < spec["disk_gb"] * 0.95:
            short.append("%d GB disk < %s" % (int(round(biggest / 1000000000, 0)), spec["disk_gb"]))
    return short


def preflight_host_problems(facts, host, group_names, settings=None):
    """The checks of one host's facts: {"problems": [...], "warnings": [...]}.

    facts: the host's ansible_facts (distribution, distribution_major_version,
    processor_vcpus, memtotal_mb, mounts); host: its inventory_hostname; group_names:
    its groups; settings: check_os, supported_os and untested_os (distribution ->
    major versions), check_resources, resources_strict, tier (the host's
    matcraft_tier), tier_specs (tier -> group -> vcpus, memory_mb, disk_gb) and
    memory_tolerance_mb, as the preflight role's variables of those names say.

    A system listed in untested_os and not in supported_os is a warning; any other
    system not in supported_os is a problem. A host smaller than the specification
    of its tier for one of its groups is a warning, or a problem when
    resources_strict is true.
    """
    config = dict(HOST_SETTINGS)
    config.update(settings or {})
    facts = facts if isinstance(facts, Mapping) else {}
    problems, warnings = [], []
    if _truthy(config["check_os"]):
        found, warned = _os_messages(facts, host, config["supported_os"] or {}, config["untested_os"] or {})
        problems += found
        warnings += warned
    tier = config["tier"]
    specs = config["tier_specs"] or {}
    if _truthy(config["check_resources"]) and tier in specs:
        for group in group_names or []:
            if group not in specs[tier]:
                continue
            short = _shortfalls(facts, specs[tier][group], config["memory_tolerance_mb"])
            if not short:
                continue
            message = ("host %s (%s): smaller than the %s tier's specification (%s). Fix: resize the host, choose a "
                       "smaller matcraft_tier, or set preflight_resources_strict: false to only warn."
                       % (host, group, tier, ", ".join(short)))
            (problems if _truthy(config["resources_strict"]) else warnings).append(message)
    return {"problems": problems, "warnings": warnings}


# --- Secrets (names only, never values) ----------------------------------------------------
SECRET_FIX = ("Fix: generate one with `openssl rand -hex 32` (or playbooks/secrets.yml) and keep it in the vault "
              "file of this environment only.")


def preflight_secret_problems(hex_secrets, required, optional=None, custom=None, cipher_pass="", min_bytes=32):
    """The problems of the secrets: one message per weak secret, naming it, never its value.

    hex_secrets: name -> value of the secrets that must be hex strings of min_bytes
    bytes (preflight_hex_secrets); required: name -> value of the secrets that must be
    set and strong (preflight_secrets_default), custom: more of them
    (preflight_secrets_custom, which wins over required on a shared name); optional:
    name -> value of the secrets checked when set (preflight_optional_secrets_default);
    cipher_pass: matcraft_pgbackrest_cipher_pass (its presence and strength are checked
    per database host by preflight_problems; here it only joins the check that no two
    secrets share a value); min_bytes: preflight_secret_min_bytes.
    """
    hex_secrets = dict(hex_secrets or {})
    required = dict(required or {})
    required.update(custom or {})
    optional = dict(optional or {})
    problems = []
    for name, value in hex_secrets.items():
        why = secret_problem(value, min_bytes, True)
        if why:
            problems.append("%s: %s (the production guide asks for a cryptographically random %s-byte hex string). "
                            "%s" % (name, why, min_bytes, SECRET_FIX))
    for name, value in list(required.items()) + [(n, v) for n, v in optional.items() if v]:
        why = secret_problem(value, min_bytes)
        if why:
            problems.append("%s: %s. %s" % (name, why, SECRET_FIX))
    every = dict(hex_secrets)
    every.update(required)
    every.update(optional)
    every[CIPHER_SECRET] = cipher_pass
    dupes = duplicate_secrets(every)
    if dupes:
        problems.append("%s: share one value; every secret must be different. Fix: generate a separate random "
                        "value for each." % ", ".join(dupes))
    return problems


class FilterModule(object):
    """matcraft.deploy preflight filters."""

    def filters(self):
        return {
            "preflight_problems": preflight_problems,
            "preflight_warnings": preflight_warnings,
            "preflight_known_variables": preflight_known_variables,
            "preflight_host_problems": preflight_host_problems,
            "preflight_secret_problems": preflight_secret_problems,
        }
