"""Helpers for the testinfra tests of every Molecule scenario (import helpers)."""

from __future__ import annotations

import json
import time

import pytest


def journal(host, unit, lines=60):
    """Return the last lines of a unit's journal (for failure messages)."""
    return host.run("journalctl -u %s -n %s --no-pager", unit, str(lines)).stdout


def assert_unit_running(host, unit):
    """Assert a systemd unit is enabled and running; print its journal if not."""
    service = host.service(unit)
    if not service.is_running:
        status = host.run("systemctl status --no-pager %s", unit).stdout
        pytest.fail("%s is not running on %s\n%s\n--- journal ---\n%s" % (
            unit, host.backend.get_hostname(), status, journal(host, unit)))
    assert service.is_enabled, "%s is running but not enabled at boot on %s" % (
        unit, host.backend.get_hostname())


def wait_for(what, check, timeout, interval=1.0):
    """Call check() until it returns a true value and return that; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


INTERNAL_CA = "/etc/matcraft/pki/ca.crt"


def curl_json(client, method, url, body=None, timeout=10, extra=()):
    """(status, parsed JSON or text) of a request sent from the client host with curl (extra:
    more curl arguments, such as a client certificate). HTTPS is verified against the pki role's
    internal CA (no system trust store holds it) unless extra names another --cacert."""
    cmd = ["curl", "-sS", "--max-time", str(timeout), "-o", "/dev/stdout", "-w", "\\n%{http_code}", "-X", method]
    if url.startswith("https://") and "--cacert" not in extra:
        cmd += ["--cacert", INTERNAL_CA]
    cmd += list(extra)
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    result = client.run(" ".join(["%s"] * (len(cmd) + 1)), *cmd, url)
    text, _, status = result.stdout.rpartition("\n")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    return int(status or 0), payload


def probe_tcp(host, address, port, timeout=3):
    """True when ``host`` opens a TCP connection to address:port within timeout."""
    cmd = host.run(
        "timeout %s bash -c 'exec 3<>/dev/tcp/%s/%s'", str(timeout), address, str(port))
    return cmd.rc == 0


def address_of(host):
    """The host's address on the scenario network."""
    return host.run("hostname -I").stdout.split()[0]



def peer(name):
    """A testinfra host for another host of the scenario, by inventory name."""
    import os

    import testinfra

    # A scenario deployed over SSH as an unprivileged user gives the tests
    # their own root access (docker exec) in MATCRAFT_TESTINFRA_INVENTORY.
    inventory = os.environ.get("MATCRAFT_TESTINFRA_INVENTORY") or os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, inventory))


class Stream:
    """A bounded stream of HTTPS requests with no retry (_shared/files/strict_client.py), run on
    `host` as a transient systemd unit, to https://server_name at `address`, one request every
    `interval` seconds, round robin over `paths` (see the client for POST). Use as a context
    manager around the operation under test, then read summary()."""

    CLIENT = "/var/tmp/strict_client.py"

    def __init__(self, host, name, address, server_name, paths, interval=0.2, count=12000):
        self.host, self.name = host, name
        self.address, self.server_name, self.paths = address, server_name, list(paths)
        self.interval, self.count = interval, count
        self.out, self.stop = "/var/tmp/%s.json" % name, "/var/tmp/%s.stop" % name
        self.unit = "stream-%s" % name

    def __enter__(self):
        import base64
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        script = open(os.path.join(here, "_shared", "files", "strict_client.py"), "rb").read()
        put = self.host.run("echo %s | base64 -d > %s", base64.b64encode(script).decode(), self.CLIENT)
        assert put.rc == 0, put.stderr
        self.host.run("rm -f %s %s", self.out, self.stop)
        self.host.run("systemctl reset-failed %s", self.unit)
        start = self.host.run(
            "systemd-run --unit=%s --property=RuntimeMaxSec=2700 python3 %s %s %s %s %s %s %s " + " ".join(["%s"] * len(self.paths)),
            self.unit, self.CLIENT, self.out, self.stop, str(self.count), str(self.interval), self.address,
            self.server_name, *self.paths)
        assert start.rc == 0, start.stderr
        self.started = time.time()
        time.sleep(4)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            time.sleep(4)
        self.host.run("touch %s", self.stop)

    def summary(self):
        text = wait_for("the summary of stream %s" % self.name,
                        lambda: self.host.file(self.out).exists and self.host.file(self.out).content_string, 60, 1)
        return json.loads(text)
