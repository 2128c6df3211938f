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
    ("ca-passphrase-missing", {"matcraft_pki_ca_passphrase": DELETE}, "matcraft_pki_ca_passphrase: is not set"),
    ("db-password-placeholder", {"matcraft_db_password": "changeme-changeme-changeme-changeme"}, "matcraft_db_password: looks like a placeholder"),
    ("redis-password-short", {"matcraft_redis_password": "s3cr3tP4ss"}, "matcraft_redis_password: has 10 characters; at least 32"),
    ("passwords-shared", {"matcraft_redis_password": GOOD["matcraft_db_password"]}, "matcraft_db_password, matcraft_redis_password: share one value"),
    ("tier-unknown", {"matcraft_tier": "large"}, "matcraft_tier: 'large' is not a tier"),
    ("medium-needs-replica", {"matcraft_tier": "medium"}, "inventory group matcraft_database_replica: missing"),
    ("medium-needs-two-api", {"matcraft_tier": "medium"}, "inventory group matcraft_api: has 1 host(s); the medium tier needs at least 2"),
    ("os-unsupported", {"preflight_supported_os": {"Ubuntu": ["24"]}}, "runs Debian 12, which is not supported"),
    ("resources-strict", {"matcraft_tier": "medium", "preflight_group_min_hosts_by_tier": {"medium": {}},
                          "preflight_resources_strict": True}, "smaller than the medium tier's specification"),
    ("listen-public", {"matcraft_private_address": "9.9.9.9"},
     "matcraft_private_address: '9.9.9.9' is a public address, so the service would listen where the whole Internet"),
    ("backup-cipher-shared", {"matcraft_pgbackrest_cipher_pass": GOOD["matcraft_db_password"]},
     "matcraft_db_password, matcraft_pgbackrest_cipher_pass: share one value"),
]

# SSH open to the whole Internet: the common role's default when the inventory leaves
# common_firewall_ssh_cidrs unset, or written out. It stops the run unless acknowledged.
SSH_ACK = "preflight_ssh_open_to_world_acknowledged"
SSH_FIX = ("Fix: set it to your admin networks in the inventory's group_vars/all/main.yml, such as "
           "[\"192.0.2.0/24\"]; to keep SSH open to the world on purpose, set "
           "preflight_ssh_open_to_world_acknowledged: true.")
SSH_DEFAULT_OPEN = ("common_firewall_ssh_cidrs: not set, so the common role's default admits 0.0.0.0/0 and ::/0 to "
                    "SSH (port 22): the whole Internet may try to log in")
SSH_WARNING = ("WARNING " + SSH_DEFAULT_OPEN + "; preflight_ssh_open_to_world_acknowledged is true, so the run goes "
               "on. Fix: narrow it to your admin networks in the inventory's group_vars/all/main.yml.")
# A backup repository off the database host (repo type host or s3) without the cipher
# passphrase: refused on the database host, unless acknowledged (then a warning).
BACKUP_ACK = "preflight_backup_unencrypted_acknowledged"
BACKUP_FIX = ("Fix: generate it with the other secrets (ansible-playbook matcraft.deploy.secrets, docs/secrets.md) "
              "or add 48 random letters and digits to the vault file as matcraft_pgbackrest_cipher_pass; an existing "
              "unencrypted repository moves to a new repository path or bucket first "
              "(docs/runbooks/backup-restore.md)")
BACKUP_KEEP = (" To keep an existing unencrypted repository on purpose, set postgresql_pgbackrest_encrypt: false and "
               "preflight_backup_unencrypted_acknowledged: true.")


def _backup_unencrypted(where, repo_type):
    return ("matcraft_pgbackrest_cipher_pass on host preflight-data: not set, so the pgBackRest repository %s "
            "(postgresql_pgbackrest_repo_type %s) would hold the database's backups and WAL unencrypted"
            % (where, repo_type))


# (case id, changes to the valid inventory, the exact list of messages of the failure,
#  the exact warnings printed before it): checks of plugins/filter/preflight.py.
EXACT_CASES = [
    ("ssh-default-open-to-world", {"common_firewall_ssh_cidrs": DELETE}, [SSH_DEFAULT_OPEN + ". " + SSH_FIX], []),
    ("ssh-open-to-world", {"common_firewall_ssh_cidrs": ["0.0.0.0/0", "::/0"]},
     ["common_firewall_ssh_cidrs: admits 0.0.0.0/0 and ::/0 to SSH (port 22): the whole Internet may try to log in. "
      + SSH_FIX], []),
    ("environment-empty", {"matcraft_environment": ""},
     ["matcraft_environment: is empty, and the internal CA's name is made from it. Fix: set it to a short lowercase "
      "name such as production or staging (letters, digits and -, at most 32, starting with a letter)."],
     []),
    ("retention-zero", {"postgresql_pgbackrest_retention_full_days": 0},
     ["postgresql_pgbackrest_retention_full_days: 0 is out of range; it must be a whole number of days from 1 to "
      "3650. Fix: set a value in that range, such as 7 (the default)."], []),
    ("archive-timeout-negative", {"postgresql_archive_timeout": -5},
     ["postgresql_archive_timeout: -5 is out of range; it must be a whole number of seconds from 1 to 86400. Fix: "
      "set a value in that range, such as 60 (the default)."], []),
    ("archive-timeout-not-a-number", {"postgresql_archive_timeout": "1 minute"},
     ["postgresql_archive_timeout: '1 minute' is not a whole number; it must be a whole number of seconds from 1 to "
      "86400. Fix: write a plain number, such as 60 (the default)."], []),
    ("ssh-cidr-invalid", {"common_firewall_ssh_cidrs": ["192.0.2.0/24", "10.0.0.0/33"]},
     ["common_firewall_ssh_cidrs: '10.0.0.0/33' is not an IPv4 or IPv6 network. Fix: write each entry as an address "
      "or network in CIDR form, such as 192.0.2.0/24 or 2001:db8::/32."], []),
    # The typo is why Redis would have no port at all: the warning names the right variable.
    ("redis-tls-only-typo", {"redis_tls_only": True, "redis_tls_enabeld": True},
     ["redis_tls_only: is true, but redis_tls_enabled is not: the only port (plain) would be closed. Fix: set "
      "redis_tls_enabled: true as well, or redis_tls_only: false."],
     ["WARNING redis_tls_enabeld: no role of matcraft.deploy reads this variable, so it changes "
      "nothing. Fix: did you mean redis_tls_enabled? Rename it."]),
    ("backup-host-unencrypted", {"postgresql_pgbackrest_repo_type": "host"},
     [_backup_unencrypted("on the backup host (over SSH)", "host") + ". " + BACKUP_FIX + "." + BACKUP_KEEP], []),
    ("backup-s3-unencrypted", {"postgresql_pgbackrest_repo_type": "s3"},
     [_backup_unencrypted("in the S3 object store", "s3") + ". " + BACKUP_FIX + "." + BACKUP_KEEP], []),
    ("backup-cipher-weak", {"postgresql_pgbackrest_repo_type": "s3", "matcraft_pgbackrest_cipher_pass": "s3cr3tP4ss"},
     ["matcraft_pgbackrest_cipher_pass on host preflight-data: has 10 characters; at least 32 are needed. Fix: "
      "generate it with the other secrets (ansible-playbook matcraft.deploy.secrets, docs/secrets.md) and keep it in "
      "the vault file of this environment only; a repository encrypted with the old one needs a new repository "
      "path or bucket (docs/runbooks/backup-restore.md)."], []),
    ("monitoring-tls-mismatch", {"matcraft_monitoring_tls": True, "exporters_tls": False},
     ["prometheus_scrape_tls: is True while exporters_tls is False and alertmanager_tls is True: Prometheus and the "
      "servers it scrapes would not agree on HTTPS. Fix: set matcraft_monitoring_tls once and remove "
      "prometheus_scrape_tls, exporters_tls and alertmanager_tls."], []),
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


def _failure_messages(output):
    """The messages of the failures: with the json result format each is one line,
    fatal: [host]: FAILED! => {...}."""
    return [json.loads(line.split("=>", 1)[1])["msg"] for line in output.splitlines() if line.startswith("fatal: [")]


def _warnings(output):
    """The WARNING messages the debug tasks printed (one json line each), but the
    hosts' sizes (the containers see the machine, not a VM of the tier)."""
    found = []
    lines = output.splitlines()
    for start, line in enumerate(lines):
        if not (line.startswith("ok: [") and "=> {" in line):
            continue
        # A debug result is indented JSON over the lines up to the closing brace.
        text, end = line[line.rindex("=> {") + 3:], start
        while True:
            try:
                msg = json.loads(text).get("msg")
                break
            except ValueError:
                end += 1
                if end >= len(lines):
                    msg = None
                    break
                text += "\n" + lines[end]
        if isinstance(msg, str) and msg.startswith("WARNING ") and not msg.startswith("WARNING host "):
            found.append(msg)
    return found


def _assert_nothing_changed(case, output):
    """Every recap line says changed=0, and no host has the marker of probe.yml."""
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)
    assert {h for h, _ in recap} >= set(HOSTS), output[-2000:]
    assert all(int(changed) == 0 for _, changed in recap), "%s: a host changed\n%s" % (case, output[-2000:])
    for name in HOSTS:
        assert not peer(name).file("/root/preflight-marker").exists, "%s: %s was changed" % (case, name)


@pytest.fixture(scope="module")
def case_results():
    """Run every broken inventory, four at a time (each run only reads the hosts)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case[0]: pool.submit(_probe_case, case[1]) for case in CASES + EXACT_CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case,expected", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_broken_inventory_is_refused(case_results, case, expected):
    result = case_results[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, "%s: the run succeeded\n%s" % (case, output[-3000:])
    assert expected in output, "%s: expected %r in the output\n%s" % (case, expected, output[-3000:])
    # No host changed: every recap line says changed=0, and no marker was written.
    _assert_nothing_changed(case, output)
    # A secret value never appears in the output.
    for key in ("matcraft_secret_key", "matcraft_db_password", "matcraft_redis_password"):
        assert GOOD[key] not in output, "%s: the value of %s was printed" % (case, key)


@pytest.mark.parametrize("case,expected,warnings", [(c[0], c[2], c[3]) for c in EXACT_CASES],
                         ids=[c[0] for c in EXACT_CASES])
def test_broken_inventory_gives_exactly_its_messages(case_results, case, expected, warnings):
    """The exact list of messages: one per mistake, nothing else; the warnings before them; no host changed."""
    result = case_results[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, "%s: the run succeeded\n%s" % (case, output[-3000:])
    assert _failure_messages(output) == [expected], "%s\n%s" % (case, output[-3000:])
    assert _warnings(output) == warnings, "%s\n%s" % (case, output[-3000:])
    _assert_nothing_changed(case, output)


def test_one_message_per_mistake():
    """Three mistakes at once give three messages, each naming its variable."""
    inventory = _inventory_dir({"matcraft_domain": "bad", "matcraft_cors_origins": ["*"],
                                "matcraft_redis_password": "short"})
    try:
        result = _run_probe(inventory)
    finally:
        shutil.rmtree(inventory)
    assert result.returncode != 0
    messages = _failure_messages(result.stdout + result.stderr)
    assert len(messages) == 1, messages
    expected = ("matcraft_domain: 'bad' has no dot", "matcraft_cors_origins: '*' is a wildcard",
                "matcraft_redis_password: has 5 characters")
    assert len(messages[0]) == len(expected), messages[0]
    for fragment, message in zip(expected, messages[0]):
        assert message.startswith(fragment) and "Fix:" in message, message


def test_valid_inventory_passes():
    result = _probe_case({})
    assert result.returncode == 0, result.stdout[-3000:]
    # SSH narrowed to the admin network: no warning at all.
    assert _warnings(result.stdout) == [], result.stdout[-3000:]
    for name in HOSTS:
        marker = peer(name).file("/root/preflight-marker")
        assert marker.exists
        peer(name).run("rm -f /root/preflight-marker")


def test_a_run_narrowed_by_limit_knows_the_hosts_it_leaves_out():
    """ansible-playbook --limit preflight-app: the plays after preflight read the
    facts (addresses) of preflight-data too, which only preflight can have read.
    Before, a layer playbook run with --limit failed on the first address of a
    host left out."""
    inventory = _inventory_dir({})
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    try:
        result = subprocess.run(
            ["ansible-playbook", "-i", os.path.join(inventory, "hosts.yml"), "--limit", "preflight-app",
             os.path.join(SCENARIO, "limited.yml")],
            capture_output=True, text=True, env=env, timeout=300, check=False)
    finally:
        shutil.rmtree(inventory)
    assert result.returncode == 0, result.stdout[-3000:]
    recap = [line for line in result.stdout.splitlines() if re.match(r"^preflight-\S+\s+:", line)]
    assert [line.split()[0] for line in recap] == ["preflight-app"], recap
    assert "changed=0" in recap[0] and "failed=0" in recap[0], recap


def test_an_untested_system_warns_and_does_not_stop_the_run():
    """A system the roles are written for but no scenario proves (Debian 13, Ubuntu): a warning per
    host naming it and the tested ones; the run goes on. Here Debian 12 plays the untested one."""
    result = _probe_case({"preflight_supported_os": {"Ubuntu": ["24"]}, "preflight_untested_os": {"Debian": ["12"]}})
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        for name in HOSTS:
            warning = ("WARNING host %s: runs Debian 12, which the roles are written for but no test of this "
                       "collection runs on (tested: Ubuntu 24)." % name)
            assert warning in result.stdout, result.stdout[-3000:]
    finally:
        for name in HOSTS:
            peer(name).run("rm -f /root/preflight-marker")


def test_a_typo_warns_and_does_not_stop_the_run():
    """A variable no role reads is a warning naming the closest known one; the run goes on."""
    result = _probe_case({"matcraft_domian": "matcraft.test.internal"})
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        assert _warnings(result.stdout) == [
            "WARNING matcraft_domian: no role of matcraft.deploy reads this variable, so it changes nothing. Fix: did "
            "you mean matcraft_domain? Rename it."], result.stdout[-3000:]
    finally:
        for name in HOSTS:
            peer(name).run("rm -f /root/preflight-marker")


def test_ssh_open_to_the_world_acknowledged_warns_and_does_not_stop_the_run():
    """The inventory that is refused above (common_firewall_ssh_cidrs left to the common role's
    default, open to the world) passes with the acknowledgement: one warning naming both
    variables, and the run goes on to change the hosts."""
    result = _probe_case({"common_firewall_ssh_cidrs": DELETE, SSH_ACK: True})
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        assert _failure_messages(result.stdout) == [], result.stdout[-3000:]
        assert _warnings(result.stdout) == [SSH_WARNING], result.stdout[-3000:]
        for name in HOSTS:
            assert peer(name).file("/root/preflight-marker").exists, "%s: the run did not go on" % name
    finally:
        for name in HOSTS:
            peer(name).run("rm -f /root/preflight-marker")


def test_unencrypted_backups_acknowledged_warn_and_do_not_stop_the_run():
    """The s3 inventory refused above passes with the acknowledgement (an existing unencrypted
    repository kept on purpose): one warning naming the passphrase and the acknowledgement, and
    the run goes on; with the passphrase set there is no warning at all."""
    result = _probe_case({"postgresql_pgbackrest_repo_type": "s3", BACKUP_ACK: True})
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        assert _failure_messages(result.stdout) == [], result.stdout[-3000:]
        assert _warnings(result.stdout) == [
            "WARNING " + _backup_unencrypted("in the S3 object store", "s3")
            + "; preflight_backup_unencrypted_acknowledged is true, so the run goes on. " + BACKUP_FIX + "."], \
            result.stdout[-3000:]
        for name in HOSTS:
            assert peer(name).file("/root/preflight-marker").exists, "%s: the run did not go on" % name
    finally:
        for name in HOSTS:
            peer(name).run("rm -f /root/preflight-marker")
    passphrase = "Rk4mW9pZt2Lx7QvB3nYc8HsJ5dGf1aUe6Ko0Ti3Nw7Pb2Mq9"  # a fixture for this test only
    result = _probe_case({"postgresql_pgbackrest_repo_type": "s3", "matcraft_pgbackrest_cipher_pass": passphrase})
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        assert _warnings(result.stdout) == [], result.stdout[-3000:]
        assert passphrase not in result.stdout + result.stderr, "the passphrase was printed"
    finally:
        for name in HOSTS:
            peer(name).run("rm -f /root/preflight-marker")
