"""Host certificates from the internal CA: right names, key stays on the host,
TLS verifies across the network, renewal happens before expiry; the CA vouches
only for the deployment (name constraints, not in the system trust store) and
its key is always encrypted."""

import datetime
import os
import subprocess

from helpers import address_of, peer

CA_DIR = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "pki")
SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_key_private_and_certificate_matches(host):
    key = host.file("/etc/matcraft/pki/host.key")
    assert key.mode == 0o640 and key.user == "root" and key.group == "matcraft-tls"
    cert_pub = host.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -pubkey").stdout
    key_pub = host.run("openssl pkey -in /etc/matcraft/pki/host.key -pubout").stdout
    assert cert_pub and cert_pub == key_pub


def test_certificate_names_and_chain(host):
    """The private address is in the certificate; the short host name is not, since the CA may
    vouch only for names under its permitted domains (its name constraints)."""
    name = host.backend.get_hostname()
    text = host.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -text").stdout
    assert "IP Address:%s" % address_of(host) in text
    assert "DNS:%s" % name not in text, text
    verify = host.run("openssl verify -CAfile /etc/matcraft/pki/ca.crt /etc/matcraft/pki/host.crt")
    assert verify.rc == 0, verify.stderr


def test_host_certificates_live_90_days(host):
    dates = host.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -startdate -enddate").stdout.splitlines()
    start, end = (datetime.datetime.strptime(line.split("=", 1)[1], "%b %d %H:%M:%S %Y GMT") for line in dates)
    assert datetime.timedelta(days=89) < end - start <= datetime.timedelta(days=90, minutes=1), dates


def _sign_with_the_ca(tmp_path, name, subject_alt_name):
    """A leaf certificate signed by the internal CA's key on the controller (what a thief of the key
    could make): its path."""
    key, csr, crt = (str(tmp_path / ("%s.%s" % (name, ext))) for ext in ("key", "csr", "crt"))
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", "/CN=" + name], check=True, capture_output=True)
    ext = tmp_path / ("%s.ext" % name)
    ext.write_text("subjectAltName=%s\nextendedKeyUsage=serverAuth\n" % subject_alt_name)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(CA_DIR, "ca.crt"),
                    "-CAkey", os.path.join(CA_DIR, "ca.key"), "-passin", "env:PKI_TEST_PASSPHRASE",
                    "-set_serial", "0x%x" % (abs(hash(name)) + 1), "-days", "1", "-out", crt, "-extfile", str(ext)],
                   check=True, capture_output=True, env=dict(os.environ, PKI_TEST_PASSPHRASE=PASSPHRASE))
    return crt


def test_the_ca_vouches_only_for_this_deployment(tmp_path):
    """Hardening item 4: the CA carries critical name constraints (matcraft.internal and private
    ranges), so even a certificate signed with its own key for a package mirror or a public
    address fails verification; one for a deployment name and a private address passes."""
    text = subprocess.run(["openssl", "x509", "-in", os.path.join(CA_DIR, "ca.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "X509v3 Name Constraints: critical" in text, text
    assert "DNS:matcraft.internal" in text and "IP:10.0.0.0/255.0.0.0" in text, text
    ca = os.path.join(CA_DIR, "ca.crt")
    verdicts = {}
    for name, san in (("mirror", "DNS:deb.debian.org"), ("public-ip", "IP:9.9.9.9"),
                      ("inside", "DNS:db1.matcraft.internal,IP:10.20.30.40")):
        crt = _sign_with_the_ca(tmp_path, name, san)
        run = subprocess.run(["openssl", "verify", "-CAfile", ca, crt], capture_output=True, text=True, check=False)
        verdicts[name] = (run.returncode, run.stdout + run.stderr)
    for name in ("mirror", "public-ip"):
        assert verdicts[name][0] != 0 and "subtree violation" in verdicts[name][1], verdicts[name]
    assert verdicts["inside"][0] == 0, verdicts["inside"]
    # The hosts verify the same way (their OpenSSL, the CA file they trust).
    client = peer("pki-client")
    with open(_sign_with_the_ca(tmp_path, "mirror2", "DNS:deb.debian.org")) as handle:
        pem = handle.read()
    client.run("cat > /tmp/pki-mirror.crt <<'EOF'\n%s\nEOF" % pem)
    refused = client.run("openssl verify -CAfile /etc/matcraft/pki/ca.crt /tmp/pki-mirror.crt")
    assert refused.rc != 0 and "subtree violation" in refused.stdout + refused.stderr, refused.stdout + refused.stderr


def test_the_ca_is_in_no_system_trust_store():
    """Only the programs that name /etc/matcraft/pki/ca.crt trust the CA: OpenSSL with the system
    store refuses the host certificate (and curl without the CA file a server's:
    test_tls_handshake_between_hosts)."""
    server, client = peer("pki-server"), peer("pki-client")
    for node in (server, client):
        assert not node.file("/usr/local/share/ca-certificates/matcraft-internal-ca.crt").exists
        system = node.run("openssl verify -CApath /etc/ssl/certs /etc/matcraft/pki/host.crt")
        assert system.rc != 0, "the system trust store verifies the host certificate on %s" % node
        assert node.file("/etc/matcraft/pki").mode == 0o751


def test_a_ca_key_without_a_passphrase_is_refused():
    """The CA key is always encrypted: an empty passphrase stops the run before any change."""
    run, output = converge("-e", "pki_ca_passphrase=")
    assert run.returncode != 0, output[-3000:]
    assert "pki_ca_passphrase (from matcraft_pki_ca_passphrase) is empty" in output, output[-3000:]
    assert recap_changed(output) == [], output[-1500:]


def test_ca_key_stays_on_controller_encrypted(host):
    assert not host.file("/etc/matcraft/pki/ca.key").exists
    assert os.stat(os.path.join(CA_DIR, "ca.key")).st_mode & 0o777 == 0o600
    with open(os.path.join(CA_DIR, "ca.key")) as handle:
        assert "ENCRYPTED" in handle.read()
    # No host key was ever copied to the controller.
    assert not [f for f in os.listdir(os.path.join(CA_DIR, "issued")) if f.endswith(".key")]


def test_tls_handshake_between_hosts():
    server, client = peer("pki-server"), peer("pki-client")
    server.run("systemctl stop pki-probe")
    started = server.run(
        "systemd-run --unit=pki-probe --property=RuntimeMaxSec=120 openssl s_server -quiet -www "
        "-accept 8443 -cert /etc/matcraft/pki/host.crt -key /etc/matcraft/pki/host.key")
    assert started.rc == 0, started.stderr
    try:
        # Verified against the internal CA, by the server's private address.
        got = client.run("curl -sS --retry 5 --retry-connrefused --retry-delay 1 --cacert /etc/matcraft/pki/ca.crt "
                         "-o /dev/null -w '%%{http_code}' https://%s:8443/", address_of(server))
        assert got.rc == 0 and got.stdout == "200", got.stderr
        # A name that is not in the certificate is refused.
        wrong = client.run("curl -sS -o /dev/null --cacert /etc/matcraft/pki/ca.crt --resolve wrong.name:8443:%s "
                           "https://wrong.name:8443/", address_of(server))
        assert wrong.rc != 0 and "certificate" in wrong.stderr.lower()
        # Without the CA file curl refuses: the CA is in no system trust store.
        unnamed = client.run("curl -sS -o /dev/null https://%s:8443/", address_of(server))
        assert unnamed.rc == 60 and "certificate" in unnamed.stderr.lower(), (unnamed.rc, unnamed.stderr)
    finally:
        server.run("systemctl stop pki-probe")


def test_renewal_before_expiry():
    """With a renewal window longer than the lifetime, the next run re-issues."""
    server = peer("pki-server")
    before = server.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -serial").stdout
    key_before = server.run("sha256sum /etc/matcraft/pki/host.key").stdout
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", "pki-server",
         "-e", "pki_renew_before_days=400", os.path.join(SCENARIO, "converge.yml")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    after = server.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -serial").stdout
    assert before != after, "certificate was not re-issued"
    assert key_before == server.run("sha256sum /etc/matcraft/pki/host.key").stdout, "key changed"


PASSPHRASE = "Ow5mJc8Tq2XvNz7Lk4RbYe9Hd3Gs6Pa1Fu0W"  # converge.yml's


def converge(*extra):
    """converge.yml again with extra arguments; JSON results keep each message on one line."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    run = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
                          os.path.join(SCENARIO, "converge.yml")] + list(extra),
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    return run, run.stdout + run.stderr


def recap_changed(output):
    return [line.split()[0] for line in output.split("PLAY RECAP", 1)[1].splitlines()
            if "changed=" in line and "changed=0" not in line]


def fingerprints():
    """The CA certificate and each host's certificate serial: what a rotation must keep."""
    with open(os.path.join(CA_DIR, "ca.crt")) as handle:
        ca = handle.read()
    serials = {name: peer(name).run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -serial").stdout
               for name in ("pki-server", "pki-client")}
    return ca, serials


def key_opens(passphrase):
    return subprocess.run(["openssl", "pkey", "-in", os.path.join(CA_DIR, "ca.key"), "-passin", "stdin", "-noout"],
                          input=passphrase + "\n", capture_output=True, text=True, check=False).returncode == 0


def test_a_new_ca_passphrase_re_encrypts_the_key_and_keeps_the_ca():
    """A rotated passphrase (matcraft.deploy.secrets keeps the old one as
    matcraft_pki_ca_passphrase_previous) re-encrypts the CA key: the CA and every
    host certificate stay, and the next run changes nothing."""
    new = "Zq8Lw3Nv6Tb1Xc9Rm4Kj7Hf2Gd5Sa0PyUe"
    before = fingerprints()
    try:
        run, output = converge("-e", "pki_ca_passphrase=" + new, "-e", "pki_ca_passphrase_previous=" + PASSPHRASE)
        assert run.returncode == 0, output[-3000:]
        assert len(recap_changed(output)) == 1, output[-1500:]  # run_once: the key, reported by one host
        assert key_opens(new) and not key_opens(PASSPHRASE)
        assert fingerprints() == before, "the CA or a host certificate changed"
        again, output = converge("-e", "pki_ca_passphrase=" + new)
        assert again.returncode == 0 and recap_changed(output) == [], output[-1500:]
        for secret in (new, PASSPHRASE):
            assert secret not in output
    finally:
        back, output = converge("-e", "pki_ca_passphrase=" + PASSPHRASE, "-e", "pki_ca_passphrase_previous=" + new)
        assert back.returncode == 0, output[-3000:]
    assert key_opens(PASSPHRASE) and fingerprints() == before


def test_inventory_edits_never_make_a_new_ca_of_a_running_environment(tmp_path):
    """A renamed environment, a lost CA directory, a passphrase that opens nothing:
    each stops the run before any change, with the variable, what differs and the fix."""
    before = fingerprints()
    cases = [
        (["-e", "matcraft_environment=staging"],
         "pki_ca_common_name: the internal CA in %s is named 'MatCraft internal CA (production)', and this "
         "inventory names it 'MatCraft internal CA (staging)'" % CA_DIR),
        (["-e", "pki_ca_dir=%s" % (tmp_path / "elsewhere")],
         "pki_ca_dir: no internal CA in %s, but 2 host(s) (pki-client, pki-server) trust one already"
         % (tmp_path / "elsewhere")),
        (["-e", "pki_ca_passphrase=Wr0ngPassphraseWr0ngPassphraseWr0ng"],
         "matcraft_pki_ca_passphrase: does not open %s/ca.key" % CA_DIR),
    ]
    for extra, message in cases:
        run, output = converge(*extra)
        assert run.returncode != 0, output[-3000:]
        assert message in output, "%r not in:\n%s" % (message, output[-3000:])
        assert recap_changed(output) == [], output[-1500:]
    assert not (tmp_path / "elsewhere").exists()
    assert fingerprints() == before


def test_a_ca_left_where_earlier_builds_kept_it_stops_the_role(tmp_path):
    """Earlier builds kept the CA in <inventory>/pki, which Ansible then read as inventory; the
    default is now <inventory>/.pki. With a CA only in the old place, the role stops before it
    makes a second CA, names pki_ca_dir and says how to move it."""
    inventory = tmp_path / "inventory"
    (inventory / "pki").mkdir(parents=True)
    (inventory / "pki" / "ca.crt").write_text("the CA of an earlier build\n")
    (inventory / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    playbook = tmp_path / "ca.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.include_role: {name: matcraft.deploy.pki, tasks_from: ca.yml}\n")
    run = subprocess.run(["ansible-playbook", "-i", str(inventory), str(playbook)],
                         capture_output=True, text=True,
                         env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"), timeout=300, check=False)
    output = run.stdout + run.stderr  # the failed task's message goes to stderr
    assert run.returncode != 0, output[-3000:]
    assert "pki_ca_dir: the internal CA is in %s/pki," % inventory in output, output[-3000:]
    assert "mv %s/pki %s/.pki" % (inventory, inventory) in output
    assert not (inventory / ".pki").exists()


def test_exporters_over_tls_stop_before_any_change_without_the_host_key(tmp_path):
    """The exporters run as the prometheus user and read the pki role's host key;
    without it the first start would crash-loop. The role stops first, names the
    file and the two ways out, and has installed nothing."""
    client = peer("pki-client")
    playbook = tmp_path / "exporters.yml"
    playbook.write_text(
        "- hosts: pki-client\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: matcraft.deploy.exporters}\n"
        "      vars: {exporters_tls: true, exporters_tls_key_file: /etc/matcraft/pki/absent.key}\n")
    # JSON results: the message is not folded across lines as the YAML format may do.
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    run = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert ("exporters_tls needs /etc/matcraft/pki/absent.key: run the matcraft.deploy.pki role on "
            "this host first (site.yml does), or set matcraft_monitoring_tls: false.") in output, output[-3000:]
    assert "changed=0" in output.split("PLAY RECAP", 1)[1], output[-1500:]
    assert not client.package("prometheus-node-exporter").is_installed
