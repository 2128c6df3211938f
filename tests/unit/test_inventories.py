"""The example inventories parse, have the groups and host counts their tier
needs (as preflight counts them), and set the tier they are named after."""

import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PREFLIGHT = yaml.safe_load(open(os.path.join(ROOT, "roles", "preflight", "defaults", "main.yml")))


@pytest.mark.parametrize("tier", ["small", "medium"])
def test_example_inventory_matches_its_tier(tier):
    inventory = os.path.join(ROOT, "inventories", tier)
    out = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", inventory, "--list"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    data = json.loads(out)
    hostvars = data["_meta"]["hostvars"]
    assert {v["matcraft_tier"] for v in hostvars.values()} == {tier}

    def hosts(group):
        found = set(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            found |= hosts(child)
        return found

    for group, minimum in PREFLIGHT["preflight_group_min_hosts_by_tier"][tier].items():
        assert len(hosts(group)) >= minimum, (tier, group)
    assert len(hosts("matcraft_monitoring")) == 1
    if tier == "medium":
        assert 4 <= len(hosts("matcraft_workers")) <= 8
    for host, variables in hostvars.items():
        assert variables.get("ansible_host", "192.0.2.1").startswith("192.0.2."), host


@pytest.mark.parametrize("tier", ["small", "medium"])
def test_example_secrets_are_not_in_the_inventory(tier):
    base = os.path.join(ROOT, "inventories", tier, "group_vars", "all")
    for name in os.listdir(base):
        if name.endswith(".yml"):
            text = open(os.path.join(base, name)).read()
            assert "_password:" not in text and "matcraft_secret_key:" not in text, name
