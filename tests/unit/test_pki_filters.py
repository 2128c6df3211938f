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


# --------------------------------------------------------------------------- name constraints

PERMITTED = ["DNS:matcraft.internal", "DNS:matcraft.example.org", "IP:10.0.0.0/8", "IP:172.16.0.0/12",
             "IP:fc00::/7", "IP:127.0.0.0/8"]


def test_host_names_outside_the_constraints_are_left_out_and_requested_ones_refused():
    got = pki.pki_host_sans(["db1", "db1.corp.example", "10.1.2.3"], PERMITTED,
                            required=["172.18.0.5", "api.matcraft.internal"], common_name="db1")
    assert got == {"sans": ["DNS:api.matcraft.internal", "IP:172.18.0.5", "IP:10.1.2.3"],
                   "dropped": ["db1", "db1.corp.example"], "problems": [], "common_name": "db1"}
    refused = pki.pki_host_sans(["db1"], PERMITTED, required=["9.9.9.9", "evil.example", "matcraft.example.org"])
    assert refused["problems"] == ["9.9.9.9", "evil.example"]
    assert refused["sans"] == ["DNS:matcraft.example.org"]


def test_dns_constraints_follow_rfc_5280():
    fits = lambda name, trees: pki.pki_host_sans([], ["DNS:" + t for t in trees], required=[name])["problems"] == []
    assert fits("matcraft.internal", ["matcraft.internal"])
    assert fits("a.b.matcraft.internal", ["matcraft.internal"])
    assert fits("API.Matcraft.Internal.", ["matcraft.internal"])
    assert not fits("evilmatcraft.internal", ["matcraft.internal"])
    assert not fits("matcraft.internal.evil", ["matcraft.internal"])
    assert fits("x.example.org", [".example.org"]) and not fits("example.org", [".example.org"])


def test_a_ca_without_constraints_permits_everything_and_a_missing_type_is_free():
    assert pki.pki_host_sans(["db1"], [], required=["9.9.9.9"])["sans"] == ["DNS:db1", "IP:9.9.9.9"]
    dns_only = pki.pki_host_sans(["db1"], ["DNS:matcraft.internal"], required=["9.9.9.9"])
    assert dns_only["sans"] == ["IP:9.9.9.9"] and dns_only["dropped"] == ["db1"]
    ipv6 = pki.pki_host_sans([], PERMITTED, required=["fd12::5", "2001:db8::1"])
    assert ipv6["sans"] == ["IP:fd12::5"] and ipv6["problems"] == ["2001:db8::1"]


def test_a_common_name_openssl_would_check_loses_its_dots():
    # OpenSSL checks a common name of two labels or more when the certificate has no DNS name.
    assert pki.pki_host_sans([], PERMITTED, common_name="10.1.2.3")["common_name"] == "10-1-2-3"
    assert pki.pki_host_sans([], PERMITTED, common_name="db1.corp.example")["common_name"] == "db1-corp-example"
    assert pki.pki_host_sans([], PERMITTED, common_name="db1.matcraft.internal")["common_name"] == "db1.matcraft.internal"
    assert pki.pki_host_sans([], PERMITTED, common_name="db1")["common_name"] == "db1"
    assert pki.pki_host_sans([], [], common_name="db1.corp.example")["common_name"] == "db1.corp.example"


def _ca_pem(permitted):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True))
    if permitted is not None:
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                                        critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_name_constraints_are_read_back_as_openssl_csr_takes_them():
    import ipaddress

    from cryptography import x509

    pem = _ca_pem([x509.DNSName("matcraft.internal"), x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                   x509.IPAddress(ipaddress.ip_network("fc00::/7"))])
    assert pki.pki_name_constraints(pem) == ["DNS:matcraft.internal", "IP:10.0.0.0/8", "IP:fc00::/7"]
    assert pki.pki_name_constraints(_ca_pem(None)) == []
    assert pki.pki_name_constraints("") == []
