"""Host certificates from the internal CA: right names, key stays on the host,
TLS verifies across the network, renewal happens before expiry."""

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
    name = host.backend.get_hostname()
    text = host.run("openssl x509 -in /etc/matcraft/pki/host.crt -noout -text").stdout
    assert "DNS:%s" % name in text
    assert "IP Address:%s" % address_of(host) in text
    verify = host.run("openssl verify -CAfile /etc/matcraft/pki/ca.crt /etc/matcraft/pki/host.crt")
    assert verify.rc == 0, verify.stderr


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
        # Verified through the system trust store, by the certificate's DNS name.
        got = client.run("curl -sS --retry 5 --retry-connrefused --retry-delay 1 -o /dev/null "
                         "-w '%{http_code}' https://pki-server:8443/")
        assert got.rc == 0 and got.stdout == "200", got.stderr
        # A name that is not in the certificate is refused.
        wrong = client.run("curl -sS -o /dev/null --resolve wrong.name:8443:%s https://wrong.name:8443/",
                           address_of(server))
        assert wrong.rc != 0 and "certificate" in wrong.stderr.lower()
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
