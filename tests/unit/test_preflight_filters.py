"""Unit tests of plugins/filter/preflight.py: the preflight role's inventory checks.

Every check: a valid value gives no message, each bad value exactly the expected one.
"""

import copy
import glob
import json
import os
import random
import re
import subprocess
import sys

import pytest
import yaml

import preflight as p

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PREFLIGHT_DEFAULTS = yaml.safe_load(open(os.path.join(ROOT, "roles", "preflight", "defaults", "main.yml")))
SETTINGS = {
    "tiers": PREFLIGHT_DEFAULTS["preflight_tiers"],
    "group_min_hosts_by_tier": PREFLIGHT_DEFAULTS["preflight_group_min_hosts_by_tier"],
    "groups": None,
    "check_domain": True,
    "tls_modes": PREFLIGHT_DEFAULTS["preflight_tls_modes"],
    "ssh_cidrs_default": PREFLIGHT_DEFAULTS["preflight_ssh_cidrs_default"],
    "ssh_open_to_world_acknowledged": PREFLIGHT_DEFAULTS["preflight_ssh_open_to_world_acknowledged"],
}
GROUPS = {"matcraft_api": ["app1"], "matcraft_workers": ["app1"], "matcraft_edge": ["app1"],
          "matcraft_database": ["data1"], "matcraft_redis": ["data1"], "matcraft_monitoring": ["data1"]}
# The example inventory's group_vars/all/main.yml and tier.yml (secrets are checked elsewhere).
GOOD = dict(yaml.safe_load(open(os.path.join(ROOT, "inventories", "small", "group_vars", "all", "main.yml"))),
            matcraft_tier="small", matcraft_acme_email="ops@matcraft.test.internal")
DELETE = object()


def _vars(changes):
    variables = copy.deepcopy(GOOD)
    for name, value in changes.items():
        if value is DELETE:
            variables.pop(name, None)
        else:
            variables[name] = value
    return variables


def problems(changes=None, host_changes=None, settings=None):
    """preflight_problems for two hosts sharing group_vars; host_changes: {host: {name: value}}."""
    hostvars = {host: _vars(changes or {}) for host in ("app1", "data1")}
    for host, more in (host_changes or {}).items():
        hostvars[host].update(more)
    return p.preflight_problems(hostvars, ["app1", "data1"], GROUPS, dict(SETTINGS, **(settings or {})))


def warnings(changes=None, host_changes=None, settings=None):
    hostvars = {host: _vars(changes or {}) for host in ("app1", "data1")}
    for host, more in (host_changes or {}).items():
        hostvars[host].update(more)
    return p.preflight_warnings(hostvars, ["app1", "data1"], settings=dict(SETTINGS, **(settings or {})),
                                groups=GROUPS)


def test_valid_inventory_has_no_problem_and_no_warning():
    assert problems() == []
    assert warnings() == []


# --- The checks that moved from inventory_problems.j2 (same messages) ----------------
@pytest.mark.parametrize("changes,expected", [
    ({"matcraft_tier": "large"}, ["matcraft_tier: 'large' is not a tier. Fix: set matcraft_tier to one of small, "
                                  "medium in group_vars/all."]),
    ({"matcraft_domain": DELETE}, ["matcraft_domain: not set. Fix: set it to the public DNS name of the API, such as "
                                   "matcraft.example.org."]),
    ({"matcraft_domain": "matcraft"}, ["matcraft_domain: 'matcraft' has no dot: give the full name, such as "
                                       "matcraft.example.org. Fix: set it to the public DNS name of the API, such as "
                                       "matcraft.example.org."]),
    ({"matcraft_tls_mode": "selfsigned"}, ["matcraft_tls_mode: 'selfsigned' is not a mode. Fix: use one of "
                                           "letsencrypt, provided, internal."]),
    ({"matcraft_acme_email": DELETE}, ["matcraft_acme_email: not set, and Let's Encrypt needs a contact address. "
                                       "Fix: set matcraft_acme_email to an address that receives expiry notices, or "
                                       "choose another matcraft_tls_mode."]),
    ({"matcraft_acme_email": "admin@example.com"}, ["matcraft_acme_email: 'admin@example.com' is not a real e-mail "
                                                    "address. Fix: give an address that receives Let's Encrypt "
                                                    "expiry notices."]),
    ({"matcraft_cors_origins": ["*"]}, ["matcraft_cors_origins: '*' is a wildcard: list the dashboard's exact "
                                        "origin. Fix: list only the dashboard's exact origin, such as "
                                        "https://dashboard.example.org."]),
    ({"matcraft_cors_origins": "https://a.example.org"}, ["matcraft_cors_origins: is a string; it must be a list. "
                                                          "Fix: write it as a YAML list, such as "
                                                          "[\"https://dashboard.example.org\"]."]),
])
def test_moved_checks_keep_their_messages(changes, expected):
    assert problems(changes) == expected


def test_groups_of_the_tier():
    assert problems({"matcraft_tier": "medium"}) == [
        "inventory group matcraft_api: has 1 host(s); the medium tier needs at least 2. Fix: add hosts to "
        "matcraft_api in hosts.yml, or choose another matcraft_tier.",
        "inventory group matcraft_workers: has 1 host(s); the medium tier needs at least 2. Fix: add hosts to "
        "matcraft_workers in hosts.yml, or choose another matcraft_tier.",
        "inventory group matcraft_database_replica: missing; the medium tier needs at least 1 host(s) in it. Fix: "
        "add the group to hosts.yml with its hosts.",
    ]
    # A layer playbook narrows the groups.
    assert problems({"matcraft_tier": "medium"}, settings={"groups": ["matcraft_redis"]}) == []


def test_domain_checks_follow_check_domain():
    assert problems({"matcraft_domain": DELETE, "matcraft_tls_mode": "bad"}, settings={"check_domain": False}) == []


# --- the application's database role ------------------------------------------------------
def test_database_role_names_valid():
    assert problems({"postgresql_app_user": "materia_app", "app_database_user": "materia_app"}) == []


@pytest.mark.parametrize("value,shown", [("Matcraft", "'Matcraft'"), ("mat-craft", "'mat-craft'"),
                                         ("a" * 53, "'" + "a" * 53 + "'")])
def test_database_role_not_a_plain_name(value, shown):
    assert problems({"postgresql_app_user": value, "app_database_user": value}) == [
        "%s: %s is not a plain database role name. Fix: use lowercase letters, digits and _, at most 52 characters, "
        "not starting with a digit (the login roles add 11)." % (name, shown)
        for name in ("postgresql_app_user", "app_database_user")]


def test_database_roles_differ():
    assert problems({"app_database_user": "other"}) == [
        "app_database_user: 'other' differs from postgresql_app_user 'matcraft', so the application would log in "
        "through a role the database does not have. Fix: set both to the same name, or neither."]


# --- matcraft_environment ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["production", "staging", "site-test", "eu1", "a" * 32])
def test_environment_valid(name):
    assert problems({"matcraft_environment": name}) == []


def test_environment_empty():
    expected = ["matcraft_environment: is empty, and the internal CA's name is made from it. Fix: set it "
                "to a short lowercase name such as production or staging (letters, digits and -, at most 32, starting "
                "with a letter)."]
    assert problems({"matcraft_environment": ""}) == expected
    assert problems({"matcraft_environment": None}) == expected
    assert problems({"matcraft_environment": "  "}) == expected


@pytest.mark.parametrize("value,shown", [("Production", "'Production'"), ("prod env", "'prod env'"),
                                         ("1prod", "'1prod'"), ("a" * 33, "'" + "a" * 33 + "'"), (12, "12")])
def test_environment_not_a_name(value, shown):
    assert problems({"matcraft_environment": value}) == [
        "matcraft_environment: %s is not a short lowercase name. Fix: use letters a-z, digits and -, at most 32 "
        "characters, starting with a letter, such as production or staging." % shown]


def test_environment_unset_is_a_warning():
    assert problems({"matcraft_environment": DELETE}) == []
    assert warnings({"matcraft_environment": DELETE}) == [
        "matcraft_environment: not set, so the internal CA is named for 'production'. Fix: set it in "
        "group_vars/all to this environment's short lowercase name, such as production or staging."]


# --- Whole numbers ------------------------------------------------------------------------
def test_retention_zero():
    assert problems({"postgresql_pgbackrest_retention_full_days": 0}) == [
        "postgresql_pgbackrest_retention_full_days: 0 is out of range; it must be a whole number of days from 1 to "
        "3650. Fix: set a value in that range, such as 7 (the default)."]


@pytest.mark.parametrize("value", [1, 7, "14", 3650])
def test_retention_valid(value):
    assert problems({"postgresql_pgbackrest_retention_full_days": value}) == []


def test_archive_timeout_negative():
    assert problems({"postgresql_archive_timeout": -5}) == [
        "postgresql_archive_timeout: -5 is out of range; it must be a whole number of seconds from 1 to 86400. "
        "Fix: set a value in that range, such as 60 (the default)."]


@pytest.mark.parametrize("value,shown", [("soon", "'soon'"), ("60s", "'60s'"), (1.5, "1.5"), (True, "True"),
                                         ([60], "[60]")])
def test_archive_timeout_not_a_number(value, shown):
    assert problems({"postgresql_archive_timeout": value, "prometheus_alert_wal_archive_timeout_seconds": 60}) == [
        "postgresql_archive_timeout: %s is not a whole number; it must be a whole number of seconds from 1 to "
        "86400. Fix: write a plain number, such as 60 (the default)." % shown]


@pytest.mark.parametrize("value", [60, "60", " 60 ", 60.0])
def test_archive_timeout_valid_as_the_role_takes_it(value):
    """The role's argument spec (type int) takes ints, digit strings and integral floats."""
    assert problems({"postgresql_archive_timeout": value}) == []


def test_port_out_of_range():
    assert problems({"api_port": 70000}) == [
        "api_port: 70000 is out of range; it must be a whole number (a TCP port) from 1 to 65535. Fix: set a value "
        "in that range, such as 8000 (the default)."]


@pytest.mark.parametrize("name", sorted(p.INTEGERS))
def test_every_whole_number_setting(name):
    low, high, _unit, default = p.INTEGERS[name]
    others = {"worker_time_limit": 604800, "pki_cert_valid_days": 3650, "prometheus_alert_wal_archive_timeout_seconds":
              DELETE, "postgresql_archive_timeout": DELETE}
    changes = {k: v for k, v in others.items() if k != name}
    changes = {k: v for k, v in changes.items() if v is not DELETE}
    # The bounds are valid (the pairs checked elsewhere are kept apart here).
    for good in (low, high):
        found = [m for m in problems(dict(changes, **{name: good})) if m.startswith(name + ":")
                 and ("out of range" in m or "not a whole number" in m)]
        assert found == [], (name, good, found)
    if isinstance(default, int):
        assert low <= default <= high, name
    for bad in (low - 1, high + 1):
        found = problems(dict(changes, **{name: bad}))
        mine = [m for m in found if m.startswith(name + ":")]
        assert len(mine) == 1 and "%d is out of range" % bad in mine[0] and "from %d to %d" % (low, high) in mine[0], \
            (name, bad, found)
    found = [m for m in problems(dict(changes, **{name: "many"})) if m.startswith(name + ":")]
    assert found == ["%s: 'many' is not a whole number; it must be a %s from %d to %d. Fix: write a plain number, "
                     "such as %s (the default)." % (
                         name, ("whole number of %s" % _unit) if not _unit.startswith("a ")
                         else "whole number (%s)" % _unit, low, high, default)]


@pytest.mark.parametrize("name,bad", [("redis_maxmemory_ram_share", 1.5), ("redis_maxmemory_ram_share", 0),
                                      ("redis_maxmemory_ram_share", "half"), ("postgresql_connection_headroom", 0.8)])
def test_fractions(name, bad):
    low, high, meaning, default = p.FRACTIONS[name]
    assert problems({name: default}) == []
    assert problems({name: bad}) == ["%s: %s is not %s from %s to %s. Fix: set a number in that range, such as %s "
                                     "(the default)." % (name, repr(bad) if isinstance(bad, str) else bad, meaning,
                                                         low, high, default)]


def test_worker_concurrency_by_tier():
    assert problems({"worker_concurrency_by_tier": {"small": 2, "medium": 8}}) == []
    assert problems({"worker_concurrency_by_tier": {"small": 0, "medium": 4}}) == [
        "worker_concurrency_by_tier: 0 of tier small is not a whole number of processes from 1 to 256. Fix: set each "
        "tier to a number in that range."]
    assert problems({"worker_concurrency_by_tier": 4}) == [
        "worker_concurrency_by_tier: is not a dictionary of tier -> number. Fix: write it as {small: N, medium: N}."]


# --- Durations and sizes ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["15d", "30d", "1h30m", "720h", "1y"])
def test_prometheus_retention_valid(value):
    assert problems({"prometheus_retention": value}) == []


@pytest.mark.parametrize("value,shown", [("15 days", "'15 days'"), ("0d", "'0d'"), (15, "15"), ("-1d", "'-1d'")])
def test_prometheus_retention_invalid(value, shown):
    assert problems({"prometheus_retention": value}) == [
        "prometheus_retention: %s is not a Prometheus duration above zero (a number and a unit of ms/s/m/h/d/w/y, "
        "such as 30s, 5m or 1h30m). Fix: write it as such, for example 15d (the default)." % shown]


def test_prometheus_retention_by_tier():
    assert problems({"prometheus_retention_by_tier": {"small": "15d", "medium": "60d"}}) == []
    assert problems({"prometheus_retention_by_tier": {"small": "15", "medium": "30d"}}) == [
        "prometheus_retention_by_tier: '15' of tier small is not a Prometheus duration above zero. Fix: write a "
        "number of days such as 15d."]


@pytest.mark.parametrize("name", sorted(p.PROM_DURATIONS))
def test_every_prometheus_duration(name):
    assert [m for m in problems({name: p.PROM_DURATIONS[name]}) if m.startswith(name)] == []
    assert len([m for m in problems({name: "5 minutes"}) if m.startswith(name + ": '5 minutes' is not")]) == 1


@pytest.mark.parametrize("name", sorted(p.NGINX_TIMES))
def test_every_nginx_time(name):
    assert problems({name: p.NGINX_TIMES[name]}) == []
    assert problems({name: 30}) == []
    assert problems({name: "1 minute"}) == [
        "%s: '1 minute' is not an nginx time (a number with an optional unit ms, s, m, h, d). Fix: write it as such, "
        "for example %s (the default)." % (name, p.NGINX_TIMES[name])]


@pytest.mark.parametrize("value", [0, "0", "10min", "12h", "1h 30min", "30s"])
def test_systemd_time_valid(value):
    assert problems({"postgresql_backup_randomized_delay": value, "postgresql_backup_timeout": value}) == []


def test_systemd_time_invalid():
    assert problems({"postgresql_backup_timeout": "twelve hours"}) == [
        "postgresql_backup_timeout: 'twelve hours' is not a systemd time span (such as 0, 30s, 10min or 12h). Fix: "
        "write it as such, for example 12h (the default)."]


@pytest.mark.parametrize("value", ["1gb", "512mb", "2GB", 1073741824, "1073741824", 0])
def test_redis_maxmemory_valid(value):
    assert problems({"redis_maxmemory": value}) == []


@pytest.mark.parametrize("value,shown", [("1 gigabyte", "'1 gigabyte'"), (-1, "-1"), ("1.5gb", "'1.5gb'")])
def test_redis_maxmemory_invalid(value, shown):
    assert problems({"redis_maxmemory": value}) == [
        "redis_maxmemory: %s is not a memory size; it must be a whole number of bytes or a size with a unit b, kb, "
        "mb or gb (binary), such as 1gb. Fix: write it as such, or remove it to take the tier's size." % shown]


def test_redis_maxmemory_by_tier():
    assert problems({"redis_maxmemory_by_tier": {"small": "1gb", "medium": "4gb"}}) == []
    assert problems({"redis_maxmemory_by_tier": {"small": "0", "medium": "2gb"}}) == [
        "redis_maxmemory_by_tier: '0' of tier small is not a memory size above zero (such as 1gb or 512mb). Fix: "
        "write it as such."]


# --- Addresses and networks ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [["192.0.2.0/24"], ["10.0.0.0/8", "2001:db8::/32"], ["192.0.2.7"], []])
def test_ssh_cidrs_valid(value):
    assert problems({"common_firewall_ssh_cidrs": value}) == []


def test_ssh_cidrs_invalid_network():
    assert problems({"common_firewall_ssh_cidrs": ["192.0.2.0/24", "10.0.0.0/33"]}) == [
        "common_firewall_ssh_cidrs: '10.0.0.0/33' is not an IPv4 or IPv6 network. Fix: write each entry as an "
        "address or network in CIDR form, such as 192.0.2.0/24 or 2001:db8::/32."]
    assert problems({"common_firewall_ssh_cidrs": ["office"]}) == [
        "common_firewall_ssh_cidrs: 'office' is not an IPv4 or IPv6 network. Fix: write each entry as an address "
        "or network in CIDR form, such as 192.0.2.0/24 or 2001:db8::/32."]


def test_ssh_cidrs_string():
    assert problems({"common_firewall_ssh_cidrs": "192.0.2.0/24"}) == [
        "common_firewall_ssh_cidrs: is a string; it must be a list of networks. Fix: write it as a YAML list, such "
        "as [\"192.0.2.0/24\"]."]


# --- SSH open to the world ---------------------------------------------------------------------------
ACK = "preflight_ssh_open_to_world_acknowledged"
SSH_FIX = ("Fix: set it to your admin networks in the inventory's group_vars/all/main.yml, such as "
           "[\"192.0.2.0/24\"]; to keep SSH open to the world on purpose, set "
           "preflight_ssh_open_to_world_acknowledged: true.")
SSH_ACKNOWLEDGED = ("; preflight_ssh_open_to_world_acknowledged is true, so the run goes on. Fix: narrow it to your "
                    "admin networks in the inventory's group_vars/all/main.yml.")


def test_ssh_open_to_the_world_v4_stops_the_run():
    expected = ["common_firewall_ssh_cidrs: admits 0.0.0.0/0 to SSH (port 22): the whole Internet may try to log "
                "in. " + SSH_FIX]
    assert problems({"common_firewall_ssh_cidrs": ["0.0.0.0/0"]}) == expected
    # Beside a narrow network, only the world is named; no warning as well.
    assert problems({"common_firewall_ssh_cidrs": ["192.0.2.0/24", "0.0.0.0/0"]}) == expected
    assert warnings({"common_firewall_ssh_cidrs": ["0.0.0.0/0"]}) == []


def test_ssh_open_to_the_world_v6_stops_the_run():
    assert problems({"common_firewall_ssh_cidrs": ["192.0.2.0/24", "::/0"], "common_firewall_ssh_port": 2222}) == [
        "common_firewall_ssh_cidrs: admits ::/0 to SSH (port 2222): the whole Internet may try to log in. " + SSH_FIX]


@pytest.mark.parametrize("spelling", ["::0/0", "0::/0", "0.0.0.0/00", "10.0.0.0/0", " 0.0.0.0/0 "])
def test_ssh_open_to_the_world_in_another_spelling_stops_the_run(spelling):
    """Any network of prefix length 0 is the whole address family, however it is written."""
    found = problems({"common_firewall_ssh_cidrs": [spelling]})
    assert len(found) == 1 and found[0].startswith("common_firewall_ssh_cidrs: admits %s to SSH" % spelling.strip())


def test_ssh_left_to_the_common_roles_default_stops_the_run():
    assert problems({"common_firewall_ssh_cidrs": DELETE}) == [
        "common_firewall_ssh_cidrs: not set, so the common role's default admits 0.0.0.0/0 and ::/0 to SSH (port 22): "
        "the whole Internet may try to log in. " + SSH_FIX]


@pytest.mark.parametrize("value", [["192.0.2.0/24"], ["10.0.0.0/8", "2001:db8::/32"], ["0.0.0.0/1"], ["::/1"], []])
def test_ssh_narrowed_passes_without_a_warning(value):
    assert problems({"common_firewall_ssh_cidrs": value}) == []
    assert warnings({"common_firewall_ssh_cidrs": value}) == []
    # The acknowledgement of a narrowed list changes nothing.
    assert problems({"common_firewall_ssh_cidrs": value, ACK: True}) == []
    assert warnings({"common_firewall_ssh_cidrs": value, ACK: True}) == []


@pytest.mark.parametrize("value", [False, "false", "no"])
def test_ssh_open_with_the_firewall_off_is_not_preflights_business(value):
    """Without the common role's firewall, SSH is not opened by this collection: no stop, no warning."""
    assert problems({"common_firewall_ssh_cidrs": ["0.0.0.0/0", "::/0"], "common_firewall_enabled": value}) == []
    assert warnings({"common_firewall_ssh_cidrs": ["0.0.0.0/0", "::/0"], "common_firewall_enabled": value}) == []
    assert problems({"common_firewall_ssh_cidrs": DELETE, "common_firewall_enabled": value}) == []


@pytest.mark.parametrize("value", [True, "true", "yes"])
def test_ssh_open_acknowledged_warns_and_goes_on(value):
    changes = {"common_firewall_ssh_cidrs": ["0.0.0.0/0", "::/0"], ACK: value}
    assert problems(changes) == []
    assert warnings(changes) == [
        "common_firewall_ssh_cidrs: admits 0.0.0.0/0 and ::/0 to SSH (port 22): the whole Internet may try to log in"
        + SSH_ACKNOWLEDGED]


def test_ssh_open_acknowledged_by_the_role_value():
    """-e or the role's vars: the acknowledgement in settings, not in hostvars."""
    changes = {"common_firewall_ssh_cidrs": DELETE}
    assert problems(changes, settings={"ssh_open_to_world_acknowledged": True}) == []
    assert warnings(changes, settings={"ssh_open_to_world_acknowledged": True}) == [
        "common_firewall_ssh_cidrs: not set, so the common role's default admits 0.0.0.0/0 and ::/0 to SSH (port 22): "
        "the whole Internet may try to log in" + SSH_ACKNOWLEDGED]
    # The inventory's false wins over the role's value.
    assert len(problems(dict(changes, **{ACK: False}), settings={"ssh_open_to_world_acknowledged": True})) == 1


def test_ssh_open_on_some_hosts_names_them():
    found = problems(host_changes={"data1": {"common_firewall_ssh_cidrs": ["0.0.0.0/0"]}})
    assert found == ["common_firewall_ssh_cidrs on host data1: admits 0.0.0.0/0 to SSH (port 22): the whole "
                     "Internet may try to log in. " + SSH_FIX]
    # Acknowledged on that host only: a warning naming it.
    changes = {"data1": {"common_firewall_ssh_cidrs": ["0.0.0.0/0"], ACK: True}}
    assert problems(host_changes=changes) == []
    assert warnings(host_changes=changes) == [
        "common_firewall_ssh_cidrs on host data1: admits 0.0.0.0/0 to SSH (port 22): the whole Internet may try to "
        "log in" + SSH_ACKNOWLEDGED]


def test_ssh_cidrs_that_are_no_list_or_no_networks_get_one_message():
    """The address check reports them; the SSH check does not add a second message."""
    assert [m.split(":", 1)[0] for m in problems({"common_firewall_ssh_cidrs": "0.0.0.0/0"})] == [
        "common_firewall_ssh_cidrs"]
    assert len(problems({"common_firewall_ssh_cidrs": ["0.0.0.0/0/0"]})) == 1


def test_ssh_cidrs_that_cannot_be_templated_are_left_to_the_common_role():
    class Raising(dict):
        def __getitem__(self, key):
            if key == "common_firewall_ssh_cidrs":
                raise ValueError("undefined variable")
            return dict.__getitem__(self, key)
    hostvars = {"app1": Raising(_vars({}))}
    assert p.preflight_problems(hostvars, ["app1"], {"matcraft_api": ["app1"]},
                                dict(SETTINGS, groups=["matcraft_api"])) == []


def test_the_removed_switch_of_the_old_warning_is_named():
    assert warnings({"preflight_warn_ssh_open": False}) == [
        "preflight_warn_ssh_open: was removed from matcraft.deploy, so it changes nothing: SSH open to the world now "
        "stops the run unless preflight_ssh_open_to_world_acknowledged is true (then it warns). Fix: remove it."]


@pytest.mark.parametrize("name", p.CIDR_LISTS)
def test_every_network_list(name):
    assert problems({name: ["192.0.2.0/24", "::1/128"]}) == []
    assert problems({name: ["192.0.2.300/24"]}) == [
        "%s: '192.0.2.300/24' is not an IPv4 or IPv6 network. Fix: write each entry as an address or network in CIDR "
        "form, such as 192.0.2.0/24 or 2001:db8::/32." % name]


def test_real_ip_from_takes_unix_sockets():
    assert problems({"nginx_real_ip_from": ["unix:", "10.0.0.0/8"]}) == []


def test_private_address_per_host():
    assert problems(host_changes={"app1": {"matcraft_private_address": "10.0.0.12"},
                                  "data1": {"matcraft_private_address": "fd00::31"}}) == []
    assert problems(host_changes={"data1": {"matcraft_private_address": "10.0.0.300"}}) == [
        "matcraft_private_address on host data1: '10.0.0.300' is not an IPv4 or IPv6 address. Fix: set it to this "
        "host's private IP address, such as 10.0.0.12."]
    assert problems({"matcraft_private_address": "0.0.0.0"}) == [
        "matcraft_private_address: '0.0.0.0' is the wildcard address (every interface), not this host's private "
        "address. Fix: set it to this host's private IP address, such as 10.0.0.12."]


@pytest.mark.parametrize("name", p.ADDRESSES)
def test_every_listen_address(name):
    assert problems({name: "10.0.0.5"}) == []
    assert problems({name: "db1.internal"}) == [
        "%s: 'db1.internal' is not an IPv4 or IPv6 address. Fix: set it to this host's private IP address, such as "
        "10.0.0.12." % name]


def test_redis_bind_addresses():
    assert problems({"redis_bind_addresses": ["10.0.0.41", "127.0.0.1"]}) == []
    assert problems({"redis_bind_addresses": ["redis1", "127.0.0.1"]}) == [
        "redis_bind_addresses: 'redis1' is not an IPv4 or IPv6 address. Fix: list this host's private address and "
        "127.0.0.1."]


def test_pki_extra_sans():
    assert problems({"pki_extra_sans": ["api.example.org", "localhost", "10.0.0.5", "::1"]}) == []
    assert problems({"pki_extra_sans": ["api_example", "10.0.0.0/24"]}) == [
        "pki_extra_sans: 'api_example' is neither a DNS name nor an IP address. Fix: list DNS names (such as "
        "api.example.org) or IP addresses only.",
        "pki_extra_sans: '10.0.0.0/24' is neither a DNS name nor an IP address. Fix: list DNS names (such as "
        "api.example.org) or IP addresses only."]


def test_firewall_rules_custom():
    good = [{"name": "office-api", "ports": [8000], "proto": "tcp", "from_cidrs": ["192.0.2.0/24"]}]
    assert problems({"common_firewall_rules_custom": good}) == []
    bad = [{"name": "office-api", "ports": [80000], "from_cidrs": ["192.0.2.0/24", "office"]}]
    assert problems({"common_firewall_rules_custom": bad}) == [
        "common_firewall_rules_custom: rule office-api has port 80000; a port is a whole number from 1 to 65535. "
        "Fix: correct it.",
        "common_firewall_rules_custom: rule office-api: from_cidrs entry 'office' is not an IPv4 or IPv6 network. "
        "Fix: write it in CIDR form, such as 192.0.2.0/24."]


# --- Contradicting pairs ----------------------------------------------------------------------------
def test_redis_tls_only_without_tls():
    expected = ["redis_tls_only: is true, but redis_tls_enabled is not: the only port (plain) would be closed. Fix: "
                "set redis_tls_enabled: true as well, or redis_tls_only: false."]
    assert problems({"redis_tls_enabled": DELETE}) == expected
    assert problems({"redis_tls_enabled": False}) == expected
    assert problems({"redis_tls_enabled": "no"}) == expected
    assert problems({"redis_tls_enabled": False, "redis_tls_only": False}) == []
    assert problems({"redis_tls_enabled": True, "redis_tls_only": False}) == []


def test_redis_tls_port_is_its_own():
    assert problems({"redis_tls_port": 6379}) == [
        "redis_tls_port: is 6379, the same port as redis_port. Fix: give TLS a port of its own, such as 6380 (the "
        "default)."]


def test_redis_clients_agree_with_the_server():
    assert problems({"redis_tls_enabled": False, "redis_tls_only": False, "app_redis_tls": True}) == [
        "app_redis_tls: is true, but redis_tls_enabled is not: Redis has no TLS port to connect to. Fix: set "
        "redis_tls_enabled: true, or remove app_redis_tls (it follows redis_tls_enabled)."]
    assert problems({"exporters_redis_tls": False}) == [
        "exporters_redis_tls: is false, but redis_tls_only closes Redis' plain port. Fix: remove exporters_redis_tls "
        "(it follows redis_tls_enabled), or set redis_tls_only: false."]


def test_provided_tls_needs_its_files_and_never_prints_them():
    assert problems({"matcraft_tls_mode": "provided"}) == [
        "nginx_tls_certificate: not set, and matcraft_tls_mode provided needs it. Fix: put the PEM text of your "
        "certificate chain in the vault file as nginx_tls_certificate, or choose another matcraft_tls_mode.",
        "nginx_tls_private_key: not set, and matcraft_tls_mode provided needs it. Fix: put the PEM text of your "
        "private key in the vault file as nginx_tls_private_key, or choose another matcraft_tls_mode."]
    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----"
    found = problems({"matcraft_tls_mode": "provided", "nginx_tls_certificate": "-----BEGIN CERTIFICATE-----",
                      "nginx_tls_private_key": key})
    assert found == []
    assert all("MIGHAgEA" not in m for m in problems({"matcraft_tls_mode": "provided", "nginx_tls_private_key": key}))


def test_api_and_edge_agree_on_tls():
    assert problems({"matcraft_api_tls": False}) == []
    assert problems({"api_tls": False}) == [
        "nginx_upstream_tls: is True while api_tls is False: the edge would speak HTTPS to an API that serves HTTP. "
        "Fix: set matcraft_api_tls once for both and remove api_tls and nginx_upstream_tls."]


def test_the_api_gets_the_client_certificate_it_requires():
    assert problems({"matcraft_api_tls_client_auth": False}) == []
    assert problems({"api_tls_client_auth": False}) == []  # the edge presents one nobody asks for: harmless
    assert problems({"api_tls": False, "nginx_upstream_tls": False, "nginx_upstream_tls_client_auth": False}) == []
    assert problems({"nginx_upstream_tls_client_auth": False}) == [
        "nginx_upstream_tls_client_auth: is False while api_tls_client_auth is True: the API would refuse every "
        "request from the edge, which would not present its client certificate. Fix: set "
        "matcraft_api_tls_client_auth once for both and remove api_tls_client_auth and "
        "nginx_upstream_tls_client_auth."]


def test_monitoring_tls_switches_agree():
    assert problems({"matcraft_monitoring_tls": False}) == []
    assert problems({"exporters_tls": False}) == [
        "prometheus_scrape_tls: is True while exporters_tls is False and alertmanager_tls is True: Prometheus and "
        "the servers it scrapes would not agree on HTTPS. Fix: set matcraft_monitoring_tls once and remove "
        "prometheus_scrape_tls, exporters_tls and alertmanager_tls."]


def test_worker_time_limits():
    assert problems({"worker_time_limit": 7200, "worker_soft_time_limit": 7000}) == []
    assert problems({"worker_soft_time_limit": 3600}) == [
        "worker_soft_time_limit: 3600 is not below worker_time_limit (3600): a task is killed before it is warned. "
        "Fix: keep the soft limit below the hard one, such as 3000 and 3600."]


def test_certificate_renewal_before_expiry():
    assert problems({"pki_cert_valid_days": 30}) == [
        "pki_renew_before_days: 30 is not below pki_cert_valid_days (30): every run would re-issue every certificate. "
        "Fix: keep it below the validity, such as 30 and 90."]


def test_scrape_timeout_within_interval():
    assert problems({"prometheus_scrape_interval": "5s", "prometheus_scrape_timeout": "4s"}) == []
    assert problems({"prometheus_scrape_interval": "5s"}) == [
        "prometheus_scrape_timeout: 10s is longer than prometheus_scrape_interval (5s), which Prometheus refuses. "
        "Fix: keep the timeout at or below the interval."]


def test_archive_alert_follows_archive_timeout():
    assert problems({"postgresql_archive_timeout": 300, "prometheus_alert_wal_archive_timeout_seconds": 300}) == []
    assert problems({"postgresql_archive_timeout": 300}) == [
        "prometheus_alert_wal_archive_timeout_seconds: 60 differs from postgresql_archive_timeout (300): the WAL "
        "archive alert would fire too early or too late. Fix: set both to the same number of seconds."]


@pytest.mark.parametrize("warning,critical,_w,_c", p.WARNING_CRITICAL)
def test_alert_warning_below_critical(warning, critical, _w, _c):
    assert problems({warning: 50, critical: 50}) == []
    assert problems({warning: 60, critical: 50}) == [
        "%s: 60 is above %s (50): the warning would come after the critical alert. Fix: keep the warning threshold "
        "below the critical one." % (warning, critical)]


def test_one_message_per_mistake_in_order():
    found = problems({"matcraft_environment": "", "postgresql_pgbackrest_retention_full_days": 0,
                      "common_firewall_ssh_cidrs": ["x"], "redis_tls_enabled": False})
    assert [m.split(":", 1)[0] for m in found] == [
        "matcraft_environment", "postgresql_pgbackrest_retention_full_days", "common_firewall_ssh_cidrs",
        "redis_tls_only"]
    assert all(re.match(r"^\S+( on hosts? [^:]+)?: .+\. Fix: .+\.$", m) for m in found), found


def test_a_value_that_cannot_be_templated_is_left_to_the_role():
    class Raising(dict):
        def __getitem__(self, key):
            if key == "postgresql_archive_timeout":
                raise ValueError("undefined variable")
            return dict.__getitem__(self, key)
    hostvars = {"app1": Raising(_vars({"postgresql_archive_timeout": "{{ nope }}"}))}
    assert p.preflight_problems(hostvars, ["app1"], {"matcraft_api": ["app1"]},
                                dict(SETTINGS, groups=["matcraft_api"])) == []


# --- Unknown variables ------------------------------------------------------------------------------
def test_typo_warns_with_the_closest_known_name():
    assert warnings({"redis_tls_enabeld": True}) == [
        "redis_tls_enabeld: no role of matcraft.deploy reads this variable, so it changes nothing. Fix: did you mean "
        "redis_tls_enabled? Rename it."]
    assert warnings({"matcraft_domian": "x.example.org"}) == [
        "matcraft_domian: no role of matcraft.deploy reads this variable, so it changes nothing. Fix: did you mean "
        "matcraft_domain? Rename it."]


def test_unknown_without_a_close_name_and_per_host():
    assert warnings(host_changes={"data1": {"postgresql_zzz_qqq": 1}}) == [
        "postgresql_zzz_qqq on host data1: no role of matcraft.deploy reads this variable, so it changes nothing. "
        "Fix: check its name in the roles' README files, or remove it."]


def test_other_variables_are_not_warned_about():
    assert warnings({"ansible_user": "admin", "my_site_setting": 1, "apt_proxy": "x", "preflight_passed": True,
                     "preflight_resources_strict": True, "common_firewall_rule_name": "x"}) == []


def test_without_the_roles_specs_no_name_is_called_unknown(tmp_path):
    hostvars = {"h": dict(GOOD, redis_tls_enabeld=True)}
    assert p.preflight_warnings(hostvars, ["h"], known=p.preflight_known_variables(str(tmp_path))) == []


def test_known_variables_are_every_option_and_default_of_every_role():
    known = set(p.preflight_known_variables())
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        for entry in yaml.safe_load(open(path))["argument_specs"].values():
            assert set(entry.get("options") or {}) <= known, path
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "defaults", "main.yml")):
        assert set(yaml.safe_load(open(path)) or {}) <= known, path
    assert set(p.MATCRAFT_INPUTS) <= known


def test_the_shared_inputs_are_the_matcraft_variables_the_collection_reads():
    groups = {"matcraft_api", "matcraft_workers", "matcraft_database", "matcraft_database_replica", "matcraft_redis",
              "matcraft_edge", "matcraft_monitoring", "matcraft_backup"}
    read = set()
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "defaults", "main.yml")) + \
            glob.glob(os.path.join(ROOT, "playbooks", "*.yml")):
        text = open(path).read()
        read |= p.matcraft_variables_read(text)
        # Conditions are Jinja without braces.
        read |= p.matcraft_variables_read("\n".join("{{ %s }}" % line for line in re.findall(r"when:(.*)", text)))
    assert read - groups - set(p.INTERNAL_FACTS) <= set(p.MATCRAFT_INPUTS), sorted(read - set(p.MATCRAFT_INPUTS))
    documented = set(re.findall(r"matcraft_[a-z0-9_]+", open(os.path.join(ROOT, "inventories", "small", "group_vars",
                                                                          "all", "vault.yml.example")).read()))
    assert documented <= set(p.MATCRAFT_INPUTS)


def test_the_tables_name_real_variables_with_their_role_defaults():
    known = set(p.preflight_known_variables())
    tables = (list(p.INTEGERS) + list(p.FRACTIONS) + list(p.TIER_INTEGERS) + list(p.PROM_DURATIONS)
              + list(p.NGINX_TIMES) + list(p.SYSTEMD_TIMES) + list(p.CIDR_LISTS) + list(p.ADDRESSES)
              + [n for pair in p.WARNING_CRITICAL for n in pair[:2]])
    assert sorted(set(tables) - known) == []
    defaults = {}
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "defaults", "main.yml")):
        defaults.update(yaml.safe_load(open(path)) or {})
    for name, (_low, _high, _unit, default) in p.INTEGERS.items():
        if isinstance(defaults.get(name), int):
            assert defaults[name] == default, name
    for table in (p.PROM_DURATIONS, p.NGINX_TIMES, p.SYSTEMD_TIMES):
        for name, default in table.items():
            if name in defaults and "{{" not in str(defaults[name]):
                assert defaults[name] == default, name
    for warning, critical, warning_default, critical_default in p.WARNING_CRITICAL:
        assert (defaults[warning], defaults[critical]) == (warning_default, critical_default)
    # The role defaults pass every check.
    hostvars = {"h": {name: value for name, value in defaults.items() if "{{" not in str(value)}}
    hostvars["h"].update(GOOD)
    assert p.preflight_problems(hostvars, ["h"], GROUPS, dict(SETTINGS, check_domain=False)) == []


def test_every_port_and_network_list_of_the_specs_is_checked():
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        options = yaml.safe_load(open(path))["argument_specs"]["main"].get("options") or {}
        for name, spec in options.items():
            if name.endswith("_port") and spec.get("type") == "int":
                assert p.INTEGERS.get(name, (None,))[:2] == (1, 65535), name
            if name.endswith("_cidrs") and not name.startswith("preflight_"):
                assert name in p.CIDR_LISTS, name


def test_helpers():
    assert p.prom_duration_seconds("1h30m") == 5400
    assert p.prom_duration_seconds("15 d") is None
    assert p.redis_size_bytes("1gb") == 1024 ** 3
    assert p.redis_size_bytes("512MB") == 512 * 1024 ** 2
    assert p.network_problem("") == "is empty"
    assert p.address_problem("::") .startswith("is the wildcard")


# --- Backups off the database host are encrypted -------------------------------------------------
CIPHER = "Xq7vR2mK9pT4sW8nB3cF6hJ1dL5gZ0yAe4Nb7Mc2Pk9Ru3Vw"  # 48 letters and digits: a fixture
BACKUP_ACK = "preflight_backup_unencrypted_acknowledged"
BACKUP_FIX = ("Fix: generate it with the other secrets (ansible-playbook matcraft.deploy.secrets, docs/secrets.md) "
              "or add 48 random letters and digits to the vault file as matcraft_pgbackrest_cipher_pass; an existing "
              "unencrypted repository moves to a new repository path or bucket first "
              "(docs/runbooks/backup-restore.md)")
BACKUP_KEEP = (" To keep an existing unencrypted repository on purpose, set postgresql_pgbackrest_encrypt: false and "
               "preflight_backup_unencrypted_acknowledged: true.")


def _missing(where, repo_type, host="data1"):
    return ("matcraft_pgbackrest_cipher_pass on host %s: not set, so the pgBackRest repository %s "
            "(postgresql_pgbackrest_repo_type %s) would hold the database's backups and WAL unencrypted"
            % (host, where, repo_type))


def test_backup_host_repository_without_a_passphrase_stops_the_run():
    assert problems({"postgresql_pgbackrest_repo_type": "host"}) == [
        _missing("on the backup host (over SSH)", "host") + ". " + BACKUP_FIX + "." + BACKUP_KEEP]
    assert warnings({"postgresql_pgbackrest_repo_type": "host"}) == []


def test_s3_repository_without_a_passphrase_stops_the_run():
    for empty in (DELETE, "", None):
        assert problems({"postgresql_pgbackrest_repo_type": "s3", "matcraft_pgbackrest_cipher_pass": empty}) == [
            _missing("in the S3 object store", "s3") + ". " + BACKUP_FIX + "." + BACKUP_KEEP]


def test_off_host_repository_with_a_passphrase_passes():
    for repo_type in ("host", "s3"):
        changes = {"postgresql_pgbackrest_repo_type": repo_type, "matcraft_pgbackrest_cipher_pass": CIPHER}
        assert problems(changes) == [] and warnings(changes) == []
        # The role's own variable instead of the vault secret.
        changes = {"postgresql_pgbackrest_repo_type": repo_type, "postgresql_pgbackrest_cipher_pass": CIPHER}
        assert problems(changes) == [] and warnings(changes) == []
    assert p.backup_encryption({"postgresql_pgbackrest_repo_type": "s3",
                                "matcraft_pgbackrest_cipher_pass": CIPHER}) is None


def test_local_repository_needs_no_passphrase():
    for changes in ({}, {"postgresql_pgbackrest_repo_type": "posix"},
                    {"postgresql_pgbackrest_repo_type": "posix", "matcraft_pgbackrest_cipher_pass": CIPHER},
                    {"postgresql_pgbackrest_repo_type": "posix", "postgresql_pgbackrest_encrypt": False}):
        assert problems(changes) == [] and warnings(changes) == [], changes
    assert p.backup_encryption({}) is None


def test_only_database_and_backup_hosts_are_checked():
    # app1 is in no database group: no message for it, whatever group_vars/all says.
    assert p._backup_messages({"app1": {"postgresql_pgbackrest_repo_type": "s3"}}, ["app1"], GROUPS, {}, False) == {
        "app1": []}
    # A backup host's repository is off the database host whatever its repo type says.
    groups = dict(GROUPS, matcraft_backup=["backup1"])
    found = p._backup_messages({"backup1": {}}, ["backup1"], groups, {}, False)
    assert found["backup1"][0].startswith("matcraft_pgbackrest_cipher_pass: not set, so the pgBackRest repository "
                                          "on the backup host (over SSH) (postgresql_pgbackrest_repo_type host)")
    # A primary group of another name (postgresql_primary_group) is a database group.
    found = p._backup_messages({"db2": {"postgresql_primary_group": "other_db",
                                        "postgresql_pgbackrest_repo_type": "s3"}},
                               ["db2"], {"other_db": ["db2"]}, {}, False)
    assert len(found["db2"]) == 1


@pytest.mark.parametrize("value", [True, "true", "yes"])
def test_unencrypted_off_host_repository_acknowledged_warns_and_goes_on(value):
    changes = {"postgresql_pgbackrest_repo_type": "host", BACKUP_ACK: value}
    assert problems(changes) == []
    assert warnings(changes) == [
        _missing("on the backup host (over SSH)", "host") + "; preflight_backup_unencrypted_acknowledged is true, so "
        "the run goes on. " + BACKUP_FIX + "."]
    # The role's value (-e) too; the inventory's false wins over it.
    changes = {"postgresql_pgbackrest_repo_type": "s3"}
    assert problems(changes, settings={"backup_unencrypted_acknowledged": True}) == []
    assert len(warnings(changes, settings={"backup_unencrypted_acknowledged": True})) == 1
    assert len(problems(dict(changes, **{BACKUP_ACK: False}), settings={"backup_unencrypted_acknowledged": True})) == 1


def test_encryption_switched_off_off_the_host_stops_the_run_unless_acknowledged():
    changes = {"postgresql_pgbackrest_repo_type": "s3", "matcraft_pgbackrest_cipher_pass": CIPHER,
               "postgresql_pgbackrest_encrypt": False}
    what = ("postgresql_pgbackrest_encrypt on host data1: is false, so the pgBackRest repository in the S3 object "
            "store (postgresql_pgbackrest_repo_type s3) holds the database's backups and WAL unencrypted")
    fix = ("Fix: remove postgresql_pgbackrest_encrypt (off the database host, encryption is the default), set "
           "matcraft_pgbackrest_cipher_pass for a new repository path or bucket and take a full backup there "
           "(docs/runbooks/backup-restore.md).")
    assert problems(changes) == [what + ". " + fix + BACKUP_KEEP]
    changes[BACKUP_ACK] = True
    assert problems(changes) == []
    assert warnings(changes) == [what + "; preflight_backup_unencrypted_acknowledged is true, so the run goes on. "
                                 + fix]


@pytest.mark.parametrize("value,why", [
    ("s3cr3tP4ss", "has 10 characters; at least 32 are needed"),
    ("changeme-changeme-changeme-changeme", "looks like a placeholder"),
    ("ab" * 24, "carries at most"),
])
def test_weak_passphrase_is_refused_even_when_acknowledged(value, why):
    for name in ("matcraft_pgbackrest_cipher_pass", "postgresql_pgbackrest_cipher_pass"):
        for repo_type in ("host", "s3", "posix"):
            changes = {"postgresql_pgbackrest_repo_type": repo_type, name: value, BACKUP_ACK: True,
                       "postgresql_pgbackrest_encrypt": True}
            found = problems(changes)
            assert len(found) == 1 and found[0].startswith("%s on host data1: %s" % (name, why)), found
            assert value not in found[0] and "docs/runbooks/backup-restore.md" in found[0]
    # Not checked when the secrets are not (preflight_check_secrets: false).
    assert problems({"postgresql_pgbackrest_repo_type": "s3", "matcraft_pgbackrest_cipher_pass": value},
                    settings={"check_secrets": False}) == []


def test_a_local_repository_encrypted_by_the_inventory_keeps_its_cipher():
    """Before postgresql_pgbackrest_encrypt, a passphrase set for a posix repository encrypted it;
    the switch must say so now, or the role would drop the cipher of that repository."""
    changes = {"postgresql_pgbackrest_cipher_pass": CIPHER}
    assert problems(changes) == [
        "postgresql_pgbackrest_cipher_pass on host data1: is set for the local (posix) repository, which the "
        "postgresql role encrypts only when postgresql_pgbackrest_encrypt is true (repositories off the database "
        "host are encrypted by default, local ones are not). Fix: set postgresql_pgbackrest_encrypt: true to keep "
        "encrypting this repository with the same passphrase, or remove postgresql_pgbackrest_cipher_pass."]
    assert problems(dict(changes, postgresql_pgbackrest_encrypt=True)) == []
    assert problems(dict(changes, postgresql_pgbackrest_encrypt=False)) == []
    # Encryption asked for a local repository without a passphrase.
    found = problems({"postgresql_pgbackrest_encrypt": True})
    assert len(found) == 1 and found[0].startswith("matcraft_pgbackrest_cipher_pass on host data1: not set"), found


def test_the_passphrase_joins_the_duplicate_check():
    tasks = open(os.path.join(ROOT, "roles", "preflight", "tasks", "main.yml")).read()
    assert "cipher_pass=matcraft_pgbackrest_cipher_pass | default('')" in tasks
    assert p.preflight_secret_problems({}, {"matcraft_db_password": CIPHER}, cipher_pass=CIPHER) == [
        "matcraft_db_password, matcraft_pgbackrest_cipher_pass: share one value; every secret must be different. "
        "Fix: generate a separate random value for each."]
    assert "matcraft_pgbackrest_cipher_pass" in p.MATCRAFT_INPUTS
    assert PREFLIGHT_DEFAULTS[BACKUP_ACK] is False


# --- The example inventories pass -------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["small", "medium"])
def test_example_inventories_have_no_problem_and_no_warning(tier):
    out = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", os.path.join(ROOT, "inventories", tier),
                          "--list"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    data = json.loads(out)
    hostvars = data["_meta"]["hostvars"]

    def hosts(group):
        found = set(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            found |= hosts(child)
        return found

    groups = {g: sorted(hosts(g)) for g in data if g not in ("_meta", "all")}
    names = sorted(hostvars)
    assert p.preflight_problems(hostvars, names, groups, dict(SETTINGS, groups=None)) == [
        # The example's contact address must be replaced (example.org); everything else passes.
        "matcraft_acme_email: 'ops@example.org' is not a real e-mail address. Fix: give an address that receives "
        "Let's Encrypt expiry notices."]
    assert p.preflight_warnings(hostvars, names) == []


# --- Listening on a public address (security issue, least network) -------------------
PUBLIC_ACK = "preflight_public_address_acknowledged"


def _facts(address):
    return {"ansible_facts": {"default_ipv4": {"address": address}}}


@pytest.mark.parametrize("value", ["10.0.0.12", "172.16.5.1", "192.168.1.9", "100.64.3.4", "fd00::12", "127.0.0.1",
                                   "169.254.1.1", "fe80::1", "::ffff:10.0.0.1", "203.0.113.7",
                                   "2001:db8::1", "not an address"])
def test_private_loopback_link_local_and_invalid_are_not_public(value):
    assert not p.address_is_public(value)


@pytest.mark.parametrize("value", ["9.9.9.9", "1.1.1.1", "2001:4860::8888", "::ffff:8.8.8.8"])
def test_internet_addresses_are_public(value):
    assert p.address_is_public(value)


def test_a_guessed_private_address_passes():
    assert problems(host_changes={"app1": _facts("10.0.0.5"), "data1": _facts("172.17.0.3")}) == []


def test_a_guessed_public_address_stops_the_run_even_acknowledged():
    message = ("matcraft_private_address on host data1: not set, so the services would listen on 8.8.4.4, the "
               "address of the default route, which is public. Fix: set matcraft_private_address to this host's "
               "address on the private network, such as 10.0.0.12; to listen on a public address on purpose, set "
               "matcraft_private_address to it and preflight_public_address_acknowledged: true.")
    hosts = {"app1": _facts("10.0.0.5"), "data1": _facts("8.8.4.4")}
    assert problems(host_changes=hosts) == [message]
    assert problems({PUBLIC_ACK: True}, host_changes=hosts) == [message]


def test_a_stated_private_address_wins_over_a_public_default_route():
    hosts = {host: dict(_facts("8.8.4.4"), matcraft_private_address="10.0.0.%d" % n)
             for n, host in enumerate(("app1", "data1"), 5)}
    assert problems(host_changes=hosts) == []


@pytest.mark.parametrize("name", ["matcraft_private_address", "api_bind_address", "postgresql_listen_address",
                                  "grafana_listen_address", "worker_health_address"])
def test_a_stated_public_address_stops_the_run(name):
    assert problems(host_changes={"app1": {name: "9.9.9.9"}}) == [
        "%s on host app1: '9.9.9.9' is a public address, so the service would listen where the whole Internet "
        "can reach it. Fix: set it to this host's address on the private network, such as 10.0.0.12; to listen "
        "there on purpose, set preflight_public_address_acknowledged: true." % name]
    assert not [w for w in warnings(host_changes={"app1": {name: "9.9.9.9"}}) if "public" in w]


@pytest.mark.parametrize("where", ["inventory", "role"])
def test_a_stated_public_address_acknowledged_warns_and_goes_on(where):
    changes = {PUBLIC_ACK: True} if where == "inventory" else {}
    settings = {"public_address_acknowledged": True} if where == "role" else {}
    hosts = {"app1": {"matcraft_private_address": "9.9.9.9"}}
    assert problems(changes, host_changes=hosts, settings=settings) == []
    assert [w for w in warnings(changes, host_changes=hosts, settings=settings) if "public" in w] == [
        "matcraft_private_address on host app1: '9.9.9.9' is a public address; "
        "preflight_public_address_acknowledged is true, so the run goes on and the service listens there. Fix: use "
        "this host's private address, such as 10.0.0.12."]


def test_the_role_default_of_the_public_acknowledgement_is_false():
    assert PREFLIGHT_DEFAULTS[PUBLIC_ACK] is False
    assert p.DEFAULT_SETTINGS["public_address_acknowledged"] is False


# --- One host's facts: operating system and size (preflight_host_problems) ---------------------
HOST_SETTINGS = {
    "check_os": True,
    "supported_os": PREFLIGHT_DEFAULTS["preflight_supported_os"],
    "untested_os": PREFLIGHT_DEFAULTS["preflight_untested_os"],
    "check_resources": True,
    "resources_strict": False,
    "tier": "small",
    "tier_specs": PREFLIGHT_DEFAULTS["preflight_tier_specs"],
    "memory_tolerance_mb": PREFLIGHT_DEFAULTS["preflight_memory_tolerance_mb"],
}
# A host as big as the small tier asks for its database (2 vCPU, 4 GiB less what the firmware keeps, 60 GB).
HOST_FACTS = {"distribution": "Debian", "distribution_major_version": "12", "processor_vcpus": 2,
              "memtotal_mb": 3840, "mounts": [{"mount": "/boot", "size_total": 500000000},
                                              {"mount": "/", "size_total": 60000000000}]}
RESOURCES_FIX = ("Fix: resize the host, choose a smaller matcraft_tier, or set preflight_resources_strict: false to "
                 "only warn.")


def host_check(facts=None, groups=("matcraft_database",), **settings):
    """preflight_host_problems of host db1; facts: changes to HOST_FACTS (DELETE removes one)."""
    merged = copy.deepcopy(HOST_FACTS)
    for name, value in (facts or {}).items():
        if value is DELETE:
            merged.pop(name, None)
        else:
            merged[name] = value
    return p.preflight_host_problems(merged, "db1", list(groups), dict(HOST_SETTINGS, **settings))


def test_a_host_on_a_supported_system_and_of_the_tiers_size_passes():
    assert host_check() == {"problems": [], "warnings": []}
    assert host_check(groups=["matcraft_api", "matcraft_database", "matcraft_redis", "matcraft_workers"]) == {
        "problems": [], "warnings": []}


def test_the_filters_are_registered():
    filters = p.FilterModule().filters()
    assert filters["preflight_host_problems"] is p.preflight_host_problems
    assert filters["preflight_secret_problems"] is p.preflight_secret_problems


def test_the_checks_moved_out_of_templates():
    assert not os.path.exists(os.path.join(ROOT, "roles", "preflight", "templates", "host_problems.j2"))
    assert not os.path.exists(os.path.join(ROOT, "roles", "preflight", "templates", "secret_problems.j2"))
    tasks = yaml.safe_load(open(os.path.join(ROOT, "roles", "preflight", "tasks", "main.yml")))
    by_name = {task["name"]: task for task in tasks}
    secrets = by_name["Check the secrets (names only are ever reported)"]
    assert secrets["no_log"] is True and secrets["run_once"] is True
    call = secrets["ansible.builtin.set_fact"]["preflight_secret_problems"]
    assert "matcraft.deploy.preflight_secret_problems(" in call
    host = by_name["Check this host"]
    assert "matcraft.deploy.preflight_host_problems(" in host["ansible.builtin.set_fact"]["preflight_host_result"]
    assert set(host["vars"]["preflight_host_settings"]) == set(p.HOST_SETTINGS) == set(HOST_SETTINGS)


@pytest.mark.parametrize("dist,major,shown", [
    ("Ubuntu", "20", "Ubuntu 20"), ("Debian", "11", "Debian 11"), ("Rocky", 9, "Rocky 9"),
    (DELETE, DELETE, "unknown ?"),
])
def test_an_unsupported_system_is_a_problem(dist, major, shown):
    result = host_check({"distribution": dist, "distribution_major_version": major})
    assert result == {"problems": ["host db1: runs %s, which is not supported. Fix: use Debian 12 "
                                   "(preflight_supported_os lists them)." % shown], "warnings": []}


def test_the_fix_lists_every_supported_system():
    supported = {"Debian": ["12", 13], "Ubuntu": [24]}
    result = host_check({"distribution": "Alpine", "distribution_major_version": "3"}, supported_os=supported)
    assert result["problems"] == ["host db1: runs Alpine 3, which is not supported. Fix: use Debian 12/13 or "
                                  "Ubuntu 24 (preflight_supported_os lists them)."]


@pytest.mark.parametrize("dist,major", [("Debian", "12"), ("Debian", 12), ("Ubuntu", "24")])
def test_a_supported_system_is_no_problem(dist, major):
    supported = {"Debian": ["12"], "Ubuntu": [24]}
    assert host_check({"distribution": dist, "distribution_major_version": major},
                      supported_os=supported) == {"problems": [], "warnings": []}


@pytest.mark.parametrize("dist,major", [("Debian", "13"), ("Ubuntu", "22"), ("Ubuntu", 24)])
def test_an_untested_system_is_a_warning(dist, major):
    result = host_check({"distribution": dist, "distribution_major_version": major})
    assert result == {"problems": [], "warnings": [
        "host db1: runs %s %s, which the roles are written for but no test of this collection runs on (tested: "
        "Debian 12). Run the Molecule scenarios on it first (docs/testing.md), or use a tested system."
        % (dist, major)]}


def test_the_warning_lists_every_tested_system_and_a_supported_one_is_never_untested():
    supported = {"Debian": ["12"], "Ubuntu": ["24"]}
    result = host_check({"distribution": "Ubuntu", "distribution_major_version": "22"}, supported_os=supported)
    assert result["warnings"] == [
        "host db1: runs Ubuntu 22, which the roles are written for but no test of this collection runs on (tested: "
        "Debian 12, Ubuntu 24). Run the Molecule scenarios on it first (docs/testing.md), or use a tested system."]
    # Listed as untested and as supported: supported wins.
    assert host_check({"distribution": "Ubuntu", "distribution_major_version": "24"},
                      supported_os=supported) == {"problems": [], "warnings": []}


@pytest.mark.parametrize("check_os", [False, "false", "no"])
def test_the_system_is_not_checked_when_switched_off(check_os):
    for dist, major in (("Ubuntu", "20"), ("Debian", "13")):
        assert host_check({"distribution": dist, "distribution_major_version": major},
                          check_os=check_os) == {"problems": [], "warnings": []}


@pytest.mark.parametrize("facts,short", [
    ({"processor_vcpus": 1}, "1 vCPU < 2"),
    ({"processor_vcpus": DELETE}, "0 vCPU < 2"),
    ({"memtotal_mb": 3839}, "3839 MiB RAM < 4096"),
    ({"memtotal_mb": DELETE}, "0 MiB RAM < 4096"),
    ({"mounts": [{"mount": "/", "size_total": 47499999999}]}, "47 GB disk < 50"),
    ({"mounts": [{"mount": "/", "size_total": 20600000000}, {"mount": "/boot", "size_total": 1000}]},
     "21 GB disk < 50"),
    ({"mounts": []}, "0 GB disk < 50"),
    ({"mounts": DELETE}, "0 GB disk < 50"),
    ({"processor_vcpus": 1, "memtotal_mb": 2000, "mounts": [{"size_total": 10000000000}]},
     "1 vCPU < 2, 2000 MiB RAM < 4096, 10 GB disk < 50"),
])
def test_a_host_smaller_than_its_tier_warns(facts, short):
    message = ("host db1 (matcraft_database): smaller than the small tier's specification (%s). %s"
               % (short, RESOURCES_FIX))
    assert host_check(facts) == {"problems": [], "warnings": [message]}
    # preflight_resources_strict: true makes it a mistake.
    assert host_check(facts, resources_strict=True) == {"problems": [message], "warnings": []}
    # preflight_check_resources: false checks nothing.
    assert host_check(facts, check_resources=False) == {"problems": [], "warnings": []}


@pytest.mark.parametrize("facts", [
    {"processor_vcpus": 2}, {"processor_vcpus": 16},
    {"memtotal_mb": 3840}, {"memtotal_mb": 65536},
    {"mounts": [{"mount": "/", "size_total": 47500000000}]},
    {"mounts": [{"mount": "/boot", "size_total": 1}, {"mount": "/srv", "size_total": 200000000000}]},
])
def test_a_host_at_or_above_its_tier_does_not_warn(facts):
    assert host_check(facts) == {"problems": [], "warnings": []}
    assert host_check(facts, resources_strict=True) == {"problems": [], "warnings": []}


def test_sizes_are_compared_per_group_of_the_host_and_per_tier():
    small = {"processor_vcpus": 1, "memtotal_mb": 700, "mounts": []}
    groups = ["matcraft_api", "matcraft_edge", "matcraft_redis"]
    assert host_check(small, groups=groups)["warnings"] == [
        "host db1 (matcraft_api): smaller than the small tier's specification (1 vCPU < 2, 700 MiB RAM < 4096). "
        + RESOURCES_FIX,
        # The edge has no specification; Redis asks for RAM only.
        "host db1 (matcraft_redis): smaller than the small tier's specification (700 MiB RAM < 1024). "
        + RESOURCES_FIX]
    assert host_check(small, groups=["matcraft_edge"]) == {"problems": [], "warnings": []}
    assert host_check({"processor_vcpus": 2, "memtotal_mb": 8000}, groups=["matcraft_workers"],
                      tier="medium")["warnings"] == [
        "host db1 (matcraft_workers): smaller than the medium tier's specification (2 vCPU < 4). " + RESOURCES_FIX]
    # A tier without specification (preflight_problems reports an unknown tier) checks no size.
    assert host_check(small, tier="large") == {"problems": [], "warnings": []}


def test_the_memory_tolerance_is_a_setting():
    assert host_check({"memtotal_mb": 4000}, memory_tolerance_mb=0)["warnings"] == [
        "host db1 (matcraft_database): smaller than the small tier's specification (4000 MiB RAM < 4096). "
        + RESOURCES_FIX]
    assert host_check({"memtotal_mb": 4000}, memory_tolerance_mb=96)["warnings"] == []


def test_os_and_size_messages_come_together():
    result = host_check({"distribution": "Ubuntu", "distribution_major_version": "20", "processor_vcpus": 1},
                        resources_strict=True)
    assert result == {"problems": [
        "host db1: runs Ubuntu 20, which is not supported. Fix: use Debian 12 (preflight_supported_os lists them).",
        "host db1 (matcraft_database): smaller than the small tier's specification (1 vCPU < 2). " + RESOURCES_FIX],
        "warnings": []}


# --- Secrets (preflight_secret_problems): names only, never values -------------------------------
def _random(length, alphabet, seed):
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
GOOD_HEX = _random(64, "0123456789abcdef", 1)
GOOD_SECRETS = {name: _random(48, LETTERS, seed) for seed, name in enumerate((
    "matcraft_db_password", "matcraft_redis_password", "matcraft_db_replication_password",
    "matcraft_db_monitoring_password", "matcraft_redis_exporter_password", "matcraft_grafana_admin_password",
    "matcraft_monitoring_web_password", "matcraft_pgbackrest_cipher_pass", "matcraft_extra_token",
    "matcraft_pki_ca_passphrase"), 10)}
REQUIRED = ("matcraft_db_password", "matcraft_redis_password", "matcraft_pki_ca_passphrase")
OPTIONAL = ("matcraft_db_replication_password", "matcraft_db_monitoring_password", "matcraft_redis_exporter_password",
            "matcraft_grafana_admin_password", "matcraft_monitoring_web_password")
SECRET_FIX = ("Fix: generate one with `openssl rand -hex 32` (or playbooks/secrets.yml) and keep it in the vault file "
              "of this environment only.")
SHARED = "share one value; every secret must be different. Fix: generate a separate random value for each."


def secret_check(changes=None, custom=None, min_bytes=32):
    """preflight_secret_problems of the role's secrets, all strong and distinct but for changes."""
    values = dict(GOOD_SECRETS, matcraft_secret_key=GOOD_HEX)
    values.update(changes or {})
    found = p.preflight_secret_problems(
        {"matcraft_secret_key": values["matcraft_secret_key"]},
        {name: values[name] for name in REQUIRED}, optional={name: values[name] for name in OPTIONAL},
        custom=custom, cipher_pass=values["matcraft_pgbackrest_cipher_pass"], min_bytes=min_bytes)
    # No message ever shows a value (every value here is longer than a placeholder word).
    for value in list(values.values()) + list((custom or {}).values()):
        if value:
            assert not [message for message in found if str(value) in message], (value, found)
    return found


def test_strong_distinct_secrets_pass():
    assert secret_check() == []
    assert secret_check({name: "" for name in OPTIONAL + ("matcraft_pgbackrest_cipher_pass",)}) == []


def test_the_role_defaults_name_the_secrets_the_tests_check():
    assert list(PREFLIGHT_DEFAULTS["preflight_hex_secrets"]) == ["matcraft_secret_key"]
    assert tuple(PREFLIGHT_DEFAULTS["preflight_secrets_default"]) == REQUIRED
    assert tuple(PREFLIGHT_DEFAULTS["preflight_optional_secrets_default"]) == OPTIONAL
    assert PREFLIGHT_DEFAULTS["preflight_secrets_custom"] == {}
    assert PREFLIGHT_DEFAULTS["preflight_secret_min_bytes"] == 32


HEX_GUIDE = " (the production guide asks for a cryptographically random 32-byte hex string). "


@pytest.mark.parametrize("value,why", [
    ("", "is not set"),
    (None, "is not set"),
    ("Z" * 64, "is not a hex string"),
    (GOOD_SECRETS["matcraft_extra_token"], "is not a hex string"),
    (GOOD_HEX[:40], "has 40 hex characters; at least 64 (32 bytes) are needed"),
    ("changeme" + GOOD_HEX, "looks like a placeholder or default (contains 'changeme')"),
    ("0123456789abcdef" * 4, "looks like a placeholder or default (contains '123456')"),
    (GOOD_HEX[:58] + "abcdef", "looks like a placeholder or default (contains 'abcdef')"),
    ("9f8e7d6c" * 8, "repeats too few distinct characters to be random"),
    (GOOD_HEX[:48] + "9f8e" * 4, "contains a repeated pattern"),
])
def test_a_weak_secret_key_is_a_problem(value, why):
    assert secret_check({"matcraft_secret_key": value}) == ["matcraft_secret_key: " + why + HEX_GUIDE + SECRET_FIX]


def test_the_hex_length_follows_the_minimum_bytes():
    assert secret_check({"matcraft_secret_key": GOOD_HEX[:40]}, min_bytes=20) == []
    found = secret_check({"matcraft_secret_key": GOOD_HEX}, min_bytes=40)
    assert [message for message in found if message.startswith("matcraft_secret_key: ")] == [
        "matcraft_secret_key: has 64 hex characters; at least 80 (40 bytes) are needed (the production guide asks "
        "for a cryptographically random 40-byte hex string). " + SECRET_FIX]


@pytest.mark.parametrize("value,why", [
    ("", "is not set"),
    (None, "is not set"),
    ("s3cr3tP4ssw0rdIsLong", "has 20 characters; at least 32 are needed"),
    ("Xq7Vb2Lm9Tr4Wz8Kp3Nd6Hs1Yc5Gj0Fa", "carries at most 190 bits of randomness; 32 random bytes are 256 bits "
                                         "(use at least 39 letters and digits, or 64 hex characters)"),
    ("vault_" + GOOD_SECRETS["matcraft_extra_token"], "looks like a placeholder or default (contains 'vault_')"),
    ("Qz" * 24, "repeats too few distinct characters to be random"),
    ("Ab3dEf9hIj" + "Kq7Kq7Kq7Kq7" * 3, "contains a repeated pattern"),
])
@pytest.mark.parametrize("name", REQUIRED)
def test_a_weak_required_secret_is_a_problem(name, value, why):
    assert secret_check({name: value}) == ["%s: %s. %s" % (name, why, SECRET_FIX)]


@pytest.mark.parametrize("name", OPTIONAL)
def test_an_optional_secret_is_checked_only_when_set(name):
    assert secret_check({name: ""}) == []
    assert secret_check({name: None}) == []
    assert secret_check({name: "Sh0rtButS3t"}) == [
        "%s: has 11 characters; at least 32 are needed. %s" % (name, SECRET_FIX)]


def test_custom_secrets_are_required_and_win_over_the_defaults():
    token = GOOD_SECRETS["matcraft_extra_token"]
    assert secret_check(custom={"matcraft_extra_token": token}) == []
    assert secret_check(custom={"matcraft_extra_token": ""}) == [
        "matcraft_extra_token: is not set. " + SECRET_FIX]
    assert secret_check(custom={"matcraft_extra_token": "tooShort1"}) == [
        "matcraft_extra_token: has 9 characters; at least 32 are needed. " + SECRET_FIX]
    # A custom value of a default's name replaces it (combine).
    assert secret_check({"matcraft_db_password": "tooShort1"}, custom={"matcraft_db_password": token}) == []


def test_messages_keep_the_order_hex_required_custom_optional_then_shared():
    found = secret_check({"matcraft_secret_key": "", "matcraft_redis_password": "",
                          "matcraft_grafana_admin_password": "tooShort1",
                          "matcraft_db_monitoring_password": GOOD_SECRETS["matcraft_db_password"]},
                         custom={"matcraft_extra_token": ""})
    assert found == [
        "matcraft_secret_key: is not set" + HEX_GUIDE + SECRET_FIX,
        "matcraft_redis_password: is not set. " + SECRET_FIX,
        "matcraft_extra_token: is not set. " + SECRET_FIX,
        "matcraft_grafana_admin_password: has 9 characters; at least 32 are needed. " + SECRET_FIX,
        "matcraft_db_monitoring_password, matcraft_db_password: " + SHARED]


@pytest.mark.parametrize("changes,names", [
    ({"matcraft_redis_password": GOOD_SECRETS["matcraft_db_password"]},
     "matcraft_db_password, matcraft_redis_password"),
    ({"matcraft_pgbackrest_cipher_pass": GOOD_SECRETS["matcraft_db_password"]},
     "matcraft_db_password, matcraft_pgbackrest_cipher_pass"),
    ({"matcraft_secret_key": GOOD_SECRETS["matcraft_grafana_admin_password"]},
     "matcraft_grafana_admin_password, matcraft_secret_key"),
    ({"matcraft_db_replication_password": GOOD_SECRETS["matcraft_monitoring_web_password"],
      "matcraft_redis_exporter_password": GOOD_SECRETS["matcraft_monitoring_web_password"]},
     "matcraft_db_replication_password, matcraft_monitoring_web_password, matcraft_redis_exporter_password"),
])
def test_shared_secrets_are_a_problem(changes, names):
    found = secret_check(changes)
    assert found[-1] == names + ": " + SHARED
    # A hex-only secret shared with a password is also not hex: that is its own message.
    assert len(found) == (2 if "matcraft_secret_key" in changes else 1)


def test_empty_secrets_are_not_shared_values():
    assert secret_check({"matcraft_db_replication_password": "", "matcraft_db_monitoring_password": "",
                         "matcraft_pgbackrest_cipher_pass": ""}) == []
    found = secret_check({"matcraft_db_password": "", "matcraft_redis_password": ""})
    assert not [message for message in found if SHARED in message]


def test_no_secret_value_ever_appears_in_a_message():
    weak = {
        "matcraft_secret_key": "Not-Hex-" + GOOD_SECRETS["matcraft_extra_token"],
        "matcraft_db_password": "Pa55word-Placeholder-Value",
        "matcraft_redis_password": "Tiny7Redis",
        "matcraft_db_replication_password": "Xq7Vb2Lm9Tr4Wz8Kp3Nd6Hs1Yc5Gj0Fa",
        "matcraft_db_monitoring_password": "Tiny7Redis",
        "matcraft_grafana_admin_password": "Ab3dEf9hIj" + "Kq7Kq7Kq7Kq7" * 3,
        "matcraft_pgbackrest_cipher_pass": "Tiny7Redis",
    }
    found = secret_check(weak, custom={"matcraft_extra_token": "Zz9Zz9Zz9Zz9Zz9"})
    # One per weak secret (the cipher passphrase is checked per database host) and the shared value.
    assert len(found) == 8 and found[-1] == ("matcraft_db_monitoring_password, matcraft_pgbackrest_cipher_pass, "
                                             "matcraft_redis_password: " + SHARED)
    text = "\n".join(found)
    for value in list(weak.values()) + ["Zz9Zz9Zz9Zz9Zz9"]:
        assert value not in text
