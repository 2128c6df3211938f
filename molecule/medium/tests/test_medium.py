"""The medium tier: replica, and zero-downtime upgrades through the edge.

Runs after test_app.py (the application tier at release 1.0.0). The tests' client is medium-edge: it sends HTTPS requests to its own nginx
(https://matcraft.test at 127.0.0.1, certificate of the internal CA) and may
reach the API hosts on their port 8000 with its client certificate (the firewall
lets the edge in; the API takes the edge's certificate only).
Tests run in file order: 1.0.1 is rolled out, then a broken 1.0.2 stops at the
first API host, then 1.0.1 again restores everything.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from urllib.parse import quote

import yaml

import helpers
from helpers import address_of, peer, wait_for

testinfra_hosts = ["medium-edge"]

DOMAIN = "matcraft.test"
API_HOSTS = ("medium-api1", "medium-api2")
WORKER_HOSTS = ("medium-worker1", "medium-worker2")
SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIR = os.path.dirname(os.path.dirname(SCENARIO_DIR))
EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")
WHEEL_DIR = os.path.join(EPHEMERAL, "wheels")
SCENARIO_VARS = yaml.safe_load(open(os.path.join(SCENARIO_DIR, "group_vars", "all.yml")))
_ADDRESSES = {}
# The modification times of each host's release records after the rollout of 1.0.1.
_RELEASE_BUILT = {}


def ip(name):
    if name not in _ADDRESSES:
        _ADDRESSES[name] = address_of(peer(name))
    return _ADDRESSES[name]


def edge(host, method, path, body=None):
    """(status, headers text, body) of one request through the edge, sent on the edge host."""
    cmd = "curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt --resolve %s:443:127.0.0.1 -D /dev/stderr -X %s" % (
        DOMAIN, method)
    if body is not None:
        cmd += " -H 'Content-Type: application/json' --data %s" % json.dumps(json.dumps(body))
    result = host.run("%s -w '\\n%%{http_code}' https://%s%s" % (cmd, DOMAIN, path))
    text, _, status = result.stdout.rpartition("\n")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    return int(status or 0), result.stderr, payload


def api_version(host, name):
    result = host.run("curl -sS --max-time 10 --cacert /etc/matcraft/pki/ca.crt --cert /etc/matcraft/edge-client/client.crt "
                      "--key /etc/matcraft/edge-client/client.key https://%s:8000/", ip(name))
    assert result.rc == 0, (name, result.stderr)
    return json.loads(result.stdout)["version"]


def current_release(name):
    return peer(name).file("/opt/matcraft/current").linked_to


def worker_release(name):
    cmdline = peer(name).run(
        "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value matcraft-worker@default)/cmdline").stdout
    return cmdline.split("/venv/")[0]


def psql(name, query):
    result = peer(name).run("runuser -u postgres -- psql -XAtq -d matcraft -c %s", query)
    assert result.rc == 0, (name, query, result.stderr)
    return result.stdout.strip()


def build_release(version, broken=False):
    """Build the contract app's wheel for version (with a migration 0003; optionally an API that
    fails at import) into the scenario's wheel directory, where app_wheel_files looks."""
    wheel = os.path.join(WHEEL_DIR, "matcraft_contract-%s-py3-none-any.whl" % version)
    if os.path.exists(wheel):
        return wheel
    src = os.path.join(EPHEMERAL, "contract-%s" % version)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(os.path.join(PROJECT_DIR, "tests", "contract_app"), src,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    package = os.path.join(src, "src", "materia")
    with open(os.path.join(package, "__init__.py")) as handle:
        lines = handle.read().splitlines()
    lines = ['__version__ = "%s"' % version if line.startswith("__version__ = ") else line for line in lines]
    with open(os.path.join(package, "__init__.py"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(package, "migrations.py"), "a") as handle:
        handle.write(
            "\n\n# Added by the medium scenario: a release with a migration of its own.\n"
            "MIGRATIONS = MIGRATIONS + (Migration(revision='0003', description='upgrade probe',\n"
            "    statements=('CREATE TABLE upgrade_probe (id integer PRIMARY KEY, note text)',)),)\n"
            "HEAD = MIGRATIONS[-1].revision\n")
    if broken:
        with open(os.path.join(package, "api.py"), "a") as handle:
            handle.write("\nraise RuntimeError('release %s is broken on purpose (medium scenario)')\n" % version)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", WHEEL_DIR, src],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert os.path.exists(wheel), os.listdir(WHEEL_DIR)
    # The air-gapped worker's wheelhouse of this release: the dependencies of 1.0.0's
    # (converge.yml built it on a host like the targets) and the new wheel.
    first = os.path.join(EPHEMERAL, "wheelhouse-1.0.0")
    wheelhouse = os.path.join(EPHEMERAL, "wheelhouse-%s" % version)
    os.makedirs(wheelhouse, exist_ok=True)
    for name in os.listdir(first):
        if not name.startswith("matcraft_contract-"):
            shutil.copy2(os.path.join(first, name), wheelhouse)
    shutil.copy2(wheel, wheelhouse)
    return wheel


def upgrade(version, *extra, expect_success=True):
    """Run matcraft.deploy.upgrade with the scenario's inventory; return its output."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    env = os.environ.copy()
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(PROJECT_DIR, ".cache", "collections"))
    cmd = ["ansible-playbook", "-i", inventory, "matcraft.deploy.upgrade", "-e", "app_version=%s" % version] + list(extra)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2400)
    output = run.stdout + run.stderr
    # Kept for reading afterwards (where the run's time went: profile_tasks), as
    # pytest shows a passing test's output nowhere.
    results = os.path.join(PROJECT_DIR, ".cache", "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "medium-upgrade-%s-%d.log" % (version, time.time())), "w") as handle:
        handle.write(output)
    if expect_success:
        assert run.returncode == 0, "upgrade to %s failed:\n%s" % (version, output[-15000:])
    else:
        assert run.returncode != 0, "upgrade to %s succeeded but should have failed:\n%s" % (version, output[-6000:])
    return output


def Stream(host, name):  # noqa: N802 - used as the class it returns
    """A bounded stream of GETs through the edge (no retry), on the edge host."""
    return helpers.Stream(host, "medium-" + name, "127.0.0.1", DOMAIN, ["/v1/campaigns", "/health"])


def access_log(host, since):
    """Entries of the edge's JSON access log written after the epoch `since`."""
    entries = []
    for line in host.run("cat /var/log/nginx/matcraft_access.json").stdout.splitlines():
        entry = json.loads(line)
        if datetime.fromisoformat(entry["time_iso8601"]).timestamp() >= int(since):
            entries.append(entry)
    return entries


def api_restarts(name, since):
    """(stopping, started) epochs of every restart of matcraft-api on name after `since`."""
    lines = peer(name).run("journalctl -u matcraft-api --since @%s -o short-unix --no-pager", str(int(since))).stdout
    windows, stopping = [], None
    for line in lines.splitlines():
        stamp = line.split(" ", 1)[0]
        if "Stopping matcraft-api" in line:
            stopping = float(stamp)
        elif "Started matcraft-api" in line and stopping is not None:
            windows.append((stopping, float(stamp)))
            stopping = None
    return windows


def migration_runs(name, version):
    return int(peer(name).run(
        "journalctl --no-pager -o cat | grep -c 'Started run-.*/releases/%s/venv/bin/materia db upgrade'",
        version).stdout.strip() or 0)


# --------------------------------------------------------------------------- the tier as deployed


def test_edge_serves_the_api_over_https(host):
    status, headers, body = edge(host, "GET", "/health")
    assert status == 200 and body == {"status": "ok"}, (status, body)
    issuer = host.run("openssl s_client -connect 127.0.0.1:443 -servername %s -verify_hostname %s -brief "
                      "-CAfile /etc/matcraft/pki/ca.crt </dev/null 2>&1", DOMAIN, DOMAIN).stdout
    assert "Verification: OK" in issuer, issuer
    for name in API_HOSTS + WORKER_HOSTS:
        assert current_release(name) == "/opt/matcraft/releases/1.0.0", name


def test_rows_written_on_the_primary_are_read_on_the_replica(host):
    assert psql("medium-replica", "SELECT pg_is_in_recovery()") == "t"
    name = "replica-probe-%d" % time.time_ns()
    status, _, body = edge(host, "POST", "/v1/campaigns", {"name": name})
    assert status == 201, (status, body)
    wait_for("the campaign on the replica",
             lambda: psql("medium-replica", "SELECT count(*) FROM campaigns WHERE name = '%s'" % name) == "1", 30, 0.5)
    # The API reads campaigns from the replica (DATABASE_REPLICA_URL).
    status, headers, body = edge(host, "GET", "/v1/campaigns")
    assert status == 200 and "x-materia-read-source: replica" in headers.lower(), headers
    assert name in [campaign["name"] for campaign in body]
    refused = peer("medium-replica").run(
        "runuser -u postgres -- psql -XAtq -d matcraft -c %s", "INSERT INTO campaigns (name) VALUES ('x')")
    assert refused.rc != 0 and "read-only transaction" in refused.stderr, refused.stderr


def test_the_replica_streams_over_tls_through_its_slot():
    assert psql("medium-replica", "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    assert psql("medium-db", "SELECT active FROM pg_replication_slots WHERE slot_name = 'medium_replica'") == "t"
    # The walsender of the replica's connection uses TLS, from the replica's address.
    row = psql("medium-db", "SELECT host(r.client_addr) || '|' || r.application_name || '|' || s.ssl "
                            "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
    assert row == "%s|medium_replica|true" % ip("medium-replica")
    # Lag is observable on both sides.
    assert psql("medium-db", "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NOT NULL") == "1"


# --------------------------------------------------------------------------- upgrades


def test_the_edge_playbook_run_alone_changes_nothing():
    """matcraft.deploy.edge in a run of its own, on an edge host apart from the API hosts: preflight
    gathers every host's facts, so the upstream addresses (the API hosts') come out as in the
    converge and nothing changes."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    env = os.environ.copy()
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(PROJECT_DIR, ".cache", "collections"))
    run = subprocess.run(["ansible-playbook", "-i", inventory, "matcraft.deploy.edge"],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    recap = run.stdout[run.stdout.rindex("PLAY RECAP"):]
    assert "medium-edge" in recap and "changed=0" in recap.split("medium-edge")[1].splitlines()[0], recap
    for name in API_HOSTS:
        assert ip(name) in peer("medium-edge").check_output("cat /etc/nginx/conf.d/matcraft.conf"), name


def test_upgrade_rolls_out_with_zero_failed_requests(host):
    build_release("1.0.1")
    runs_before = {n: migration_runs(n, "1.0.1") for n in API_HOSTS + WORKER_HOSTS}
    since = time.time()
    # The rollout also changes the environment file (a marker variable) and runs with
    # --diff: no secret may appear in the output, raw or URL-encoded.
    extra_env = json.dumps({"app_env_extra": dict(SCENARIO_VARS["app_env_extra"], MATCRAFT_DIFF_MARKER="rollout")})
    with Stream(host, "upgrade-101") as stream:
        output = upgrade("1.0.1", "-e", extra_env, "--diff")
    summary = stream.summary()
    assert summary["failed"] == 0 and summary["sent"] >= 100 and summary["ok"] == summary["sent"], summary
    assert 'MATCRAFT_DIFF_MARKER="rollout"' in peer("medium-api1").run("cat /etc/matcraft/matcraft.env").stdout
    for variable in ("matcraft_db_password", "matcraft_redis_password", "matcraft_secret_key",
                     "matcraft_db_replication_password"):
        for form in (SCENARIO_VARS[variable], quote(SCENARIO_VARS[variable], safe="")):
            assert form not in output, "%s appears in the --diff output of the upgrade" % variable
    assert "MATCRAFT_DIFF_MARKER" not in output, "the environment file's diff was shown"
    for name in API_HOSTS + WORKER_HOSTS:
        _RELEASE_BUILT[name] = peer(name).run("stat -c %Y /opt/matcraft/releases/1.0.1/.release.json").stdout.strip()
    # The air-gapped worker installed 1.0.1 from its wheelhouse too (pip --no-index).
    record = json.loads(peer("medium-worker2").file("/opt/matcraft/releases/1.0.1/.release.json").content_string)
    assert record["source"] == "wheelhouse" and "matcraft_contract-1.0.1-py3-none-any.whl" in record["wheelhouse"], \
        record

    # Every host runs 1.0.1.
    for name in API_HOSTS + WORKER_HOSTS:
        assert current_release(name) == "/opt/matcraft/releases/1.0.1", name
    for name in API_HOSTS:
        assert api_version(host, name) == "1.0.1", name
    for name in WORKER_HOSTS:
        assert worker_release(name) == "/opt/matcraft/releases/1.0.1", name

    # The migration of 1.0.1 ran once, on the migration host (the first API host).
    assert migration_runs("medium-api1", "1.0.1") == runs_before["medium-api1"] + 1
    for name in API_HOSTS[1:] + WORKER_HOSTS:
        assert migration_runs(name, "1.0.1") == runs_before[name], "%s ran the migrations" % name
    assert psql("medium-db", "SELECT count(*) FROM materia_schema_migrations WHERE revision = '0003'") == "1"

    # The API hosts restarted one at a time, and the edge sent nothing to a host from a second
    # before its restart to a second after it (the log has whole seconds): it was drained.
    windows = sorted((window, name) for name in API_HOSTS for window in api_restarts(name, since))
    assert sorted(name for _, name in windows) == sorted(API_HOSTS), windows
    (first, _), (second, _) = windows
    assert first[1] < second[0], "the API restarts overlap: %s" % windows
    entries = access_log(host, since)
    served = {name: [e for e in entries if e["upstream_addr"] == "%s:8000" % ip(name)] for name in API_HOSTS}
    for (stopping, started), name in windows:
        during = [e for e in served[name]
                  if stopping - 1 <= datetime.fromisoformat(e["time_iso8601"]).timestamp() <= started + 1]
        assert not during, "%s got requests while it restarted: %s" % (name, during[:3])
        assert served[name], "%s served no request of the stream" % name
    # No request needed a second try at the edge.
    retried = [e for e in entries if "," in e["upstream_addr"] or e["status"] != "200"]
    assert not retried, retried[:5]


def test_broken_release_stops_at_the_first_api_host(host):
    build_release("1.0.2", broken=True)
    with Stream(host, "upgrade-102") as stream:
        output = upgrade("1.0.2", expect_success=False)
    summary = stream.summary()
    assert summary["failed"] == 0 and summary["ok"] == summary["sent"], summary
    assert "failed on API host medium-api1" in output, output[-6000:]
    assert "matcraft.deploy.upgrade -e app_version=1.0.1" in output, output[-6000:]

    # The first API host switched and failed; it stays drained at the edge.
    assert current_release("medium-api1") == "/opt/matcraft/releases/1.0.2"
    site = host.run("cat /etc/nginx/conf.d/matcraft.conf").stdout
    assert "%s:8000 " % ip("medium-api1") in site
    drained = [line for line in site.splitlines() if "%s:8000 " % ip("medium-api1") in line]
    assert drained and drained[0].rstrip().endswith("down;"), drained
    # The rest is untouched, on 1.0.1, and the edge answers.
    assert current_release("medium-api2") == "/opt/matcraft/releases/1.0.1"
    assert api_version(host, "medium-api2") == "1.0.1"
    for name in WORKER_HOSTS:
        assert current_release(name) == "/opt/matcraft/releases/1.0.1", name
        assert worker_release(name) == "/opt/matcraft/releases/1.0.1", name
    for _ in range(5):
        assert edge(host, "GET", "/health")[0] == 200


def test_upgrading_back_restores_every_host(host):
    with Stream(host, "rollback-101") as stream:
        upgrade("1.0.1")
    summary = stream.summary()
    assert summary["failed"] == 0 and summary["ok"] == summary["sent"], summary
    for name in API_HOSTS + WORKER_HOSTS:
        assert current_release(name) == "/opt/matcraft/releases/1.0.1", name
    for name in API_HOSTS:
        assert api_version(host, name) == "1.0.1", name
    # 1.0.1 was on disk: only the link moved back; the broken release is kept.
    for name in API_HOSTS + WORKER_HOSTS:
        node = peer(name)
        assert node.run("stat -c %Y /opt/matcraft/releases/1.0.1/.release.json").stdout.strip() == \
            _RELEASE_BUILT[name], "release 1.0.1 was rebuilt on %s instead of reused" % name
    assert peer("medium-api1").file("/opt/matcraft/releases/1.0.2").is_directory
    for name in WORKER_HOSTS:
        assert worker_release(name) == "/opt/matcraft/releases/1.0.1", name
    site = host.run("cat /etc/nginx/conf.d/matcraft.conf").stdout
    assert " down;" not in site, "an API host is still drained"
    # Both API hosts serve through the edge again, and a job goes round trip.
    since = time.time()
    for _ in range(10):
        assert edge(host, "GET", "/health")[0] == 200
    upstreams = {e["upstream_addr"] for e in access_log(host, since)}
    assert {"%s:8000" % ip(n) for n in API_HOSTS} <= upstreams, upstreams
    status, _, body = edge(host, "POST", "/v1/jobs", {"seconds": 0.2})
    assert status == 202, body
    done = wait_for("the job done", lambda: (lambda r: r[2] if r[0] == 200 and r[2]["state"] == "done" else None)(
        edge(host, "GET", "/v1/jobs/%d" % body["id"])), 90, 1)
    assert done["worker"] in WORKER_HOSTS, done


# --------------------------------------------------------------------------- replica monitoring


def replication_metrics(name):
    """The exporters role's pg_replication query (its queries template), run on host name:
    {lag, is_replica, streaming}."""
    template = os.path.join(PROJECT_DIR, "roles", "exporters", "templates", "postgres_exporter_queries.yml.j2")
    with open(template) as handle:
        queries = yaml.safe_load(handle.read())
    row = psql(name, queries["pg_replication"]["query"])
    lag, is_replica, streaming = row.split("|")
    return {"lag": float(lag), "is_replica": int(is_replica), "streaming": int(streaming)}


def test_a_replica_cut_off_from_the_primary_reports_it(host):
    """The exporter's replication query on the real standby: streaming with no lag; with the
    primary stopped, not streaming and a lag that grows (an idle primary used to read as 0 lag);
    streaming again once the primary is back."""
    assert replication_metrics("medium-db") == {"lag": 0.0, "is_replica": 0, "streaming": 1}
    wait_for("the standby streaming and caught up",
             lambda: replication_metrics("medium-replica") == {"lag": 0.0, "is_replica": 1, "streaming": 1}, 60, 1)
    primary = peer("medium-db")
    try:
        assert primary.run("systemctl stop postgresql").rc == 0
        cut_off = wait_for("the standby to stop streaming",
                           lambda: (lambda m: m if m["streaming"] == 0 else None)(replication_metrics("medium-replica")),
                           60, 1)
        assert cut_off["is_replica"] == 1 and cut_off["lag"] > 0, cut_off
        time.sleep(3)
        assert replication_metrics("medium-replica")["lag"] > cut_off["lag"]
    finally:
        started = primary.run("systemctl start postgresql")
    assert started.rc == 0, started.stderr
    wait_for("the standby streaming again",
             lambda: replication_metrics("medium-replica") == {"lag": 0.0, "is_replica": 1, "streaming": 1}, 120, 1)
