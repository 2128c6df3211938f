"""Every role has meta/argument_specs.yml, a README, and specs that match its defaults."""

import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = sorted(d for d in os.listdir(os.path.join(ROOT, "roles"))
               if os.path.isdir(os.path.join(ROOT, "roles", d, "tasks")))


def _load(role, *parts):
    path = os.path.join(ROOT, "roles", role, *parts)
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


@pytest.mark.parametrize("role", ROLES)
def test_role_has_specs_readme_and_meta(role):
    for part in (("meta", "argument_specs.yml"), ("meta", "main.yml"), ("README.md",)):
        assert os.path.exists(os.path.join(ROOT, "roles", role, *part)), "%s lacks %s" % (role, "/".join(part))
    readme = open(os.path.join(ROOT, "roles", role, "README.md")).read()
    for heading in ("Requirements", "Role Variables", "Dependencies", "Example Playbook"):
        assert heading in readme, "%s README lacks a %s section" % (role, heading)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_specs_agree(role):
    if not os.path.exists(os.path.join(ROOT, "roles", role, "defaults", "main.yml")):
        pytest.fail("%s has no defaults/main.yml" % role)
    defaults = _load(role, "defaults", "main.yml")
    options = _load(role, "meta", "argument_specs.yml")["argument_specs"]["main"].get("options", {})
    assert sorted(set(defaults) - set(options)) == [], "%s: defaults without a spec" % role
    assert sorted(set(options) - set(defaults)) == [], "%s: specs without a default" % role
    for name, spec in options.items():
        assert spec.get("description"), "%s.%s has no description" % (role, name)
        assert spec.get("default") == defaults[name], "%s.%s: spec default %r != defaults %r" % (
            role, name, spec.get("default"), defaults[name])


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_are_prefixed(role):
    defaults = _load(role, "defaults", "main.yml")
    wrong = [n for n in defaults if not n.startswith(role + "_")]
    assert wrong == [], "%s: variables without the %s_ prefix: %s" % (role, role, wrong)


def test_verify_looks_for_the_ca_where_the_pki_role_puts_it_by_default():
    """verify.yml cannot read the pki role's defaults, so it repeats pki_ca_dir's default; the two
    must name the same directory (the demo's verify broke once when only the role's moved)."""
    default = _load("pki", "defaults", "main.yml")["pki_ca_dir"]
    suffix = default.split("}}", 1)[1]  # "/.pki" after "{{ inventory_dir | default(playbook_dir) }}"
    verify = open(os.path.join(ROOT, "playbooks", "verify.yml")).read()
    assert "inventory_dir ~ '%s')" % suffix in verify, \
        "playbooks/verify.yml's fallback CA directory differs from pki_ca_dir's default (%s)" % default


def test_prometheus_scrapes_over_tls_exactly_the_servers_that_serve_it():
    """With matcraft_monitoring_tls, the exporters, Alertmanager and Prometheus switch together; the
    scrape jobs marked tls must be the ones whose servers serve TLS (node, postgres, redis, blackbox,
    alertmanager), and the plain ones (nginx exporter, mtail, the worker sidecar) must stay unmarked,
    or their targets go down with an HTTP/HTTPS mismatch."""
    prometheus = _load("prometheus", "defaults", "main.yml")
    jobs = {job["name"]: job.get("tls", False) for job in prometheus["prometheus_scrape_jobs"]}
    assert jobs == {"node": True, "postgres": True, "redis": True, "blackbox": True, "alertmanager": True,
                    "nginx": False, "mtail": False, "worker": False}, jobs
    exporters = _load("exporters", "defaults", "main.yml")
    switches = {"prometheus_tls": prometheus["prometheus_tls"],
                "prometheus_scrape_tls": prometheus["prometheus_scrape_tls"],
                "alertmanager_tls": _load("alertmanager", "defaults", "main.yml")["alertmanager_tls"],
                "exporters_tls": exporters["exporters_tls"]}
    assert set(switches.values()) == {"{{ matcraft_monitoring_tls | default(false) }}"}, switches
    tasks = {name: open(os.path.join(ROOT, "roles", "exporters", "tasks", name + ".yml")).read()
             for name in ("node", "postgres", "redis", "blackbox", "edge")}
    for name in ("node", "postgres", "blackbox"):
        assert "'--web.config.file=' ~ exporters_web_config_file] if exporters_tls" in tasks[name], name
    assert "--tls-server-cert-file=" in tasks["redis"]
    assert "exporters_tls" not in tasks["edge"]


def test_prometheus_logs_in_to_alertmanager_with_the_login_alertmanager_accepts():
    """Alertmanager's basic auth and the login Prometheus sends with alerts and scrapes come from
    the same inventory secret and user by default; a mismatch would silently stop every alert."""
    prometheus = _load("prometheus", "defaults", "main.yml")
    alertmanager = _load("alertmanager", "defaults", "main.yml")
    assert prometheus["prometheus_web_password"] == alertmanager["alertmanager_web_password"] \
        == "{{ matcraft_monitoring_web_password | default('') }}"
    assert prometheus["prometheus_web_user"] == alertmanager["alertmanager_web_user"]
    assert prometheus["prometheus_alertmanager_basic_auth"] is True
    logins = {job["name"]: job.get("basic_auth", False) for job in prometheus["prometheus_scrape_jobs"]}
    assert [name for name, login in logins.items() if login] == ["alertmanager"], logins


def test_preflight_knows_the_common_roles_default_for_ssh():
    """preflight warns about SSH open to the world, reading common_firewall_ssh_cidrs or, when the
    inventory leaves it unset, its own copy of the common role's default: the two must agree."""
    common = _load("common", "defaults", "main.yml")["common_firewall_ssh_cidrs"]
    assert _load("preflight", "defaults", "main.yml")["preflight_ssh_cidrs_default"] == common
