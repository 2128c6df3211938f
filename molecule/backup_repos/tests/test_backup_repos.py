"""pgBackRest with remote repositories: br-db archives WAL over SSH to the
backup host br-backup, which holds the repository and runs the backups;
br-db-s3 backs up into an S3-compatible object store (moto behind nginx with
a pki certificate on br-backup). Backups and WAL reach each repository, none
stay on the database hosts, and both restore through playbooks/restore.yml:
point in time from the backup host, the latest state from the object store.

Both repositories are encrypted (aes-256-cbc, the scenario's
matcraft_pgbackrest_cipher_pass): a marker row written before a backup is in
no file of either repository, every file there is ciphertext, and the
restores return the row.

Tests run in file order: the restore tests build on each other."""

import json
import os
import secrets
import subprocess
import tempfile
import time

import yaml

from helpers import address_of, peer

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
PLAYBOOKS = os.path.join(PROJECT, "playbooks")
STANZA = "matcraft"
LOCAL_REPO = "/var/lib/pgbackrest"
BUCKET = "matcraft-backups"
# Markers of the encryption tests: random text written into a table before a backup,
# looked for in the repositories (never there) and in the restored databases (there).
MARKERS = {name: "matcraft-cipher-probe-%s-%s" % (name, secrets.token_hex(16)) for name in ("br-db", "br-db-s3")}
# What pgBackRest's aes-256-cbc files start with (OpenSSL's salted format).
CIPHER_MAGIC = b"Salted__"


def sql(name, query, database="matcraft"):
    """Run SQL as postgres on a database host; return stdout (stripped)."""
    result = peer(name).run("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", database, query)
    assert result.rc == 0, "%s on %s\n%s" % (query, name, result.stderr)
    return result.stdout.strip()


def pgbackrest(name, user, *args):
    return peer(name).run("runuser -u %s -- pgbackrest --stanza=%s " + " ".join(["%s"] * len(args)),
                          user, STANZA, *args)


def info(name, user):
    got = pgbackrest(name, user, "--output=json", "info")
    assert got.rc == 0, got.stdout + got.stderr
    return json.loads(got.stdout)[0]


def timeline(name):
    return int(sql(name, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", "postgres"), 16)


def switch_and_wait_archived(name, timeout=120):
    """Close the current WAL segment and wait until pgBackRest has archived it."""
    segment = sql(name, "SELECT pg_walfile_name(pg_switch_wal())", "postgres")
    deadline = time.time() + timeout
    while time.time() < deadline:
        archived = sql(name, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", "postgres")
        if archived[:24] >= segment:
            return segment
        time.sleep(1)
    raise AssertionError("segment %s of %s not archived within %d s: %s" % (
        segment, name, timeout, sql(name, "SELECT * FROM pg_stat_archiver", "postgres")))


def playbook(name, inventory=None, **extra_vars):
    """Run one of the collection's playbooks against the scenario's inventory."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(PROJECT, ".cache", "collections"))
    cmd = ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(PLAYBOOKS, name)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)


def s3_keys(prefix):
    """Object keys in the test bucket, listed on the object store itself."""
    script = ("import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:5000', region_name='us-east-1', "
              "aws_access_key_id='fixture', aws_secret_access_key='fixture'); "
              "p = s3.get_paginator('list_objects_v2'); "
              "print('\\n'.join(o['Key'] for page in p.paginate(Bucket='%s', Prefix='%s') "
              "for o in page.get('Contents', [])))" % (BUCKET, prefix))
    got = peer("br-backup").run("/opt/moto/bin/python -c %s", script)
    assert got.rc == 0, got.stderr
    return got.stdout.split()


def s3_objects_scan(prefix, marker):
    """Every object of the test bucket under prefix, read on the object store itself:
    [count, keys that contain marker, keys that do not start with the cipher magic]."""
    script = ("import boto3, json; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:5000', "
              "region_name='us-east-1', aws_access_key_id='fixture', aws_secret_access_key='fixture'); "
              "p = s3.get_paginator('list_objects_v2'); keys = [o['Key'] for page in p.paginate(Bucket='%s', "
              "Prefix='%s') for o in page.get('Contents', [])]; found, plain = [], []\n"
              "for k in keys:\n"
              "    body = s3.get_object(Bucket='%s', Key=k)['Body'].read()\n"
              "    found += [k] if %r in body else []\n"
              "    plain += [k] if not body.startswith(%r) else []\n"
              "print(json.dumps([len(keys), found, plain]))"
              % (BUCKET, prefix, BUCKET, marker.encode(), CIPHER_MAGIC))
    got = peer("br-backup").run("/opt/moto/bin/python -c %s", script)
    assert got.rc == 0, got.stderr
    return json.loads(got.stdout)


def files_scan(name, path, marker):
    """Every regular file under path on a host: [count, files that contain marker,
    files that do not start with the cipher magic]."""
    script = ("import json, os, sys; found, plain, count = [], [], 0\n"
              "for root, _, files in os.walk(sys.argv[1]):\n"
              "    for f in files:\n"
              "        p = os.path.join(root, f); count += 1\n"
              "        data = open(p, 'rb').read()\n"
              "        found += [p] if sys.argv[2].encode() in data else []\n"
              "        plain += [p] if not data.startswith(%r) else []\n"
              "print(json.dumps([count, found, plain]))" % CIPHER_MAGIC)
    got = peer(name).run("python3 -c %s %s %s", script, path, marker)
    assert got.rc == 0, got.stderr
    return json.loads(got.stdout)


def write_marker_and_back_up(db, repo_host, repo_user):
    """The marker row in a table of db, then a full backup without compression (so that
    only the cipher can hide the row) and its WAL archived. The marker is in clear in
    db's own data directory: the searches of the repository below are meaningful."""
    marker = MARKERS[db]
    sql(db, "DROP TABLE IF EXISTS cipher_probe; CREATE TABLE cipher_probe (label text NOT NULL); "
            "INSERT INTO cipher_probe VALUES ('%s')" % marker)
    sql(db, "CHECKPOINT", "postgres")
    clear = peer(db).run("grep -r -a -l -F %s /var/lib/postgresql/15/main", marker)
    assert clear.rc == 0 and clear.stdout.strip(), "the marker is not in %s's data directory: %s" % (db, clear.stderr)
    backups_before = len(info(repo_host, repo_user)["backup"])
    run = pgbackrest(repo_host, repo_user, "--type=full", "--compress-type=none", "backup")
    assert run.rc == 0, run.stdout + run.stderr
    assert len(info(repo_host, repo_user)["backup"]) == backups_before + 1
    switch_and_wait_archived(db)
    return marker


def assert_no_local_repository(name):
    repo = peer(name).file(LOCAL_REPO)
    if repo.exists:
        listing = peer(name).check_output("find %s -mindepth 1", LOCAL_REPO)
        assert listing == "", "backup files on the database host %s:\n%s" % (name, listing)


# --- host: a dedicated backup host over SSH ---------------------------------

def test_backup_host_holds_the_repository_and_a_full_backup():
    backup = peer("br-backup")
    stanza = info("br-backup", "pgbackrest")
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b for b in stanza["backup"] if b["type"] == "full"], stanza["backup"]
    repo = backup.file(LOCAL_REPO + "/backup/" + STANZA)
    assert repo.is_directory and repo.user == "pgbackrest", repo
    conf = backup.file("/etc/pgbackrest/pgbackrest.conf")
    assert conf.user == "root" and conf.group == "pgbackrest" and conf.mode == 0o640
    content = conf.content_string
    assert "pg1-host=%s\n" % address_of(peer("br-db")) in content, content
    assert "pg1-path=/var/lib/postgresql/15/main\n" in content
    assert "repo1-retention-full-type=time\n" in content and "repo1-retention-full=7\n" in content
    # Encrypted with the scenario's passphrase, which is in this 0640 file only.
    assert "repo1-cipher-type=aes-256-cbc\n" in content, content
    passphrase = [line for line in content.splitlines() if line.startswith("repo1-cipher-pass=")]
    assert len(passphrase) == 1 and len(passphrase[0]) > len("repo1-cipher-pass=") + 32
    assert passphrase[0].split("=", 1)[1] not in backup.check_output("ps -eo args")
    assert backup.file("/etc/pgbackrest").mode == 0o750
    # The database host points at the backup host and holds no repository (nor the passphrase:
    # the backup host encrypts).
    db_conf = peer("br-db").file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert "repo1-host=%s\n" % address_of(backup) in db_conf, db_conf
    assert "cipher" not in db_conf, db_conf
    assert_no_local_repository("br-db")


def test_backup_timer_runs_on_the_backup_host_only():
    backup = peer("br-backup")
    timer = backup.service("matcraft-pgbackrest-full.timer")
    assert timer.is_enabled and timer.is_running
    unit = backup.check_output("systemctl cat matcraft-pgbackrest@.service")
    assert "User=pgbackrest" in unit and "ExecCondition" not in unit
    metric = backup.file("/var/lib/prometheus/node-exporter/matcraft_backup.prom")
    assert metric.exists and 'matcraft_backup_last_success_timestamp_seconds{type="full"}' in metric.content_string
    db = peer("br-db")
    assert not db.file("/etc/systemd/system/matcraft-pgbackrest-full.timer").exists
    listed = db.run("systemctl list-timers --all --no-pager")
    assert "matcraft-pgbackrest" not in listed.stdout, listed.stdout


GATE = "/usr/local/lib/matcraft/pgbackrest-ssh-gate"
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes"
DATA_DIR = "/var/lib/postgresql/15/main"


def ssh_as(name, user, target, command):
    """Run command over SSH from name as user (the pgBackRest key) on target."""
    return peer(name).run("runuser -u %s -- " + SSH + " %s %s", user, target, command)


def assert_refused(got, what):
    assert got.rc != 0, "%s was run: rc %d\n%s" % (what, got.rc, got.stdout)
    assert "pgbackrest-ssh-gate: refused:" in got.stderr, "%s: %s %s" % (what, got.stdout, got.stderr)
    assert got.stdout == "", "%s printed: %s" % (what, got.stdout)


def repository_listing():
    """Every path of the backup host's repository with its size and time (sorted)."""
    return peer("br-backup").check_output("find %s -printf '%%p %%s %%T@\\n' | sort", LOCAL_REPO)


def test_ssh_trust_is_restricted_and_host_keys_are_pinned():
    db, backup = peer("br-db"), peer("br-backup")
    db_address, backup_address = address_of(db), address_of(backup)
    gates = {
        "br-db": '%s --stanza=matcraft --remote-type=pg --pg-path=%s --pg-socket-path=/var/run/postgresql '
                 '--pg-port=5432' % (GATE, DATA_DIR),
        "br-backup": "%s --stanza=matcraft --remote-type=repo --repo-path=%s --pg-path=%s "
                     "--pg-path=/var/lib/postgresql/restore-drill/data" % (GATE, LOCAL_REPO, DATA_DIR),
    }
    for name, host, path, source in (("br-db", db, "/var/lib/postgresql/.ssh/authorized_keys", backup_address),
                                     ("br-backup", backup, "/home/pgbackrest/.ssh/authorized_keys", db_address)):
        keys = [line for line in host.file(path).content_string.splitlines() if line and not line.startswith("#")]
        prefix = 'restrict,from="%s",command="%s" ssh-ed25519 ' % (source, gates[name])
        assert keys and all(line.startswith(prefix) for line in keys), keys
        gate = host.file(GATE)
        assert gate.user == "root" and gate.group == "root" and gate.mode == 0o755, gate
    # The key logs in (strict host key checking, no prompt) and lands in the gate.
    assert_refused(ssh_as("br-db", "postgres", "pgbackrest@" + backup_address, "true"), "true on the backup host")
    assert_refused(ssh_as("br-backup", "pgbackrest", "postgres@" + db_address, "true"), "true on the database host")
    # restrict: no terminal for the peer's key
    pty = db.run("runuser -u postgres -- %s -tt pgbackrest@%s tty" % (SSH, backup_address))
    assert "PTY allocation request failed" in pty.stderr, pty.stdout + pty.stderr
    # nothing turns host key checking off
    relaxed = db.run("grep -rsi 'StrictHostKeyChecking *no' /etc/ssh /var/lib/postgresql/.ssh")
    assert relaxed.rc == 1, relaxed.stdout


def test_the_database_host_cannot_run_commands_on_the_backup_host():
    """As postgres on br-db, with the key pgBackRest uses: no shell, no file, no deleting
    command reaches the backup host; the repository is untouched and still works."""
    backup = peer("br-backup")
    target = "pgbackrest@" + address_of(backup)
    before = repository_listing()
    assert "/backup/matcraft/backup.info" in before, before
    remote = ("pgbackrest --exec-id=1-ab --log-level-console=off --log-level-stderr=error --process=0 "
              "--remote-type=repo --repo=1 --repo1-path=%s --stanza=matcraft" % LOCAL_REPO)
    for command in ("rm -rf %s" % LOCAL_REPO,
                    "sh -c id",
                    "cat /etc/pgbackrest/pgbackrest.conf",
                    "/bin/bash -i",
                    remote + " archive-push:remote; rm -rf " + LOCAL_REPO,
                    remote + " archive-push:remote && rm -rf " + LOCAL_REPO,
                    remote + " repo-rm:remote",
                    remote + " stanza-delete:remote",
                    remote.replace("--remote-type=repo", "--remote-type=pg") + " backup:remote",
                    remote.replace("--repo1-path=" + LOCAL_REPO, "--repo1-path=/home") + " archive-push:remote",
                    remote + " --config=/tmp/other.conf archive-push:remote"):
        assert_refused(ssh_as("br-db", "postgres", target, command), command)
    # pgBackRest's own deleting command, run on the database host, is refused at the gate too.
    rm = peer("br-db").run("runuser -u postgres -- pgbackrest --stanza=%s --recurse repo-rm backup", STANZA)
    assert rm.rc != 0, rm.stdout
    assert repository_listing() == before
    stanza = info("br-backup", "pgbackrest")
    assert stanza["status"]["code"] == 0, stanza["status"]
    # Each refusal is in the backup host's journal, without the command's words.
    logged = backup.run("journalctl -t pgbackrest-ssh-gate --no-pager -o cat")
    refusals = [line for line in logged.stdout.splitlines() if line.startswith("refused a request of ")]
    assert len(refusals) >= 12, logged.stdout
    assert "pgbackrest.conf" not in logged.stdout and "rm -rf" not in logged.stdout, logged.stdout


def test_the_backup_host_cannot_run_sql_or_commands_on_the_database_host():
    """As pgbackrest on br-backup, with the key pgBackRest uses: no psql, no shell, no
    remote of the wrong type or with another configuration on the database host."""
    target = "postgres@" + address_of(peer("br-db"))
    remote = ("pgbackrest --exec-id=1-ab --log-level-console=off --log-level-stderr=error --pg1-path=%s "
              "--pg1-port=5432 --pg1-socket-path=/var/run/postgresql --process=0 --remote-type=pg "
              "--stanza=matcraft" % DATA_DIR)
    for command in ("psql -c 'select 1'",
                    "id",
                    "sh -c 'psql -Atc \"select 1\"'",
                    remote + " backup:remote; psql -c 'select 1'",
                    remote.replace("--remote-type=pg", "--remote-type=repo") + " archive-push:remote",
                    remote.replace("--pg1-path=" + DATA_DIR, "--pg1-path=/tmp") + " backup:remote",
                    remote + " --config-path=/tmp backup:remote",
                    ""):
        assert_refused(ssh_as("br-backup", "pgbackrest", target, command), command or "an empty command")
    logged = peer("br-db").run("journalctl -t pgbackrest-ssh-gate --no-pager -o cat")
    assert "select 1" not in logged.stdout and "refused a request of " in logged.stdout, logged.stdout


def test_wal_archiving_reaches_the_backup_host():
    for name, user in (("br-db", "postgres"), ("br-backup", "pgbackrest")):
        check = pgbackrest(name, user, "check")
        assert check.rc == 0, "%s: %s" % (name, check.stdout + check.stderr)
    segment = switch_and_wait_archived("br-db")
    found = peer("br-backup").run("find %s/archive/%s -name '%s-*'", LOCAL_REPO, STANZA, segment)
    assert found.rc == 0 and found.stdout.strip(), "segment %s is not in the backup host's repository" % segment
    assert_no_local_repository("br-db")


def test_backup_host_repository_is_encrypted():
    """A marker row backed up (uncompressed) and archived: no file of the backup host's
    repository holds it, and every file there is aes-256-cbc ciphertext."""
    marker = write_marker_and_back_up("br-db", "br-backup", "pgbackrest")
    plain = peer("br-backup").run("grep -r -a -l -F %s %s", marker, LOCAL_REPO)
    assert plain.rc == 1, "the marker is in clear in the repository (rc %d): %s %s" % (
        plain.rc, plain.stdout, plain.stderr)
    count, found, clear = files_scan("br-backup", LOCAL_REPO, marker)
    assert count > 10 and found == [], (count, found)
    assert clear == [], "files of the repository that are not encrypted: %s" % clear
    # pgBackRest still reads it: the new backup is there, the archive is continuous.
    check = pgbackrest("br-backup", "pgbackrest", "check")
    assert check.rc == 0, check.stdout + check.stderr


def test_point_in_time_restore_from_the_backup_host():
    sql("br-db", "DROP TABLE IF EXISTS pitr_probe; CREATE TABLE pitr_probe (id serial PRIMARY KEY, label text NOT NULL)")
    backups_before = len(info("br-backup", "pgbackrest")["backup"])
    backup = playbook("backup.yml", backup_type="full")
    assert backup.returncode == 0, backup.stdout[-3000:]
    assert len(info("br-backup", "pgbackrest")["backup"]) == backups_before + 1
    sql("br-db", "INSERT INTO pitr_probe (label) SELECT 'marker' FROM generate_series(1, 5)")
    target = sql("br-db", "SELECT clock_timestamp()", "postgres")
    time.sleep(2)
    sql("br-db", "INSERT INTO pitr_probe (label) SELECT 'later' FROM generate_series(1, 3)")
    switch_and_wait_archived("br-db")
    before = timeline("br-db")

    run = playbook("restore.yml", restore_confirm="br-db", restore_target_time=target)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Timeline %d -> %d" % (before, before + 1) in run.stdout, run.stdout[-3000:]
    assert "from backup set unknown" not in run.stdout, run.stdout[-3000:]
    assert sql("br-db", "SELECT count(*) FILTER (WHERE label = 'marker') || '|' || "
                        "count(*) FILTER (WHERE label = 'later') FROM pitr_probe") == "5|0"
    assert sql("br-db", "SELECT pg_is_in_recovery()", "postgres") == "f"
    # The marker row, backed up encrypted before, is restored from the encrypted repository.
    assert sql("br-db", "SELECT label FROM cipher_probe") == MARKERS["br-db"]
    # The restored primary keeps archiving to the backup host on its new timeline.
    sql("br-db", "INSERT INTO pitr_probe (label) VALUES ('after-restore')")
    switch_and_wait_archived("br-db")
    assert_no_local_repository("br-db")


# --- s3: an S3-compatible object store over verified TLS --------------------

def test_object_store_holds_a_full_backup_and_the_archive():
    db = peer("br-db-s3")
    conf = db.file("/etc/pgbackrest/pgbackrest.conf")
    assert conf.user == "root" and conf.group == "postgres" and conf.mode == 0o640
    content = db.check_output("cat /etc/pgbackrest/pgbackrest.conf")
    assert "repo1-type=s3\n" in content and "repo1-s3-uri-style=path\n" in content
    assert "repo1-storage-verify-tls=y\n" in content, content
    assert "repo1-cipher-type=aes-256-cbc\n" in content, content
    passphrase = [line for line in content.splitlines() if line.startswith("repo1-cipher-pass=")]
    assert len(passphrase) == 1 and len(passphrase[0]) > len("repo1-cipher-pass=") + 32
    assert passphrase[0].split("=", 1)[1] not in db.check_output("ps -eo args")
    assert db.file("/etc/pgbackrest").mode == 0o750 and db.file("/etc/pgbackrest").group == "postgres"
    # The secret is in the 0640 file only, never on a command line.
    secret = [line for line in content.splitlines() if line.startswith("repo1-s3-key-secret=")]
    assert len(secret) == 1 and len(secret[0]) > len("repo1-s3-key-secret=")
    assert secret[0].split("=", 1)[1] not in db.check_output("ps -eo args")
    stanza = info("br-db-s3", "postgres")
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b for b in stanza["backup"] if b["type"] == "full"], stanza["backup"]
    check = pgbackrest("br-db-s3", "postgres", "check")
    assert check.rc == 0, check.stdout + check.stderr
    segment = switch_and_wait_archived("br-db-s3")
    keys = s3_keys("matcraft/")
    assert [k for k in keys if k.startswith("matcraft/backup/%s/" % STANZA) and k.endswith("backup.manifest")], keys
    assert [k for k in keys if k.startswith("matcraft/archive/%s/" % STANZA) and "/%s-" % segment in k], keys
    assert_no_local_repository("br-db-s3")
    timer = db.service("matcraft-pgbackrest-full.timer")
    assert timer.is_enabled and timer.is_running


def test_object_store_certificate_is_verified():
    """pgBackRest verifies the object store's certificate: trusting another CA
    only, the same repository is refused."""
    listing = pgbackrest("br-db-s3", "postgres", "repo-ls")
    assert listing.rc == 0 and "archive" in listing.stdout.split(), listing.stdout + listing.stderr
    other_ca = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"
    assert peer("br-db-s3").file(other_ca).exists
    refused = pgbackrest("br-db-s3", "postgres", "--repo1-storage-ca-file=" + other_ca, "repo-ls")
    assert refused.rc != 0, refused.stdout
    assert "certificate" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr


def test_object_store_repository_is_encrypted():
    """A marker row backed up (uncompressed) and archived: no object of the bucket holds
    it, and every object is aes-256-cbc ciphertext."""
    marker = write_marker_and_back_up("br-db-s3", "br-db-s3", "postgres")
    count, found, clear = s3_objects_scan("matcraft/", marker)
    assert count > 10 and found == [], (count, found)
    assert clear == [], "objects of the bucket that are not encrypted: %s" % clear
    check = pgbackrest("br-db-s3", "postgres", "check")
    assert check.rc == 0, check.stdout + check.stderr


def test_the_object_store_backups_are_not_expired_from_the_database_host():
    """br-db-s3 has postgresql_pgbackrest_expire_auto: false (in production: an S3 key
    without s3:DeleteObject): expire-auto=n, so its backups delete nothing from the bucket,
    even with a retention that older backups are past. Expiry is `pgbackrest expire`, run
    from another host with a full key."""
    content = peer("br-db-s3").check_output("cat /etc/pgbackrest/pgbackrest.conf")
    assert "\nexpire-auto=n\n" in content, content
    fulls_before = [b["label"] for b in info("br-db-s3", "postgres")["backup"] if b["type"] == "full"]
    assert len(fulls_before) >= 2, fulls_before
    keys_before = set(s3_keys("matcraft/"))
    run = pgbackrest("br-db-s3", "postgres", "--type=full", "--repo1-retention-full-type=count",
                     "--repo1-retention-full=1", "backup")
    assert run.rc == 0, run.stdout + run.stderr
    fulls_after = [b["label"] for b in info("br-db-s3", "postgres")["backup"] if b["type"] == "full"]
    assert fulls_after[:-1] == fulls_before and len(fulls_after) == len(fulls_before) + 1, (fulls_before, fulls_after)
    missing = keys_before - set(s3_keys("matcraft/"))
    assert not missing, "objects removed by a backup of the database host: %s" % sorted(missing)[:20]


def test_restore_latest_from_the_object_store_after_losing_the_data():
    sql("br-db-s3", "DROP TABLE IF EXISTS loss_probe; CREATE TABLE loss_probe (id serial PRIMARY KEY); "
                    "INSERT INTO loss_probe SELECT FROM generate_series(1, 4)")
    switch_and_wait_archived("br-db-s3")
    db = peer("br-db-s3")
    # The disk of the database is lost.
    lost = db.run("systemctl stop postgresql@15-main && rm -rf /var/lib/postgresql/15/main")
    assert lost.rc == 0, lost.stderr
    with tempfile.TemporaryDirectory() as workdir:
        inventory = s3_primary_inventory(workdir)
        refused = playbook("restore.yml", inventory)
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert "restore_confirm=br-db-s3" in refused.stdout + refused.stderr, refused.stderr[-3000:]
        run = playbook("restore.yml", inventory, restore_confirm="br-db-s3")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "from backup set unknown" not in run.stdout, run.stdout[-3000:]
    assert sql("br-db-s3", "SELECT count(*) FROM loss_probe") == "4"
    # The marker row, backed up encrypted before, is restored from the encrypted bucket.
    assert sql("br-db-s3", "SELECT label FROM cipher_probe") == MARKERS["br-db-s3"]
    assert sql("br-db-s3", "SELECT pg_is_in_recovery()", "postgres") == "f"
    sql("br-db-s3", "INSERT INTO loss_probe DEFAULT VALUES")
    switch_and_wait_archived("br-db-s3")
    assert_no_local_repository("br-db-s3")


def s3_primary_inventory(workdir):
    """The scenario's inventory with br-db-s3 as the one host of
    matcraft_database (restore.yml restores that group's host)."""
    with open(os.environ["MOLECULE_INVENTORY_FILE"]) as handle:
        inventory = yaml.safe_load(handle)
    for name, group in inventory.items():
        if name == "matcraft_database":
            group["hosts"] = {"br-db-s3": {}}
    path = os.path.join(workdir, "hosts.yml")
    with open(path, "w") as handle:
        yaml.safe_dump(inventory, handle)
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    for part in ("group_vars", "host_vars"):
        os.symlink(os.path.join(scenario, part), os.path.join(workdir, part))
    return path
