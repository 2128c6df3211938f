"""The nginx role's edge site as its templates render it, for the cases the edge scenario cannot reach.

The edge scenario serves a certificate from Pebble, which names no OCSP responder; what the site
looks like for a certificate that names one (a commercial CA's) is pinned here, with the role's
own defaults and derived variables, rendered by Ansible's templating as the role renders them.
"""

import os

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from conftest import ROOT

# The collection's own filters (matcraft.deploy.*), as a run finds them.
init_plugin_loader([os.path.join(ROOT, ".cache", "collections")])

ROLE = os.path.join(ROOT, "roles", "nginx")
OCSP_URL = "http://ocsp.example-ca.test"


def _trusted(variables):
    return {name: trust_as_template(value) if isinstance(value, str) else value for name, value in variables.items()}


def render(template, ocsp_uri_stdout="", **overrides):
    """The role's template rendered with its defaults, its vars and the facts a run would have."""
    variables = {}
    for part in ("defaults", "vars"):
        with open(os.path.join(ROLE, part, "main.yml"), encoding="utf-8") as handle:
            variables.update(_trusted(yaml.safe_load(handle)))
    variables.update({
        "matcraft_domain": "matcraft.example.org",
        "ansible_managed": "managed",
        "ansible_facts": {"all_ipv6_addresses": [], "dns": {"nameservers": ["192.0.2.53"]}},
        "nginx_version": "1.22.1",
        "nginx_upstream_addresses": ["192.0.2.10"],
        "nginx_upstream_active_addresses": ["192.0.2.10"],
        "nginx_tls_cert_file": "/etc/nginx/tls/matcraft.example.org.crt",
        "nginx_tls_key_file": "/etc/nginx/tls/matcraft.example.org.key",
        "nginx_tls_chain_file": "",
        # What site.yml registers from `openssl x509 -noout -ocsp_uri`.
        "nginx_tls_ocsp_uri": {"stdout": ocsp_uri_stdout},
    })
    variables.update(_trusted(overrides))
    templar = Templar(loader=DataLoader(), variables=variables)
    with open(os.path.join(ROLE, "templates", template), encoding="utf-8") as handle:
        return templar.template(trust_as_template(handle.read()))


def directives(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_stapling_when_the_certificate_names_an_ocsp_responder():
    site = directives(render("matcraft.conf.j2", OCSP_URL + "\n"))
    assert "ssl_stapling on;" in site and "ssl_stapling_verify on;" in site
    # Provided certificates have no separate chain file: the chain is the certificate file.
    assert "ssl_trusted_certificate /etc/nginx/tls/matcraft.example.org.crt;" in site
    assert "resolver 192.0.2.53 valid=300s;" in site


def test_stapling_uses_the_chain_file_when_there_is_one():
    site = directives(render("matcraft.conf.j2", OCSP_URL, nginx_tls_chain_file="/etc/letsencrypt/live/x/chain.pem"))
    assert "ssl_trusted_certificate /etc/letsencrypt/live/x/chain.pem;" in site


@pytest.mark.parametrize("stdout,overrides", [
    ("", {}),  # no OCSP URL in the certificate (Let's Encrypt since 2025, Pebble, the internal CA)
    ("\n", {}),
    (OCSP_URL, {"nginx_ssl_stapling": False}),  # the operator's override
])
def test_no_stapling_directive_without_a_responder_or_when_turned_off(stdout, overrides):
    site = render("matcraft.conf.j2", stdout, **overrides)
    assert not [d for d in directives(site) if d.startswith(("ssl_stapling", "ssl_trusted_certificate", "resolver"))]


def test_catch_all_upload_limits_and_admin_paths():
    site = render("matcraft.conf.j2", nginx_admin_allowed_cidrs=["10.8.0.0/16"],
                  nginx_upload_body_limits=[{"path_prefix": "/v1/datasets", "max_body_size_mb": 100},
                                            {"path_prefix": "/v1/imports", "max_body_size_mb": 250}])
    lines = directives(site)
    # Only the catch-all is the default server; it refuses unknown TLS names.
    assert [d for d in lines if "default_server" in d] == ["listen 80 default_server;",
                                                          "listen 443 ssl http2 default_server;"]
    assert lines.count("ssl_reject_handshake on;") == 1
    assert "client_max_body_size 1m;" in lines
    assert "location ^~ /v1/imports {" in lines and "client_max_body_size 250m;" in lines
    assert "10.8.0.0/16 1;" in lines
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        assert "location = %s {" % path in lines and "location ^~ %s/ {" % path in lines
    waf = directives(render("modsecurity.conf.j2", nginx_waf_mode="blocking",
                            nginx_upload_body_limits=[{"path_prefix": "/v1/imports", "max_body_size_mb": 250}]))
    # The WAF takes the largest body any path allows, and skips the upload paths' multipart bodies.
    assert "SecRequestBodyLimit %d" % (250 * 1048576) in waf
    assert 'SecRule REQUEST_FILENAME "@beginsWith /v1/imports" \\' in waf


def test_the_api_gets_the_configured_name():
    proxy = directives(render("proxy.conf.j2"))
    assert "proxy_set_header Host matcraft.example.org;" in proxy
    assert "proxy_set_header X-Forwarded-Host $host;" in proxy
