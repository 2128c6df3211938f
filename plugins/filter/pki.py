# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the pki role's CA identity check (run by preflight before any change).

private_key_opens     index of the first passphrase that opens a private key file (-1: none)
ca_identity_problems  why this run would replace the CA of a running environment
pki_host_sans         the subject alternative names of a host certificate within the CA's name constraints
pki_name_constraints  the permitted subtrees of a CA certificate (PEM), as openssl_csr takes them
"""

from __future__ import annotations

import base64
import ipaddress

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only when used without ansible-core
    class AnsibleFilterError(ValueError):
        """Raised for misuse of a filter."""

RUNBOOK = "docs/runbooks/pki.md"


def private_key_opens(path, passphrases):
    """Return the index of the first passphrase that opens the PEM private key at ``path``; -1 if none.

    An empty passphrase stands for an unencrypted key. Never returns or raises
    with a passphrase in it.
    """
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise AnsibleFilterError("private_key_opens: the Python package cryptography is missing on the controller")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise AnsibleFilterError("private_key_opens: cannot read %s: %s" % (path, exc.strerror))
    for index, passphrase in enumerate(passphrases or []):
        secret = passphrase.encode("utf-8") if passphrase else None
        try:
            load_pem_private_key(data, password=secret)
            return index
        except (TypeError, ValueError):
            # TypeError: a passphrase for an unencrypted key or none for an
            # encrypted one; ValueError: a wrong passphrase.
            continue
    return -1


def _pem_body(pem):
    """The base64 body of a PEM certificate, without line breaks: two copies of one certificate compare equal.

    ``pem`` may also be the result of Ansible's slurp module (base64 of the
    file), or of a skipped slurp (no file: '').
    """
    if isinstance(pem, dict):
        pem = base64.b64decode(pem["content"]).decode("ascii", "replace") if pem.get("content") else ""
    lines = [line.strip() for line in str(pem or "").strip().splitlines()]
    return "".join(line for line in lines if line and not line.startswith("-----"))


def ca_identity_problems(ca, expected_name, hosts_trust, ca_dir, replace=False):
    """Messages that stop a run which would replace the internal CA of a running environment.

    ``ca``: what the controller has in ``ca_dir``: {"crt": bool, "key": bool,
    "name": the certificate's common name, "pem": its PEM, "key_opens": the
    index from private_key_opens over [current, previous] passphrase, or -1}.
    ``expected_name``: the common name this inventory gives the CA.
    ``hosts_trust``: {host: PEM (or slurp result) of the CA certificate the
    host trusts today}; hosts without one (not deployed yet) count for nothing. ``replace``: the operator rotates
    the CA on purpose (pki_ca_replace): only the checks of the key remain.
    """
    problems = []
    hosts_trust = {host: pem for host, pem in (hosts_trust or {}).items() if _pem_body(pem)}
    runbook = "to replace the CA on purpose, follow %s (Replace the CA)" % RUNBOOK
    if ca.get("crt") and not ca.get("key"):
        problems.append(
            "pki_ca_dir: %s has the CA certificate but not its key ca.key, so no certificate can be issued or renewed. "
            "Fix: restore ca.key from your backup of %s; %s." % (ca_dir, ca_dir, runbook))
    if ca.get("key") and int(ca.get("key_opens", -1)) < 0:
        problems.append(
            "matcraft_pki_ca_passphrase: does not open %s/ca.key (nor does matcraft_pki_ca_passphrase_previous), "
            "and the CA is never replaced because of a passphrase. Fix: set matcraft_pki_ca_passphrase back to the "
            "passphrase the key was made with, or, to change it, set matcraft_pki_ca_passphrase_previous to the old "
            "one: the run then re-encrypts the key with the new one." % ca_dir)
    if replace:
        return problems
    if ca.get("crt") and ca.get("name") != expected_name:
        problems.append(
            "pki_ca_common_name: the internal CA in %s is named '%s', and this inventory names it '%s' "
            "(from matcraft_environment): a new name would make a new CA and new certificates on every host. "
            "Fix: put matcraft_environment back, or keep the name with pki_ca_common_name: '%s' in group_vars/all; "
            "%s." % (ca_dir, ca.get("name"), expected_name, ca.get("name"), runbook))
    if not ca.get("crt") and hosts_trust:
        names = sorted(hosts_trust)
        problems.append(
            "pki_ca_dir: no internal CA in %s, but %d host(s) (%s) trust one already: a new CA would replace the "
            "certificate of every host and break TLS between them. Fix: restore %s from your backup, or point "
            "pki_ca_dir at the directory that holds this environment's CA; %s."
            % (ca_dir, len(names), ", ".join(names), ca_dir, runbook))
    elif ca.get("crt"):
        strangers = sorted(host for host, pem in hosts_trust.items() if _pem_body(pem) != _pem_body(ca.get("pem")))
        if strangers:
            problems.append(
                "pki_ca_dir: the CA in %s is not the CA that %d host(s) (%s) trust: the run would replace their "
                "certificates. Fix: point pki_ca_dir at the directory that holds this environment's CA (each "
                "environment has its own); %s." % (ca_dir, len(strangers), ", ".join(strangers), runbook))
    return problems


def _dns_permitted(name, subtrees):
    """RFC 5280 dNSName constraint: the name itself or a name below it (".x" only below)."""
    name = name.lower().rstrip(".")
    for tree in subtrees:
        tree = tree.lower().rstrip(".")
        if tree.startswith("."):
            if name.endswith(tree):
                return True
        elif name == tree or name.endswith("." + tree):
            return True
    return False


def _ip_permitted(address, networks):
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed.version == net.version and parsed in net for net in networks)


def _is_address(value):
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


def pki_host_sans(names, permitted=None, required=None, common_name=None):
    """The subjectAltName entries of a host certificate, within the CA's permitted name constraints.

    ``names``: what the host is called without anyone asking (its inventory name, host
    name, FQDN) and its private address; names outside the constraints are left out
    (dropped), since no certificate of the CA could carry them. ``required``: names and
    addresses someone asked for (pki_extra_sans, pki_group_sans, the private address):
    outside the constraints each is a problem. ``permitted``: the CA's permitted subtrees
    ("DNS:<domain>", "IP:<network>", as x509_certificate_info reports them); empty: the
    CA has no name constraints and every name fits. A constraint type the CA does not
    list leaves that type free (RFC 5280).

    ``common_name``: the subject's common name wanted (the inventory name). OpenSSL
    checks a common name of two or more labels against the DNS constraints when the
    certificate has no DNS name (an address as inventory name, an FQDN outside the
    constraints): such a name has its dots turned into dashes.

    Returns {"sans": ["DNS:...", "IP:..."], "dropped": [...], "problems": [...],
    "common_name": ...}.
    """
    permitted = [str(p) for p in (permitted or [])]
    dns_trees = [p[4:] for p in permitted if p.startswith("DNS:")]
    networks = []
    for entry in permitted:
        if entry.startswith("IP:"):
            try:
                networks.append(ipaddress.ip_network(entry[3:], strict=False))
            except ValueError:
                raise AnsibleFilterError("pki_host_sans: not a network in the CA's constraints: %s" % entry)

    def fits(value):
        if _is_address(value):
            return not networks or _ip_permitted(value, networks)
        return not dns_trees or _dns_permitted(value, dns_trees)

    sans, dropped, problems = [], [], []
    wanted = [(str(v), True) for v in (required or []) if str(v)] + [(str(v), False) for v in (names or []) if str(v)]
    seen = set()
    for value, asked in wanted:
        key = value.lower()
        if key in seen:
            continue
        seen.add(key)
        if fits(value):
            sans.append(("IP:" if _is_address(value) else "DNS:") + value)
        elif asked:
            problems.append(value)
        else:
            dropped.append(value)
    # DNS names first, then addresses, as before.
    sans = [s for s in sans if s.startswith("DNS:")] + [s for s in sans if s.startswith("IP:")]
    common = str(common_name or "")
    if "." in common.strip(".") and dns_trees and (_is_address(common) or not _dns_permitted(common, dns_trees)):
        common = common.strip(".").replace(".", "-")
    return {"sans": sans, "dropped": dropped, "problems": problems, "common_name": common}


def pki_name_constraints(pem):
    """The permitted subtrees of the CA certificate ``pem`` ("DNS:<domain>", "IP:<network>/<prefix>"),
    as community.crypto's openssl_csr takes them; [] when it has no name constraints.

    Read so that a CA made before is re-signed with exactly the constraints it has
    (x509_certificate re-signs a CA whose request differs, and x509_certificate_info
    does not decode them)."""
    try:
        from cryptography import x509
    except ImportError:
        raise AnsibleFilterError("pki_name_constraints: the Python package cryptography is missing on the controller")
    if not pem:
        return []
    certificate = x509.load_pem_x509_certificate(str(pem).encode("ascii"))
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    if constraints.excluded_subtrees:
        raise AnsibleFilterError("pki_name_constraints: the CA has excluded subtrees, which this collection never makes")
    permitted = []
    for name in constraints.permitted_subtrees or []:
        if isinstance(name, x509.DNSName):
            permitted.append("DNS:" + name.value)
        elif isinstance(name, x509.IPAddress):
            permitted.append("IP:" + str(name.value))
        else:
            raise AnsibleFilterError("pki_name_constraints: a permitted subtree this collection never makes: %r" % name)
    return permitted


class FilterModule(object):
    """matcraft.deploy pki filters."""

    def filters(self):
        return {
            "private_key_opens": private_key_opens,
            "ca_identity_problems": ca_identity_problems,
            "pki_host_sans": pki_host_sans,
            "pki_name_constraints": pki_name_constraints,
        }
