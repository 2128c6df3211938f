#!/usr/bin/python3
"""Forced command of the pgBackRest SSH keys (role postgresql, matcraft.deploy).

sshd runs this program instead of whatever the peer asked for; the request is
in SSH_ORIGINAL_COMMAND. It is split with shlex and executed (execv, never
through a shell) only when it is a pgBackRest remote of the expected type:

    pgbackrest [--option=value | --flag | --no-flag]... <command>:remote

- the program is pgbackrest (by name or its absolute path); what runs is
  always the absolute path given with --pgbackrest;
- the last word is <command>:remote for a command allowed for the remote
  type (backups and checks against the database host, archiving, restores
  and checks against the repository);
- --remote-type equals this key's type (pg on the database host, repo on
  the backup host);
- every option is on an allow-list of the options pgBackRest passes to its
  remotes, with a value of the expected form; the paths (pg1-path,
  pg1-socket-path, repo1-path) and the stanza must equal the configured
  ones (pg1-path: one of them); nothing that names another configuration file, include path, lock
  or log path, SSH or TLS command or key is accepted.

Anything else is refused: one line on stderr, one line to syslog (facility
auth; the reason and the client address, never the command's values), exit 1.

This stops arbitrary commands, shells and SQL through psql. It does not
limit what pgBackRest's own protocol does once the remote runs (see the
role's README: the protocol reads, writes and removes files and, on the
database host, runs queries).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import syslog
from dataclasses import dataclass

NAME = "pgbackrest-ssh-gate"

# The commands whose remote each side may start. Against the database host
# (remote type pg) the backup host backs up, checks and creates or upgrades
# the stanza. Against the repository (remote type repo) the database host
# archives, fetches WAL, restores, checks and reads. Deleting commands
# (repo-rm, stanza-delete, expire) and writing ones (repo-put, annotate) are
# not started through these keys.
COMMANDS = {
    "pg": frozenset({"backup", "check", "stanza-create", "stanza-upgrade"}),
    "repo": frozenset({"archive-get", "archive-push", "check", "info", "manifest", "repo-get", "repo-ls",
                       "restore", "stanza-create", "stanza-upgrade", "verify"}),
}

LOG_LEVELS = r"off|error|warn|info|detail|debug|trace"
DIGITS = r"[0-9]+"
SECONDS = r"[0-9]+(\.[0-9]+)?"
SIZE = r"[0-9]+([KMGTP]i?B?|[kmgtp]i?b?)?"
IDENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
KEY_VALUES = r"[0-9A-Za-z]+=[0-9A-Za-z]+"

# Options without a group, with the form of their value; EXPECT: must equal
# the configured value.
EXPECT = object()
GLOBAL_VALUES = {
    "remote-type": EXPECT,
    "stanza": EXPECT,
    "exec-id": r"[0-9]+-[0-9a-f]+",
    "process": DIGITS,
    "lock": r"[A-Za-z0-9_.-]+",
    "repo": r"1",
    "log-level-console": LOG_LEVELS,
    "log-level-file": LOG_LEVELS,
    "log-level-stderr": LOG_LEVELS,
    "buffer-size": SIZE,
    "db-timeout": SECONDS,
    "io-timeout": SECONDS,
    "protocol-timeout": SECONDS,
    "job-retry-interval": r"[0-9]+(,[0-9]+)*",
    "tcp-keep-alive-count": DIGITS,
    "tcp-keep-alive-idle": DIGITS,
    "tcp-keep-alive-interval": DIGITS,
}
GLOBAL_FLAGS = frozenset({"archive-async", "beta", "log-subprocess", "log-timestamp", "neutral-umask",
                          "sck-block", "sck-keep-alive"})
# Options of the pg1-... and repo1-... groups (index 1 only: the role
# configures one database and one repository).
PG_VALUES = {
    "path": EXPECT,
    "socket-path": EXPECT,
    "port": EXPECT,
    "database": IDENT,
    "user": IDENT,
    "host-user": IDENT,
    "host-port": DIGITS,
    "version-force": r"[0-9]+(\.[0-9]+)?",
}
REPO_VALUES = {
    "path": EXPECT,
    "type": r"posix",
    "bundle-limit": SIZE,
    "block-size-super-full": SIZE,
    "block-age-map": KEY_VALUES,
    "block-checksum-size-map": KEY_VALUES,
}
OPTION = re.compile(r"--(?P<name>[a-z][a-z0-9-]*)(=(?P<value>.*))?\Z", re.DOTALL)
GROUPED = re.compile(r"(?P<group>pg|repo)(?P<index>[0-9]+)-(?P<key>[a-z][a-z0-9-]*)\Z")
COMMAND = re.compile(r"(?P<command>[a-z][a-z-]*):remote\Z")


class Refused(Exception):
    """The request is not a pgBackRest remote this key may start."""


@dataclass(frozen=True)
class Policy:
    """What this key allows: the remote type, the stanza and the configured paths."""

    remote_type: str
    stanza: str
    pgbackrest: str = "/usr/bin/pgbackrest"
    # pg1-path may take more than one value: a repo remote also serves the
    # restore drill, which restores into a directory of its own.
    pg_paths: tuple[str, ...] = ()
    pg_socket_path: str | None = None
    pg_port: str | None = None
    repo_path: str | None = None

    def expected(self, name: str) -> tuple[str, ...]:
        """The values option name may have (none: the option is refused)."""
        if name == "pg-path":
            return self.pg_paths
        value = {
            "remote-type": self.remote_type,
            "stanza": self.stanza,
            "pg-socket-path": self.pg_socket_path,
            "pg-port": self.pg_port,
            "repo-path": self.repo_path,
        }.get(name)
        return () if value is None else (value,)


def _check_value(name: str, rule: object, value: str | None, policy: Policy, shown: str) -> None:
    if value is None:
        raise Refused("option --%s needs a value" % shown)
    if rule is EXPECT:
        if value not in policy.expected(name):
            raise Refused("option --%s differs from the configured value" % shown)
    elif not re.fullmatch(rule, value):  # type: ignore[arg-type]
        raise Refused("option --%s has a value of an unexpected form" % shown)


def _check_option(word: str, policy: Policy) -> None:
    match = OPTION.match(word)
    if match is None:
        raise Refused("unexpected argument (not an option of the form --name=value)")
    name, value = match.group("name"), match.group("value")
    shown = name[:40]
    if value is None:
        # pgBackRest passes booleans as --name and --no-name
        if (name[3:] if name.startswith("no-") else name) in GLOBAL_FLAGS:
            return
        raise Refused("option --%s is not allowed" % shown)
    grouped = GROUPED.match(name)
    if grouped is None:
        rules, key, rule_name = GLOBAL_VALUES, name, name
    else:
        group, key = grouped.group("group"), grouped.group("key")
        if grouped.group("index") != "1":
            raise Refused("option --%s: only %s1 is configured" % (shown, group))
        rules, rule_name = (PG_VALUES if group == "pg" else REPO_VALUES), group + "-" + key
    if key not in rules:
        raise Refused("option --%s is not allowed" % shown)
    _check_value(rule_name, rules[key], value, policy, shown)


def decide(command: str | None, policy: Policy) -> list[str]:
    """The argv to execute for the requested command, or Refused with the reason.

    The reason names options but never their values (the request could carry
    secrets)."""
    if command is None or not command.strip():
        raise Refused("no command: this key only starts pgBackRest's remote")
    try:
        words = shlex.split(command)
    except ValueError:
        raise Refused("the command cannot be split into words (unbalanced quotes)") from None
    if not words:
        raise Refused("no command: this key only starts pgBackRest's remote")
    if words[0] not in ("pgbackrest", policy.pgbackrest):
        raise Refused("not pgBackRest: this key only starts pgBackRest's remote")
    if len(words) < 2:
        raise Refused("no pgBackRest command")
    match = COMMAND.match(words[-1])
    if match is None:
        raise Refused("not a pgBackRest remote (the last word must be <command>:remote)")
    if match.group("command") not in COMMANDS[policy.remote_type]:
        raise Refused("pgBackRest command %s is not allowed through this key" % match.group("command")[:40])
    seen: set[str] = set()
    for word in words[1:-1]:
        _check_option(word, policy)
        seen.add(word.split("=", 1)[0])
    if "--remote-type" not in seen:
        raise Refused("option --remote-type is missing")
    return [policy.pgbackrest] + words[1:]


def _policy(argv: list[str]) -> Policy:
    parser = argparse.ArgumentParser(prog=NAME, description="Forced command of the pgBackRest SSH keys.")
    parser.add_argument("--remote-type", required=True, choices=sorted(COMMANDS))
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--pgbackrest", default="/usr/bin/pgbackrest")
    parser.add_argument("--pg-path", action="append", default=[], help="may be given more than once")
    parser.add_argument("--pg-socket-path")
    parser.add_argument("--pg-port")
    parser.add_argument("--repo-path")
    args = parser.parse_args(argv)
    return Policy(remote_type=args.remote_type, stanza=args.stanza, pgbackrest=args.pgbackrest,
                  pg_paths=tuple(args.pg_path), pg_socket_path=args.pg_socket_path, pg_port=args.pg_port,
                  repo_path=args.repo_path)


def main(argv: list[str] | None = None) -> int:
    policy = _policy(sys.argv[1:] if argv is None else argv)
    try:
        target = decide(os.environ.get("SSH_ORIGINAL_COMMAND"), policy)
    except Refused as refused:
        client = (os.environ.get("SSH_CONNECTION") or "unknown").split(" ")[0]
        syslog.openlog(NAME, syslog.LOG_PID, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_WARNING, "refused a request of %s for user %s (remote type %s): %s" % (
            client, os.environ.get("USER", "?"), policy.remote_type, refused))
        print("%s: refused: %s" % (NAME, refused), file=sys.stderr)
        return 1
    os.execv(target[0], target)
    return 1  # not reached: execv replaces the process or raises


if __name__ == "__main__":
    sys.exit(main())
