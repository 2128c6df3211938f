"""The common baseline: packages, chrony, unattended upgrades, and a firewall
that lets the allowed peer in and keeps the outsider out."""

from helpers import address_of, assert_unit_running, peer, probe_tcp


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


def test_firewall_from_peers():
    """Probe port 9000 on both targets from the allowed peer and the outsider."""
    allowed, denied = peer("common-allowed"), peer("common-denied")
    for target_name in ("common-target", "common-trixie"):
        target = peer(target_name)
        unit = "fw-probe-9000"
        target.run("systemctl stop %s", unit)
        start = target.run(
            "systemd-run --unit=%s --property=RuntimeMaxSec=120 "
            "python3 -m http.server 9000 --bind 0.0.0.0", unit)
        assert start.rc == 0, start.stderr
        try:
            target_ip = address_of(target)
            # The probe listens: the target itself reaches it over loopback.
            for _ in range(20):
                if probe_tcp(target, "127.0.0.1", 9000, timeout=1):
                    break
            else:
                raise AssertionError("probe service did not start on " + target_name)
            got = allowed.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 5 http://%s:9000/", target_ip)
            assert got.stdout == "200", "allowed peer could not reach %s: %s" % (target_name, got.stderr)
            assert not probe_tcp(denied, target_ip, 9000), "outsider reached %s:9000" % target_name
            # A port no rule opens stays closed even for the allowed peer.
            target.run("systemd-run --unit=fw-probe-9001 --property=RuntimeMaxSec=60 "
                       "python3 -m http.server 9001 --bind 0.0.0.0")
            assert not probe_tcp(allowed, target_ip, 9001), "port 9001 is open without a rule"
        finally:
            target.run("systemctl stop %s fw-probe-9001", unit)
