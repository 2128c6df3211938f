"""Unit tests of plugins/filter/matcraft.py (the preflight's judgement)."""

import secrets
import string

import pytest

import matcraft as f


@pytest.mark.parametrize("name", ["matcraft.example.org", "api.eu-1.matcraft.io", "a.b", "matcraft.example.org."])
def test_fqdn_valid(name):
    assert f.fqdn_problem(name) == ""


@pytest.mark.parametrize("name,why", [
    ("", "is empty"),
    ("matcraft", "has no dot"),
    ("api_.example.org", "invalid label"),
    ("-api.example.org", "invalid label"),
    ("10.0.0.1", "looks like an IP address"),
    ("a" * 64 + ".org", "invalid label"),
])
def test_fqdn_invalid(name, why):
    assert why in f.fqdn_problem(name)


@pytest.mark.parametrize("origin,why", [
    ("https://dashboard.example.org", ""),
    ("https://dashboard.example.org:8443", ""),
    ("*", "wildcard"),
    ("https://*.example.org", "wildcard"),
    ("http://dashboard.example.org", "uses http"),
    ("https://dashboard.example.org/", "not an origin"),
    ("dashboard.example.org", "not an origin"),
])
def test_origin(origin, why):
    problem = f.origin_problem(origin)
    assert (why in problem) if why else problem == ""


def test_random_secrets_pass():
    assert f.secret_problem(secrets.token_hex(32), 32, True) == ""
    alphabet = string.ascii_letters + string.digits
    assert f.secret_problem("".join(secrets.choice(alphabet) for _ in range(44))) == ""
    assert f.secret_problem(secrets.token_urlsafe(32)) == ""


@pytest.mark.parametrize("value,hex_only,why", [
    ("", False, "is not set"),
    (None, False, "is not set"),
    ("changeme" * 6, False, "placeholder"),
    ("MySuperSecretPassword1234567890abcdefXYZ", False, "placeholder"),
    ("9f86d081884c7d65", True, "has 16 hex characters"),
    ("g" * 64, True, "is not a hex string"),
    ("short", False, "has 5 characters"),
    ("kqzjwvmxprtlbnhgfdsyceoaiuvlqmrtzbxn", False, "bits of randomness"),
    ("ab12" * 16, True, "repeat"),
])
def test_weak_secrets(value, hex_only, why):
    assert why in f.secret_problem(value, 32, hex_only)


def test_duplicate_secrets():
    assert f.duplicate_secrets({"a": "x", "b": "y", "c": "x", "d": ""}) == ["a", "c"]
    assert f.duplicate_secrets({"a": "", "b": ""}) == []


def test_host_addresses():
    hostvars = {
        "api1": {"ansible_default_ipv4": {"address": "10.0.0.12"}},
        "api2": {"matcraft_private_address": "10.0.0.2", "ansible_default_ipv4": {"address": "192.0.2.1"}},
        "w1": {"ansible_default_ipv4": {"address": "10.0.0.3"}},
    }
    groups = {"matcraft_api": ["api1", "api2"], "matcraft_workers": ["w1", "api1"]}
    assert f.host_addresses(["matcraft_api", "matcraft_workers"], hostvars, groups) == ["10.0.0.2", "10.0.0.3", "10.0.0.12"]
    assert f.host_addresses("matcraft_api", hostvars, groups, exclude=["api1"]) == ["10.0.0.2"]
    assert f.host_addresses(["missing"], hostvars, groups) == []


def test_host_addresses_unknown_host_names_the_fix():
    with pytest.raises(Exception) as err:
        f.host_addresses(["g"], {"h": {}}, {"g": ["h"]})
    assert "matcraft_private_address" in str(err.value) and "'h'" in str(err.value)


def test_verify_report_lists_every_check_and_the_failures():
    hostvars = {
        "api1": {"verify_results": [{"check": "api /health", "ok": True, "detail": "200"}]},
        "db1": {"verify_results": [{"check": "full backup", "ok": False, "detail": "no full\nbackup"}]},
        "redis1": {},
    }
    report = f.verify_report(hostvars, ["api1", "db1", "redis1", "localhost"])
    assert report["lines"] == ["PASS  api1  api /health  200", "FAIL  db1   full backup  no full backup"]
    assert report["failed"] == ["db1: full backup: no full backup"]
    assert report["summary"] == "1 of 2 checks passed"


def test_verify_report_with_no_check_fails():
    report = f.verify_report({}, ["localhost"])
    assert report["failed"] and report["summary"] == "no check ran"


def test_bcrypt_hash_is_stable_and_verifies():
    bcrypt = pytest.importorskip("bcrypt")
    first = f.bcrypt_hash("s3cret-monitoring-password", "mon1:matcraft:prometheus-web", 10)
    assert first == f.bcrypt_hash("s3cret-monitoring-password", "mon1:matcraft:prometheus-web", 10)
    assert first.startswith("$2b$10$")
    assert bcrypt.checkpw(b"s3cret-monitoring-password", first.encode())
    assert first != f.bcrypt_hash("s3cret-monitoring-password", "mon2:matcraft:prometheus-web", 10)


def test_bcrypt_hash_equals_the_hash_of_earlier_releases():
    # Computed by Ansible's password_hash('bcrypt', salt=sha256(seed)[:21] ~ 'e', rounds=10,
    # ident='2b') through passlib, which the roles used before: existing web
    # configuration files keep their hash, so an upgrade changes nothing.
    assert (f.bcrypt_hash("s3cretpassword", "site-monitor1:matcraft:prometheus-web", 10)
            == "$2b$10$dbb80d2bfa0a5e39b6f02eWmfFgQPH61udEv9DltB0fmW7sGZCZbK")


@pytest.mark.parametrize("password,rounds,why", [("x" * 73, 10, "72 bytes"), ("pw", 3, "4 to 31")])
def test_bcrypt_hash_refuses(password, rounds, why):
    with pytest.raises(f.AnsibleFilterError, match=why):
        f.bcrypt_hash(password, "seed", rounds)


def test_db_login_name_follows_the_password():
    first = f.db_login_name("matcraft", "a" * 48)
    assert first == f.db_login_name("matcraft", "a" * 48)
    assert first.startswith("matcraft_") and len(first) == len("matcraft_") + 10
    assert first != f.db_login_name("matcraft", "b" * 48)
    assert first != f.db_login_name("other", "a" * 48)[len("other"):]


@pytest.mark.parametrize("owner, password", [("Matcraft", "x" * 32), ("a;drop", "x" * 32), ("matcraft", "")])
def test_db_login_name_refuses(owner, password):
    with pytest.raises(Exception):
        f.db_login_name(owner, password)


def test_derived_secret_is_a_keyed_digest_per_purpose():
    import hashlib
    import hmac
    value = f.derived_secret("Qv7/Lm@3Kp:9Zx%Rt5", "redis-worker-health")
    assert value == hmac.new(b"Qv7/Lm@3Kp:9Zx%Rt5", b"redis-worker-health", hashlib.sha256).hexdigest()
    assert len(value) == 64 and "Qv7" not in value
    assert value != f.derived_secret("Qv7/Lm@3Kp:9Zx%Rt5", "another-purpose")
    assert value != f.derived_secret("another-secret", "redis-worker-health")


@pytest.mark.parametrize("secret, purpose, why", [("", "p", "empty"), ("s", "", "purpose")])
def test_derived_secret_refuses(secret, purpose, why):
    with pytest.raises(f.AnsibleFilterError, match=why):
        f.derived_secret(secret, purpose)


def test_pgpass_line_escapes_what_libpq_unescapes():
    line = f.pgpass_line(["*", "*", "matcraft", "matcraft_ab", "Qv7/Lm@3Kp:9Zx%R\\t5"])
    assert line == "*:*:matcraft:matcraft_ab:Qv7/Lm@3Kp\\:9Zx%R\\\\t5"
    assert f.pgpass_line(["fd00::5", 5432, "db", "u", "p"]) == "fd00\\:\\:5:5432:db:u:p"


@pytest.mark.parametrize("fields, why", [(["*", "*", "db", "u"], "5 fields"), (["*", "*", "db", "u", "a\nb"], "line break")])
def test_pgpass_line_refuses(fields, why):
    with pytest.raises(f.AnsibleFilterError, match=why):
        f.pgpass_line(fields)


def test_mask_credentials_hides_given_secrets_urls_and_assignments():
    secret = "Qv7/Lm@3Kp:9Zx%Rt5"
    text = ("start: DATABASE_URL=postgresql://matcraft_ab12:%s@10.0.0.5:5432/matcraft\n"
            "redis: rediss://matcraft:other-pass@10.0.0.6:6380/0 failed\n"
            "raw %s and encoded Qv7%%2FLm%%403Kp%%3A9Zx%%25Rt5\n"
            "conf: password=hunter22 db_password: \"two words\" token='abc' OK\n") % (
        "Qv7%2FLm%403Kp%3A9Zx%25Rt5", secret)
    masked = f.mask_credentials(text, [secret, ""])
    for leak in (secret, "Qv7%2FLm%403Kp%3A9Zx%25Rt5", "other-pass", "hunter22", "two words", "abc"):
        assert leak not in masked, (leak, masked)
    assert "postgresql://matcraft_ab12:********@10.0.0.5:5432/matcraft" in masked
    assert "rediss://matcraft:********@10.0.0.6:6380/0 failed" in masked
    assert "raw ******** and encoded ********" in masked
    assert "password=******** db_password: ******** token=******** OK" in masked


def test_mask_credentials_leaves_plain_lines():
    line = "gunicorn[42]: [INFO] Booting worker with pid: 43 (GET /health 200)"
    assert f.mask_credentials(line, []) == line


def test_url_host_brackets_ipv6_only():
    assert f.url_host("10.0.0.5") == "10.0.0.5"
    assert f.url_host("db.matcraft.internal") == "db.matcraft.internal"
    assert f.url_host("fd00::5") == "[fd00::5]"
    assert f.url_host("[fd00::5]") == "[fd00::5]"
    assert f.url_host(" fe80::1 ") == "[fe80::1]"
    assert f.url_host(None) == ""
