"""Each broken inventory fails preflight with its own message; no host changes."""

import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from helpers import peer

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = yaml.safe_load(open(os.path.join(SCENARIO, "group_vars", "all.yml")))
HOSTS = ("preflight-app", "preflight-data")
DELETE = object()

# (case id, changes to the valid inventory, expected message fragment)
CASES = [
    ("domain-missing", {"matcraft_domain": DELETE}, "matcraft_domain: not set"),
    ("domain-no-dot", {"matcraft_domain": "matcraft"}, "matcraft_domain: 'matcraft' has no dot"),
    ("domain-bad-label", {"matcraft_domain": "api_.example.org"}, "has an invalid label 'api_'"),
    ("acme-email-missing", {"matcraft_acme_email": DELETE}, "matcraft_acme_email: not set"),
    ("acme-email-example", {"matcraft_acme_email": "admin@example.com"}, "matcraft_acme_email: 'admin@example.com' is not a real e-mail"),
    ("tls-mode-unknown", {"matcraft_tls_mode": "selfsigned"}, "matcraft_tls_mode: 'selfsigned' is not a mode"),
    ("cors-wildcard", {"matcraft_cors_origins": ["*"]}, "matcraft_cors_origins: '*' is a wildcard"),
    ("cors-http", {"matcraft_cors_origins": ["http://dashboard.matcraft.test.internal"]}, "uses http: production origins must be https"),
    ("cors-string", {"matcraft_cors_origins": "https://dashboard.matcraft.test.internal"}, "matcraft_cors_origins: is a string"),
    ("secret-key-short", {"matcraft_secret_key": "9f86d081884c7d65"}, "matcraft_secret_key: has 16 hex characters; at least 64"),
    ("secret-key-not-hex", {"matcraft_secret_key": "Z" * 64}, "matcraft_secret_key: is not a hex string"),
    ("secret-key-missing", {"matcraft_secret_key": DELETE}, "matcraft_secret_key: is not set"),
    ("db-password-placeholder", {"matcraft_db_password": "changeme-changeme-changeme-changeme"}, "matcraft_db_password: looks like a placeholder"),
    ("redis-password-short", {"matcraft_redis_password": "s3cr3tP4ss"}, "matcraft_redis_password: has 10 characters; at least 32"),
    ("passwords-shared", {"matcraft_redis_password": GOOD["matcraft_db_password"]}, "matcraft_db_password, matcraft_redis_password: share one value"),
    ("tier-unknown", {"matcraft_tier": "large"}, "matcraft_tier: 'large' is not a tier"),
    ("medium-needs-replica", {"matcraft_tier": "medium"}, "inventory group matcraft_database_replica: missing"),
    ("medium-needs-two-api", {"matcraft_tier": "medium"}, "inventory group matcraft_api: has 1 host(s); the medium tier needs at least 2"),
    ("os-unsupported", {"preflight_supported_os": {"Ubuntu": ["24"]}}, "runs Debian 12, which is not supported"),
    ("resources-strict", {"matcraft_tier": "medium", "preflight_group_min_hosts_by_tier": {"medium": {}},
                          "preflight_resources_strict": True}, "smaller than the medium tier's specification"),
]


def _inventory_dir(changes):
    """A temporary inventory: the scenario's hosts plus modified group_vars/all.yml."""
    workdir = tempfile.mkdtemp(prefix="preflight-case-")
    shutil.copy(os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(workdir, "hosts.yml"))
    variables = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is DELETE:
            variables.pop(key, None)
        else:
            variables[key] = value
    os.makedirs(os.path.join(workdir, "group_vars"))
    with open(os.path.join(workdir, "group_vars", "all.yml"), "w") as handle:
        yaml.safe_dump(variables, handle)
    return workdir


def _run_probe(inventory):
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    return subprocess.run(
        ["ansible-playbook", "-i", os.path.join(inventory, "hosts.yml"), os.path.join(SCENARIO, "probe.yml")],
        capture_output=True, text=True, env=env, timeout=300, check=False)


def _probe_case(changes):
    inventory = _inventory_dir(changes)
    try:
        return _run_probe(inventory)
    finally:
        shutil.rmtree(inventory)


@pytest.fixture(scope="module")
def case_results():
    """Run every broken inventory, four at a time (each run only reads the hosts)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(_probe_case, changes) for case, changes, _ in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case,expected", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_broken_inventory_is_refused(case_results, case, expected):
    result = case_results[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, "%s: the run succeeded\n%s" % (case, output[-3000:])
    assert expected in output, "%s: expected %r in the output\n%s" % (case, expected, output[-3000:])
    # No host changed: every recap line says changed=0, and no marker was written.
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)
    assert {h for h, _ in recap} >= set(HOSTS), output[-2000:]
    assert all(int(changed) == 0 for _, changed in recap), "%s: a host changed\n%s" % (case, output[-2000:])
    for name in HOSTS:
        assert not peer(name).file("/root/preflight-marker").exists, "%s: %s was changed" % (case, name)
    # A secret value never appears in the output.
    for key in ("matcraft_secret_key", "matcraft_db_password", "matcraft_redis_password"):
        assert GOOD[key] not in output, "%s: the value of %s was printed" % (case, key)


def test_one_message_per_mistake():
    """Three mistakes at once give three messages, each naming its variable."""
    inventory = _inventory_dir({"matcraft_domain": "bad", "matcraft_cors_origins": ["*"],
                                "matcraft_redis_password": "short"})
    try:
        result = _run_probe(inventory)
    finally:
        shutil.rmtree(inventory)
    assert result.returncode != 0
    # With the json result format each failure is one line: fatal: [host]: FAILED! => {...}
    messages = [json.loads(line.split("=>", 1)[1])["msg"]
                for line in (result.stdout + result.stderr).splitlines() if line.startswith("fatal: [")]
    assert len(messages) == 1, messages
    expected = ("matcraft_domain: 'bad' has no dot", "matcraft_cors_origins: '*' is a wildcard",
                "matcraft_redis_password: has 5 characters")
    assert len(messages[0]) == len(expected), messages[0]
    for fragment, message in zip(expected, messages[0]):
        assert message.startswith(fragment) and "Fix:" in message, message


def test_valid_inventory_passes():
    result = _probe_case({})
    assert result.returncode == 0, result.stdout[-3000:]
    # The scenario keeps the common role's default for SSH: open to the world, which is
    # worth a warning but not a stop.
    assert ("WARNING common_firewall_ssh_cidrs admits 0.0.0.0/0 and ::/0 to SSH (port 22) on every host: "
            "narrow it to your admin networks") in result.stdout, result.stdout[-3000:]
    for name in HOSTS:
        marker = peer(name).file("/root/preflight-marker")
        assert marker.exists
        peer(name).run("rm -f /root/preflight-marker")
