"""The pki role's CA identity check (plugins/filter/pki.py), case by case.

The pki scenario runs it against a real CA and real hosts; these tests pin
each message.
"""

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import pki

CA_DIR = "/inv/.pki"
NAME = "MatCraft internal CA (production)"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\nBBBB\n-----END CERTIFICATE-----\n"
OTHER = "-----BEGIN CERTIFICATE-----\nMIICCCCC\n-----END CERTIFICATE-----\n"


def ca(**kw):
    value = {"crt": True, "key": True, "name": NAME, "pem": PEM, "key_opens": 0}
    value.update(kw)
    return value


def slurp(pem):
    return {"content": base64.b64encode(pem.encode()).decode(), "encoding": "base64"}


def test_a_running_environment_that_keeps_its_ca_passes():
    trust = {"api1": slurp(PEM), "db1": PEM.replace("\n", "\r\n"), "new1": {"skipped": True}}
    assert pki.ca_identity_problems(ca(), NAME, trust, CA_DIR) == []


def test_a_fresh_environment_passes():
    assert pki.ca_identity_problems(ca(crt=False, key=False, name="", pem="", key_opens=-1), NAME,
                                    {"api1": {"skipped": True}}, CA_DIR) == []


def test_a_renamed_environment_stops_and_says_how_to_keep_the_name():
    [msg] = pki.ca_identity_problems(ca(), "MatCraft internal CA ()", {"api1": slurp(PEM)}, CA_DIR)
    assert msg.startswith("pki_ca_common_name: the internal CA in /inv/.pki is named '%s'" % NAME)
    assert "pki_ca_common_name: '%s'" % NAME in msg and "docs/runbooks/pki.md" in msg


def test_a_lost_ca_directory_stops_when_hosts_trust_a_ca():
    [msg] = pki.ca_identity_problems(ca(crt=False, key=False, pem="", key_opens=-1), NAME,
                                     {"db1": slurp(PEM), "api1": slurp(PEM)}, CA_DIR)
    assert msg.startswith("pki_ca_dir: no internal CA in /inv/.pki, but 2 host(s) (api1, db1) trust one already")


def test_another_environment_s_ca_stops():
    [msg] = pki.ca_identity_problems(ca(), NAME, {"api1": slurp(OTHER), "db1": slurp(PEM)}, CA_DIR)
    assert msg.startswith("pki_ca_dir: the CA in /inv/.pki is not the CA that 1 host(s) (api1) trust")


def test_a_passphrase_that_opens_nothing_stops_and_a_missing_key_too():
    assert pki.ca_identity_problems(ca(key_opens=-1), NAME, {}, CA_DIR)[0].startswith(
        "matcraft_pki_ca_passphrase: does not open /inv/.pki/ca.key")
    assert pki.ca_identity_problems(ca(key=False, key_opens=-1), NAME, {}, CA_DIR)[0].startswith(
        "pki_ca_dir: /inv/.pki has the CA certificate but not its key ca.key")


def test_a_deliberate_replacement_passes_the_identity_checks_but_not_the_key_checks():
    assert pki.ca_identity_problems(ca(name="old"), NAME, {"api1": slurp(OTHER)}, CA_DIR, True) == []
    assert len(pki.ca_identity_problems(ca(key_opens=-1), NAME, {}, CA_DIR, True)) == 1


@pytest.fixture()
def keys(tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    paths = {}
    for name, algorithm in (("plain", serialization.NoEncryption()),
                            ("encrypted", serialization.BestAvailableEncryption(b"first-passphrase"))):
        paths[name] = tmp_path / ("%s.key" % name)
        paths[name].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  algorithm))
    return paths


@pytest.mark.parametrize("name,passphrases,index", [
    ("encrypted", ["first-passphrase", ""], 0),
    ("encrypted", ["new-passphrase", "first-passphrase"], 1),   # a rotation: re-encrypt
    ("encrypted", ["new-passphrase", ""], -1),                  # nothing opens it: stop
    ("plain", ["", ""], 0),
    ("plain", ["new-passphrase", ""], 1),                       # a passphrase set for the first time
])
def test_private_key_opens(keys, name, passphrases, index):
    assert pki.private_key_opens(str(keys[name]), passphrases) == index
