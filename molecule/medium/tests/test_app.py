"""The application tier end to end, over the scenario's network.

Requests to the API go from medium-edge with the edge's client certificate,
the only one the API accepts (mutual TLS); those to the worker health
sidecars from medium-redis (in matcraft_monitoring, which the firewall lets
reach them). medium-db is an outsider for those ports. Tests run in file order, and this file before
test_medium.py (whose upgrades move the release); the recovery from a crash
loop (which runs the app playbook again) comes last.
"""

import base64
import json
import os
import re
import subprocess
import time

import yaml

from urllib.parse import quote

from helpers import address_of, assert_unit_running, curl_json, journal, peer, probe_tcp, wait_for

testinfra_hosts = ["medium-redis"]

API_HOSTS = ("medium-api1", "medium-api2")
WORKER_HOSTS = ("medium-worker1", "medium-worker2")
WORKER_UNITS = ("matcraft-worker@default", "matcraft-worker@gpu")
SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO_VARS = yaml.safe_load(open(os.path.join(SCENARIO_DIR, "group_vars", "all.yml")))
_ADDRESSES = {}


def ip(name):
    if name not in _ADDRESSES:
        _ADDRESSES[name] = address_of(peer(name))
    return _ADDRESSES[name]


EDGE = "medium-edge"
EDGE_CA = "/etc/matcraft/pki/ca.crt"
EDGE_CERT = "/etc/matcraft/edge-client/client.crt"
EDGE_KEY = "/etc/matcraft/edge-client/client.key"
EDGE_CLIENT = ("--cacert", EDGE_CA, "--cert", EDGE_CERT, "--key", EDGE_KEY)
ROLLING_CLIENT_ENV = "-E ROLLING_CLIENT_CA=%s -E ROLLING_CLIENT_CERT=%s -E ROLLING_CLIENT_KEY=%s " % (
    EDGE_CA, EDGE_CERT, EDGE_KEY)


def http(client, method, url, body=None, timeout=10):
    """(status, parsed JSON or text) of a request sent with curl: from the client host, but from
    the edge host with its client certificate when the URL is the API's (api())."""
    if url.startswith("https://") and ":8000/" in url:
        return curl_json(peer(EDGE), method, url, body, timeout, EDGE_CLIENT)
    return curl_json(client, method, url, body, timeout)


def api(name, path=""):
    # HTTPS with the host's pki certificate, for the edge's client certificate only (http()).
    return "https://%s:8000%s" % (ip(name), path)


def sidecar(name, path="/health"):
    return "http://%s:9808%s" % (ip(name), path)


def post_job(client, seconds, queue="default", via="medium-api1"):
    status, body = http(client, "POST", api(via, "/v1/jobs"), {"seconds": seconds, "queue": queue})
    assert status == 202, body
    return body["id"]


def job(client, job_id, via="medium-api2"):
    status, body = http(client, "GET", api(via, "/v1/jobs/%d" % job_id))
    assert status == 200, body
    return body


def wait_job_done(client, job_id, timeout):
    return wait_for("job %s done" % job_id,
                    lambda: (lambda j: j if j["state"] in ("done", "failed") else None)(job(client, job_id)), timeout)


# --------------------------------------------------------------------------- deployment


def test_release_layout_and_environment_file():
    for name in API_HOSTS + WORKER_HOSTS:
        node = peer(name)
        current = node.file("/opt/matcraft/current")
        assert current.is_symlink and current.linked_to == "/opt/matcraft/releases/1.0.0", name
        assert node.file("/opt/matcraft/releases/1.0.0/venv/bin/python").exists
        env = node.file("/etc/matcraft/matcraft.env")
        assert (env.user, env.group, env.mode) == ("root", "matcraft", 0o640), name
        content = node.run("cat /etc/matcraft/matcraft.env").stdout
        # No secret in the file: verify-full TLS to the database, the password in libpq's
        # password file (a credential), escaped for its format.
        assert SCENARIO_VARS["matcraft_db_password"] not in content
        assert quote(SCENARIO_VARS["matcraft_db_password"], safe="") not in content
        assert "sslmode=verify-full&sslrootcert=/etc/matcraft/pki/ca.crt" in content
        assert not re.search(r"^(REDIS_URL|SECRET_KEY)=", content, re.M), name
        pgpass = node.run("systemd-creds decrypt --name=pgpass /etc/matcraft/credentials/pgpass.cred -").stdout
        escaped = SCENARIO_VARS["matcraft_db_password"].replace("\\", "\\\\").replace(":", "\\:")
        assert pgpass.startswith("*:*:matcraft:") and pgpass.endswith(":" + escaped + "\n"), name
        # TLS to Redis, because the Redis host offers it (the URL is a credential too).
        url = node.run("systemd-creds decrypt --name=redis-url /etc/matcraft/credentials/redis-url.cred -").stdout
        assert url == ("rediss://matcraft:" + quote(SCENARIO_VARS["matcraft_redis_password"], safe="") + "@" + ip("medium-redis")
                       + ":6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/matcraft/pki/ca.crt&ssl_check_hostname=true"), name
        assert 'MATCRAFT_ENV="production"' in content and 'CORS_ORIGINS="https://matcraft.example.org"' in content
        user = node.user("matcraft")
        assert user.shell == "/usr/sbin/nologin" and user.group == "matcraft"
        # The code is not writable by the service user.
        assert node.file("/opt/matcraft/releases/1.0.0/venv").user == "root"


def test_air_gapped_host_installed_from_its_wheelhouse_only():
    """medium-worker2 (app_install_source: wheelhouse) has the wheelhouse in its release and its
    virtualenv holds exactly the versions of those wheels: pip ran with --no-index."""
    node = peer("medium-worker2")
    record = json.loads(node.file("/opt/matcraft/releases/1.0.0/.release.json").content_string)
    assert record["source"] == "wheelhouse" and record["wheelhouse"], record
    assert "matcraft_contract-1.0.0-py3-none-any.whl" in record["wheelhouse"]
    assert not node.file("/opt/matcraft/releases/1.0.0/wheels").exists
    listed = node.run("/opt/matcraft/releases/1.0.0/venv/bin/python -m pip list --format=json "
                      "--disable-pip-version-check --exclude pip --exclude setuptools")
    assert listed.rc == 0, listed.stderr
    def canonical(name):
        return name.lower().replace("_", "-").replace(".", "-")
    wheels = {canonical(w.split("-")[0]): w.split("-")[1] for w in record["wheelhouse"]}
    for package in json.loads(listed.stdout):
        name = canonical(package["name"])
        assert wheels.get(name) == package["version"], "%s %s is not from the wheelhouse" % (name, package["version"])


def test_units_run_hardened_as_the_service_user():
    checks = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure", "User": "matcraft", "KillMode": "mixed",
    }
    units = [(n, "matcraft-api") for n in API_HOSTS]
    units += [(n, u) for n in WORKER_HOSTS for u in WORKER_UNITS + ("matcraft-worker-health",)]
    for name, unit in units:
        node = peer(name)
        assert_unit_running(node, unit)
        props = node.run("systemctl show %s -p %s", unit, ",".join(checks) + ",StartLimitBurst,MainPID").stdout
        values = dict(line.split("=", 1) for line in props.splitlines())
        for key, want in checks.items():
            if key == "KillMode" and unit == "matcraft-worker-health":
                continue
            assert values[key] == want, (name, unit, key, values[key])
        assert int(values["StartLimitBurst"]) > 0
        owner = node.run("ps -o user= -p %s", values["MainPID"]).stdout.strip()
        assert owner == "matcraft", (name, unit, owner)
    worker_show = peer("medium-worker1").run("systemctl show matcraft-worker@default -p TimeoutStopUSec,KillSignal").stdout
    assert "TimeoutStopUSec=1h 1min" in worker_show and "KillSignal=15" in worker_show


def test_api_listens_on_the_private_address_with_two_workers():
    for name in API_HOSTS:
        node = peer(name)
        listeners = node.run("ss -ltnH 'sport = :8000'").stdout.split()
        assert "%s:8000" % ip(name) in listeners, listeners
        workers = node.run("pgrep -u matcraft -f 'gunicorn.*materia.api:app' -c").stdout.strip()
        assert workers == "3", "master + 2 workers expected on %s, got %s" % (name, workers)


def test_api_serves_https_with_its_pki_certificate(host):
    """TLS on the API port: the certificate verifies against the internal CA for the host's
    address and for the shared name the edge checks; plain HTTP gets no HTTP answer."""
    edge = peer(EDGE)
    for name in API_HOSTS:
        for target in (ip(name), "api.matcraft.internal"):
            check = edge.run("curl -sS --max-time 10 " + " ".join(EDGE_CLIENT) + " --resolve api.matcraft.internal:8000:%s "
                             "-o /dev/null -w '%%{http_code}' https://%s:8000/health", ip(name), target)
            assert check.rc == 0 and check.stdout == "200", (name, target, check.stdout, check.stderr)
        plain = edge.run("curl -sS --max-time 10 -o /dev/null -w '%%{http_code}' http://%s:8000/health", ip(name))
        assert plain.stdout in ("000", "400"), "plain HTTP answered on %s: %s" % (name, plain.stdout)
        issuer = edge.run("openssl s_client -connect %s:8000 -CAfile %s -brief </dev/null 2>&1", ip(name), EDGE_CA).stdout
        assert "Verification: OK" in issuer, issuer


def test_the_api_takes_the_edge_s_certificate_only():
    """Mutual TLS (hardening item 5) on both API hosts: the edge host without a certificate, or
    with its host certificate of the internal CA, is refused in the TLS handshake; so is an API
    host asking another's (were the firewall open) or its own port; the edge's certificate of the
    edge client CA gets 200."""
    edge = peer(EDGE)
    # Whole command lines (run() without arguments: no %-formatting, no quoting of the options).
    base = "curl -sS --max-time 10 --cacert %s -o /dev/null -w '%%{http_code}' " % EDGE_CA
    for name in API_HOSTS:
        url = "https://%s:8000/health" % ip(name)
        attempts = {
            "edge, no certificate": edge.run(base + url),
            "edge, its host certificate": edge.run(
                base + "--cert /etc/matcraft/pki/host.crt --key /etc/matcraft/pki/host.key " + url),
            "the API host itself, its host certificate": peer(name).run(
                base + "--cert /etc/matcraft/pki/host.crt --key /etc/matcraft/pki/host.key " + url),
        }
        # No HTTP answer at all (35 handshake failed, 52 empty reply, 56 reset, by TLS 1.3's timing).
        for what, run in attempts.items():
            assert run.stdout == "000" and run.rc in (35, 52, 56), (name, what, run.rc, run.stdout, run.stderr)
        answered = edge.run(base + " ".join(EDGE_CLIENT) + " " + url)
        assert answered.rc == 0 and answered.stdout == "200", (name, answered.stdout, answered.stderr)
    for name in API_HOSTS + WORKER_HOSTS + ("medium-db", "medium-redis", "medium-replica"):
        assert not peer(name).file(EDGE_CERT).exists, "%s holds an edge client certificate" % name


def test_migrations_ran_once_on_the_designated_host():
    def upgrades(name):
        return peer(name).run("journalctl --no-pager -o cat | grep -c 'venv/bin/materia db upgrade'").stdout.strip()
    assert upgrades("medium-api1") != "0", "the migration host medium-api1 never ran the migrations"
    for name in ("medium-api2",) + WORKER_HOSTS:
        assert upgrades(name) == "0", "%s ran the migrations" % name
    current = peer("medium-api1").run("matcraft-manage materia db current")
    assert current.rc == 0 and "(head)" in current.stdout, current.stderr
    # They ran as the database owner, whose client certificate only the migration host has.
    assert peer("medium-api1").file("/etc/matcraft/database-owner/client.key").exists
    for name in ("medium-api2",) + WORKER_HOSTS:
        assert not peer(name).file("/etc/matcraft/database-owner").exists, name
    refused = peer("medium-api2").run("matcraft-manage --database-owner materia db current")
    assert refused.rc == 2 and "run this on the API's migration host" in refused.stderr, refused.stderr


# --------------------------------------------------------------------------- network and health


def test_manage_commands_run_in_the_services_sandbox():
    """matcraft-manage (migrations and operators' commands) runs its command as the service user
    in the sandbox of the API and worker units: no privileges to gain, no capabilities, the
    system-service syscall set, only IP and Unix sockets, a read-only system."""
    probe = "\n".join([
        "import os, socket",
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))",
        "print('|'.join(status[k].strip() for k in ('NoNewPrivs', 'Seccomp', 'CapBnd', 'CapEff')))",
        "try:",
        "    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)",
        "    print('netlink')",
        "except OSError:",
        "    print('no-netlink')",
        "try:",
        "    open('/etc/matcraft/probe', 'w')",
        "    print('wrote-etc')",
        "except OSError:",
        "    print('read-only-etc')",
        "print(os.getuid() != 0)",
    ])
    run = peer("medium-api1").run("matcraft-manage python -c %s", probe)
    assert run.rc == 0, run.stderr
    assert run.stdout.split() == ["1|2|0000000000000000|0000000000000000", "no-netlink", "read-only-etc", "True"], \
        run.stdout


def test_the_access_log_keeps_no_query_string(host):
    """A token in a query string does not reach the API's access log (uvicorn's access lines
    pass through a filter in the gunicorn settings); the path does."""
    since = peer("medium-api1").run("date +%s").stdout.strip()
    status, _ = http(host, "GET", api("medium-api1", "/health?token=QueryStringMarker7"))
    assert status == 200
    lines = wait_for("the request in the access log", lambda: [
        line for line in peer("medium-api1").run("journalctl -u matcraft-api --since @%s --no-pager -o cat", since)
        .stdout.splitlines() if '"GET /health' in line] or None, 30)
    assert not [line for line in lines if "QueryStringMarker7" in line or "?" in line], lines


def test_firewall_lets_the_edge_and_monitoring_in_and_keeps_outsiders_out(host):
    """The API port is for the edge only (the monitoring host checks the API through the edge);
    the sidecars are for the monitoring host."""
    outsider = peer("medium-db")
    for name in API_HOSTS:
        assert probe_tcp(peer(EDGE), ip(name), 8000)
        assert not probe_tcp(host, ip(name), 8000), "the monitoring host reached the API on " + name
        assert not probe_tcp(outsider, ip(name), 8000), "medium-db reached the API on " + name
    for name in WORKER_HOSTS:
        assert probe_tcp(host, ip(name), 9808)
        assert not probe_tcp(outsider, ip(name), 9808), "medium-db reached the sidecar on " + name


def test_health_is_200_on_each_api_host(host):
    for name in API_HOSTS:
        status, body = http(host, "GET", api(name, "/health"))
        assert status == 200 and body == {"status": "ok"}, (name, status, body)


def test_health_follows_the_database(host):
    database = peer("medium-db")
    stop = database.run("systemctl stop postgresql@15-main")
    assert stop.rc == 0, stop.stderr
    try:
        for name in API_HOSTS:
            status, body = wait_for(
                "503 from %s while PostgreSQL is stopped" % name,
                lambda n=name: (lambda r: r if r[0] == 503 else None)(http(host, "GET", api(n, "/health"))), 30)
            assert body["failed"] == ["database"], body
    finally:
        start = database.run("systemctl start postgresql@15-main")
    assert start.rc == 0, start.stderr
    for name in API_HOSTS:
        wait_for("200 from %s after PostgreSQL is back" % name,
                 lambda n=name: http(host, "GET", api(n, "/health"))[0] == 200, 60)


# --------------------------------------------------------------------------- jobs


def test_job_runs_on_a_worker_and_its_result_is_read_back(host):
    job_id = post_job(host, 0.5, via="medium-api1")
    done = wait_job_done(host, job_id, 90)
    assert done["state"] == "done", done
    assert done["result"]["job_id"] == job_id
    assert done["worker"] in WORKER_HOSTS and done["worker_node"].startswith("default@"), done


def test_gpu_queue_goes_to_the_gpu_group(host):
    job_id = post_job(host, 0.2, queue="gpu_training", via="medium-api2")
    done = wait_job_done(host, job_id, 90)
    assert done["state"] == "done" and done["worker_node"].startswith("gpu@"), done


def test_job_of_a_killed_worker_completes(host):
    """A 12 s job whose worker gets SIGKILL mid-run is redelivered and completes (late ack), no
    sooner than the worker-crash bound the inventory chose (worker_visibility_timeout: 15 s after its
    delivery), which the running worker has in its environment."""
    job_id = post_job(host, 12)
    delivered = time.monotonic()
    running = wait_for("job %s running" % job_id,
                       lambda: (lambda j: j if j["state"] == "running" else None)(job(host, job_id)), 60, 0.5)
    time.sleep(2)
    worker = peer(running["worker"])
    group = running["worker_node"].split("@")[0]
    unit = "matcraft-worker@%s" % group
    pid = worker.run("systemctl show --property MainPID --value %s", unit).stdout.strip()
    environ = worker.run("tr '\\0' '\\n' < /proc/%s/environ", pid).stdout.splitlines()
    assert "CELERY_VISIBILITY_TIMEOUT=15" in environ, "the running worker does not have the bound: %r" % [
        line for line in environ if line.startswith("CELERY_")]
    kill = worker.run("systemctl kill --signal=SIGKILL %s", unit)
    assert kill.rc == 0, kill.stderr
    done = wait_job_done(host, job_id, 180)
    assert done["state"] == "done", done
    assert done["attempts"] >= 2, "the job was not run again after the kill: %r" % done
    # Run again once the bound had passed (12 s of work after the redelivery), not sooner.
    assert time.monotonic() - delivered >= 15 + 12 - 1, "redelivered before the 15 s bound: %r" % done
    # systemd restarted the killed worker.
    wait_for("%s running again on %s" % (unit, running["worker"]),
             lambda: worker.run("systemctl is-active %s", unit).stdout.strip() == "active", 60)
    wait_for("sidecar of %s healthy again" % running["worker"],
             lambda: http(host, "GET", sidecar(running["worker"]))[0] == 200, 90, 2)


def test_restart_drains_the_running_job(host):
    """A restart is a warm shutdown: the job the worker is running finishes there, once, before it stops."""
    job_id = post_job(host, 6)
    running = wait_for("job %s running" % job_id,
                       lambda: (lambda j: j if j["state"] == "running" else None)(job(host, job_id)), 60, 0.5)
    worker = peer(running["worker"])
    unit = "matcraft-worker@%s" % running["worker_node"].split("@")[0]
    old_pid = worker.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
    restart = worker.run("systemctl restart %s", unit)  # returns once the old worker has stopped
    assert restart.rc == 0, restart.stderr
    done = job(host, job_id)
    assert done["state"] == "done", "the restart did not wait for the running job: %r" % done
    assert done["attempts"] == 1 and done["worker"] == running["worker"], done
    assert worker.run("systemctl show -p MainPID --value %s", unit).stdout.strip() != old_pid
    wait_for("sidecar of %s healthy after the restart" % running["worker"],
             lambda: http(host, "GET", sidecar(running["worker"]))[0] == 200, 90, 2)


def test_queued_jobs_survive_a_sigkill_of_redis(host):
    """Jobs waiting in the broker's queue (no worker consumes it) survive Redis being killed with
    SIGKILL, as the OOM killer does: the AOF (appendfsync everysec) has them, systemd restarts Redis,
    and each job runs once when the workers are back."""
    redis = peer("medium-redis")
    units = {name: peer(name) for name in WORKER_HOSTS}
    for worker in units.values():
        stop = worker.run("systemctl stop matcraft-worker@default")
        assert stop.rc == 0, stop.stderr
    try:
        queued = [post_job(host, 0.2, via=API_HOSTS[n % 2]) for n in range(6)]
        time.sleep(2.5)  # past one fsync of the AOF (everysec)
        assert all(job(host, job_id)["state"] == "queued" for job_id in queued)
        old_pid = redis.run("systemctl show --property MainPID --value redis-server").stdout.strip()
        kill = redis.run("systemctl kill --signal=SIGKILL redis-server")
        assert kill.rc == 0, kill.stderr
        wait_for("Redis restarted by systemd after the SIGKILL",
                 lambda: redis.run("systemctl show --property MainPID --value redis-server").stdout.strip()
                 not in ("", "0", old_pid)
                 and redis.run("/usr/local/sbin/matcraft-redis-cli PING").stdout.strip() == "PONG", 60, 0.5)
    finally:
        for worker in units.values():
            start = worker.run("systemctl start matcraft-worker@default")
            assert start.rc == 0, start.stderr
    for job_id in queued:
        done = wait_job_done(host, job_id, 120)
        assert done["state"] == "done" and done["attempts"] == 1, done
    for name in WORKER_HOSTS:
        wait_for("sidecar of %s healthy after the Redis restart" % name,
                 lambda: http(host, "GET", sidecar(name))[0] == 200, 90, 2)


# Each Redis client of the application, built from the service environment as the services
# build it: redis-py (sync and asyncio, as the API uses it), and the Celery app of the workers
# and the health sidecar (kombu's broker connection, the redis result backend).
REDIS_CLIENTS_PROBE = "\n".join([
    "import asyncio, os",
    "import redis, redis.asyncio",
    "from materia.tasks import app",
    "url = os.environ['REDIS_URL']",
    "def outcome(check):",
    "    try:",
    "        check()",
    "        return 'accepted'",
    "    except Exception as exc:",
    "        text = ' '.join(repr(e) for e in (exc, exc.__cause__, exc.__context__))",
    "        return 'refused-certificate' if 'certificate verify failed' in text.lower() else 'error:' + text[:300]",
    "print('redis-py', outcome(lambda: redis.Redis.from_url(url, socket_timeout=5).ping()))",
    "print('redis-asyncio', outcome(lambda: asyncio.run(redis.asyncio.Redis.from_url(url, socket_timeout=5).ping())))",
    "print('celery-broker', outcome(lambda: app.connection_for_write().ensure_connection(max_retries=1, timeout=5)))",
    "print('celery-backend', outcome(lambda: app.backend.client.ping()))",
])
REDIS_CLIENTS = ("redis-py", "redis-asyncio", "celery-broker", "celery-backend")


def redis_clients_outcome(name):
    run = peer(name).run("matcraft-manage python -c %s", REDIS_CLIENTS_PROBE)
    assert run.rc == 0, run.stdout + run.stderr
    return dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in REDIS_CLIENTS)


def test_every_redis_client_refuses_a_server_it_should_not_trust(host, tmp_path):
    """A Redis answering on the broker's address (medium-redis:6380, where the real one was stopped)
    with a certificate of another CA, then with one of the internal CA for another name: every
    client of the API and worker hosts refuses it for its certificate, while each accepts the
    real server before and after. The impostor accepts any password, so only the certificate
    check can refuse it."""
    redis = peer("medium-redis")
    address = ip("medium-redis")
    for name in ("medium-api1", "medium-worker1"):
        assert redis_clients_outcome(name) == {client: "accepted" for client in REDIS_CLIENTS}, name
    scratch = "/var/tmp/rogue-redis"
    other_ca = ("mkdir -p {d} && cd {d} && "
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=rogue-ca "
                "-keyout other-ca.key -out other-ca.crt 2>/dev/null && "
                "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=medium-redis "
                "-keyout rogue.key -out rogue.csr 2>/dev/null && "
                "printf 'subjectAltName=IP:%s,DNS:medium-redis\\n' > san.ext && "
                "openssl x509 -req -in rogue.csr -CA other-ca.crt -CAkey other-ca.key -CAcreateserial -days 1 "
                "-extfile san.ext -out other-ca-rogue.crt 2>/dev/null && chmod 0644 rogue.key").format(d=scratch)
    made = redis.run(other_ca, address)
    assert made.rc == 0, made.stderr
    # The same key, certified by the internal CA itself, for an address that is not the broker's.
    csr = tmp_path / "rogue.csr"
    csr.write_text(redis.file(scratch + "/rogue.csr").content_string)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:203.0.113.7,DNS:not-redis.test\n")
    ca_dir = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "pki")
    signed = subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", os.path.join(ca_dir, "ca.crt"),
         "-CAkey", os.path.join(ca_dir, "ca.key"), "-passin", "env:ROGUE_TEST_CA_PASSPHRASE", "-CAcreateserial",
         "-CAserial", str(tmp_path / "ca.srl"), "-days", "1", "-extfile", str(tmp_path / "san.ext")],
        capture_output=True, text=True, env=dict(os.environ, ROGUE_TEST_CA_PASSPHRASE=SCENARIO_VARS["matcraft_pki_ca_passphrase"]))
    assert signed.returncode == 0, signed.stderr
    assert redis.run("printf '%%s' %s > %s/wrong-name-rogue.crt", signed.stdout, scratch).rc == 0
    stop = redis.run("systemctl stop redis-server")
    assert stop.rc == 0, stop.stderr
    try:
        for certificate in ("other-ca-rogue.crt", "wrong-name-rogue.crt"):
            # Any user, any password: only the clients' certificate check stands in the way.
            start = redis.run(
                "systemd-run --unit=rogue-redis --property=RuntimeMaxSec=120 /usr/bin/redis-server --port 0 "
                "--tls-port 6380 --bind %s --tls-cert-file %s/%s --tls-key-file %s/rogue.key "
                "--tls-ca-cert-file %s/other-ca.crt --tls-auth-clients no --save '' --appendonly no "
                "--user matcraft on nopass '~*' '&*' '+@all'",
                address, scratch, certificate, scratch, scratch)
            assert start.rc == 0, start.stderr
            try:
                wait_for("the impostor listening on %s:6380" % address, lambda: probe_tcp(redis, address, 6380), 30, 0.5)
                for name in ("medium-api1", "medium-worker1"):
                    outcome = redis_clients_outcome(name)
                    assert outcome == {client: "refused-certificate" for client in REDIS_CLIENTS}, \
                        (certificate, name, outcome)
            finally:
                redis.run("systemctl stop rogue-redis")
    finally:
        start = redis.run("systemctl start redis-server")
        assert start.rc == 0, start.stderr
        redis.run("rm -rf %s", scratch)
    wait_for("the real Redis accepted again", lambda: redis_clients_outcome("medium-worker1") == {
        client: "accepted" for client in REDIS_CLIENTS}, 60, 2)
    for name in WORKER_HOSTS:
        wait_for("sidecar of %s healthy with the real Redis back" % name,
                 lambda: http(host, "GET", sidecar(name))[0] == 200, 90, 2)


def test_sidecar_reports_a_stopped_worker(host):
    worker = peer("medium-worker1")
    status, body = http(host, "GET", sidecar("medium-worker1"))
    assert status == 200 and body["status"] == "ok", body
    metrics = http(host, "GET", sidecar("medium-worker1", "/metrics"))[1]
    assert "matcraft_worker_up" in metrics
    stop = worker.run("systemctl stop matcraft-worker@default")
    assert stop.rc == 0, stop.stderr
    try:
        status, body = wait_for(
            "503 from the sidecar while the worker is stopped",
            lambda: (lambda r: r if r[0] == 503 else None)(http(host, "GET", sidecar("medium-worker1"))), 30)
        assert "node:default@medium-worker1" in body["failed"], body
    finally:
        start = worker.run("systemctl start matcraft-worker@default")
    assert start.rc == 0, start.stderr
    wait_for("200 from the sidecar after the worker is back",
             lambda: http(host, "GET", sidecar("medium-worker1"))[0] == 200, 90, 2)


# --------------------------------------------------------------------------- restarts and releases


def test_rolling_restart_fails_no_request(host):
    """300 requests over ~30 s through both API hosts while each restarts in turn: none fails. Only
    a connection refused (nothing sent yet) is tried again on the other host, as the edge does; a
    reset, a timeout or an error status fails the request. The number of such retries is in
    .cache/results/medium-rolling-restart.json."""
    host = peer(EDGE)  # the API answers the edge's client certificate only
    script = open(os.path.join(SCENARIO_DIR, "files", "rolling_client.py"), "rb").read()
    host.run("rm -f /var/tmp/rolling.json")
    put = host.run("echo %s | base64 -d > /var/tmp/rolling_client.py", base64.b64encode(script).decode())
    assert put.rc == 0, put.stderr
    pids = {n: peer(n).run("systemctl show -p MainPID --value matcraft-api").stdout.strip() for n in API_HOSTS}
    host.run("systemctl reset-failed medium-rolling-client")
    start = host.run(
        "systemd-run --unit=medium-rolling-client --property=RuntimeMaxSec=300 " + ROLLING_CLIENT_ENV +
        "python3 /var/tmp/rolling_client.py /var/tmp/rolling.json 300 0.1 %s %s",
        api("medium-api1", "/health"), api("medium-api2", "/health"))
    assert start.rc == 0, start.stderr
    time.sleep(3)
    for name in API_HOSTS:
        restart = peer(name).run("systemctl restart matcraft-api")
        assert restart.rc == 0, "%s: %s\n%s" % (name, restart.stderr, journal(peer(name), "matcraft-api"))
        time.sleep(2)
    result = wait_for("the client's summary",
                      lambda: host.file("/var/tmp/rolling.json").exists and host.file("/var/tmp/rolling.json").content_string,
                      240, 2)
    summary = json.loads(result)
    for name in API_HOSTS:
        new_pid = peer(name).run("systemctl show -p MainPID --value matcraft-api").stdout.strip()
        assert new_pid not in ("0", pids[name]), "%s was not restarted" % name
    results = os.path.join(os.path.dirname(os.path.dirname(SCENARIO_DIR)), ".cache", "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "medium-rolling-restart.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    assert summary["sent"] == 300 and summary["failed"] == 0 and summary["ok"] == 300, summary


def test_graceful_reload_keeps_the_master_and_loses_no_request(host):
    """`systemctl reload matcraft-api` (HUP): new gunicorn workers replace the old ones under
    the same master while requests keep flowing to that host alone (no retry elsewhere)."""
    name = "medium-api1"
    node = peer(name)
    master = node.run("systemctl show -p MainPID --value matcraft-api").stdout.strip()
    before = set(node.run("pgrep -P %s", master).stdout.split())
    host = peer(EDGE)  # the API answers the edge's client certificate only
    script = open(os.path.join(SCENARIO_DIR, "files", "rolling_client.py"), "rb").read()
    host.run("rm -f /var/tmp/reload.json")
    host.run("echo %s | base64 -d > /var/tmp/rolling_client.py", base64.b64encode(script).decode())
    host.run("systemctl reset-failed medium-reload-client")
    start = host.run("systemd-run --unit=medium-reload-client --property=RuntimeMaxSec=120 " + ROLLING_CLIENT_ENV +
                     "python3 /var/tmp/rolling_client.py /var/tmp/reload.json 150 0.1 %s", api(name, "/health"))
    assert start.rc == 0, start.stderr
    time.sleep(3)
    reload = node.run("systemctl reload matcraft-api")
    assert reload.rc == 0, reload.stderr
    result = wait_for("the client's summary",
                      lambda: host.file("/var/tmp/reload.json").exists and host.file("/var/tmp/reload.json").content_string,
                      120, 2)
    summary = json.loads(result)
    assert node.run("systemctl show -p MainPID --value matcraft-api").stdout.strip() == master
    after = wait_for("two new workers", lambda: (lambda p: p if len(p) == 2 else None)(
        set(node.run("pgrep -P %s", master).stdout.split())), 30)
    assert not before & after, "the old workers are still there: %s %s" % (before, after)
    assert summary["sent"] == 150 and summary["ok"] == 150 and summary["refused_retries"] == 0, summary


def run_app_playbook(*extra):
    """matcraft.deploy.app again (the baseline skipped: it does not change with the
    application's settings, and its converge and idempotence ran before verify), finished."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    cmd = ["ansible-playbook", "-i", inventory, "matcraft.deploy.app",
           "-e", json.dumps({"matcraft_baseline_done": True})] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=1800)


def app_playbook(*extra):
    """Run matcraft.deploy.app again and require it to pass."""
    run = run_app_playbook(*extra)
    assert run.returncode == 0, "the app playbook %s failed:\n%s\n%s" % (extra, run.stdout[-12000:], run.stderr[-3000:])
    return run.stdout


def task_results(output, task):
    """The result lines of one task in an ansible-playbook output."""
    block = output.split("TASK [%s" % task, 1)[1]
    return block.split("TASK [", 1)[0]


def test_mutual_tls_waits_for_an_edge_that_does_not_present_its_certificate():
    """An edge from before mutual TLS (its nginx site does not present the edge's client
    certificate): the app run keeps the API without mutual TLS and says so, so that no request
    through that edge is refused; once the edge presents it, the next run turns it on."""
    edge, api1 = peer(EDGE), peer("medium-api1")
    site, saved = "/etc/nginx/conf.d/matcraft.conf", "/root/matcraft.conf.before-mtls-test"
    gunicorn = "/etc/matcraft/gunicorn-api.conf.py"
    bare = "curl -sS --max-time 10 --cacert %s -o /dev/null -w '%%{http_code}' https://%s:8000/health" % (
        EDGE_CA, ip("medium-api1"))
    old = edge.run("cp %s %s && sed -i '/proxy_ssl_certificate/d' %s && nginx -t -q && systemctl reload nginx",
                   site, saved, site)
    assert old.rc == 0, old.stderr
    try:
        output = app_playbook("--limit", "medium-api1")
        assert re.search(r"stays\s+off\s+on\s+this\s+run", output), output[-4000:]
        assert "cert_reqs" not in api1.file(gunicorn).content_string
        answered = wait_for("medium-api1 answering without a client certificate",
                            lambda: edge.run(bare).stdout == "200", 60, 2)
        assert answered
    finally:
        back = edge.run("cp %s %s && nginx -t -q && systemctl reload nginx", saved, site)
        assert back.rc == 0, back.stderr
    output = app_playbook("--limit", "medium-api1")
    assert not re.search(r"stays\s+off\s+on\s+this\s+run", output), output[-4000:]
    assert "cert_reqs = 2" in api1.file(gunicorn).content_string
    wait_for("medium-api1 requiring the edge's certificate again", lambda: edge.run(bare).stdout == "000", 60, 2)
    assert http(None, "GET", api("medium-api1", "/health"))[0] == 200


def test_the_run_with_the_fix_starts_units_left_at_their_start_limit(host):
    # Wrong settings make every worker (an option Celery does not know) and then the API
    # (an address its hosts do not have) exit at start. systemd's restarts end at the
    # units' start limit (5 starts in 300 s), after which it refuses every start, manual
    # ones too, for the rest of the 300 s. Two runs: a run stops at the first play whose
    # hosts all fail, so the workers' play must pass the API's first. Each run is limited
    # to the hosts it is about (preflight reads the others' facts), which keeps the
    # test to the units' part of the app playbook.
    def wait_until_stopped_at_the_limit(units):
        # Every unit is waited for: one still restarting when the next run starts
        # could reach its limit between that run's reset and its start.
        for name, unit in units:
            wait_for("%s on %s stopped at its start limit" % (unit, name),
                     lambda name=name, unit=unit: peer(name).run("systemctl is-failed --quiet %s", unit).rc == 0, 180, 2)
            assert "Start request repeated too quickly" in journal(peer(name), unit, 200), (name, unit)

    wrong_worker = {"worker_extra_args": ["--no-such-option"], "worker_health_retries": 3}
    failed = run_app_playbook("-e", json.dumps(wrong_worker), "--limit", ",".join(WORKER_HOSTS))
    assert failed.returncode != 0, "the run with a wrong worker option passed:\n" + failed.stdout[-4000:]
    wait_until_stopped_at_the_limit([(name, unit) for name in WORKER_HOSTS for unit in WORKER_UNITS])
    wrong_api = dict(wrong_worker, api_bind_address="192.0.2.10", api_health_retries=3)
    failed = run_app_playbook("-e", json.dumps(wrong_api), "--limit", ",".join(API_HOSTS))
    assert failed.returncode != 0, "the run with a wrong API address passed:\n" + failed.stdout[-4000:]
    wait_until_stopped_at_the_limit([(name, "matcraft-api") for name in API_HOSTS])
    units = [(name, "matcraft-api") for name in API_HOSTS] + \
        [(name, unit) for name in WORKER_HOSTS for unit in WORKER_UNITS]

    # The run with the settings put back: the units' files are as they were when
    # they last ran, so no restart is due; the role resets the failed units and
    # starts them, within the 300 s in which systemd would refuse a plain start.
    output = app_playbook("--limit", ",".join(API_HOSTS + WORKER_HOSTS))
    resets = task_results(output, "matcraft.deploy.api : Let the API start again")
    for name in API_HOSTS:
        assert "changed: [%s]" % name in resets, resets
    resets = task_results(output, "matcraft.deploy.worker : Let the workers and the sidecar start again")
    for name in WORKER_HOSTS:
        assert "changed: [%s]" % name in resets, resets
    for name, unit in units:
        assert_unit_running(peer(name), unit)
    for name in API_HOSTS:
        assert http(host, "GET", api(name, "/health"))[0] == 200
    for name in WORKER_HOSTS:
        assert http(host, "GET", sidecar(name))[0] == 200
    job_id = post_job(host, 0.2)
    assert wait_job_done(host, job_id, 90)["state"] == "done"
