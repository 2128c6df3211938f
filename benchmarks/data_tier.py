#!/usr/bin/env python3
"""Data-tier benchmark: RTO of a >= 1 GB database, RPO after a hard kill of the
primary, and pgbench TPS with the collection's tuning against the defaults.

It runs against the Molecule scenario "postgresql" (host pg-db: PostgreSQL 15
with pgBackRest as the role configures it, tier small, tuned for 2 GiB):

  make setup && .venv/bin/molecule converge -s postgresql
  .venv/bin/python benchmarks/data_tier.py [--scale 70] [--seconds 30] [--output FILE]
  .venv/bin/molecule destroy -s postgresql

Steps (all inside pg-db, through `docker exec`, and the collection's own
playbooks against the scenario's inventory):
 1. pgbench -i at --scale (70 gives about 1.05 GB) into a database "bench".
 2. TPS: pgbench (--clients, --seconds, prepared statements) with the role's
    tuning; then with PostgreSQL's built-in values for the tuning settings
    (a conf.d file that comes after the role's and resets only those; WAL
    archiving, TLS and max_connections stay as they are, so the comparison
    isolates the tuning); ratio tuned / defaults. The reset is then removed.
 3. A full backup (playbooks/backup.yml), then a writer that commits one row
    with its clock_timestamp() every 0.2 s. After --write-seconds every
    process of the postgres user gets SIGKILL at once, and the WAL files not
    yet archived are deleted (the primary and its data disk are lost
    mid-write).
 4. playbooks/restore.yml to the end of the archive (the real restore: the
    data directory is replaced from the repository). RTO = wall time of the
    restore playbook until the server answers; RPO = kill time - the last
    row that survived. The expected RPO bound is archive_timeout (60 s).
Figures are printed as a table and as JSON (--output writes the JSON).
Bounded: every command has a timeout; the writer stops at the kill.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "pg-db"
TUNING = [
    "shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem", "wal_buffers",
    "min_wal_size", "max_wal_size", "checkpoint_timeout", "checkpoint_completion_target",
    "random_page_cost", "effective_io_concurrency", "default_statistics_target",
    "max_worker_processes", "max_parallel_workers", "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers", "wal_compression", "huge_pages",
]
DATA = "/var/lib/postgresql/15/main"
RESET_FILE = "/etc/postgresql/15/main/conf.d/99-bench-defaults.conf"


def run(argv, timeout=600, check=True, stdin=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
    if check and result.returncode != 0:
        sys.exit("failed (%d): %s\n%s%s" % (result.returncode, " ".join(argv),
                                           result.stdout[-3000:], result.stderr[-3000:]))
    return result


def dexec(script, timeout=600, check=True, user="root"):
    return run(["docker", "exec", "-u", user, HOST, "bash", "-ec", script], timeout=timeout, check=check)


def sql(query, database="postgres", timeout=120):
    out = run(["docker", "exec", "-u", "postgres", HOST, "psql", "-XAtq", "-d", database, "-c", query],
              timeout=timeout)
    return out.stdout.strip()


def inventory():
    found = sorted(glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.postgresql/inventory")),
                   key=os.path.getmtime)
    if not found:
        sys.exit("no inventory of the postgresql scenario: run `molecule converge -s postgresql` first")
    return found[-1]


def playbook(name, timeout=1800, **extra):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"))
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", inventory(),
            os.path.join(ROOT, "playbooks", name)]
    if extra:
        argv += ["-e", json.dumps(extra)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if result.returncode != 0:
        sys.exit("playbook %s failed:\n%s%s" % (name, result.stdout[-4000:], result.stderr[-2000:]))
    return time.monotonic() - started


def wait_ready(timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dexec("pg_isready -q -h /var/run/postgresql", check=False).returncode == 0:
            return
        time.sleep(0.5)
    sys.exit("PostgreSQL did not come back within %d s" % timeout)


def pgbench_tps(clients, seconds):
    out = dexec("pgbench -n -M prepared -c %d -j 2 -T %d bench" % (clients, seconds),
                timeout=seconds + 300, user="postgres").stdout
    for line in out.splitlines():
        if line.startswith("tps =") or line.startswith("tps="):
            return float(line.split("=")[1].split()[0])
    sys.exit("no tps line in pgbench output:\n" + out)


def restart():
    dexec("systemctl restart postgresql@15-main.service", timeout=300)
    wait_ready()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale factor (70 = about 1.05 GB)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30, help="length of each pgbench run")
    parser.add_argument("--write-seconds", type=int, default=75, help="writer time before the hard kill")
    parser.add_argument("--output")
    args = parser.parse_args()
    figures = {"host": HOST, "scale": args.scale, "clients": args.clients, "seconds": args.seconds}

    if run(["docker", "inspect", HOST], check=False).returncode != 0:
        sys.exit("container %s not found: run `molecule converge -s postgresql` first" % HOST)
    dexec("rm -f %s" % RESET_FILE)
    restart()

    # 1. Data set.
    sql("DROP DATABASE IF EXISTS bench")
    sql("CREATE DATABASE bench")
    started = time.monotonic()
    dexec("pgbench -i -q -s %d bench" % args.scale, timeout=3600, user="postgres")
    figures["init_seconds"] = round(time.monotonic() - started, 1)
    figures["database_bytes"] = int(sql("SELECT pg_database_size('bench')"))
    figures["cluster_bytes"] = int(sql("SELECT sum(pg_database_size(datname)) FROM pg_database"))

    # 2. Tuned against built-in values of the tuning settings.
    sql("CHECKPOINT")
    figures["tps_tuned"] = pgbench_tps(args.clients, args.seconds)
    rows = sql("SELECT name || '|' || boot_val || coalesce(unit, '') FROM pg_settings WHERE name IN (%s)"
               % ", ".join("'%s'" % name for name in TUNING))
    reset, applied = [], {}
    for row in rows.splitlines():
        name, value = row.split("|", 1)
        if value.endswith("8kB"):
            value = "%dkB" % (int(value[:-3]) * 8)
        reset.append("%s = '%s'" % (name, value))
        applied[name] = sql("SHOW %s" % name)
    figures["tuned_settings"] = applied
    dexec("cat > %s <<'EOF'\n%s\nEOF\nchmod 0644 %s" % (RESET_FILE, "\n".join(reset), RESET_FILE))
    restart()
    figures["default_settings"] = {name: sql("SHOW %s" % name) for name in applied}
    sql("CHECKPOINT")
    figures["tps_defaults"] = pgbench_tps(args.clients, args.seconds)
    dexec("rm -f %s" % RESET_FILE)
    restart()
    figures["tps_ratio_tuned_over_defaults"] = round(figures["tps_tuned"] / figures["tps_defaults"], 3)

    # 3. Backup, writer, hard kill.
    figures["backup_seconds"] = round(playbook("backup.yml", backup_type="full"), 1)
    sql("CREATE TABLE IF NOT EXISTS rpo_probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL)", "bench")
    writer = subprocess.Popen(
        ["docker", "exec", "-u", "postgres", HOST, "bash", "-c",
         "for i in $(seq 1 %d); do psql -XAtq -d bench -c 'INSERT INTO rpo_probe (at) VALUES (clock_timestamp())' "
         ">/dev/null 2>&1 || exit 0; sleep 0.2; done" % (args.write_seconds * 10)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(args.write_seconds)
    before_kill = float(sql("SELECT extract(epoch FROM max(at)) FROM rpo_probe", "bench"))
    killed_at = float(dexec("date +%s.%N; pkill -KILL -u postgres", user="root").stdout.split()[0])
    writer.wait(timeout=60)
    figures["last_commit_seen_before_kill_age_s"] = round(killed_at - before_kill, 2)
    # What a lost data disk also loses: the WAL not yet archived. The stale
    # postmaster.pid of the killed server goes too (pgBackRest refuses to
    # restore over a directory that looks in use).
    dexec("rm -f %s/postmaster.pid %s/pg_wal/0*" % (DATA, DATA))

    # 4. Restore to the end of the archive.
    started = time.monotonic()
    playbook("restore.yml", restore_confirm=HOST)
    wait_ready()
    figures["rto_seconds"] = round(time.monotonic() - started, 1)
    last = float(sql("SELECT extract(epoch FROM max(at)) FROM rpo_probe", "bench"))
    figures["rows_restored"] = int(sql("SELECT count(*) FROM rpo_probe", "bench"))
    figures["rpo_seconds"] = round(killed_at - last, 1)
    figures["archive_timeout"] = sql("SHOW archive_timeout")

    print("Data tier benchmark on %s (PostgreSQL %s)" % (HOST, sql("SHOW server_version")))
    print("  data set: pgbench scale %d, database %.2f GB (cluster %.2f GB), generated in %.0f s"
          % (args.scale, figures["database_bytes"] / 1e9, figures["cluster_bytes"] / 1e9, figures["init_seconds"]))
    print("  pgbench -c %d -T %d: tuned %.0f tps, built-in values %.0f tps, ratio %.2f"
          % (args.clients, args.seconds, figures["tps_tuned"], figures["tps_defaults"],
             figures["tps_ratio_tuned_over_defaults"]))
    print("  full backup (backup.yml): %.0f s" % figures["backup_seconds"])
    print("  RTO, restore.yml to the end of the archive until the server answers: %.0f s" % figures["rto_seconds"])
    print("  RPO after SIGKILL of the primary: %.1f s of commits lost (archive_timeout %s)"
          % (figures["rpo_seconds"], figures["archive_timeout"]))
    print(json.dumps(figures, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
