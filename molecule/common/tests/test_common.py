"""The common baseline: packages, chrony, unattended upgrades, and a firewall
that lets the allowed peer in and keeps the outsider out."""

import json
import os
import subprocess

from helpers import address_of, assert_unit_running, peer, wait_for


def test_baseline_packages(host):
    for pkg in ("nftables", "chrony", "unattended-upgrades", "ca-certificates"):
        assert host.package(pkg).is_installed, pkg


def test_security_upgrades_enabled(host):
    conf = host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string
    assert 'Unattended-Upgrade "1"' in conf
    assert "Debian-Security" in host.file("/etc/apt/apt.conf.d/52matcraft-unattended-upgrades").content_string


def test_chrony_enabled(host):
    assert host.service("chrony").is_enabled


def test_firewall_loaded_default_deny(host):
    assert_unit_running(host, "nftables")
    ruleset = host.run("nft list table inet matcraft")
    assert ruleset.rc == 0, ruleset.stderr
    assert "policy drop" in ruleset.stdout


LISTENER_WAIT = 30


def tcp_outcome(client, address, port, timeout=3):
    """How a TCP connection from client to address:port ends: "open", "refused" or "dropped" (no answer)."""
    cmd = client.run("timeout %s bash -c 'exec 3<>/dev/tcp/%s/%s'", str(timeout), address, str(port))
    if cmd.rc == 0:
        return "open"
    return "dropped" if cmd.rc == 124 else "refused"


def start_listener(target, port, address):
    """Start an HTTP listener on target:port (all addresses) and wait, bounded,
    until it answers on the target itself at `address`, the address the peers
    use (local traffic is accepted by the loopback rule, so this proves the
    listener, not the firewall)."""
    unit = "fw-probe-%d" % port
    target.run("systemctl stop %s", unit)
    start = target.run("systemd-run --unit=%s --property=RuntimeMaxSec=120 "
                       "python3 -m http.server %s --bind 0.0.0.0", unit, str(port))
    assert start.rc == 0, start.stderr
    assert_listening(target, port, address)
    return unit


def assert_listening(target, port, address):
    def answers():
        got = target.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 2 http://%s:%s/", address, str(port))
        return got.stdout == "200"

    wait_for("the listener on %s:%d to answer on the host itself" % (target.backend.get_hostname(), port),
             answers, timeout=LISTENER_WAIT)


def test_firewall_from_peers():
    """Probe port 9000 (opened to fw_allowed) and 9001 (no rule) on both
    targets from the allowed peer and the outsider. Each listener first
    answers on the target itself, so a refused or dropped probe is the
    firewall's doing, never a listener that has not started yet; a denied
    probe must be dropped (policy drop), not refused."""
    allowed, denied = peer("common-allowed"), peer("common-denied")
    for target_name in ("common-target", "common-trixie"):
        target = peer(target_name)
        target_ip = address_of(target)
        units = []
        try:
            units.append(start_listener(target, 9000, target_ip))
            units.append(start_listener(target, 9001, target_ip))
            got = allowed.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 5 http://%s:9000/", target_ip)
            assert got.stdout == "200", "allowed peer could not reach %s: %s" % (target_name, got.stderr)
            outcome = tcp_outcome(denied, target_ip, 9000)
            assert outcome == "dropped", "outsider -> %s:9000: %s, not dropped" % (target_name, outcome)
            # A port no rule opens stays closed even for the allowed peer.
            outcome = tcp_outcome(allowed, target_ip, 9001)
            assert outcome == "dropped", "allowed peer -> %s:9001 (no rule): %s, not dropped" % (target_name, outcome)
            # The listeners still answered after the probes: the denials were the firewall's.
            for port in (9000, 9001):
                assert_listening(target, port, target_ip)
        finally:
            if units:
                target.run("systemctl stop" + " %s" * len(units), *units)


def test_a_fragment_nft_rejects_is_never_written(tmp_path):
    """A rule whose source nft refuses (a /33 prefix) fails the role's task, and leaves neither
    its fragment nor a ruleset that fails to load: the next load and boot are unharmed."""
    target = peer("common-target")
    play = tmp_path / "bad-rule.yml"
    play.write_text(json.dumps([{
        "name": "Open a port to a source nft refuses", "hosts": "common-target", "gather_facts": False,
        "tasks": [{"name": "Write the rule", "ansible.builtin.include_role": {
            "name": "matcraft.deploy.common", "tasks_from": "firewall_rule.yml"},
            "vars": {"common_firewall_rule_name": "badprefix", "common_firewall_rule_ports": [9002],
                     "common_firewall_rule_from_cidrs": ["10.0.0.0/33"]}}]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"],
                                                                 ".cache", "collections"))
    run = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(play)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0, run.stdout[-3000:]
    output = " ".join((run.stdout + run.stderr).split())
    assert "failed to validate" in output and "Prefix length 33 is invalid" in output, output[-3000:]
    assert not target.file("/etc/nftables.d/matcraft/50-badprefix.nft").exists
    check = target.run("nft -c -f /etc/nftables.conf")
    assert check.rc == 0, check.stderr
    reload = target.run("systemctl reload-or-restart nftables && nft list chain inet matcraft input")
    assert reload.rc == 0 and 'comment "probe"' in reload.stdout, reload.stdout + reload.stderr


def test_a_custom_rule_taken_out_of_the_list_is_closed_again(tmp_path):
    """common_firewall_rules_custom with a second rule opens its port; the next run without it
    removes its fragment and closes the port (a removed rule does not stay open)."""
    target, allowed = peer("common-target"), peer("common-allowed")
    target_ip = address_of(target)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"],
                                                                 ".cache", "collections"))

    def converge(rules):
        play = tmp_path / "rules.yml"
        play.write_text(json.dumps([{"name": "Gather the facts of every host (addresses)", "hosts": "all",
                                     "tasks": []}, {
            "name": "Apply the common role", "hosts": "common-target",
            "tasks": [{"name": "Apply", "ansible.builtin.include_role": {"name": "matcraft.deploy.common"},
                       "vars": {"common_firewall_ssh_cidrs": ["10.0.0.0/8"],
                                "common_firewall_rules_custom": rules}}]}]))
        run = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(play)],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:]

    probe = {"name": "probe", "ports": [9000], "from_groups": ["fw_allowed"]}
    extra = {"name": "extra", "ports": [9003], "from_groups": ["fw_allowed"]}
    unit = None
    try:
        converge([probe, extra])
        unit = start_listener(target, 9003, target_ip)
        assert tcp_outcome(allowed, target_ip, 9003) == "open"
        converge([probe])
        assert not target.file("/etc/nftables.d/matcraft/50-extra.nft").exists
        assert target.file("/etc/nftables.d/matcraft/50-probe.nft").exists
        assert 'comment "extra"' not in target.run("nft list chain inet matcraft input").stdout
        assert_listening(target, 9003, target_ip)
        assert tcp_outcome(allowed, target_ip, 9003) == "dropped"
    finally:
        if unit:
            target.run("systemctl stop %s", unit)
        converge([probe])
