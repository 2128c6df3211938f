"""The edge: a real certificate from the ACME test CA (Pebble, HTTP-01), its
renewal without a restart, the TLS policy and headers, load balancing over
TLS to two API hosts, rate limits, the WAF, WebSockets, JSON logs, the
loopback-only stub_status, malformed requests answered 4xx (never a 5xx the
error-rate alert would count), failover and draining an API host, and the
edge's hygiene: unknown names refused by a catch-all server, the API seeing
the configured name only, body limits per path, the docs and metrics off the
public side, OCSP stapling only for a certificate that names a responder.

`host` is the edge (edge-proxy); edge-acme is the outside client, and every
HTTPS request verifies the served chain against Pebble's root fetched from its
management API. Certificate validation is never switched off.
"""

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from helpers import address_of, assert_unit_running, journal, peer, probe_tcp, wait_for

testinfra_hosts = ["edge-proxy"]

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAIN = "edge-proxy.test"
# nginx_server_aliases of the scenario (in the certificate too).
ALIAS = "www.edge-proxy.test"
# The API's docs, schema and metrics, kept off the public edge (nginx_admin_paths).
ADMIN_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics")
LISTENER_CA = "/usr/local/share/edge-test/acme-tls-ca.pem"
ROOT = "/tmp/edge-test-pebble-root.pem"
LIVE = "/etc/letsencrypt/live/%s" % DOMAIN
JSON_LOG = "/var/log/nginx/matcraft_access.json"
API_HOSTS = {"edge-api", "edge-api2"}
DASHBOARD = "https://dashboard.edge-proxy.test"
# The mtail program whose counter the API error-rate alert reads (5xx / all).
MTAIL_PROGRAM = os.path.join(os.path.dirname(os.path.dirname(SCENARIO)), "roles", "prometheus", "templates",
                             "mtail", "nginx_matcraft.mtail.j2")
RAW_PROBE = "/usr/local/lib/edge-test/raw_probe.py"
# Pebble issues certificates without a CRL or OCSP URI (Let's Encrypt's carry
# a CRL URI); testssl.sh rates that HIGH. Nothing in nginx can change it.
TESTSSL_TEST_CA_FINDINGS = {"cert_revocation"}
# Severities with which testssl.sh 3.0 reports a problem of the scan itself, not a finding.
TESTSSL_PROBLEM_SEVERITIES = {"WARN", "FATAL", "ERROR"}
# Notes about the client's OpenSSL, not the scan: testssl.sh writes them as WARN and exits 0 with them.
TESTSSL_CLIENT_NOTES = {"engine_problem"}
# testssl.sh 3.0 (Debian 12) runs its RFC 5746 check without SNI (testssl/testssl.sh#2359, fixed in 3.2);
# the edge refuses a handshake without SNI (the catch-all server), so that one check cannot run. It is
# made with SNI in test_testssl_no_high_or_critical instead. Only this finding, with exactly this text.
TESTSSL_NO_SNI_CHECKS = {("secure_renego", "OpenSSL handshake didn't succeed")}


@pytest.fixture(scope="module")
def client():
    return peer("edge-acme")


@pytest.fixture(scope="module")
def edge_ip(host):
    return address_of(host)


@pytest.fixture(scope="module")
def root(client, host):
    """Pebble's root CA from its management API, on the client and on the edge."""
    got = client.run("curl -fsS --cacert %s -o %s https://127.0.0.1:15000/roots/0", LISTENER_CA, ROOT)
    assert got.rc == 0, got.stderr
    pem = client.file(ROOT).content_string
    assert "BEGIN CERTIFICATE" in pem
    host.run("printf '%%s' %s > %s", pem, ROOT)
    return ROOT


def curl(machine, address, path, *options, scheme="https"):
    """One request to the edge by name (verified against Pebble's root): (status, headers, body)."""
    port = 443 if scheme == "https" else 80
    cmd = machine.run(
        "curl -sS --max-time 20 --cacert %s --resolve %s:%s:%s -D /tmp/edge-test-headers -o /tmp/edge-test-body "
        "-w '%%{http_code}' " + " ".join(["%s"] * len(options)) + " %s://%s%s; cat /tmp/edge-test-headers; "
        "echo '--body--'; cat /tmp/edge-test-body",
        ROOT, DOMAIN, str(port), address, *options, scheme, DOMAIN, path)
    assert cmd.rc == 0, cmd.stderr
    status, _, rest = cmd.stdout.partition("HTTP/")
    head, _, body = rest.partition("--body--\n")
    headers = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status), headers, body


def codes(machine, address, path, count):
    """Status codes of `count` requests sent back to back on one connection."""
    urls = " ".join(["-o /dev/null https://%s%s" % (DOMAIN, path)] * count)
    cmd = machine.run("curl -sS --max-time 30 --cacert %s --resolve %s:443:%s -w '%%{http_code} ' " + urls,
                      ROOT, DOMAIN, address)
    assert cmd.rc == 0, cmd.stderr
    return [int(c) for c in cmd.stdout.split()]


def served_serial(client, address):
    cmd = client.run(
        "openssl s_client -connect %s:443 -servername %s -CAfile %s -verify_return_error </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial", address, DOMAIN, ROOT)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def upstream_hosts(client, address, count):
    hosts = []
    for _ in range(count):
        status, _, body = curl(client, address, "/v1/whoami")
        assert status == 200, body
        hosts.append(json.loads(body)["host"])
    return hosts


def main_pid(host):
    return host.run("systemctl show -p MainPID --value nginx").stdout.strip()


def wait_for_bucket():
    """Let the rate limit bucket of the client refill (5 r/s, burst 10)."""
    time.sleep(2.5)


def run_edge_playbook(extra_vars):
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(SCENARIO, "edge.yml"),
         "-e", json.dumps(extra_vars)],
        capture_output=True, text=True, env=env, timeout=900, check=False)


def test_services_running(host):
    assert_unit_running(host, "nginx")
    assert_unit_running(host, "certbot.timer")


def test_certificate_from_pebble_verifies(host, client, root, edge_ip):
    """The served chain is Pebble's, verified against its root, for the edge's name."""
    cmd = client.run(
        "openssl s_client -connect %s:443 -servername %s -CAfile %s -verify_return_error "
        "-verify_hostname %s </dev/null 2>&1", edge_ip, DOMAIN, root, DOMAIN)
    assert cmd.rc == 0, cmd.stdout
    assert "Verify return code: 0 (ok)" in cmd.stdout
    assert "Pebble Intermediate CA" in cmd.stdout
    # The edge serves exactly the certificate certbot keeps.
    live = host.run("openssl x509 -in %s/cert.pem -noout -serial", LIVE).stdout.strip()
    assert served_serial(client, edge_ip) == live
    renewal = host.file("/etc/letsencrypt/renewal/%s.conf" % DOMAIN).content_string
    assert "server = https://edge-acme:14000/dir" in renewal
    assert "authenticator = webroot" in renewal
    # The temporary self-signed certificate is gone.
    assert not host.file("/etc/nginx/tls/bootstrap.key").exists


def test_renewal_hooks_and_timer_configuration(host):
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/50-matcraft-nginx-reload")
    assert hook.mode == 0o755 and "nginx -t" in hook.content_string and "systemctl reload nginx" in hook.content_string
    env = host.run("systemctl show -p Environment --value certbot.service").stdout
    assert "REQUESTS_CA_BUNDLE=%s" % LISTENER_CA in env


def certbot_log(host):
    """The log of certbot's last run (certbot rotates it at every run), at debug level even with -q."""
    return host.run("cat /var/log/letsencrypt/letsencrypt.log").stdout


def start_renewal_unit(host):
    """Run the installed certbot.service, as its timer does, and wait for it (oneshot); return certbot's log."""
    started = host.run("systemctl start certbot.service")
    result = host.run("systemctl show -p Result --value certbot.service").stdout.strip()
    log = certbot_log(host)
    assert started.rc == 0 and result == "success", "certbot.service: %s %s\n%s\n--- journal ---\n%s\n%s" % (
        result, started.stderr, log[-4000:], journal(host, "certbot.service"), started.stdout)
    return log


def test_renewal_timer_enabled_and_scheduled(host):
    """The distribution's certbot.timer is enabled, running, scheduled, and
    triggers certbot.service, whose command renews without forcing it."""
    timer = dict(line.split("=", 1) for line in host.run(
        "systemctl show -p UnitFileState -p ActiveState -p Triggers -p NextElapseUSecRealtime certbot.timer"
    ).stdout.splitlines() if "=" in line)
    assert timer["UnitFileState"] == "enabled" and timer["ActiveState"] == "active", timer
    assert timer["Triggers"] == "certbot.service", timer
    assert timer["NextElapseUSecRealtime"] not in ("", "n/a", "0"), "certbot.timer has no next run: %s" % timer
    listed = host.run("systemctl list-timers --all --no-legend certbot.timer").stdout
    assert "certbot.service" in listed and not listed.lstrip().startswith("n/a"), listed
    command = host.run("systemctl show -p ExecStart --value certbot.service").stdout
    assert re.search(r"argv\[\]=\S*certbot .*\brenew\b", command), command
    assert "--force-renewal" not in command and "renew-by-default" not in command, command


def test_timer_unit_renews_when_due_served_without_restart(host, client, root, edge_ip):
    """The installed certbot.service (what certbot.timer starts) renews the
    certificate once it is inside its renewal window: first not yet due
    (nothing changes), then with certbot's renew_before_expiry (in the
    lineage's renewal configuration) wider than the certificate's remaining
    life, a real renewal; nginx serves the new serial after the deploy
    hook's reload, with the same master process (no restart)."""
    conf = "/etc/letsencrypt/renewal/%s.conf" % DOMAIN
    before_serial = served_serial(client, edge_ip)
    live = host.run("openssl x509 -in %s/cert.pem -noout -serial", LIVE).stdout.strip()
    assert before_serial == live
    before_pid = main_pid(host)

    # Not due (default window: 30 days before the end): the unit keeps the certificate.
    log = start_renewal_unit(host)
    assert "Certificate not yet due for renewal" in log, log[-3000:]
    assert "Certificate is due for renewal" not in log and "Auto-renewal forced" not in log, log[-3000:]
    assert host.run("openssl x509 -in %s/cert.pem -noout -serial", LIVE).stdout.strip() == live

    end = host.run("openssl x509 -in %s/cert.pem -noout -enddate", LIVE).stdout.strip().partition("=")[2]
    remaining = int(host.check_output("date -d %s +%%s", end)) - int(host.check_output("date +%s"))
    window_days = remaining // 86400 + 2
    assert not host.run("grep -E '^renew_before_expiry' %s", conf).stdout, host.file(conf).content_string
    added = host.run("sed -i %s %s", "1i renew_before_expiry = %d days" % window_days, conf)
    assert added.rc == 0, added.stderr
    try:
        log = start_renewal_unit(host)
    finally:
        host.run("sed -i '/^renew_before_expiry = /d' %s", conf)
    assert "Certificate is due for renewal" in log, log[-3000:]
    assert "Auto-renewal forced" not in log, log[-3000:]
    assert not host.run("grep -E '^renew_before_expiry' %s", conf).stdout
    renewed = host.run("openssl x509 -in %s/cert.pem -noout -serial", LIVE).stdout.strip()
    assert renewed != live, "certbot.service did not renew the certificate due for renewal"
    wait_for("the edge to serve the renewed certificate %s (it served %s)" % (renewed, before_serial),
             lambda: served_serial(client, edge_ip) == renewed, timeout=30)
    assert main_pid(host) == before_pid, "nginx was restarted, not reloaded"
    assert_unit_running(host, "nginx")


def test_http_answers_acme_challenge_and_redirects(host, client, root, edge_ip):
    status, headers, _ = curl(client, edge_ip, "/v1/campaigns?page=2", scheme="http")
    assert status == 301
    assert headers["location"] == "https://%s/v1/campaigns?page=2" % DOMAIN
    token = uuid.uuid4().hex
    path = "/var/www/acme/.well-known/acme-challenge/%s" % token
    host.run("echo %s > %s", token, path)
    try:
        status, _, body = curl(client, edge_ip, "/.well-known/acme-challenge/%s" % token, scheme="http")
        assert status == 200 and body.strip() == token
    finally:
        host.run("rm -f %s", path)
    # Our other name is sent to itself (a name that is not ours gets no answer:
    # test_unknown_names_refused_by_a_catch_all).
    cmd = client.run("curl -sS -o /dev/null -w '%%{redirect_url}' -H 'Host: %s' http://%s/x", ALIAS, edge_ip)
    assert cmd.stdout == "https://%s/x" % ALIAS


def test_security_headers_and_no_cors_from_nginx(host, client, root, edge_ip):
    wait_for_bucket()
    status, headers, _ = curl(client, edge_ip, "/v1/campaigns", "-H", "Origin: https://evil.example")
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=63072000"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["server"] == "nginx", "server_tokens must hide the version"
    assert "access-control-allow-origin" not in headers
    # The API's own CORS answer for the dashboard passes unchanged.
    status, headers, _ = curl(client, edge_ip, "/v1/campaigns", "-H", "Origin: " + DASHBOARD)
    assert headers.get("access-control-allow-origin") == DASHBOARD
    # Headers are on error responses too (the docs are off the public edge: 404).
    status, headers, _ = curl(client, edge_ip, "/docs")
    assert status == 404 and "strict-transport-security" in headers
    # The docs get their own policy, seen from an admin network (the loopback).
    status, headers, _ = curl(host, "127.0.0.1", "/docs")
    assert status == 200 and "cdn.jsdelivr.net" in headers["content-security-policy"]
    assert "strict-transport-security" in headers


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_refused(client, root, edge_ip, version):
    # SECLEVEL=0 lets the client offer the old versions: the refusal is the server's.
    cmd = client.run("openssl s_client -connect %s:443 -servername %s %s -cipher DEFAULT@SECLEVEL=0 </dev/null 2>&1",
                     edge_ip, DOMAIN, version)
    assert cmd.rc != 0
    assert "alert protocol version" in cmd.stdout, cmd.stdout


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_current_tls_accepted(client, root, edge_ip, version):
    cmd = client.run("openssl s_client -connect %s:443 -servername %s %s -CAfile %s -verify_return_error </dev/null 2>&1",
                     edge_ip, DOMAIN, version, root)
    assert cmd.rc == 0, cmd.stdout


def test_weak_cipher_refused(client, root, edge_ip):
    """No static-RSA or CBC suite (Mozilla intermediate)."""
    cmd = client.run("openssl s_client -connect %s:443 -servername %s -tls1_2 -cipher AES128-SHA:AES256-SHA256 "
                     "</dev/null 2>&1", edge_ip, DOMAIN)
    assert cmd.rc != 0 and "handshake failure" in cmd.stdout, cmd.stdout


def test_balanced_over_verified_tls(host, client, root, edge_ip):
    wait_for_bucket()
    seen = upstream_hosts(client, edge_ip, 6)
    assert set(seen) == API_HOSTS, seen
    status, _, body = curl(client, edge_ip, "/v1/headers")
    sent = json.loads(body)["headers"]
    assert sent["host"] == DOMAIN and sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-for"] == address_of(client) and sent["x-request-id"]
    status, _, body = curl(client, edge_ip, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # The API hosts speak TLS only; nginx verifies them by the shared name.
    api_ip = address_of(peer("edge-api"))
    assert host.run("curl -sS --max-time 5 http://%s:8000/health", api_ip).rc != 0
    verified = host.run("curl -fsS --max-time 5 --cacert /etc/matcraft/pki/ca.crt "
                        "--resolve api.matcraft.internal:8000:%s https://api.matcraft.internal:8000/health", api_ip)
    assert verified.rc == 0, verified.stderr
    config = host.run("nginx -T 2>/dev/null").stdout
    assert "proxy_ssl_verify on;" in config and "proxy_ssl_name api.matcraft.internal;" in config


def handshake(client, address, *options):
    """A TLS handshake with the edge's port 443 (openssl s_client with these options): (exit status, output)."""
    cmd = client.run("openssl s_client -connect %s:443 " + " ".join(["%s"] * len(options)) + " </dev/null 2>&1",
                     address, *options)
    return cmd.rc, cmd.stdout


def test_unknown_names_refused_by_a_catch_all(host, client, root, edge_ip):
    """Only our names are served. Over TLS a handshake without SNI or with a name not ours is refused
    (unrecognized_name, no certificate shown), so is HTTPS by address; a request whose Host is not the
    name of its TLS session gets 421 and never reaches the API. Over HTTP a Host not ours, or the bare
    address, is closed without an answer. (Before, the MatCraft server was the default one: every name
    was served, proxied, and redirected.)"""
    wait_for_bucket()
    for options in (("-servername", "other.example"), ("-noservername",)):
        rc, out = handshake(client, edge_ip, *options)
        assert rc != 0 and "unrecognized name" in out and "BEGIN CERTIFICATE" not in out, out
    for name in (DOMAIN, ALIAS):
        rc, out = handshake(client, edge_ip, "-servername", name, "-CAfile", root, "-verify_return_error",
                            "-verify_hostname", name)
        assert rc == 0 and "Verify return code: 0 (ok)" in out, out
    by_address = client.run("curl -sS --max-time 10 --cacert %s https://%s/health", root, edge_ip)
    assert by_address.rc != 0, by_address.stdout
    status, headers, body = curl(client, edge_ip, "/v1/headers", "-H", "Host: other.example")
    assert status == 421 and json.loads(body) == {"detail": "Misdirected Request"}, (status, body)
    for options in (["-H", "Host: other.example"], []):
        cmd = client.run("curl -sS --max-time 10 -o /dev/null -w '%%{http_code}' " + " ".join(["%s"] * len(options))
                         + " http://%s/v1/headers", *options, edge_ip)
        # 52: the server closed the connection without an answer.
        assert cmd.rc == 52 and cmd.stdout == "000", (options, cmd.rc, cmd.stdout, cmd.stderr)


def test_the_api_sees_the_configured_name(client, root, edge_ip):
    """Whatever name of ours the client used, the API gets the main name as Host and the one used in
    X-Forwarded-Host. (Before, the client's Host was passed on.)"""
    wait_for_bucket()
    for name in (DOMAIN, ALIAS):
        cmd = client.run("curl -sS --max-time 20 --cacert %s --resolve %s:443:%s https://%s/v1/headers",
                         root, name, edge_ip, name)
        assert cmd.rc == 0, cmd.stderr
        sent = json.loads(cmd.stdout)["headers"]
        assert sent["host"] == DOMAIN and sent["x-forwarded-host"] == name, sent


def test_body_limits_per_path(client, root, edge_ip):
    """1 MiB on every path (nginx_client_max_body_size_mb), 8 MiB on the upload path only
    (nginx_upload_body_limits): a 2 MiB body to another path gets the edge's 413, also when its
    path only looks like the upload path before normalisation; the same body to the upload path passes
    the edge and the WAF and reaches the API. (Before, one limit held for every path.)"""
    wait_for_bucket()
    client.run("head -c 2097152 /dev/urandom > /tmp/edge-test-2m.csv")
    try:
        for path in ("/v1/campaigns", "/v1/echo", "/v1/datasets/../campaigns"):
            status, _, body = curl(client, edge_ip, path, "--path-as-is", "-F", "file=@/tmp/edge-test-2m.csv")
            assert status == 413 and json.loads(body) == {"detail": "Request body too large"}, (path, status, body)
            time.sleep(0.25)
        status, _, body = curl(client, edge_ip, "/v1/datasets/upload", "-F", "file=@/tmp/edge-test-2m.csv")
        assert status == 200, body
        reply = json.loads(body)
        assert reply["bytes"] > 2097152 and reply["host"] in API_HOSTS, reply
    finally:
        client.run("rm -f /tmp/edge-test-2m.csv")


def test_docs_and_metrics_off_the_public_edge(host, client, root, edge_ip):
    """The docs, the OpenAPI schema and metrics answer the edge's own 404 to a client outside
    nginx_admin_allowed_cidrs, however the path is spelt; from an admin network (the loopback here)
    they reach the API. Other paths are not affected. (Before, they were proxied for everyone.)"""
    wait_for_bucket()
    spellings = ("/v1/../openapi.json", "/%6fpenapi.json", "//docs", "/metrics/", "/docs?x=1")
    for path in ADMIN_PATHS + spellings:
        status, _, body = curl(client, edge_ip, path, "--path-as-is")
        assert status == 404 and json.loads(body) == {"detail": "Not Found"}, (path, status, body)
        time.sleep(0.25)
    status, _, body = curl(client, edge_ip, "/v1/metrics")
    assert status == 200 and json.loads(body)["path"] == "/v1/metrics", body
    for path in ADMIN_PATHS:
        status, _, body = curl(host, "127.0.0.1", path)
        assert status == 200 and json.loads(body)["host"] in API_HOSTS, (path, status, body)
        assert json.loads(body)["headers"]["host"] == DOMAIN


def test_ocsp_stapling_follows_the_certificate(host, client, root, edge_ip):
    """Pebble's certificate, like Let's Encrypt's since 2025, names no OCSP responder: nginx has no
    stapling directive and nothing to warn about, and clients get no stapled answer. (Before,
    letsencrypt mode always turned stapling on, and nginx warned that it ignored it.)"""
    assert host.run("openssl x509 -in %s/cert.pem -noout -ocsp_uri", LIVE).stdout.strip() == ""
    config = host.run("nginx -T 2>/dev/null").stdout
    assert "ssl_certificate %s/fullchain.pem;" % LIVE in config
    assert not re.search(r"^\s*ssl_(stapling|stapling_verify|trusted_certificate)\s", config, re.M), config
    checked = host.run("nginx -t")
    assert checked.rc == 0 and "stapling" not in checked.stderr, checked.stderr
    rc, out = handshake(client, edge_ip, "-servername", DOMAIN, "-status", "-CAfile", root)
    assert rc == 0 and "OCSP response: no response sent" in out, out


def test_rate_limit_json_429_and_trusted_loopback(host, client, root, edge_ip):
    wait_for_bucket()
    # Under the rate (5 r/s): every request passes.
    slow = client.run(
        "for i in 1 2 3 4 5 6; do curl -sS -o /dev/null -w '%%{http_code} ' --cacert %s --resolve %s:443:%s "
        "https://%s/v1/slow; sleep 0.4; done", root, DOMAIN, edge_ip, DOMAIN)
    assert slow.stdout.split() == ["200"] * 6, slow.stdout
    wait_for_bucket()
    # A burst above rate + burst, sent at once (multiplexed on one HTTP/2
    # connection), so that the bucket cannot refill while it is sent, however
    # slow the machine: the excess gets 429 with a JSON body. Each answer's
    # body goes to a file of its own, named in its status line.
    url = "https://%s/v1/burst" % DOMAIN
    targets = " ".join("-o /tmp/edge-burst/%d %s" % (i, url) for i in range(30))
    burst = client.run(
        "rm -rf /tmp/edge-burst && mkdir /tmp/edge-burst && "
        "curl -sS --parallel --parallel-max 30 --http2 --max-time 30 --cacert %s --resolve %s:443:%s "
        "-w '%%{http_code}|%%header{content-type}|%%header{retry-after}|%%header{strict-transport-security}"
        "|%%{filename_effective}\\n' " + targets, root, DOMAIN, edge_ip)
    assert burst.rc == 0, burst.stderr
    results = [line.split("|") for line in burst.stdout.splitlines()]
    statuses = [int(r[0]) for r in results]
    assert len(statuses) == 30, burst.stdout
    assert statuses.count(200) >= 10 and statuses.count(429) >= 15, statuses
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in results if r[0] == "429"]
    assert all(r[1:4] == ["application/json", "1", "max-age=63072000"] for r in refused), refused
    assert json.loads(client.check_output("cat %s", refused[0][4])) == {"detail": "Too Many Requests"}
    # The loopback is in nginx_rate_limit_trusted_cidrs: the same burst passes.
    assert codes(host, "127.0.0.1", "/v1/burst", 30) == [200] * 30
    wait_for_bucket()


def test_waf_blocks_sql_injection_and_passes_json(host, client, root, edge_ip):
    wait_for_bucket()
    status, headers, body = curl(client, edge_ip, "/v1/campaigns?id=1%27%20OR%20%271%27%3D%271")
    assert status == 403, body
    assert headers["content-type"] == "application/json" and json.loads(body) == {"detail": "Forbidden"}
    # The same probe inside a JSON body is found too (the JSON body processor).
    status, _, _ = curl(client, edge_ip, "/v1/echo", "-H", "Content-Type: application/json",
                        "--data", json.dumps({"filter": "1' OR '1'='1"}))
    assert status == 403
    document = {"name": "Perovskite band gap", "design_space": {"A": ["Cs", "MA"], "x": [0.0, 0.35]},
                "objective": "maximise PCE (%)", "notes": "Fe2O3/TiO2 baseline, see run #12"}
    status, _, body = curl(client, edge_ip, "/v1/echo", "-H", "Content-Type: application/json",
                           "--data", json.dumps(document))
    assert status == 200, body
    assert json.loads(body)["echo"] == document
    log = host.run("grep -c 'ModSecurity: Access denied with code 403' /var/log/nginx/error.log").stdout
    assert int(log or 0) >= 2


def test_uploads_within_limit_and_413_above(client, root, edge_ip):
    wait_for_bucket()
    client.run("head -c 3000000 /dev/urandom > /tmp/edge-test-3m.csv; head -c 9000000 /dev/zero > /tmp/edge-test-9m.bin")
    try:
        status, _, body = curl(client, edge_ip, "/v1/datasets/upload", "-F", "file=@/tmp/edge-test-3m.csv")
        assert status == 200, body
        reply = json.loads(body)
        assert reply["bytes"] > 3000000 and reply["content_type"].startswith("multipart/form-data")
        status, headers, body = curl(client, edge_ip, "/v1/datasets/upload", "-F", "file=@/tmp/edge-test-9m.bin")
        assert status == 413 and json.loads(body)["detail"]
    finally:
        client.run("rm -f /tmp/edge-test-3m.csv /tmp/edge-test-9m.bin")


def malformed_corpus():
    """Malformed requests as raw bytes: (name, parts, expectation), parts as raw_probe.py takes them.

    "4xx": nginx must refuse it with a 4xx (or close the connection without an
    answer). "not 5xx": nginx reads it as a valid request and passes it on;
    whatever comes back must not be a 5xx.
    """
    host = "Host: %s\r\n" % DOMAIN
    get = "GET /v1/probe HTTP/1.1\r\n" + host
    post = "POST /v1/echo HTTP/1.1\r\n" + host + "Content-Type: application/json\r\n"
    return [
        ("garbage request line", [["GARBAGE\r\n\r\n", 1]], "4xx"),
        ("invalid method characters", [["G@T /v1/probe HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("lowercase method", [["get /v1/probe HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("no URI", [["GET  HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("junk after the version", [["GET /v1/probe HTTP/1.1 junk\r\n" + host + "\r\n", 1]], "4xx"),
        ("HTTP version 9.9", [["GET /v1/probe HTTP/9.9\r\n" + host + "\r\n", 1]], "4xx"),
        ("HTTP/2.0 request line over HTTP/1", [["GET /v1/probe HTTP/2.0\r\n" + host + "\r\n", 1]], "4xx"),
        ("HTTP version 1.x", [["GET /v1/probe HTTP/1.x\r\n" + host + "\r\n", 1]], "4xx"),
        ("misspelt protocol", [["GET /v1/probe HTPT/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("control character in the URI", [["GET /v1/pro\x01be HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("NUL in the URI", [["GET /v1/pro\x00be HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("DEL in the URI", [["GET /v1/pro\x7fbe HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("invalid percent-encoding", [["GET /v1/%zz HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("truncated percent-encoding", [["GET /v1/probe%2 HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("encoded NUL in the URI", [["GET /v1/a%00b HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("path above the root", [["GET /../../etc/passwd HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("invalid absolute URI", [["GET http://[::1/v1/probe HTTP/1.1\r\n" + host + "\r\n", 1]], "4xx"),
        ("URI longer than the header buffers", [["GET /v1/", 1], ["a", 40000], [" HTTP/1.1\r\n" + host + "\r\n", 1]],
         "4xx"),
        ("one header larger than a buffer", [[get + "X-Big: ", 1], ["b", 40000], ["\r\n\r\n", 1]], "4xx"),
        ("header block larger than all buffers", [[get, 1], ["X-Many: " + "m" * 1000 + "\r\n", 60], ["\r\n", 1]], "4xx"),
        ("NUL in a header name", [[get + "X-Bad\x00Name: x\r\n\r\n", 1]], "4xx"),
        ("control character in a header name", [[get + "X-Bad\x01Name: x\r\n\r\n", 1]], "4xx"),
        ("NUL in a header value", [[get + "X-Value: a\x00b\r\n\r\n", 1]], "4xx"),
        ("obsolete line folding", [[get + " X-Folded: x\r\n\r\n", 1]], "4xx"),
        ("HTTP/1.1 without Host", [["GET /v1/probe HTTP/1.1\r\n\r\n", 1]], "4xx"),
        ("two Host headers", [[get + host + "\r\n", 1]], "4xx"),
        ("invalid Host", [["GET /v1/probe HTTP/1.1\r\nHost: ../a/b\r\n\r\n", 1]], "4xx"),
        ("conflicting Content-Length", [[post + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 1]], "4xx"),
        ("non-numeric Content-Length", [[post + "Content-Length: abc\r\n\r\n{}", 1]], "4xx"),
        ("negative Content-Length", [[post + "Content-Length: -2\r\n\r\n{}", 1]], "4xx"),
        ("Content-Length with Transfer-Encoding",
         [[post + "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 1]], "4xx"),
        ("unknown Transfer-Encoding", [[post + "Transfer-Encoding: gzip\r\n\r\n", 1]], "4xx"),
        ("Transfer-Encoding in HTTP/1.0",
         [["POST /v1/echo HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 1]], "4xx"),
        ("invalid chunk size", [[post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 1]], "4xx"),
        ("chunk longer than its size", [[post + "Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", 1]], "4xx"),
        ("body over the size limit (8 MiB)",
         [["POST /v1/datasets/upload HTTP/1.1\r\n" + host + "Content-Type: application/octet-stream\r\n"
           "Content-Length: 9437184\r\n\r\n", 1], ["0", 65536]], "4xx"),
        # nginx reads a line without a colon as a header with an empty value.
        ("header line without a colon", [[get + "NoColonHere\r\n\r\n", 1]], "not 5xx"),
    ]


def malformed_probes():
    """The corpus for raw_probe.py (each request over TLS to 443 and plain to 80) and the expectation per name."""
    corpus, expected = [], {}
    for name, parts, expect in malformed_corpus():
        for scheme, port, tls in (("https", 443, True), ("http", 80, False)):
            corpus.append({"name": "%s: %s" % (scheme, name), "port": port, "tls": tls, "parts": parts})
            expected["%s: %s" % (scheme, name)] = expect
    corpus.append({"name": "plain HTTP to the HTTPS port", "port": 443, "tls": False,
                   "parts": [["GET /v1/probe HTTP/1.1\r\nHost: %s\r\n\r\n" % DOMAIN, 1]]})
    expected["plain HTTP to the HTTPS port"] = "4xx"
    return corpus, expected


def wrong_answers(results, expected):
    """The raw_probe.py results that break their expectation."""
    wrong = []
    for result in results:
        status, expect = result["status"], expected[result["name"]]
        if status is None:
            # Closed by nginx without an answer is acceptable; hanging is not.
            if not result["closed"] or result["timed_out"]:
                wrong.append(result)
        elif status >= 500 or (expect == "4xx" and status < 400):
            wrong.append(result)
        elif 400 <= status < 500:
            # nginx's own errors keep their JSON bodies and the security headers.
            try:
                detail = json.loads(result["body"])["detail"]
            except (ValueError, KeyError, TypeError):
                detail = None
            if not detail or (result["name"].startswith("https") and
                              "strict-transport-security" not in result["head"].lower()):
                wrong.append(result)
    return wrong


def mtail_status_pattern():
    """The regex with which the mtail program reads the status the error-rate alert counts."""
    with open(MTAIL_PROGRAM, encoding="utf-8") as program:
        for line in program:
            if "(?P<status>" in line:
                return re.compile(line.strip().rstrip("{").strip().strip("/"))
    pytest.fail("no status pattern in %s" % MTAIL_PROGRAM)


def test_malformed_requests_get_4xx_never_5xx(host, client, root, edge_ip):
    """Malformed requests from a host of no inventory group (edge-acme), as raw
    bytes over TLS and plain HTTP: every answer is a 4xx with a JSON body, and
    the access log, as the mtail program behind the error-rate alert reads
    it, counts no 5xx for them. (The old configuration answered 500: its 400
    page was a named location, which a request without a parsed URI cannot
    reach; and 505 and 501 for a bad version or Transfer-Encoding.)"""
    wait_for_bucket()
    corpus, expected = malformed_probes()
    client.run("printf '%%s' %s > /tmp/edge-test-malformed.json", json.dumps(corpus))
    log_size = int(host.run("stat -c %%s %s", JSON_LOG).stdout.strip())
    # 0.3 s apart: under the rate limit (5 r/s) of an untrusted client.
    cmd = client.run("python3 %s --connect %s --name %s --cafile %s --corpus /tmp/edge-test-malformed.json "
                     "--pause 0.3 --timeout 10", RAW_PROBE, edge_ip, DOMAIN, root)
    assert cmd.rc == 0, cmd.stderr
    results = json.loads(cmd.stdout)
    assert [r["name"] for r in results] == [e["name"] for e in corpus]
    wrong = wrong_answers(results, expected)
    summary = ["%s %s" % (r["status"], r["name"]) for r in results]
    assert not wrong, json.dumps(wrong, indent=1)[:6000] + "\n" + "\n".join(summary)
    refused = [r for r in results if r["status"] is not None and 400 <= r["status"] < 500]
    assert len(refused) >= len(corpus) - 2, summary

    # The access log as mtail reads it: a line per request, none counted 5xx.
    pattern = mtail_status_pattern()
    client_field = '"remote_addr":"%s"' % address_of(client)
    logged = [line for line in host.run("tail -c +%s %s", str(log_size + 1), JSON_LOG).stdout.splitlines()
              if client_field in line]
    answered = [r for r in results if r["status"] is not None]
    assert len(logged) >= len(answered), "\n".join(logged)
    statuses = []
    for line in logged:
        match = pattern.search(line)
        assert match, "mtail would skip this line: %s" % line
        statuses.append(int(match.group("status")))
    assert not [s for s in statuses if s >= 500], "\n".join(logged)
    assert len([s for s in statuses if 400 <= s < 500]) >= len(refused)
    client.run("rm -f /tmp/edge-test-malformed.json")


def test_websocket_receives_message_published_upstream(client, root, edge_ip):
    wait_for_bucket()
    unit, out = "edge-ws-probe-%s" % uuid.uuid4().hex[:8], "/tmp/edge-ws-probe.out"
    client.run("rm -f %s", out)
    started = client.run(
        "systemd-run --unit=%s --property=RuntimeMaxSec=90 /usr/bin/python3 /usr/local/lib/edge-test/ws_probe.py "
        "--connect %s --name %s --cafile %s --path /ws/campaigns/42 --out %s --messages 2 --timeout 60",
        unit, edge_ip, DOMAIN, root, out)
    assert started.rc == 0, started.stderr
    try:
        hello = None
        for _ in range(40):
            lines = client.run("cat %s", out).stdout.splitlines()
            if len(lines) >= 2:
                hello = json.loads(lines[1])
                break
            time.sleep(0.5)
        assert hello and hello["event"] == "subscribed" and hello["host"] in API_HOSTS, "no WebSocket session"
        message = {"event": "progress", "campaign": "42", "iteration": 7, "best": 1.23}
        published = peer(hello["host"]).run(
            "curl -fsS --cacert /etc/matcraft/pki/ca.crt --resolve api.matcraft.internal:8000:127.0.0.1 "
            "--data %s https://api.matcraft.internal:8000/internal/publish/42", json.dumps(message))
        assert published.rc == 0 and json.loads(published.stdout)["delivered"] == 1, published.stderr
        for _ in range(40):
            lines = client.run("cat %s", out).stdout.splitlines()
            if len(lines) >= 3:
                break
            time.sleep(0.5)
        assert len(lines) >= 3 and json.loads(lines[2]) == message, lines
    finally:
        client.run("systemctl stop %s", unit)


def test_json_access_log(host, client, root, edge_ip):
    wait_for_bucket()
    marker = uuid.uuid4().hex
    agent = 'probe "quoted" \\ %s' % marker
    curl(client, edge_ip, "/v1/log-probe?x=1", "-A", agent)
    line = host.run("grep %s %s | tail -n 1", marker, JSON_LOG).stdout
    entry = json.loads(line)
    for key in ("time_iso8601", "remote_addr", "request_method", "uri", "status", "body_bytes_sent", "request_time",
                "upstream_response_time", "upstream_addr", "host", "http_user_agent"):
        assert key in entry, key
    assert entry["http_user_agent"] == agent
    assert entry["status"] == "200" and entry["request_method"] == "GET" and entry["host"] == DOMAIN
    assert entry["uri"] == "/v1/log-probe" and entry["upstream_addr"].endswith(":8000")
    assert float(entry["request_time"]) >= 0 and float(entry["upstream_response_time"]) >= 0
    log = host.file(JSON_LOG)
    assert log.mode == 0o640 and log.group == "adm"


def test_stub_status_on_loopback_only(host, client, root, edge_ip):
    local = host.run("curl -fsS http://127.0.0.1:8080/stub_status")
    assert local.rc == 0 and "Active connections" in local.stdout
    assert not probe_tcp(client, edge_ip, 8080)
    listening = host.run("ss -Htln 'sport = :8080'").stdout.split()
    assert "127.0.0.1:8080" in listening and "0.0.0.0:8080" not in listening
    status, _, body = curl(client, edge_ip, "/stub_status")
    assert "Active connections" not in body


def test_firewall_and_file_modes(host):
    rules = host.run("nft list ruleset").stdout
    assert 'ip saddr 0.0.0.0/0 tcp dport { 80, 443 } accept comment "nginx"' in rules, rules
    assert 'ip6 saddr ::/0 tcp dport { 80, 443 } accept comment "nginx"' in rules, rules
    for path, mode in (("/etc/nginx/conf.d/matcraft.conf", 0o640), ("/etc/nginx/matcraft/modsecurity.conf", 0o640),
                       ("/etc/nginx/tls", 0o750)):
        item = host.file(path)
        assert item.user == "root" and item.mode == mode, path
    key = host.file(host.run("readlink -f %s/privkey.pem", LIVE).stdout.strip())
    assert key.user == "root" and not key.mode & 0o077


def test_checker_tests_candidates_in_context(host):
    """A snippet that is valid alone but breaks the configuration around it is refused."""
    candidate = "/tmp/edge-test-proxy.conf"
    host.run("cp /etc/nginx/matcraft/proxy.conf %s && echo 'proxy_read_timeout 5s;' >> %s", candidate, candidate)
    before = host.file("/etc/nginx/matcraft/proxy.conf").sha256sum
    bad = host.run("/usr/local/sbin/matcraft-nginx-check %s /etc/nginx/matcraft/proxy.conf", candidate)
    assert bad.rc != 0 and "duplicate" in bad.stderr, bad.stderr
    good = host.run("/usr/local/sbin/matcraft-nginx-check /etc/nginx/matcraft/proxy.conf /etc/nginx/matcraft/proxy.conf")
    assert good.rc == 0, good.stderr
    assert host.file("/etc/nginx/matcraft/proxy.conf").sha256sum == before
    host.run("rm -f %s", candidate)


def run_testssl(client, root, edge_ip, report):
    """One testssl.sh run: (exit status, findings or None, output tail)."""
    client.run("rm -f %s", report)
    cmd = client.run(
        "timeout 900 testssl --quiet --color 0 --warnings off --ip %s --add-ca %s --protocols --std "
        "--server-defaults --headers --vulnerable --jsonfile %s https://%s",
        edge_ip, root, report, DOMAIN)
    output = cmd.stdout[-3000:] + cmd.stderr[-2000:]
    report_file = client.file(report)
    return cmd.rc, json.loads(report_file.content_string) if report_file.exists else None, output


def scan_problems(findings):
    """The entries of a testssl.sh report that say part of the scan did not run (severity WARN or FATAL,
    id scanProblem), less the note about the client's own OpenSSL (no GOST engine in OpenSSL 3), which
    testssl.sh does not count as an error."""
    return [f for f in findings if (f["severity"] in TESTSSL_PROBLEM_SEVERITIES or f["id"] == "scanProblem")
            and f["id"] not in TESTSSL_CLIENT_NOTES and (f["id"], f["finding"]) not in TESTSSL_NO_SNI_CHECKS]


def test_testssl_no_high_or_critical(client, root, edge_ip):
    """testssl.sh (protocols, ciphers, server defaults, headers, vulnerabilities): a scan that ran through
    without errors (exit status 0, no WARN or FATAL entry), and nothing HIGH or CRITICAL in it."""
    report = "/tmp/edge-testssl.json"
    attempts = []
    # Another scan only when one did not run cleanly (a sub-scan's connection failing on a busy machine:
    # a CI rehearsal saw the session resumption check fail twice in a row while other scenarios ran, and
    # pass on its own); the scan judged below is always one that ran cleanly, or the test fails with all
    # three. A retry waits longer than the rate limit's bucket needs, for the machine to settle.
    for attempt in range(3):
        wait_for_bucket()
        if attempt:
            time.sleep(20)
        rc, findings, output = run_testssl(client, root, edge_ip, report)
        problems = scan_problems(findings) if findings is not None else ["no JSON report"]
        attempts.append((rc, problems, output))
        # testssl.sh 3.0 (man testssl, EXIT STATUS): 0 is a scan finished without errors and without
        # ambiguous results, 1+n counts them, 242-255 are its own failures (246 connect, 247 DNS), 124 is
        # timeout's; findings are not counted (50-200 are reserved for a future scoring).
        if rc == 0 and not problems:
            break
    else:
        pytest.fail("testssl.sh did not run cleanly in three scans:\n" + "\n".join(
            "exit %d, problems:\n%s\n%s" % (rc, json.dumps(problems, indent=1), output)
            for rc, problems, output in attempts))
    by_id = {f["id"]: f for f in findings}
    for required in ("TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cert_chain_of_trust", "heartbleed", "ROBOT", "BREACH",
                     "LUCKY13"):
        assert required in by_id, "testssl.sh did not report %s (exit %d)\n%s" % (required, rc, output)
    assert by_id["TLS1"]["finding"] == by_id["TLS1_1"]["finding"] == "not offered"
    assert by_id["TLS1_2"]["finding"].startswith("offered") and by_id["TLS1_3"]["finding"].startswith("offered")
    assert by_id["cert_chain_of_trust"]["finding"].startswith("passed"), by_id["cert_chain_of_trust"]
    serious = [f for f in findings if f["severity"] in ("HIGH", "CRITICAL") and f["id"] not in TESTSSL_TEST_CA_FINDINGS]
    assert not serious, json.dumps(serious, indent=1)
    # The RFC 5746 check testssl.sh 3.0 cannot make without SNI (TESTSSL_NO_SNI_CHECKS), made with it:
    # only when the scan could not make it, and only because the edge refuses a handshake without SNI.
    if by_id["secure_renego"]["finding"] == "OpenSSL handshake didn't succeed":
        rc, out = handshake(client, edge_ip, "-noservername", "-tls1_2")
        assert rc != 0 and "unrecognized name" in out, out
        rc, out = handshake(client, edge_ip, "-servername", DOMAIN, "-tls1_2", "-CAfile", root, "-verify_return_error")
        assert rc == 0 and "Secure Renegotiation IS supported" in out, out
    else:
        assert by_id["secure_renego"]["severity"] == "OK", by_id["secure_renego"]
    assert by_id["secure_client_renego"]["severity"] == "OK", by_id["secure_client_renego"]


def test_failover_of_idempotent_requests(client, root, edge_ip):
    """One API host stops: requests keep succeeding on the other."""
    wait_for_bucket()
    api2 = peer("edge-api2")
    api2.run("systemctl stop edge-upstream")
    try:
        seen = upstream_hosts(client, edge_ip, 6)
        assert set(seen) == {"edge-api"}, seen
        # A connection refused happens before the request is sent, so POST is retried too.
        status, _, body = curl(client, edge_ip, "/v1/echo", "-H", "Content-Type: application/json",
                               "--data", json.dumps({"ok": True}))
        assert status == 200, body
    finally:
        api2.run("systemctl start edge-upstream")


def test_drain_an_api_host_with_a_reload(host, client, root, edge_ip):
    """nginx_upstream_drained takes edge-api2 out of rotation with a reload; undraining brings it back."""
    pid = main_pid(host)
    drained = run_edge_playbook({"nginx_upstream_drained": ["edge-api2"]})
    try:
        assert drained.returncode == 0, drained.stdout[-3000:]
        api2_ip = address_of(peer("edge-api2"))
        assert "server %s:8000 max_fails=3 fail_timeout=10s down;" % api2_ip in host.file(
            "/etc/nginx/conf.d/matcraft.conf").content_string
        wait_for_bucket()
        assert set(upstream_hosts(client, edge_ip, 6)) == {"edge-api"}
        assert main_pid(host) == pid, "draining restarted nginx"
    finally:
        restored = run_edge_playbook({})
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert main_pid(host) == pid
    seen = set()
    for _ in range(15):
        wait_for_bucket()
        seen |= set(upstream_hosts(client, edge_ip, 4))
        if seen == API_HOSTS:
            break
    assert seen == API_HOSTS, seen
