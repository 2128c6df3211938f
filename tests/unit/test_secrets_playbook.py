"""playbooks/secrets.yml writes a vault file of fresh, strong, distinct secrets
that preflight accepts, and never replaces one unless told to."""

import os
import subprocess
import sys

import pytest
import yaml

import matcraft as filters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(tmp_path, *extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    return subprocess.run(
        [os.path.join(BIN, "ansible-playbook"), os.path.join(ROOT, "playbooks", "secrets.yml"),
         "-e", "secrets_file=%s" % (tmp_path / "env" / "vault.yml"),
         "-e", "secrets_vault_password_file=%s" % (tmp_path / "pass"), *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


def _view(tmp_path):
    out = subprocess.run([os.path.join(BIN, "ansible-vault"), "view", "--vault-password-file",
                          str(tmp_path / "pass"), str(tmp_path / "env" / "vault.yml")],
                         capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "pass").write_text("unit-test-vault-password\n")
    return tmp_path


def test_fresh_strong_distinct_secrets(workdir):
    result = _run(workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    path = workdir / "env" / "vault.yml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert path.read_text().startswith("$ANSIBLE_VAULT;")
    secrets = _view(workdir)
    assert filters.secret_problem(secrets["matcraft_secret_key"], 32, True) == ""
    for name, value in secrets.items():
        assert filters.secret_problem(value, 32, name == "matcraft_secret_key") == "", name
        assert value not in result.stdout + result.stderr, "%s was printed" % name
    assert filters.duplicate_secrets(secrets) == []
    assert {"matcraft_db_password", "matcraft_redis_password", "matcraft_pki_ca_passphrase",
            "matcraft_pgbackrest_cipher_pass"} <= set(secrets)
    # The backup cipher passphrase is as strong as the other passwords (48 letters and digits).
    cipher = secrets["matcraft_pgbackrest_cipher_pass"]
    assert len(cipher) == 48 and cipher.isalnum() and filters.secret_problem(cipher, 32) == ""


# Kept by a rotation: pgBackRest encrypts every file of a repository with it.
KEPT = ("matcraft_pgbackrest_cipher_pass",)


def test_existing_file_is_kept_unless_forced(workdir):
    assert _run(workdir).returncode == 0
    first = _view(workdir)
    refused = _run(workdir)
    assert refused.returncode != 0 and "nothing was changed" in refused.stdout + refused.stderr
    assert _view(workdir) == first
    assert _run(workdir, "-e", "secrets_force=true").returncode == 0
    second = _view(workdir)
    assert all(first[k] != second[k] for k in first if k not in KEPT), "a secret was reused after rotation"
    assert all(first[k] == second[k] for k in KEPT), "a kept secret changed"


def test_rotation_keeps_the_old_ca_passphrase_for_the_re_encryption(workdir):
    assert _run(workdir).returncode == 0
    first = _view(workdir)
    rotated = _run(workdir, "-e", "secrets_force=true")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    second = _view(workdir)
    assert second["matcraft_pki_ca_passphrase_previous"] == first["matcraft_pki_ca_passphrase"]
    assert second["matcraft_pki_ca_passphrase"] != first["matcraft_pki_ca_passphrase"]
    for name in first:
        if name not in KEPT:
            assert second[name] != first[name], name
        assert first[name] not in rotated.stdout + rotated.stderr, "%s was printed" % name
    assert filters.duplicate_secrets(second) == []


def test_rotation_keeps_the_backup_cipher_passphrase(workdir):
    """A new passphrase would make the repository's backups and WAL unreadable: a rotation keeps
    it (and says so, without printing it) while every other secret changes."""
    fresh = _run(workdir)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    first = _view(workdir)
    rotated = _run(workdir, "-e", "secrets_force=true")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    second = _view(workdir)
    cipher = first["matcraft_pgbackrest_cipher_pass"]
    assert second["matcraft_pgbackrest_cipher_pass"] == cipher
    changed = [name for name in first if name != "matcraft_pgbackrest_cipher_pass"]
    assert changed and all(second[name] != first[name] for name in changed)
    assert "kept from the file being replaced: matcraft_pgbackrest_cipher_pass" in rotated.stdout, rotated.stdout
    for output in (fresh, rotated):
        assert cipher not in output.stdout + output.stderr, "the cipher passphrase was printed"
    assert "kept from" not in fresh.stdout
    # Twice in a row: still the first value.
    assert _run(workdir, "-e", "secrets_force=true").returncode == 0
    assert _view(workdir)["matcraft_pgbackrest_cipher_pass"] == cipher


def test_rotation_of_a_file_without_a_cipher_passphrase_draws_one(workdir):
    """A vault file written before the passphrase existed gets a fresh one on rotation."""
    assert _run(workdir).returncode == 0
    old = _view(workdir)
    del old["matcraft_pgbackrest_cipher_pass"]
    document = "---\n" + yaml.safe_dump(old)
    path = workdir / "env" / "vault.yml"
    plain = workdir / "plain.yml"
    plain.write_text(document)
    subprocess.run([os.path.join(BIN, "ansible-vault"), "encrypt", "--vault-password-file", str(workdir / "pass"),
                    "--output", str(path), str(plain)], capture_output=True, check=True)
    plain.unlink()
    rotated = _run(workdir, "-e", "secrets_force=true")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    second = _view(workdir)
    assert filters.secret_problem(second["matcraft_pgbackrest_cipher_pass"], 32) == ""
    assert "kept from" not in rotated.stdout
