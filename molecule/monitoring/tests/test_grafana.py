"""Grafana: the provisioning files are generated and valid, and every query of
every dashboard panel returns data from the scenario's live Prometheus. The
package part (install, grafana-server, admin password) runs only where the
package can be installed; otherwise the test that covers it is SKIPPED with
the reason, by name, never passed silently."""

import json
import re

import pytest
import yaml

from helpers import assert_unit_running
from monitoring_api import mon, private_address, query, variables, wait_for

SCRATCH = "/var/tmp/matcraft-grafana"
DATASOURCE = SCRATCH + "/provisioning/datasources/matcraft.yml"
PROVIDER = SCRATCH + "/provisioning/dashboards/matcraft.yml"
DASHBOARD = SCRATCH + "/dashboards/matcraft-overview.json"
# Grafana's interval variables, as Grafana would expand them at a 5s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
GUIDE_PANELS = ("API error rate", "API latency p95", "Worker queue depth", "Database connections",
                "Database disk usage", "Redis memory")


def _dashboard():
    return json.loads(mon().file(DASHBOARD).content_string)


def _panel_queries():
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_provisioning_files_are_valid():
    host = mon()
    datasource_file = host.file(DATASOURCE)
    assert datasource_file.mode == 0o640, "the datasource file holds a password"
    datasource = yaml.safe_load(datasource_file.content_string)["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://%s:9090" % private_address(host)
    assert datasource["basicAuth"] is True and datasource["basicAuthUser"] == "matcraft"
    provider = yaml.safe_load(host.file(PROVIDER).content_string)["providers"][0]
    assert provider["options"]["path"] == SCRATCH + "/dashboards"
    dashboard = _dashboard()
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in GUIDE_PANELS + ("Celery workers", "Worker health", "full backup", "TLS certificate"):
        assert [t for t in titles if wanted in t], "no panel about %r in %s" % (wanted, titles)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_datasource_credentials_open_prometheus():
    """The datasource's URL and basic auth, as Grafana would use them."""
    host = mon()
    datasource = yaml.safe_load(host.file(DATASOURCE).content_string)["datasources"][0]
    result = host.run("curl -sS --max-time 10 -o /dev/null -w '%%{http_code}' -u %s %s",
                      "%s:%s" % (datasource["basicAuthUser"], datasource["secureJsonData"]["basicAuthPassword"]),
                      datasource["url"] + "/api/v1/status/buildinfo")
    assert result.stdout == "200", result.stdout + result.stderr


def _expand(expr):
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert not re.search(r"\$\w+", expr), "unexpanded Grafana variable in %s" % expr
    return expr


def test_every_panel_query_returns_data():
    queries = list(_panel_queries())
    assert len(queries) >= 12
    empty = []
    for title, expr in queries:
        try:
            wait_for("data for %s" % title, lambda e=expr: query(_expand(e)), timeout=60, interval=5)
        except AssertionError:
            empty.append((title, expr))
    assert not empty, "panel queries without data: %r" % empty


def test_grafana_package_part():
    host = mon()
    verdict = host.file("/var/lib/matcraft-test-grafana.txt").content_string.strip()
    # Only an unreachable package source (no Grafana repository, no local .deb;
    # decided by converge.yml's probe) skips, and the skip names the part not
    # run (issue: "reported as not run, by name"); any other verdict must be RUN.
    if verdict.startswith("NOT RUN"):
        pytest.skip("Grafana package part (matcraft.deploy.grafana main tasks) %s" % verdict)
    assert verdict == "RUN", verdict
    assert_unit_running(host, "grafana-server")
    address = private_address(host)
    password = variables(host)["matcraft_grafana_admin_password"]
    base = "http://%s:3000" % address
    health = wait_for("Grafana health", lambda: host.run("curl -sf --max-time 5 %s/api/health", base).rc == 0,
                      timeout=60)
    assert health
    for path in ("/api/user", "/api/datasources/uid/matcraft-prometheus", "/api/dashboards/uid/matcraft-overview",
                 "/api/datasources/uid/matcraft-prometheus/health"):
        result = host.run("curl -sS --max-time 10 -o /dev/null -w '%%{http_code}' -u %s %s",
                          "admin:%s" % password, base + path)
        assert result.stdout == "200", "%s: %s %s" % (path, result.stdout, result.stderr)
    listening = [line.split()[3] for line in host.run("ss -Htln").stdout.splitlines() if line.strip()]
    assert "%s:3000" % address in listening, listening
