# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""Filters shared by the matcraft.deploy roles.

host_addresses   inventory groups -> private addresses of their hosts
fqdn_problem     why a string is not a valid DNS name (empty string when valid)
origin_problem   why a string is not an explicit https origin ('' when valid)
secret_problem   why a secret is too weak or a placeholder ('' when strong)
duplicate_secrets  names of secrets that share a value with another one
bcrypt_hash      a bcrypt hash with a salt derived from a seed (stable across runs)
db_login_name    the database login role that goes with an owner role and a password
mask_credentials  text (a journal excerpt) with credentials and the given secrets masked
url_host         an address as a URL or listen directive writes it (an IPv6 address in brackets)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PLACEHOLDER_WORDS = (
    "changeme", "change_me", "change-me", "password", "passw0rd", "secret",
    "example", "placeholder", "replace", "todo", "fixme", "xxxx", "dummy",
    "insecure", "default", "letmein", "qwerty", "123456", "abcdef", "vault_",
)


try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only when used without ansible-core
    class AnsibleFilterError(ValueError):
        """Raised for misuse of a filter."""


def host_addresses(groups_list, hostvars, groups, exclude=None):
    """Return the sorted private addresses of every host in the given groups.

    An address is the host's ``matcraft_private_address`` when set, else its
    ``ansible_default_ipv4.address`` fact. A host with neither is an error that
    names the host and the fix.
    """
    if isinstance(groups_list, str):
        groups_list = [groups_list]
    exclude = set(exclude or [])
    addresses = set()
    for group in groups_list or []:
        for host in groups.get(group, []):
            if host in exclude:
                continue
            hv = hostvars[host] if host in hostvars else {}
            address = hv.get("matcraft_private_address")
            if not address:
                address = (hv.get("ansible_default_ipv4") or {}).get("address")
            if not address:
                raise AnsibleFilterError(
                    "host_addresses: no address known for host %r (group %r): set "
                    "matcraft_private_address for it in the inventory, or gather its "
                    "facts in the same run (run the play on all hosts)" % (host, group))
            addresses.add(str(address))
    return sorted(addresses, key=_address_sort_key)


def _address_sort_key(address):
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), address)
    return (1, (), address)


def fqdn_problem(name):
    """Explain why ``name`` is not a fully qualified DNS name; '' when valid."""
    if not isinstance(name, str) or not name:
        return "is empty"
    value = name.rstrip(".").lower()
    if len(value) > 253:
        return "is longer than 253 characters"
    labels = value.split(".")
    if len(labels) < 2:
        return "has no dot: give the full name, such as matcraft.example.org"
    for label in labels:
        if not _LABEL.match(label):
            return "has an invalid label %r (letters, digits and inner hyphens only)" % label
    if labels[-1].isdigit():
        return "looks like an IP address: give a DNS name"
    return ""


def origin_problem(origin):
    """Explain why ``origin`` is not an explicit https origin; '' when valid."""
    if not isinstance(origin, str) or not origin:
        return "is empty"
    if "*" in origin:
        return "is a wildcard: list the dashboard's exact origin"
    match = re.match(r"^https://([^/:]+)(:\d{1,5})?$", origin)
    if not match:
        if origin.startswith("http://"):
            return "uses http: production origins must be https"
        return "is not an origin of the form https://host[:port] (no path, no trailing slash)"
    problem = fqdn_problem(match.group(1))
    if problem:
        return "has a host that " + problem
    return ""


def _entropy_bits(value):
    classes = 0
    if re.search(r"[a-z]", value):
        classes += 26
    if re.search(r"[A-Z]", value):
        classes += 26
    if re.search(r"[0-9]", value):
        classes += 10
    if re.search(r"[^a-zA-Z0-9]", value):
        classes += 32
    if re.fullmatch(r"[0-9a-f]+", value) or re.fullmatch(r"[0-9A-F]+", value):
        classes = 16
    return len(value) * math.log2(max(classes, 2))


def secret_problem(value, min_bytes=32, hex_only=False):
    """Explain why ``value`` is not a strong random secret; '' when it is.

    A strong secret carries at least ``min_bytes`` bytes of randomness: as hex,
    2*min_bytes characters; otherwise enough characters for the same entropy
    (at least min_bytes characters). Placeholders, repeated patterns and
    well-known defaults are refused.
    """
    if value is None or value == "":
        return "is not set"
    if not isinstance(value, str):
        value = str(value)
    lowered = value.lower()
    for word in _PLACEHOLDER_WORDS:
        if word in lowered:
            return "looks like a placeholder or default (contains %r)" % word
    if hex_only:
        if not re.fullmatch(r"[0-9a-fA-F]+", value):
            return "is not a hex string"
        if len(value) < 2 * min_bytes:
            return "has %d hex characters; at least %d (%d bytes) are needed" % (
                len(value), 2 * min_bytes, min_bytes)
    else:
        if len(value) < min_bytes:
            return "has %d characters; at least %d are needed" % (len(value), min_bytes)
        bits = _entropy_bits(value)
        if bits < 8 * min_bytes * 0.9:
            return ("carries at most %d bits of randomness; %d random bytes are %d bits "
                    "(use at least %d letters and digits, or %d hex characters)" % (
                        bits, min_bytes, 8 * min_bytes, math.ceil(8 * min_bytes * 0.9 / math.log2(62)), 2 * min_bytes))
    if len(set(value)) < min(12, len(value) // 3):
        return "repeats too few distinct characters to be random"
    if re.search(r"(.{2,8})\1{3,}", value):
        return "contains a repeated pattern"
    return ""


def duplicate_secrets(named_values):
    """Return the sorted names whose (non-empty) value is shared with another name."""
    seen = {}
    for name, value in (named_values or {}).items():
        if value in (None, ""):
            continue
        seen.setdefault(str(value), []).append(name)
    dupes = set()
    for names in seen.values():
        if len(names) > 1:
            dupes.update(names)
    return sorted(dupes)


def verify_report(hostvars, hosts):
    """The verify playbook's results, gathered from each host's verify_results.

    Returns {"lines": [...], "failed": [...], "summary": str}: one aligned line
    per check ("PASS"/"FAIL", host, check, detail), the failed ones as
    "host: check: detail", and a one-line summary.
    """
    rows = []
    for name in hosts:
        if name not in hostvars:
            continue
        for result in hostvars[name].get("verify_results") or []:
            rows.append((bool(result.get("ok")), name, str(result.get("check", "")),
                         " ".join(str(result.get("detail", "")).split())))
    width_host = max([len(r[1]) for r in rows] + [4])
    width_check = max([len(r[2]) for r in rows] + [5])
    lines = ["%s  %s  %s  %s" % ("PASS" if ok else "FAIL", host.ljust(width_host), check.ljust(width_check), detail)
             for ok, host, check, detail in rows]
    failed = ["%s: %s: %s" % (host, check, detail) for ok, host, check, detail in rows if not ok]
    if not rows:
        summary = "no check ran"
        failed = ["no check ran (empty inventory groups, or every check in verify_skip)"]
    else:
        summary = "%d of %d checks passed" % (len(rows) - len(failed), len(rows))
    return {"lines": lines, "failed": failed, "summary": summary}


def bcrypt_hash(password, seed, rounds=10):
    """Return the bcrypt ($2b$) hash of ``password`` with a salt derived from ``seed``.

    The same password and seed give the same hash, so a configuration file that
    holds it changes only when the password does. The salt is the first 21 hex
    digits of sha256(seed) and an 'e' (22 characters of bcrypt's alphabet, the
    last one with zero padding bits): the value the roles passed to Ansible's
    ``password_hash('bcrypt')`` before, so existing files keep their hash. Uses
    the ``bcrypt`` library directly: passlib 1.7 prints a traceback with
    bcrypt 4.1 and later.
    """
    try:
        import bcrypt
    except ImportError:
        raise AnsibleFilterError(
            "bcrypt_hash: the Python package bcrypt is missing on the controller: "
            "pip install bcrypt (requirements.txt pins it)")
    rounds = int(rounds)
    if not 4 <= rounds <= 31:
        raise AnsibleFilterError("bcrypt_hash: rounds must be 4 to 31, got %d" % rounds)
    salt = hashlib.sha256(str(seed).encode("utf-8")).hexdigest()[:21] + "e"
    encoded = str(password).encode("utf-8")
    if len(encoded) > 72:
        raise AnsibleFilterError("bcrypt_hash: bcrypt uses at most 72 bytes of a password; this one is longer")
    return bcrypt.hashpw(encoded, ("$2b$%02d$%s" % (rounds, salt)).encode("ascii")).decode("ascii")


_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,51}$")


def db_login_name(owner, password):
    """Name of the login role that the application uses for ``owner`` with ``password``.

    PostgreSQL keeps one password per role, so a password change would lock out
    every client until each has the new one. The application therefore logs in
    through a role named after its password (a member of ``owner`` that acts
    as ``owner``): a new password means a new login role, which exists next to
    the old one until every client has switched (docs/secrets.md). The suffix
    is 40 bits of SHA-256 over the owner and the password: it tells the
    generations apart and reveals nothing usable about a random password.
    """
    owner = str(owner)
    if not _ROLE_NAME.match(owner):
        raise AnsibleFilterError(
            "db_login_name: %r is not a plain role name (lower-case letters, digits and _, at most 52)" % owner)
    if not password:
        raise AnsibleFilterError("db_login_name: the password is empty")
    digest = hashlib.sha256(("%s:%s" % (owner, password)).encode("utf-8")).hexdigest()
    return "%s_%s" % (owner, digest[:10])


def derived_secret(secret, purpose):
    """A secret for one narrow purpose, derived from ``secret``: HMAC-SHA256 of ``purpose``
    keyed with it, as 64 hex digits.

    A client that needs less than the holder of ``secret`` (the worker health sidecar,
    which only broadcasts pings over the broker) gets a credential of its own without a
    new secret to generate, store and rotate: it changes when ``secret`` does, and it does
    not reveal ``secret``.
    """
    if not secret:
        raise AnsibleFilterError("derived_secret: the secret is empty")
    if not purpose:
        raise AnsibleFilterError("derived_secret: name the purpose")
    return hmac.new(str(secret).encode("utf-8"), str(purpose).encode("utf-8"), hashlib.sha256).hexdigest()


def pgpass_line(fields):
    """One line of libpq's password file (host, port, database, user, password), each field
    with ``\\`` and ``:`` escaped by a backslash as libpq reads them, without the newline.
    A field that is exactly ``*`` stays the wildcard."""
    fields = [str(field) for field in fields]
    if len(fields) != 5:
        raise AnsibleFilterError("pgpass_line: give host, port, database, user and password (5 fields), not %d"
                                 % len(fields))
    if any("\n" in field or "\r" in field for field in fields):
        raise AnsibleFilterError("pgpass_line: a field has a line break")
    return ":".join(field if field == "*" else field.replace("\\", "\\\\").replace(":", "\\:")
                    for field in fields)


MASK = "********"
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.I)
_ASSIGNED_SECRET = re.compile(r"(\b[\w.-]*(?:password|passwd|secret|token)[\w.-]*\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
                              re.I)


def mask_credentials(text, secrets=None):
    """``text`` with credentials masked: every value of ``secrets`` (raw and URL-encoded), the
    password of any ``scheme://user:password@`` URL, and the value after any ``…password=``,
    ``secret:``, ``token=``. For journal excerpts that a failed run prints."""
    from urllib.parse import quote

    text = str(text)
    for secret in sorted((str(s) for s in (secrets or []) if s and len(str(s)) >= 4), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", text)
    return _ASSIGNED_SECRET.sub(lambda m: m.group(1) + MASK, text)


def url_host(address):
    """``address`` as a URL, a bind or a listen directive writes it: an IPv6 address (any value with
    a colon) in brackets, anything else (IPv4, a name) as it is; already bracketed stays so."""
    text = str(address if address is not None else "").strip()
    if ":" in text and not text.startswith("["):
        return "[%s]" % text
    return text


class FilterModule(object):
    """matcraft.deploy filters."""

    def filters(self):
        return {
            "verify_report": verify_report,
            "host_addresses": host_addresses,
            "fqdn_problem": fqdn_problem,
            "origin_problem": origin_problem,
            "secret_problem": secret_problem,
            "duplicate_secrets": duplicate_secrets,
            "bcrypt_hash": bcrypt_hash,
            "db_login_name": db_login_name,
            "derived_secret": derived_secret,
            "pgpass_line": pgpass_line,
            "mask_credentials": mask_credentials,
            "url_host": url_host,
        }
