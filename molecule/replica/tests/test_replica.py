"""Streaming replica: rows written on the primary appear on the replica, the
replica refuses writes, and replication runs over TLS through its slot."""

import time

from helpers import address_of, peer


def psql(host_name, query, database="matcraft"):
    result = peer(host_name).run("runuser -u postgres -- psql -XAtq -d %s -c %s", database, query)
    return result


def ok(host_name, query, database="matcraft"):
    result = psql(host_name, query, database)
    assert result.rc == 0, "%s on %s: %s" % (query, host_name, result.stderr)
    return result.stdout.strip()


def test_replica_is_a_hot_standby_streaming_through_its_slot():
    assert ok("rep-replica", "SELECT pg_is_in_recovery()", "postgres") == "t"
    assert ok("rep-replica", "SELECT status FROM pg_stat_wal_receiver", "postgres") == "streaming"
    assert ok("rep-primary", "SELECT active FROM pg_replication_slots WHERE slot_name = 'rep_replica'", "postgres") == "t"
    # The walsender of the replica's connection uses TLS, from the replica's address.
    row = ok("rep-primary", "SELECT host(r.client_addr) || '|' || r.application_name || '|' || s.ssl "
                            "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)", "postgres")
    assert row == "%s|rep_replica|true" % address_of(peer("rep-replica"))
    # Lag is observable on both sides.
    assert ok("rep-primary", "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NOT NULL", "postgres") == "1"


def test_rows_written_on_the_primary_appear_on_the_replica():
    ok("rep-primary", "CREATE TABLE IF NOT EXISTS replica_probe (id serial PRIMARY KEY, note text)")
    marker = "written-%d" % time.time_ns()
    ok("rep-primary", "INSERT INTO replica_probe (note) VALUES ('%s')" % marker)
    deadline = time.time() + 30
    while time.time() < deadline:
        if ok("rep-replica", "SELECT count(*) FROM replica_probe WHERE note = '%s'" % marker) == "1":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the row did not reach the replica within 30 s")


def test_replica_refuses_writes():
    got = psql("rep-replica", "INSERT INTO replica_probe (note) VALUES ('must-fail')")
    assert got.rc != 0
    assert "read-only transaction" in got.stderr, got.stderr
