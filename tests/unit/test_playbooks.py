"""The shape of the playbooks: one baseline play, imported by site and every layer playbook."""

from pathlib import Path

import pytest
import yaml

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
LAYERS = {
    "database.yml": "matcraft_database:matcraft_database_replica:matcraft_backup",
    "redis.yml": "matcraft_redis",
    "app.yml": "matcraft_api:matcraft_workers:matcraft_edge",
    "edge.yml": "matcraft_edge",
    # The exporters on every host serve TLS with the host's certificate.
    "monitoring.yml": None,
}


def plays(name):
    return yaml.safe_load((PLAYBOOKS / name).read_text())


def roles_of(play):
    return [role["role"] if isinstance(role, dict) else role for role in play.get("roles", [])]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_imports_the_baseline_for_its_own_hosts_first(name):
    first = plays(name)[0]
    assert first["ansible.builtin.import_playbook"] == "matcraft.deploy.baseline"
    assert (first.get("vars") or {}).get("matcraft_baseline_hosts") == LAYERS[name]


def test_site_imports_the_baseline_for_every_host_before_the_layers():
    imports = [play["ansible.builtin.import_playbook"] for play in plays("site.yml")]
    assert imports[0] == "matcraft.deploy.baseline" and "vars" not in plays("site.yml")[0]
    assert imports[1:] == ["matcraft.deploy." + layer for layer in ("database", "redis", "app", "edge", "monitoring")]


def test_only_the_baseline_play_applies_the_common_and_pki_roles():
    for path in sorted(PLAYBOOKS.glob("*.yml")):
        for play in yaml.safe_load(path.read_text()) or []:
            if path.name == "baseline.yml" and "roles" in play:
                assert roles_of(play) == ["matcraft.deploy.common", "matcraft.deploy.pki"]
                assert play["pre_tasks"][0]["ansible.builtin.meta"] == "end_host"
                continue
            applied = set(roles_of(play)) & {"matcraft.deploy.common", "matcraft.deploy.pki"}
            assert not applied, "%s: play %r applies %s" % (path.name, play.get("name"), sorted(applied))
