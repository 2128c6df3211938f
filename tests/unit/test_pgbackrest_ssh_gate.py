"""The decisions of the pgBackRest SSH gate (roles/postgresql/files/pgbackrest_ssh_gate.py).

The accepted commands are the ones pgBackRest 2.45 (Debian 12) sent in the
backup_repos scenario (logged from SSH_ORIGINAL_COMMAND during a backup,
check, archive-push, archive-get and restore); the scenario proves the gate
end to end (`test_backup_repos.py::test_the_database_host_cannot_run_commands_on_the_backup_host`,
`::test_the_backup_host_cannot_run_sql_or_commands_on_the_database_host`).
"""

import importlib.util
import os
import sys

import pytest

from conftest import ROOT

_PATH = os.path.join(ROOT, "roles", "postgresql", "files", "pgbackrest_ssh_gate.py")
_SPEC = importlib.util.spec_from_file_location("pgbackrest_ssh_gate", _PATH)
GATE = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = GATE  # dataclasses resolve annotations through sys.modules
_SPEC.loader.exec_module(GATE)

DATA = "/var/lib/postgresql/15/main"
REPO = "/var/lib/pgbackrest"
# On the database host: the backup host may start a pg remote.
PG = GATE.Policy(remote_type="pg", stanza="matcraft", pg_paths=(DATA,), pg_socket_path="/var/run/postgresql",
                 pg_port="5432")
# On the backup host: the database host may start a repo remote (for the
# database and for the restore drill's copy of it).
DRILL = "/var/lib/postgresql/restore-drill/data"
REPO_POLICY = GATE.Policy(remote_type="repo", stanza="matcraft", repo_path=REPO, pg_paths=(DATA, DRILL))

PG_REMOTE = ("pgbackrest --exec-id=5817-1f3a9c2e --log-level-console=off --log-level-file=off "
             "--log-level-stderr=error --pg1-path=/var/lib/postgresql/15/main --pg1-port=5432 "
             "--pg1-socket-path=/var/run/postgresql --process=0 --remote-type=pg --stanza=matcraft")
REPO_REMOTE = ("pgbackrest --archive-async --exec-id=4411-0b7de3aa --log-level-console=off --log-level-file=off "
               "--log-level-stderr=error --process=1 --remote-type=repo --repo=1 "
               "--repo1-path=/var/lib/pgbackrest --stanza=matcraft")
REPO_REMOTE_PG = ("pgbackrest --exec-id=4415-9c0e71d2 --log-level-console=off --log-level-file=off "
                  "--log-level-stderr=error --pg1-path=/var/lib/postgresql/15/main --process=0 --remote-type=repo "
                  "--repo=1 --repo1-path=/var/lib/pgbackrest --stanza=matcraft")

ACCEPTED_PG = [
    PG_REMOTE + " backup:remote",
    PG_REMOTE.replace("--process=0", "--process=1") + " backup:remote",
    PG_REMOTE + " check:remote",
    PG_REMOTE + " stanza-create:remote",
    # the backup timer runs pgBackRest by its absolute path, which it passes on
    "/usr/bin/" + PG_REMOTE + " backup:remote",
]
ACCEPTED_REPO = [
    REPO_REMOTE + " archive-push:remote",
    REPO_REMOTE.replace("--process=1", "--process=0") + " archive-push:remote",
    REPO_REMOTE.replace("pgbackrest ", "pgbackrest --pg1-path=%s " % DATA) + " archive-get:remote",
    REPO_REMOTE_PG + " check:remote",
    REPO_REMOTE_PG + " restore:remote",
    REPO_REMOTE_PG + " info:remote",
    # playbooks/restore_drill.yml: the restore and its archive-get into the drill's directory
    REPO_REMOTE_PG.replace(DATA, DRILL) + " restore:remote",
    REPO_REMOTE_PG.replace(DATA, DRILL).replace("pgbackrest ", "pgbackrest --no-archive-async ")
    + " archive-get:remote",
]


@pytest.mark.parametrize("command", ACCEPTED_PG)
def test_pg_remotes_of_a_backup_are_run(command):
    argv = GATE.decide(command, PG)
    assert argv[0] == "/usr/bin/pgbackrest" and argv[1:] == command.split()[1:]


@pytest.mark.parametrize("command", ACCEPTED_REPO)
def test_repo_remotes_of_archiving_and_restores_are_run(command):
    argv = GATE.decide(command, REPO_POLICY)
    assert argv[0] == "/usr/bin/pgbackrest" and argv[1:] == command.split()[1:]


def test_quoted_values_are_split_like_a_shell_would():
    argv = GATE.decide(REPO_REMOTE + ' "--exec-id=1-ab" archive-push:remote', REPO_POLICY)
    assert "--exec-id=1-ab" in argv


@pytest.mark.parametrize("command", [
    "rm -rf /var/lib/pgbackrest",
    "sh -c id",
    "/bin/sh",
    "cat /etc/pgbackrest/pgbackrest.conf",
    "psql -c 'select 1'",
    "id",
    "true",
    "python3 -c 'import os'",
    "/usr/local/bin/pgbackrest --remote-type=repo archive-push:remote",
    "env pgbackrest --remote-type=repo archive-push:remote",
])
def test_other_programs_are_refused(command):
    with pytest.raises(GATE.Refused, match="not pgBackRest"):
        GATE.decide(command, REPO_POLICY)


@pytest.mark.parametrize("command", [
    REPO_REMOTE + " archive-push:remote; rm -rf /var/lib/pgbackrest",
    REPO_REMOTE + " archive-push:remote && rm -rf /var/lib/pgbackrest",
    REPO_REMOTE + " archive-push:remote | sh",
    REPO_REMOTE + " archive-push:remote;id",
    REPO_REMOTE + " archive-push:remote $(id)",
    REPO_REMOTE + " `id` archive-push:remote",
    REPO_REMOTE + " --stanza=matcraft;id archive-push:remote",
    REPO_REMOTE + " --exec-id=1-a$(id) archive-push:remote",
    REPO_REMOTE + " archive-push:remote\nrm -rf /var/lib/pgbackrest",
])
def test_shell_injection_is_refused(command):
    with pytest.raises(GATE.Refused):
        GATE.decide(command, REPO_POLICY)


def test_nothing_reaches_a_shell_even_when_accepted():
    """What is accepted is executed as a list of words: metacharacters could only be
    literal arguments, and none of them passes the value checks anyway."""
    argv = GATE.decide(REPO_REMOTE + " archive-push:remote", REPO_POLICY)
    assert all(not set(word) & set(";&|`$<>\n") for word in argv)


@pytest.mark.parametrize("command,policy", [
    (REPO_REMOTE + " archive-push:remote", PG),
    (REPO_REMOTE_PG + " restore:remote", PG),
    (PG_REMOTE + " backup:remote", REPO_POLICY),
    (PG_REMOTE.replace("--remote-type=pg", "--remote-type=repo") + " backup:remote", PG),
    (PG_REMOTE.replace("--remote-type=pg ", "") + " backup:remote", PG),
])
def test_wrong_or_missing_remote_type_is_refused(command, policy):
    with pytest.raises(GATE.Refused, match="remote-type|not allowed"):
        GATE.decide(command, policy)


@pytest.mark.parametrize("command,policy", [
    (REPO_REMOTE + " repo-rm:remote", REPO_POLICY),
    (REPO_REMOTE + " repo-put:remote", REPO_POLICY),
    (REPO_REMOTE + " stanza-delete:remote", REPO_POLICY),
    (REPO_REMOTE + " expire:remote", REPO_POLICY),
    (REPO_REMOTE + " annotate:remote", REPO_POLICY),
    (PG_REMOTE + " stanza-delete:remote", PG),
    (PG_REMOTE + " restore:remote", PG),
])
def test_deleting_and_unneeded_commands_are_refused(command, policy):
    with pytest.raises(GATE.Refused, match="not allowed through this key"):
        GATE.decide(command, policy)


@pytest.mark.parametrize("command,policy", [
    (REPO_REMOTE + " backup", REPO_POLICY),
    (REPO_REMOTE + " remote", REPO_POLICY),
    (REPO_REMOTE + " archive-push:local", REPO_POLICY),
    (REPO_REMOTE + " archive-push:async", REPO_POLICY),
    ("pgbackrest", REPO_POLICY),
])
def test_only_remotes_are_started(command, policy):
    with pytest.raises(GATE.Refused):
        GATE.decide(command, policy)


@pytest.mark.parametrize("option", [
    "--config=/tmp/evil.conf",
    "--config-path=/tmp",
    "--no-config",
    "--config-include-path=/tmp/conf.d",
    "--repo1-path=/home/pgbackrest",
    "--repo1-path=/var/lib/pgbackrest/../../../home/pgbackrest",
    "--repo2-path=/var/lib/pgbackrest",
    "--pg1-path=/var/lib/pgbackrest",
    "--lock-path=/tmp",
    "--log-path=/home/pgbackrest/.ssh",
    "--spool-path=/tmp",
    "--cmd=/tmp/evil",
    "--cmd-ssh=/tmp/evil",
    "--repo1-host-cmd=/tmp/evil",
    "--repo1-type=s3",
    "--repo1-s3-endpoint=evil.example.org",
    "--repo1-cipher-pass=x",
    "--tls-server-key-file=/tmp/key",
    "--reset-repo1-path",
    "--stanza=other",
    "--repo=2",
    "--exec-id=1-ab;id",
    "--unknown-option=1",
    "--archive-async=/tmp",
    "-c",
])
def test_config_and_path_overrides_are_refused(option):
    with pytest.raises(GATE.Refused):
        GATE.decide(REPO_REMOTE + " " + option + " archive-push:remote", REPO_POLICY)


@pytest.mark.parametrize("option", [
    "--pg1-path=/tmp",
    "--pg1-socket-path=/tmp",
    "--pg1-port=5433",
    "--pg2-path=/var/lib/postgresql/15/main",
    "--pg1-path=/var/lib/postgresql/restore-drill/data",
    "--pg1-host-config=/tmp/evil.conf",
    "--config=/tmp/evil.conf",
])
def test_database_path_overrides_are_refused(option):
    with pytest.raises(GATE.Refused):
        GATE.decide(PG_REMOTE + " " + option + " backup:remote", PG)


@pytest.mark.parametrize("command", [None, "", "   ", "\n"])
def test_empty_command_is_refused(command):
    with pytest.raises(GATE.Refused, match="no command"):
        GATE.decide(command, PG)


def test_unbalanced_quotes_are_refused():
    with pytest.raises(GATE.Refused, match="quotes"):
        GATE.decide(REPO_REMOTE + " 'archive-push:remote", REPO_POLICY)


def test_refusals_never_repeat_values():
    secret = "s3cr3t-value-that-must-not-be-logged"
    for command in (REPO_REMOTE + " --repo1-path=/" + secret + " archive-push:remote",
                    "cat /" + secret,
                    REPO_REMOTE + " --stanza=" + secret + " archive-push:remote"):
        with pytest.raises(GATE.Refused) as refused:
            GATE.decide(command, REPO_POLICY)
        assert secret not in str(refused.value)


def test_main_refuses_on_stderr_with_exit_1(monkeypatch, capsys):
    logged = []
    monkeypatch.setattr(GATE.syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(GATE.syslog, "syslog", lambda priority, message: logged.append(message))
    monkeypatch.setattr(GATE.os, "execv", lambda *args: pytest.fail("executed a refused command"))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "rm -rf /var/lib/pgbackrest")
    monkeypatch.setenv("SSH_CONNECTION", "192.0.2.10 50000 192.0.2.20 22")
    assert GATE.main(["--remote-type=repo", "--stanza=matcraft", "--repo-path=" + REPO, "--pg-path=" + DATA]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pgbackrest-ssh-gate: refused: not pgBackRest") and err.count("\n") == 1
    assert len(logged) == 1 and "192.0.2.10" in logged[0] and "rm -rf" not in logged[0]


def test_main_executes_accepted_commands_without_a_shell(monkeypatch):
    executed = []
    monkeypatch.setattr(GATE.os, "execv", lambda path, argv: executed.append((path, argv)))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", REPO_REMOTE_PG.replace(DATA, DRILL) + " restore:remote")
    GATE.main(["--remote-type=repo", "--stanza=matcraft", "--repo-path=" + REPO, "--pg-path=" + DATA,
               "--pg-path=" + DRILL])
    words = REPO_REMOTE_PG.replace(DATA, DRILL).split()[1:] + ["restore:remote"]
    assert executed == [("/usr/bin/pgbackrest", ["/usr/bin/pgbackrest"] + words)]
