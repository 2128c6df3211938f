"""PostgreSQL with pgBackRest: TLS-only access for the application host, none
for an outsider, backups, a point-in-time restore through playbooks/restore.yml
and a restore drill through playbooks/restore_drill.yml.

Tests run in file order: the restore tests build on each other."""

import hashlib
import json
import os
import subprocess
import tempfile
import time

import pytest
import yaml

from helpers import address_of, peer, probe_tcp

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
PLAYBOOKS = os.path.join(PROJECT, "playbooks")
ARCHIVE_TIMEOUT = 60
PASSWORD = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           "group_vars", "all.yml")))["matcraft_db_password"]
# The application's login role for its password (matcraft.deploy.db_login_name).
LOGIN = "matcraft_" + hashlib.sha256(("matcraft:" + PASSWORD).encode()).hexdigest()[:10]
OWNER_TLS = "sslmode=verify-full sslrootcert=/etc/matcraft/pki/ca.crt host=pg-db dbname=matcraft connect_timeout=5 user="
TLS = OWNER_TLS + LOGIN


def db():
    return peer("pg-db")


def sql(query, database="matcraft"):
    """Run SQL as postgres on the database host; return stdout (stripped)."""
    result = db().run("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", database, query)
    assert result.rc == 0, "%s\n%s" % (query, result.stderr)
    return result.stdout.strip()


def app_psql(client, conninfo, query):
    """psql from a client host; the password comes from its /root/.pgpass."""
    return client.run("psql %s -XAtq -c %s", conninfo, query)


def playbook(name, **extra_vars):
    """Run one of the collection's playbooks against the scenario's inventory."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(PROJECT, ".cache", "collections"))
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(PLAYBOOKS, name)]  # an absolute name wins
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)


def timeline():
    return int(sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", "postgres"), 16)


def switch_and_wait_archived(timeout=120):
    """Close the current WAL segment and wait until pgBackRest has archived it."""
    segment = sql("SELECT pg_walfile_name(pg_switch_wal())", "postgres")
    deadline = time.time() + timeout
    while time.time() < deadline:
        archived = sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", "postgres")
        if archived[:24] >= segment:
            return segment
        time.sleep(1)
    raise AssertionError("segment %s not archived within %d s: %s" % (
        segment, timeout, sql("SELECT * FROM pg_stat_archiver", "postgres")))


def test_server_settings():
    settings = dict(line.split("|", 1) for line in sql(
        "SELECT name, setting FROM pg_settings WHERE name IN ('password_encryption', 'ssl', 'archive_mode', "
        "'archive_command', 'archive_timeout', 'max_connections', 'shared_buffers', 'data_checksums', "
        "'random_page_cost', 'listen_addresses')", "postgres").splitlines())
    assert settings["password_encryption"] == "scram-sha-256"
    assert settings["ssl"] == "on"
    assert settings["archive_mode"] == "on"
    assert settings["archive_command"] == "pgbackrest --stanza=matcraft archive-push %p"
    assert settings["archive_timeout"] == str(ARCHIVE_TIMEOUT)
    assert int(settings["max_connections"]) >= 100
    assert settings["shared_buffers"] == str(512 * 128)  # 25 % of 2048 MiB, in 8 kB pages
    assert settings["data_checksums"] == "on"
    assert settings["random_page_cost"] == "1.1"
    assert settings["listen_addresses"] == "localhost,%s" % address_of(db())
    assert sql("SELECT count(*) FROM pg_settings WHERE pending_restart", "postgres") == "0"


def test_role_alone_on_the_database_host_changes_nothing():
    """A play on matcraft_database only (no facts of the application host in
    that run) learns the client addresses itself and finds nothing to change."""
    with tempfile.TemporaryDirectory() as workdir:
        play = os.path.join(workdir, "database_only.yml")
        with open(play, "w") as handle:
            handle.write("- name: PostgreSQL alone\n  hosts: matcraft_database\n  roles:\n"
                         "    - role: matcraft.deploy.postgresql\n")
        run = playbook(play)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = [line for line in run.stdout.splitlines() if line.startswith("pg-db ")]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], run.stdout[-4000:]
    assert "-> pg-app]" in run.stdout, "the application host's facts were not gathered"


def test_app_user_connects_with_tls_and_is_not_superuser():
    app = peer("pg-app")
    # (TLS: pg_hba.conf has hostssl lines only, and the next test is refused without it. The
    # session's own row of pg_stat_ssl is hidden from it now: it acts as the runtime role, which
    # is not a member of the login role.)
    got = app_psql(app, TLS, "SELECT session_user = %s, current_user, "
                             "(SELECT rolsuper FROM pg_roles WHERE rolname = session_user)" % ("'%s'" % LOGIN))
    assert got.rc == 0, got.stderr
    # The login role's sessions act as the runtime role.
    assert got.stdout.strip() == "t|matcraft_runtime|f"
    # The owner role owns the database and its public schema.
    assert sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'matcraft'") == "matcraft"
    assert sql("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'") == "matcraft"
    escalate = app_psql(app, TLS, "ALTER ROLE matcraft SUPERUSER")
    assert escalate.rc != 0 and ("superuser" in escalate.stderr or "permission denied" in escalate.stderr), escalate.stderr


def test_the_runtime_role_has_data_rights_and_no_ddl():
    """Security issue item 9: the application's role reads and writes the owner's tables,
    including a table the owner creates after the role ran (default privileges), and is
    refused every schema change: CREATE, ALTER, DROP, TRUNCATE, and taking the owner role."""
    app = peer("pg-app")
    sql("SET ROLE matcraft; CREATE TABLE IF NOT EXISTS runtime_probe (id serial PRIMARY KEY, note text)")
    assert sql("SELECT tableowner FROM pg_tables WHERE tablename = 'runtime_probe'") == "matcraft"
    wrote = app_psql(app, TLS, "INSERT INTO runtime_probe (note) VALUES ('x') RETURNING id > 0; "
                               "UPDATE runtime_probe SET note = 'y'; DELETE FROM runtime_probe; SELECT 'ok'")
    assert wrote.rc == 0 and wrote.stdout.strip().endswith("ok"), wrote.stderr
    for statement, refusal in (
            ("CREATE TABLE ddl_probe (id int)", "permission denied for schema public"),
            ("ALTER TABLE runtime_probe ADD COLUMN extra int", "must be owner of table runtime_probe"),
            ("DROP TABLE runtime_probe", "must be owner of table runtime_probe"),
            ("TRUNCATE runtime_probe", "permission denied for table runtime_probe"),
            ("CREATE INDEX ddl_probe_idx ON runtime_probe (note)", "must be owner of table runtime_probe"),
            ("SET ROLE matcraft", "permission denied to set role"),
    ):
        refused = app_psql(app, TLS, statement)
        assert refused.rc != 0 and refusal in refused.stderr, (statement, refused.stderr)
    assert sql("SELECT count(*) FROM pg_tables WHERE tablename = 'ddl_probe'") == "0"
    assert sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'runtime_probe'") == "2"


def test_the_owner_has_no_password_login():
    """The owner logs in with its client certificate only (the migrations, from the API
    hosts): the application's password, which earlier releases gave it too, opens nothing,
    and without a certificate the server refuses it."""
    assert sql("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'matcraft'", "postgres") == "t"
    refused = app_psql(peer("pg-app"), OWNER_TLS + "matcraft", "SELECT 1")
    assert refused.rc != 0, refused.stdout
    assert 'certificate authentication failed for user "matcraft"' in refused.stderr \
        or "connection requires a valid client certificate" in refused.stderr, refused.stderr
    # The pg_hba.conf line: certificate, from the API hosts only.
    hba = db().file("/etc/postgresql/15/main/pg_hba.conf").content_string
    assert "hostssl    matcraft       matcraft           %s/32    cert" % address_of(peer("pg-app")) in hba, hba


def test_app_user_refused_without_tls():
    app = peer("pg-app")
    got = app_psql(app, TLS.replace("sslmode=verify-full", "sslmode=disable"), "SELECT 1")
    assert got.rc != 0
    assert "no encryption" in got.stderr, got.stderr


def test_outsider_cannot_reach_postgresql():
    target = address_of(db())
    assert probe_tcp(peer("pg-app"), target, 5432), "the application host cannot reach 5432"
    assert not probe_tcp(peer("pg-outsider"), target, 5432), "the outsider reached 5432"
    got = app_psql(peer("pg-outsider"), TLS, "SELECT 1")
    assert got.rc != 0


def test_pgbackrest_has_a_full_backup_and_a_daily_timer():
    info = json.loads(db().check_output("runuser -u postgres -- pgbackrest --stanza=matcraft --output=json info"))
    stanza = info[0]
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b for b in stanza["backup"] if b["type"] == "full"], stanza["backup"]
    check = db().run("runuser -u postgres -- pgbackrest --stanza=matcraft check")
    assert check.rc == 0, check.stdout + check.stderr
    timer = db().service("matcraft-pgbackrest-full.timer")
    assert timer.is_enabled and timer.is_running
    unit = db().check_output("systemctl cat matcraft-pgbackrest@.service matcraft-pgbackrest-full.timer")
    assert "ExecCondition=" in unit and "Persistent=true" in unit and "OnCalendar=*-*-* 01:30:00" in unit
    metric = db().file("/var/lib/prometheus/node-exporter/matcraft_backup.prom")
    assert metric.exists and 'matcraft_backup_last_success_timestamp_seconds{type="full"}' in metric.content_string


def test_the_backup_unit_runs_in_the_services_sandbox():
    """An incremental backup through the installed unit succeeds inside the sandbox of the MatCraft
    services (no capabilities, the system-service syscall set, no namespaces, kernel settings
    read-only...), and PostgreSQL keeps serving after the unit has stopped (no RemoveIPC=)."""
    host = db()
    checks = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
              "AmbientCapabilities": "", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
              "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
              "ProtectHostname": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
              "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "RemoveIPC": "no",
              "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native"}
    props = host.run("systemctl show matcraft-pgbackrest@incr.service -p %s", ",".join(checks) + ",SystemCallFilter")
    values = dict(line.split("=", 1) for line in props.stdout.splitlines())
    for key, want in checks.items():
        assert values[key] == want, (key, values[key])
    assert "openat" in values["SystemCallFilter"] and "reboot" not in values["SystemCallFilter"].split()
    before = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=matcraft --output=json info"))
    run = host.run("systemctl start matcraft-pgbackrest@incr.service")
    assert run.rc == 0, run.stderr + host.run("journalctl -u matcraft-pgbackrest@incr.service -n 30 --no-pager").stdout
    assert host.run("systemctl show matcraft-pgbackrest@incr.service -p Result").stdout.strip() == "Result=success"
    after = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=matcraft --output=json info"))
    assert len(after[0]["backup"]) == len(before[0]["backup"]) + 1 and after[0]["backup"][-1]["type"] == "incr"
    assert host.run("runuser -u postgres -- psql -Atc 'SELECT 1'").stdout.strip() == "1"


def test_restore_refuses_without_confirmation():
    started = sql("SELECT pg_postmaster_start_time()", "postgres")
    before = timeline()
    run = playbook("restore.yml", restore_target_time="2000-01-01 00:00:00+00")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Restore refused" in output and "restore_confirm=pg-db" in output, output[-3000:]
    wrong = playbook("restore.yml", restore_confirm="pg-app")
    assert wrong.returncode != 0 and "Restore refused" in wrong.stdout + wrong.stderr, wrong.stderr[-3000:]
    assert sql("SELECT pg_postmaster_start_time()", "postgres") == started
    assert timeline() == before


def test_point_in_time_restore():
    sql("DROP TABLE IF EXISTS pitr_probe; CREATE TABLE pitr_probe (id serial PRIMARY KEY, label text NOT NULL)")
    backup = playbook("backup.yml", backup_type="full")
    assert backup.returncode == 0, backup.stdout[-3000:]
    sql("INSERT INTO pitr_probe (label) SELECT 'marker' FROM generate_series(1, 5)")
    target = sql("SELECT clock_timestamp()", "postgres")
    time.sleep(2)
    sql("INSERT INTO pitr_probe (label) SELECT 'later' FROM generate_series(1, 3)")
    switch_and_wait_archived()
    before = timeline()

    run = playbook("restore.yml", restore_confirm="pg-db", restore_target_time=target)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Timeline %d -> %d" % (before, before + 1) in run.stdout, run.stdout[-3000:]
    assert "from backup set unknown" not in run.stdout, run.stdout[-3000:]

    assert sql("SELECT count(*) FILTER (WHERE label = 'marker') || '|' || count(*) FILTER (WHERE label = 'later') "
               "FROM pitr_probe") == "5|0"
    assert timeline() > before
    assert sql("SELECT pg_is_in_recovery()", "postgres") == "f"
    # The restored primary takes writes and keeps archiving on its new timeline.
    sql("INSERT INTO pitr_probe (label) VALUES ('after-restore')")
    switch_and_wait_archived()


@pytest.mark.parametrize("target", ["name", "xid"])
def test_restore_to_a_named_point_or_a_transaction(target):
    """restore_target_name and restore_target_xid: the rows up to that point survive, later ones do not."""
    label = "%s-%d" % (target, time.time_ns())
    sql("INSERT INTO pitr_probe (label) VALUES ('%s-kept')" % label)
    if target == "name":
        sql("SELECT pg_create_restore_point('%s')" % label, "postgres")
        extra = {"restore_target_name": label}
    else:
        # The xid of the transaction that wrote the last row to keep (recovery_target_inclusive).
        xid = sql("INSERT INTO pitr_probe (label) VALUES ('%s-xid') RETURNING xmin" % label)
        extra = {"restore_target_xid": xid.splitlines()[-1].strip()}
    sql("INSERT INTO pitr_probe (label) VALUES ('%s-later')" % label)
    switch_and_wait_archived()
    before = timeline()
    run = playbook("restore.yml", restore_confirm="pg-db", **extra)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Timeline %d -> %d" % (before, before + 1) in run.stdout, run.stdout[-3000:]
    kept = sql("SELECT count(*) FILTER (WHERE label = '%s-kept') || '|' || count(*) FILTER (WHERE label = '%s-later') "
               "FROM pitr_probe" % (label, label))
    assert kept == "1|0", kept
    sql("INSERT INTO pitr_probe (label) VALUES ('after-%s')" % label)
    switch_and_wait_archived()


def row_counts(tables):
    """{table: rows} on the primary."""
    return {table: int(sql("SELECT count(*) FROM %s" % table)) for table in tables}


def test_restore_drill_exact_row_counts_and_rpo_within_archive_timeout():
    """The drill restores the latest backup and replays the archive after it: its copy holds exactly the
    rows written before that backup plus those archived after it, table by table, nothing more or less."""
    # Fresh tables, so no rows of an earlier run count. Before the backup: 7 materials, 4 campaigns.
    sql("DROP TABLE IF EXISTS materials, campaigns, drill_rpo_probe; "
        "CREATE TABLE materials (id serial PRIMARY KEY, name text); "
        "CREATE TABLE campaigns (id serial PRIMARY KEY, name text); "
        "CREATE TABLE drill_rpo_probe (id serial PRIMARY KEY, label text); "
        "INSERT INTO materials (name) SELECT 'alloy-' || g FROM generate_series(1, 7) g; "
        "INSERT INTO campaigns (name) SELECT 'campaign-' || g FROM generate_series(1, 4) g")
    backup = playbook("backup.yml", backup_type="full")
    assert backup.returncode == 0, backup.stdout[-3000:]
    info = json.loads(db().check_output("runuser -u postgres -- pgbackrest --stanza=matcraft --output=json info"))
    latest = info[0]["backup"][-1]["label"]
    assert latest.endswith("F"), info[0]["backup"]
    assert row_counts(["materials", "campaigns"]) == {"materials": 7, "campaigns": 4}
    # After the backup: 2 campaigns, archived before the drill starts (the drill replays them); no other
    # write to a table the drill counts from here on.
    sql("INSERT INTO campaigns (name) VALUES ('after-backup-1'), ('after-backup-2')")
    switch_and_wait_archived()
    expected = {"materials": 7, "campaigns": 6}
    assert row_counts(expected) == expected
    # Written just before the drill into a table the drill does not count: probably not archived yet, so it
    # counts toward the RPO (whether it is archived in time changes no expected row count).
    sql("INSERT INTO drill_rpo_probe (label) VALUES ('fresh')")
    before = sql("SELECT pg_postmaster_start_time()", "postgres")
    with tempfile.TemporaryDirectory() as workdir:
        report_path = os.path.join(workdir, "drill.json")
        run = playbook("restore_drill.yml", restore_drill_report=report_path)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        with open(report_path) as handle:
            report = json.load(handle)
    assert 0 <= float(report["rpo_seconds"]) <= ARCHIVE_TIMEOUT, report
    assert float(report["rto_seconds"]) > 0, report
    assert report["backup_set"] == latest, report
    # Exactly the tables of postgresql_drill_tables that exist (not pitr_probe or drill_rpo_probe), each with
    # exactly its rows at the backup plus the archived ones after it.
    assert {table: int(rows) for table, rows in report["row_counts"].items()} == expected, report
    # Production was not touched, and the scratch copy is gone.
    assert sql("SELECT pg_postmaster_start_time()", "postgres") == before
    assert row_counts(expected) == expected
    assert not db().file("/var/lib/postgresql/restore-drill").exists
    assert not probe_tcp(db(), "127.0.0.1", 55432)
