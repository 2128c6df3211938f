"""Unit tests of plugins/filter/systemd_sandbox.py, and of the templates that write the sandbox with it."""

import os
import shlex

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.utils.collection_loader import AnsibleCollectionConfig

import systemd_sandbox as f
from conftest import ROOT

# The collection's own filters (matcraft.deploy.*), as a run finds them (once per test session:
# test_nginx_site.py may have set the loader up already).
if AnsibleCollectionConfig.collection_finder is None:
    init_plugin_loader([os.path.join(ROOT, ".cache", "collections")])

FULL = [key + "=" + value for key, value in f.SANDBOX]


def test_the_whole_sandbox_in_order():
    assert f.systemd_sandbox() == FULL
    assert f.systemd_sandbox({}) == FULL
    assert FULL[0] == "NoNewPrivileges=yes" and FULL[-1] == "UMask=0027"
    assert "CapabilityBoundingSet=" in FULL and "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in FULL


def test_an_override_keeps_the_line_in_its_place():
    lines = f.systemd_sandbox({"ProtectHome": "read-only", "PrivateTmp": False, "UMask": "0077"})
    assert lines.index("ProtectHome=read-only") == FULL.index("ProtectHome=yes")
    assert "PrivateTmp=no" in lines and "UMask=0077" in lines and len(lines) == len(FULL)


def test_none_leaves_a_line_out():
    lines = f.systemd_sandbox({"RemoveIPC": None, "UMask": None})
    assert lines == [line for line in FULL if not line.startswith(("RemoveIPC=", "UMask="))]


@pytest.mark.parametrize("overrides", [{"RemoveIpc": None}, {"ReadWritePaths": "/srv"}])
def test_a_key_outside_the_sandbox_is_an_error(overrides):
    with pytest.raises(f.AnsibleFilterError, match="not part of the sandbox"):
        f.systemd_sandbox(overrides)


@pytest.mark.parametrize("overrides", [["RemoveIPC"], {"UMask": ["0027"]}, {"UMask": "0027\nUser=root"}])
def test_bad_overrides_are_errors(overrides):
    with pytest.raises(f.AnsibleFilterError):
        f.systemd_sandbox(overrides)


def _trusted(variables):
    return {name: trust_as_template(value) if isinstance(value, str) else value for name, value in variables.items()}


def render(template, roles, **overrides):
    """A template rendered with the roles' defaults and vars, and the facts a run would have."""
    variables = {}
    for role in roles:
        for part in ("defaults", "vars"):
            with open(os.path.join(ROOT, "roles", role, part, "main.yml"), encoding="utf-8") as handle:
                variables.update(_trusted(yaml.safe_load(handle)))
    variables.update({"ansible_managed": "managed", "inventory_hostname": "host1",
                      "ansible_default_ipv4": {"address": "192.0.2.10"}, "groups": {}, "hostvars": {},
                      "ansible_distribution_release": "bookworm"})
    variables.update(_trusted(overrides))
    templar = Templar(loader=DataLoader(), variables=variables)
    with open(os.path.join(ROOT, template), encoding="utf-8") as handle:
        return templar.template(trust_as_template(handle.read()))


def lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("template,roles,extra", [
    ("roles/api/templates/matcraft-api.service.j2", ("app", "api"),
     {"api_ip_address_allow": ["127.0.0.0/8"], "_api_client_auth": False}),
    ("roles/worker/templates/matcraft-worker@.service.j2", ("app", "worker"), {"worker_ip_address_allow": ["127.0.0.0/8"]}),
    ("roles/worker/templates/matcraft-worker-health.service.j2", ("app", "worker"),
     {"worker_health_ip_address_allow": ["127.0.0.0/8"], "worker_queue_groups": [{"name": "default"}],
      "worker_all_queues": ["celery"]}),
])
def test_the_service_units_have_the_whole_sandbox(template, roles, extra):
    unit = lines(render(template, roles, **extra))
    start = unit.index(FULL[0])
    assert unit[start:start + len(FULL)] == FULL


@pytest.mark.parametrize("backup_host,protect_home", [(False, "yes"), (True, "read-only")])
def test_the_backup_unit_has_the_sandbox_but_remove_ipc_and_umask(backup_host, protect_home):
    unit = lines(render("roles/postgresql/templates/matcraft-pgbackrest@.service.j2", ("postgresql",),
                        postgresql_is_backup_host=backup_host, postgresql_primary_host="db1"))
    expected = f.systemd_sandbox({"ProtectHome": protect_home, "RemoveIPC": None, "UMask": None})
    start = unit.index(expected[0])
    assert unit[start:start + len(expected)] == expected
    assert not [line for line in unit if line.startswith(("RemoveIPC=", "UMask="))]


def test_the_manage_command_runs_in_the_sandbox_but_remove_ipc():
    script = render("roles/app/templates/matcraft-manage.sh.j2", ("app",),
                    _app_database_owner_url="postgresql://owner@db1/matcraft")
    command = next(line for line in script.replace("\\\n", " ").splitlines() if line.startswith("exec systemd-run"))
    properties = [arg[len("--property="):] for arg in shlex.split(command) if arg.startswith("--property=")]
    expected = f.systemd_sandbox({"RemoveIPC": None})
    start = properties.index(expected[0])
    assert properties[start:start + len(expected)] == expected
