#!/usr/bin/python3
"""Secrets as systemd credentials (roles/common, entry point credential).

The secrets rest on disk only encrypted (systemd-creds, with the host key, and
a TPM2 where there is one): /etc/matcraft/credentials/<name>.cred. A unit loads
them with LoadCredentialEncrypted=, and systemd decrypts them into a memory
file system ($CREDENTIALS_DIRECTORY) that only the unit's user may read.

  put NAME FILE       (root, the roles) encrypt the secret read on stdin to
                      FILE, unless FILE already holds it; prints a JSON line
                      {"changed": bool, "sha256": <of FILE>}
  refresh --to DIR --owner USER --from DIR NAME...
                      (root, the API's ExecReload=+) decrypt the credentials
                      again into a new directory next to DIR (a runtime
                      directory, in memory) and point DIR, a symbolic link,
                      at it: systemd does not reload credentials, a graceful
                      reload must still see a rotated password, and the
                      workers still stopping keep the directory they read
  exec [--env VARIABLE=CREDENTIAL]... -- COMMAND...
                      (the service's user, in its sandbox) put the secrets into
                      the environment the application reads (SECRET_KEY,
                      REDIS_URL, and PGPASSFILE for libpq; or only the --env
                      ones), then run COMMAND

No secret is ever an argument: it comes on stdin or from a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

SYSTEMD_CREDS = "/usr/bin/systemd-creds"
#: Environment variable -> credential holding its value.
ENVIRONMENT = {"SECRET_KEY": "secret-key", "REDIS_URL": "redis-url"}
#: Environment variable -> credential whose path it gets (libpq reads the file).
PATHS = {"PGPASSFILE": "pgpass"}
#: Where `refresh` puts the credentials of the API's last reload.
REFRESHED = "MATCRAFT_CREDENTIALS_REFRESHED"


def decrypt(name: str, path: str) -> bytes:
    """The clear text of the credential *name* in *path* (root only: the host key)."""
    run = subprocess.run([SYSTEMD_CREDS, "decrypt", "--name=" + name, path, "-"],
                         capture_output=True, check=False)
    if run.returncode != 0:
        raise RuntimeError("cannot decrypt %s: %s" % (path, run.stderr.decode(errors="replace").strip()))
    return run.stdout


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def put(name: str, path: str, secret: bytes, key: str) -> dict:
    """Encrypt *secret* to *path* unless it already holds it (encryption is salted:
    comparing the files would re-encrypt on every run)."""
    if os.path.exists(path):
        try:
            if decrypt(name, path) == secret:
                return {"changed": False, "sha256": sha256(path)}
        except RuntimeError:
            pass  # another host key, or a damaged file: encrypted again below
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % name)
    os.close(handle)
    try:
        run = subprocess.run([SYSTEMD_CREDS, "encrypt", "--with-key=" + key, "--name=" + name, "-", temporary],
                             input=secret, capture_output=True, check=False)
        if run.returncode != 0:
            raise RuntimeError("systemd-creds encrypt failed: %s" % run.stderr.decode(errors="replace").strip())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return {"changed": True, "sha256": sha256(path)}


def refresh(target: str, owner: str, source: str, names: list[str]) -> None:
    """Decrypt *names* from *source* into a new directory readable by *owner*
    only, and point *target*, a symbolic link, at it. libpq reads the password
    file (PGPASSFILE) at every new connection, and the workers of the reload
    before may still be answering requests with the login they started with:
    their directory stays until the next refresh (the API's reload returns
    only once they have exited). Older directories are removed."""
    account = pwd.getpwnam(owner)
    parent, base = os.path.split(os.path.abspath(target))
    fresh = tempfile.mkdtemp(prefix=base + ".", dir=parent)
    for name in names:
        path = os.path.join(fresh, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(decrypt(name, os.path.join(source, name + ".cred")))
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(fresh, 0o500)
    os.chown(fresh, account.pw_uid, account.pw_gid)
    previous = os.path.realpath(target) if os.path.islink(target) else None
    if os.path.isdir(target) and not os.path.islink(target):
        # An earlier release's copy, a plain directory: kept as the one before.
        previous = tempfile.mkdtemp(prefix=base + ".", dir=parent)
        os.rmdir(previous)
        os.rename(target, previous)
    link = fresh + ".link"
    os.symlink(os.path.basename(fresh), link)
    os.replace(link, target)
    keep = {os.path.realpath(path) for path in (fresh, previous) if path}
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(base + ".") and os.path.realpath(path) not in keep and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def directory() -> str:
    """Where the secrets are: the API's last reload, else the unit's credentials."""
    refreshed = os.environ.get(REFRESHED, "")
    if refreshed and os.path.isdir(refreshed):
        # The directory itself, not the link: the workers started now keep
        # reading their password file there after the next reload moves it.
        return os.path.realpath(refreshed)
    loaded = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not loaded:
        raise RuntimeError("no $CREDENTIALS_DIRECTORY: the unit has no LoadCredentialEncrypted= for the secrets")
    return loaded


def environment(source: str, mapping: dict | None = None) -> dict:
    """The variables the application reads, from the credentials present in *source*
    (*mapping*: variable -> credential, instead of the application's set)."""
    values = {}
    for variable, name in (mapping if mapping is not None else ENVIRONMENT).items():
        path = os.path.join(source, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                values[variable] = handle.read()
    for variable, name in ({} if mapping is not None else PATHS).items():
        path = os.path.join(source, name)
        if os.path.exists(path):
            values[variable] = path
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matcraft_credentials", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    put_parser = commands.add_parser("put")
    put_parser.add_argument("name")
    put_parser.add_argument("file")
    put_parser.add_argument("--with-key", default="auto")
    refresh_parser = commands.add_parser("refresh")
    refresh_parser.add_argument("--to", required=True)
    refresh_parser.add_argument("--owner", required=True)
    refresh_parser.add_argument("--from", dest="source", required=True)
    refresh_parser.add_argument("names", nargs="+")
    exec_parser = commands.add_parser("exec")
    exec_parser.add_argument("--env", action="append", metavar="VARIABLE=CREDENTIAL",
                             help="only these variables, from these credentials (repeat)")
    exec_parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "put":
            print(json.dumps(put(args.name, args.file, sys.stdin.buffer.read(), args.with_key)))
        elif args.command == "refresh":
            refresh(args.to, args.owner, args.source, args.names)
        else:
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                parser.error("exec needs a command")
            mapping = None
            if args.env:
                mapping = dict(item.split("=", 1) for item in args.env if "=" in item)
                if len(mapping) != len(args.env):
                    parser.error("--env takes VARIABLE=CREDENTIAL")
            os.environ.update(environment(directory(), mapping))
            os.execv(command[0], command)
    except (OSError, RuntimeError) as error:
        print("matcraft_credentials: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
