"""The application's credentials helper (roles/common/files/matcraft_credentials.py).

systemd-creds is replaced by a stand-in that "encrypts" with base64 and a salt,
as the real one salts: the helper must compare clear texts, never files."""

import base64
import getpass
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "common" / "files" / "matcraft_credentials.py"

FAKE_CREDS = """#!/usr/bin/env python3
import base64, os, sys
verb = sys.argv[1]
name = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--name=")][0]
source, target = sys.argv[-2], sys.argv[-1]
data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
if verb == "encrypt":
    out = name.encode() + b"|" + os.urandom(4).hex().encode() + b"|" + base64.b64encode(data)
else:
    label, _, body = data.split(b"|", 2)
    if label.decode() != name:
        sys.stderr.write("name mismatch\\n"); sys.exit(1)
    out = base64.b64decode(body)
if target == "-":
    sys.stdout.buffer.write(out)
else:
    open(target, "wb").write(out)
"""


@pytest.fixture()
def helper(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("matcraft_credentials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = tmp_path / "systemd-creds"
    fake.write_text(FAKE_CREDS)
    fake.chmod(0o755)
    monkeypatch.setattr(module, "SYSTEMD_CREDS", str(fake))
    return module


def test_put_encrypts_once_and_again_only_when_the_value_changes(helper, tmp_path):
    path = str(tmp_path / "secret-key.cred")
    first = helper.put("secret-key", path, b"s3cret:x", "auto")
    assert first["changed"] and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"s3cret" not in Path(path).read_bytes()
    # Salted: a second encryption would differ, so the same value must leave the file alone.
    again = helper.put("secret-key", path, b"s3cret:x", "auto")
    assert again == {"changed": False, "sha256": first["sha256"]}
    changed = helper.put("secret-key", path, b"other", "auto")
    assert changed["changed"] and changed["sha256"] != first["sha256"]
    assert helper.decrypt("secret-key", path) == b"other"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_put_replaces_a_file_it_cannot_decrypt(helper, tmp_path):
    path = tmp_path / "redis-url.cred"
    path.write_bytes(b"damaged")
    assert helper.put("redis-url", str(path), b"rediss://u:p@h:6380/0", "host")["changed"]
    assert helper.decrypt("redis-url", str(path)) == b"rediss://u:p@h:6380/0"


def test_refresh_decrypts_for_the_owner_only(helper, tmp_path):
    source = tmp_path / "credentials"
    source.mkdir()
    for name, value in {"secret-key": b"k" * 64, "pgpass": b"*:*:db:u:pw\n"}.items():
        helper.put(name, str(source / (name + ".cred")), value, "auto")
    target = tmp_path / "run" / "credentials"
    target.parent.mkdir()
    target.mkdir()  # an earlier release's copy, a plain directory
    (target / "stale").write_text("old")
    helper.refresh(str(target), getpass.getuser(), str(source), ["secret-key", "pgpass"])
    assert target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["pgpass", "secret-key"]
    assert (target / "pgpass").read_bytes() == b"*:*:db:u:pw\n"
    assert stat.S_IMODE(os.stat(target / "pgpass").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o500


def test_the_workers_of_the_reload_before_keep_their_password_file(helper, tmp_path, monkeypatch):
    # libpq reads PGPASSFILE at every new connection: a worker still stopping after a
    # reload must find its own login's password there, not the rotated one.
    source, target = tmp_path / "credentials", tmp_path / "run" / "credentials"
    source.mkdir()
    target.parent.mkdir()
    monkeypatch.setenv(helper.REFRESHED, str(target))
    seen = []
    for login in ("first", "second", "third"):
        helper.put("pgpass", str(source / "pgpass.cred"), ("*:*:db:%s:pw\n" % login).encode(), "auto")
        helper.refresh(str(target), getpass.getuser(), str(source), ["pgpass"])
        seen.append(helper.environment(helper.directory())["PGPASSFILE"])
    first, second, third = (open(path).read() if os.path.exists(path) else None for path in seen)
    assert third == "*:*:db:third:pw\n" and (target / "pgpass").read_text() == third
    assert second == "*:*:db:second:pw\n", "the reload before lost its password file"
    assert first is None, "a directory older than the reload before was kept"
    assert sorted(p.name for p in target.parent.iterdir() if not p.is_symlink()) == \
        sorted(os.path.basename(os.path.dirname(path)) for path in seen[1:])


def test_environment_takes_what_the_unit_was_given(helper, tmp_path, monkeypatch):
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    (loaded / "redis-url").write_text("rediss://u:p@h:6380/0")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(loaded))
    monkeypatch.delenv(helper.REFRESHED, raising=False)
    # The sidecar: the broker's URL only.
    assert helper.environment(helper.directory()) == {"REDIS_URL": "rediss://u:p@h:6380/0"}
    (loaded / "secret-key").write_text("ab" * 32)
    (loaded / "pgpass").write_text("*:*:db:u:pw\n")
    assert helper.environment(helper.directory()) == {
        "REDIS_URL": "rediss://u:p@h:6380/0", "SECRET_KEY": "ab" * 32, "PGPASSFILE": str(loaded / "pgpass")}


def test_the_copy_of_the_last_reload_wins_once_it_exists(helper, tmp_path, monkeypatch):
    loaded, refreshed = tmp_path / "loaded", tmp_path / "refreshed"
    loaded.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(loaded))
    monkeypatch.setenv(helper.REFRESHED, str(refreshed))
    assert helper.directory() == str(loaded)  # no reload yet: the runtime directory is empty
    refreshed.mkdir()
    assert helper.directory() == str(refreshed)
    # A link (refresh): the directory it points to now.
    link = tmp_path / "link"
    link.symlink_to(refreshed.name)
    monkeypatch.setenv(helper.REFRESHED, str(link))
    assert helper.directory() == str(refreshed)


def test_without_credentials_it_says_which_setting_is_missing(helper, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv(helper.REFRESHED, raising=False)
    with pytest.raises(RuntimeError, match="LoadCredentialEncrypted"):
        helper.directory()


def test_exec_hands_the_secrets_to_the_command_in_its_environment(tmp_path):
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    (loaded / "secret-key").write_text("cd" * 32)
    (loaded / "redis-url").write_text("redis://u:p@h:6379/0")
    env = {"PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(loaded)}
    probe = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('SECRET_KEY', 'REDIS_URL', 'PGPASSFILE')}))"
    run = subprocess.run([sys.executable, str(SCRIPT), "exec", "--", sys.executable, "-c", probe],
                         env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == {"SECRET_KEY": "cd" * 32, "REDIS_URL": "redis://u:p@h:6379/0", "PGPASSFILE": None}
    # --env: only the variables named, from the credentials named (the sidecar).
    (loaded / "worker-health-redis-url").write_text("redis://health:h@h:6379/0")
    run = subprocess.run([sys.executable, str(SCRIPT), "exec", "--env", "REDIS_URL=worker-health-redis-url", "--",
                          sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == {"SECRET_KEY": None, "REDIS_URL": "redis://health:h@h:6379/0", "PGPASSFILE": None}
    # No credentials: one line on stderr, exit 1, the command never runs.
    run = subprocess.run([sys.executable, str(SCRIPT), "exec", "--", "/bin/echo", "ran"],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == "" and "LoadCredentialEncrypted" in run.stderr


def test_put_prints_one_json_line_and_reads_the_secret_from_stdin_only(tmp_path):
    fake = tmp_path / "systemd-creds"
    fake.write_text(FAKE_CREDS)
    fake.chmod(0o755)
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('m', %r); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.SYSTEMD_CREDS = %r; "
            "sys.exit(m.main(sys.argv[1:]))") % (str(SCRIPT), str(fake))
    path = str(tmp_path / "pgpass.cred")
    run = subprocess.run([sys.executable, "-c", code, "put", "pgpass", path], input=b"*:*:db:u:pw\n",
                         capture_output=True, check=True)
    result = json.loads(run.stdout)
    assert result["changed"] is True and len(result["sha256"]) == 64
    assert base64.b64encode(b"*:*:db:u:pw\n") in Path(path).read_bytes()
