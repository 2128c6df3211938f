"""Redis for MatCraft, checked over the network from a worker host.

Clients on redis-app read their user and password from /opt/redis-probe/*.env
(root-only files written by converge) into redis-cli's environment
(REDISCLI_AUTH): no password is ever on a command line. The admin side uses the
role's matcraft-redis-cli on redis-db (admin user on the local socket).
"""

import json
import os
import re
import shlex
import subprocess
import tempfile
import time

from helpers import address_of, assert_unit_running, journal, peer, probe_tcp

testinfra_hosts = ["redis-db"]

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CA = "/etc/matcraft/pki/ca.crt"
TIER_BYTES = {"small": 1024 ** 3, "medium": 2 * 1024 ** 3}
ROTATED_EXPORTER_PASSWORD = "Wd6Hx1Pq8Nv3Kz5Rm2Tb9Lc4Gs7Jf0Ye"


def admin(host, *args):
    """Run a command as the admin user on redis-db's local socket; stdout."""
    cmd = host.run("matcraft-redis-cli %s" % " ".join(shlex.quote(a) for a in args))
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def client(*args, user="app", tls=False, stdin=None, auth=True, host=None):
    """Run redis-cli on redis-app against redis-db as a Redis user; (rc, output)."""
    host = host or peer("redis-app")
    target = "-h redis-db --tls --cacert %s -p 6380" % CA if tls else "-h redis-db -p 6379"
    line = "redis-cli %s %s %s" % (
        target, '--user "$REDIS_USER"' if auth else "", " ".join(shlex.quote(a) for a in args))
    if stdin is not None:
        line = "printf '%%s\\n' %s | %s" % (" ".join(shlex.quote(s) for s in stdin), line)
    if auth:
        line = "set -a; . /opt/redis-probe/%s.env; set +a; %s" % (user, line)
    cmd = host.run("bash -c %s", line)
    return cmd.rc, (cmd.stdout + cmd.stderr).strip()


def app(*args, **kwargs):
    rc, out = client(*args, **kwargs)
    assert rc == 0, out
    return out


def run_id(host):
    return re.search(r"run_id:(\w+)", admin(host, "INFO", "server")).group(1)


def wait_for_redis(host, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        cmd = host.run("matcraft-redis-cli PING")
        if cmd.stdout.strip() == "PONG":
            return
        time.sleep(1)
    raise AssertionError("redis did not come back:\n" + journal(host, "redis-server"))


def test_service_runs_debian_unit_with_read_only_config(host):
    assert_unit_running(host, "redis-server")
    assert host.package("redis-server").version.startswith("5:7.")
    show = host.run("systemctl show redis-server -p FragmentPath -p DropInPaths -p ReadWritePaths").stdout
    assert "FragmentPath=/lib/systemd/system/redis-server.service" in show
    assert "redis-server.service.d/matcraft.conf" in show
    writable = re.search(r"^ReadWritePaths=(.*)$", show, re.M).group(1)
    assert "/var/lib/redis" in writable and "/etc/redis" not in writable
    # The server cannot rewrite its own configuration or ACL file.
    assert "Read-only file system" in admin(host, "CONFIG", "REWRITE")


def test_listens_on_private_address_and_loopback_only(host):
    expected = {address_of(host), "127.0.0.1"}
    listeners = host.run("ss -ltnH").stdout.split("\n")
    redis_addresses = set()
    for line in listeners:
        fields = line.split()
        if len(fields) >= 4 and fields[3].rsplit(":", 1)[1] in ("6379", "6380"):
            redis_addresses.add(fields[3].rsplit(":", 1)[0])
    assert redis_addresses == expected
    assert admin(host, "CONFIG", "GET", "protected-mode").endswith("yes")


def test_secrets_on_disk(host):
    acl = host.file("/etc/redis/users.acl")
    assert (acl.user, acl.group, acl.mode) == ("root", "redis", 0o640)
    # The admin password rests only encrypted (a systemd credential that root decrypts), and
    # the clear-text file of earlier releases is gone.
    credential = host.file("/etc/matcraft/credentials/redis-admin.cred")
    assert (credential.user, credential.group, credential.mode) == ("root", "root", 0o600)
    assert host.file("/etc/matcraft/credentials").mode == 0o700
    assert not host.file("/etc/redis/admin.secret").exists
    admin_password = host.run("systemd-creds decrypt --name=redis-admin /etc/matcraft/credentials/redis-admin.cred -")
    assert admin_password.rc == 0 and len(admin_password.stdout.strip()) == 48, admin_password.stderr
    found = host.run("grep -rlsF -- %s /etc /var /opt", admin_password.stdout.strip())
    assert found.stdout == "", "the admin password in clear text in %s" % found.stdout
    # Every password is a SHA-256 hash; the plain passwords are nowhere in /etc/redis.
    content = host.run("cat /etc/redis/users.acl").stdout
    users = dict(line.split()[1:3] for line in content.splitlines())
    assert users["default"] == "off"
    for line in content.splitlines()[1:]:
        assert re.search(r" #[0-9a-f]{64} ", line), line.split()[1]
        assert ">" not in line
    worker = peer("redis-app")
    for env in ("app", "exporter"):
        password = re.search(r"^REDIS_PASSWORD=(.+)$",
                             worker.file("/opt/redis-probe/%s.env" % env).content_string, re.M).group(1)
        for path in ("/etc/redis/users.acl", "/etc/redis/redis.conf"):
            assert password not in host.file(path).content_string, "%s password in %s" % (env, path)


def test_unauthenticated_and_default_user_refused(host):
    _, out = client("PING", auth=False)
    assert out.startswith("NOAUTH"), out
    # The default user is off: even a client that names it cannot log in.
    _, out = client(auth=False, stdin=["AUTH default anything", "PING"])
    assert "WRONGPASS" in out and "PONG" not in out, out
    assert "off" in admin(host, "ACL", "GETUSER", "default").split()
    # Also over TLS.
    _, out = client("PING", auth=False, tls=True)
    assert out.startswith("NOAUTH"), out


def test_app_user_queues_and_pubsub():
    app("DEL", "probe-list")
    assert app("LPUSH", "probe-list", "t1", "t2") == "2"
    assert app("RPOP", "probe-list") == "t1"
    out = app("ZADD", "probe-unacked", "1", "m1")
    assert out in ("0", "1")
    # MULTI/EXEC and Lua, as kombu and redis-py use them.
    assert app("EVAL", "return redis.call('LLEN', KEYS[1])", "1", "probe-list") == "1"
    out = app(stdin=["MULTI", "LPUSH probe-list t3", "LLEN probe-list", "EXEC"])
    assert out.split() == ["OK", "QUEUED", "QUEUED", "2", "2"], out
    # Pub/Sub (live progress): a subscriber receives what another client publishes.
    line = ("set -a; . /opt/redis-probe/app.env; set +a; "
            "timeout 8 redis-cli -h redis-db --user \"$REDIS_USER\" SUBSCRIBE probe-ch > /tmp/probe-sub.out & "
            "for i in $(seq 40); do grep -q probe-ch /tmp/probe-sub.out && break; sleep 0.2; done; "
            "redis-cli -h redis-db --user \"$REDIS_USER\" PUBLISH probe-ch hello-progress; wait; cat /tmp/probe-sub.out")
    out = peer("redis-app").run("bash -c %s", line).stdout.split()
    assert out[0] == "1", "PUBLISH reached no subscriber: %s" % out
    assert out[-3:] == ["message", "probe-ch", "hello-progress"], out


def test_app_user_cannot_destroy_or_reconfigure(host):
    app("SET", "probe-survivor", "still-here")
    for command in (["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "maxmemory"],
                    ["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"], ["SHUTDOWN"],
                    ["MODULE", "LIST"], ["ACL", "SETUSER", "x"], ["KEYS", "*"], ["MONITOR"],
                    ["BGREWRITEAOF"], ["CLIENT", "KILL", "ID", "1"], ["SWAPDB", "0", "1"]):
        _, out = client(*command)
        assert out.startswith("NOPERM"), "%s: %s" % (command, out)
    # DEBUG is refused before the ACL check (enable-debug-command no); the ACL
    # refuses it too, as it does MODULE LOAD.
    _, out = client("DEBUG", "SLEEP", "0")
    assert out.startswith(("NOPERM", "ERR DEBUG command not allowed")), out
    for command in (["DEBUG", "SLEEP", "0"], ["MODULE", "LOAD", "/tmp/x.so"], ["SHUTDOWN"], ["FLUSHALL"]):
        out = admin(host, "ACL", "DRYRUN", "matcraft", *command)
        assert "no permissions" in out, "%s: %s" % (command, out)
    assert app("GET", "probe-survivor") == "still-here"
    assert_unit_running(host, "redis-server")


def test_exporter_user_reads_but_cannot_write():
    app("DEL", "probe-exporter-list")
    app("RPUSH", "probe-exporter-list", "a", "b", "c")
    assert client("LLEN", "probe-exporter-list", user="exporter") == (0, "3")
    assert client("PING", user="exporter") == (0, "PONG")
    assert "maxmemory_policy:noeviction" in client("INFO", "memory", user="exporter")[1]
    for command in (["LPUSH", "probe-exporter-list", "x"], ["DEL", "probe-exporter-list"],
                    ["SET", "k", "v"], ["FLUSHALL"], ["CONFIG", "SET", "maxmemory", "1"],
                    ["LRANGE", "probe-exporter-list", "0", "-1"], ["PUBLISH", "c", "m"]):
        _, out = client(*command, user="exporter")
        assert out.startswith("NOPERM"), "%s: %s" % (command, out)
    assert app("LLEN", "probe-exporter-list") == "3"


def test_redis_exporter_scrapes_with_the_exporter_user(host):
    """The Debian redis_exporter, logged in as the exporter user, sees the queue length."""
    worker = peer("redis-app")
    app("DEL", "probe-exporter-queue")
    app("RPUSH", "probe-exporter-queue", "1", "2", "3", "4")
    admin(host, "ACL", "LOG", "RESET")
    worker.run("systemctl stop probe-exporter")
    worker.run("systemctl reset-failed probe-exporter")
    started = worker.run(
        "systemd-run --unit=probe-exporter --property=RuntimeMaxSec=120 "
        "--property=EnvironmentFile=/opt/redis-probe/exporter.env "
        "prometheus-redis-exporter -redis.addr redis://redis-db:6379 -redis.user matcraft_exporter "
        "-check-single-keys db0=probe-exporter-queue -web.listen-address 127.0.0.1:9121")
    assert started.rc == 0, started.stderr
    try:
        metrics = worker.run("curl -sS --retry 10 --retry-connrefused --retry-delay 1 "
                             "http://127.0.0.1:9121/metrics").stdout
        assert re.search(r"^redis_up 1$", metrics, re.M), journal(worker, "probe-exporter")
        assert re.search(r'^redis_key_size\{db="db0",key="probe-exporter-queue"\} 4$', metrics, re.M)
        assert re.search(r"^redis_memory_max_bytes 1\.073741824e\+09$", metrics, re.M)
        assert re.search(r'^redis_exporter_last_scrape_error\{err=""\} 0$', metrics, re.M)
    finally:
        worker.run("systemctl stop probe-exporter")
    assert admin(host, "ACL", "LOG") == "", "the exporter hit ACL denials"


def test_celery_round_trip_with_the_app_user(host):
    """A real Celery worker and client (Debian's celery, kombu, redis-py): tasks,
    a chord through the result backend, remote-control ping; no ACL denial."""
    worker = peer("redis-app")
    worker.run("systemctl stop probe-celery")
    worker.run("systemctl reset-failed probe-celery")
    admin(host, "ACL", "LOG", "RESET")
    started = worker.run(
        "systemd-run --unit=probe-celery --property=RuntimeMaxSec=300 "
        "--property=EnvironmentFile=/opt/redis-probe/app.env --working-directory=/opt/redis-probe "
        "python3 celery_probe.py worker")
    assert started.rc == 0, started.stderr
    try:
        for mode in ("", "--tls"):
            sent = worker.run(
                "bash -c %s", "set -a; . /opt/redis-probe/app.env; set +a; cd /opt/redis-probe; "
                "timeout 150 python3 celery_probe.py send " + mode)
            assert sent.rc == 0, "%s\n%s\n--- worker ---\n%s" % (
                sent.stdout, sent.stderr, journal(worker, "probe-celery", 40))
            assert "round trip ok" in sent.stdout
    finally:
        worker.run("systemctl stop probe-celery")
    assert admin(host, "ACL", "LOG") == "", "Celery hit ACL denials"


def test_maxmemory_from_tier_and_noeviction_in_force(host):
    assert admin(host, "CONFIG", "GET", "maxmemory").split()[-1] == str(TIER_BYTES["small"])
    assert admin(host, "CONFIG", "GET", "maxmemory-policy").split()[-1] == "noeviction"
    # With the limit reached, writes fail loudly instead of evicting keys.
    app("SET", "probe-before-oom", "kept")
    admin(host, "CONFIG", "SET", "maxmemory", "1")
    try:
        _, out = client("LPUSH", "probe-oom", "task")
        assert out.startswith("OOM"), out
    finally:
        admin(host, "CONFIG", "SET", "maxmemory", str(TIER_BYTES["small"]))
    assert app("GET", "probe-before-oom") == "kept"


def test_persistence_settings(host):
    assert admin(host, "CONFIG", "GET", "appendonly").split("\n")[1] == "yes"
    assert admin(host, "CONFIG", "GET", "appendfsync").split("\n")[1] == "everysec"
    assert admin(host, "CONFIG", "GET", "save").split("\n")[1] == "3600 1 300 100 60 10000"
    assert host.file("/var/lib/redis/appendonlydir").is_directory


def test_queue_survives_restart(host):
    app("DEL", "probe-restart")
    app("RPUSH", "probe-restart", "task-1", "task-2", "task-3")
    before = run_id(host)
    restart = host.run("systemctl restart redis-server")
    assert restart.rc == 0, restart.stderr
    wait_for_redis(host)
    assert run_id(host) != before
    assert app("LRANGE", "probe-restart", "0", "-1").split() == ["task-1", "task-2", "task-3"]


def test_queue_survives_a_crash(host):
    """SIGKILL: no shutdown save; only the AOF (fsync every second) keeps the tasks."""
    app("DEL", "probe-crash")
    app("RPUSH", "probe-crash", "task-a", "task-b")
    before = run_id(host)
    time.sleep(2)
    killed = host.run("systemctl kill --signal=KILL redis-server")
    assert killed.rc == 0, killed.stderr
    time.sleep(1)
    wait_for_redis(host)
    assert run_id(host) != before
    assert app("LRANGE", "probe-crash", "0", "-1").split() == ["task-a", "task-b"]


def test_firewall_allows_workers_only(host):
    address = address_of(host)
    worker, outsider = peer("redis-app"), peer("redis-outsider")
    for port in (6379, 6380):
        assert probe_tcp(worker, address, port), "worker cannot reach %s" % port
        assert not probe_tcp(outsider, address, port), "outsider reached %s" % port
    rule = host.file("/etc/nftables.d/matcraft/50-redis.nft").content_string
    assert "{ %s }" % address_of(worker) in rule and address_of(outsider) not in rule


def test_tls_port_verified_against_internal_ca():
    assert app("PING", tls=True) == "PONG"
    worker = peer("redis-app")
    made = worker.run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                      "-keyout /tmp/other-ca.key -out /tmp/other-ca.crt -subj /CN=other -days 1")
    assert made.rc == 0, made.stderr
    line = ("set -a; . /opt/redis-probe/app.env; set +a; redis-cli -h redis-db -p 6380 --tls "
            "--cacert /tmp/other-ca.crt --user \"$REDIS_USER\" PING")
    other = worker.run("bash -c %s", line)
    assert "PONG" not in other.stdout
    assert "verify" in (other.stdout + other.stderr).lower() or "certificate" in (other.stdout + other.stderr).lower()


def _converge(*extra_vars):
    """Re-apply the redis role (redis_only.yml) with extra variables from a 0600 file."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(SCENARIO, "redis_only.yml")]
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")) as tmp:
        for index, variables in enumerate(extra_vars):
            path = os.path.join(tmp, "vars%d.json" % index)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                json.dump(variables, handle)
            cmd += ["-e", "@" + path]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-4000:]
    return run.stdout


def test_reconfiguration(host):
    """Three re-runs of the role, each proving one behaviour:

    1. a server running without AOF (and holding data) is switched to AOF and
       TLS-only without losing its data; the plain port closes;
    2. back to the plain port with a rotated exporter password (restart);
    3. back to the inventory's exporter password: an ACL-only change is applied
       with ACL LOAD, without restarting the server.
    """
    worker = peer("redis-app")
    address = address_of(host)
    # A server that does not write an AOF yet, holding queued tasks (in dump.rdb only).
    prepared = host.run("sed -i 's/^appendonly yes$/appendonly no/' /etc/redis/redis.conf && "
                        "systemctl restart redis-server")
    assert prepared.rc == 0, prepared.stderr
    wait_for_redis(host)
    assert admin(host, "CONFIG", "GET", "appendonly").split("\n")[1] == "no"
    host.run("rm -rf /var/lib/redis/appendonlydir")
    app("DEL", "probe-aof-switch")
    app("RPUSH", "probe-aof-switch", "queued-1", "queued-2")

    try:
        # 1. AOF on (switched live first) and TLS only.
        _converge({"redis_tls_only": True})
        assert admin(host, "CONFIG", "GET", "appendonly").split("\n")[1] == "yes"
        assert app("LRANGE", "probe-aof-switch", "0", "-1", tls=True).split() == ["queued-1", "queued-2"]
        assert not probe_tcp(worker, address, 6379), "plain port still open in TLS-only mode"
        assert probe_tcp(worker, address, 6380)
        assert "6379" not in host.file("/etc/nftables.d/matcraft/50-redis.nft").content_string
    finally:
        # 2. Plain port back, exporter password rotated (config changed: restart).
        _converge({"redis_exporter_password": ROTATED_EXPORTER_PASSWORD})
    assert app("PING") == "PONG"
    assert probe_tcp(worker, address, 6379)
    _, out = client("PING", user="exporter")
    assert "WRONGPASS" in out, out
    assert client("PING", user="exporter-current") == (0, "PONG")
    # Keep the rotated password's file for the check below (no password on any command line).
    worker.run("cp -p /opt/redis-probe/exporter-current.env /opt/redis-probe/exporter-rotated.env")
    try:
        before = run_id(host)
        # 3. Only the ACL file changes: ACL LOAD, same server process.
        output = _converge()
        assert "RUNNING HANDLER [matcraft.deploy.redis : Load the ACL file]" in output
        assert "RUNNING HANDLER [matcraft.deploy.redis : Restart redis]" not in output
        assert run_id(host) == before, "an ACL-only change restarted the server"
        assert client("PING", user="exporter") == (0, "PONG")
        _, out = client("PING", user="exporter-rotated")
        assert "WRONGPASS" in out, out
    finally:
        worker.run("rm -f /opt/redis-probe/exporter-rotated.env")


def test_an_earlier_release_s_clear_text_admin_password_moves_into_the_credential(host):
    """A host of an earlier release keeps the admin password in clear text in
    /etc/redis/admin.secret: the next run encrypts that same password into the credential and
    deletes the file, without restarting the server (the ACL file keeps the same hash)."""
    credential = "/etc/matcraft/credentials/redis-admin.cred"
    password = host.run("systemd-creds decrypt --name=redis-admin %s -", credential)
    assert password.rc == 0, password.stderr
    moved = host.run("umask 077 && systemd-creds decrypt --name=redis-admin %s /etc/redis/admin.secret && rm %s",
                     credential, credential)
    assert moved.rc == 0, moved.stderr
    before = host.run("systemctl show -P MainPID redis-server").stdout
    output = _converge()
    assert "RUNNING HANDLER [matcraft.deploy.redis : Restart redis]" not in output
    assert host.run("systemctl show -P MainPID redis-server").stdout == before
    assert not host.file("/etc/redis/admin.secret").exists
    again = host.run("systemd-creds decrypt --name=redis-admin %s -", credential)
    assert again.rc == 0 and again.stdout == password.stdout, again.stderr
    assert host.run("matcraft-redis-cli PING").stdout.strip() == "PONG"
