"""Alerting rules of the prometheus role (templates/rules/matcraft.rules.yml.j2).

- test_promtool_unit_tests runs tests/rules/run.sh: promtool check rules,
  promtool test rules (tests/rules/matcraft.test.yml) and the mtail program
  test. It needs promtool and mtail and FAILS without them: install the Debian
  packages `prometheus` (promtool) and `mtail`.
- The other tests render the template with the role's defaults (the way
  tests/rules/render.py does) and check the production guide's
  "Monitoring and Alerting" table: every metric has a warning and a critical
  rule under one alertname, and the defaults are the guide's numbers.
"""

import importlib.util
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "tests" / "rules"
DEFAULTS = REPO / "roles" / "prometheus" / "defaults" / "main.yml"
RULES_TEMPLATE = "rules/matcraft.rules.yml.j2"
MTAIL_TEMPLATE = "mtail/nginx_matcraft.mtail.j2"

# The guide's table: alertname -> (warning variable, warning value,
# critical variable, critical value). Percentages in percent, latency in ms.
GUIDE = {
    "MatcraftApiErrorRateHigh": (
        "prometheus_alert_api_error_rate_warning_percent", 1,
        "prometheus_alert_api_error_rate_critical_percent", 5),
    "MatcraftApiLatencyHigh": (
        "prometheus_alert_api_latency_p95_warning_ms", 500,
        "prometheus_alert_api_latency_p95_critical_ms", 2000),
    "MatcraftWorkerQueueDepthHigh": (
        "prometheus_alert_worker_queue_depth_warning", 50,
        "prometheus_alert_worker_queue_depth_critical", 200),
    "MatcraftDatabaseConnectionsHigh": (
        "prometheus_alert_database_connections_warning_percent", 80,
        "prometheus_alert_database_connections_critical_percent", 95),
    "MatcraftDatabaseDiskUsageHigh": (
        "prometheus_alert_database_disk_warning_percent", 70,
        "prometheus_alert_database_disk_critical_percent", 85),
    "MatcraftRedisMemoryHigh": (
        "prometheus_alert_redis_memory_warning_percent", 70,
        "prometheus_alert_redis_memory_critical_percent", 85),
}
# Threshold as it appears in the PromQL expression, from the variable's value.
EXPR_THRESHOLD = {"MatcraftApiLatencyHigh": lambda ms: ms / 1000}

# Alerts whose value means nothing (absent() is always 1; not streaming is always 0): no $value needed.
NO_VALUE_ANNOTATION = {"MatcraftBackupMetricMissing", "MatcraftDatabaseReplicaNotStreaming"}

INSTALL_HINT = (
    "install the Debian package `{package}` (apt-get install {package}); "
    "the alerting unit tests are not skipped without it"
)


def _load_render():
    spec = importlib.util.spec_from_file_location("matcraft_rules_render", RULES_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


def _rules(variables):
    document = yaml.safe_load(render.render_template(RULES_TEMPLATE, variables))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def defaults():
    return yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def variables():
    return render.load_vars()


@pytest.fixture(scope="module")
def rules(variables):
    return _rules(variables)


def _by_alertname(rules):
    found = {}
    for rule in rules:
        found.setdefault(rule["alert"], []).append(rule)
    return found


def _thresholds(expr):
    return [float(number) for number in re.findall(r"[<>]\s*(-?\d+(?:\.\d+)?)\b", expr)]


def test_promtool_unit_tests():
    missing = [
        INSTALL_HINT.format(package=package) + f" ({tool} not found on PATH)"
        for tool, package in (("promtool", "prometheus"), ("mtail", "mtail"))
        if shutil.which(tool) is None
    ]
    if missing:
        pytest.fail("; ".join(missing))
    result = subprocess.run(
        [str(RULES_DIR / "run.sh")], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, output
    assert lines and re.fullmatch(r"[1-9]\d* passed, 0 failed", lines[-1]), output


@pytest.mark.parametrize("alertname", sorted(GUIDE))
def test_defaults_are_the_guides_numbers(defaults, alertname):
    warning_var, warning, critical_var, critical = GUIDE[alertname]
    assert defaults[warning_var] == warning
    assert defaults[critical_var] == critical


@pytest.mark.parametrize("alertname", sorted(GUIDE))
def test_guide_metric_has_warning_and_critical(rules, variables, alertname):
    found = _by_alertname(rules).get(alertname, [])
    severities = sorted(rule["labels"]["severity"] for rule in found)
    assert severities == ["critical", "warning"], f"{alertname}: {severities}"
    warning_var, _, critical_var, _ = GUIDE[alertname]
    convert = EXPR_THRESHOLD.get(alertname, lambda value: value)
    for rule in found:
        variable = warning_var if rule["labels"]["severity"] == "warning" else critical_var
        expected = float(convert(variables[variable]))
        assert expected in _thresholds(rule["expr"]), f"{alertname} {rule['labels']['severity']}: {rule['expr']}"


def test_warning_and_critical_differ_only_in_threshold_and_severity(variables):
    """Same alertname, same expression and labels: Alertmanager can inhibit one by the other."""
    same = dict(variables)
    for warning_var, _, critical_var, _ in GUIDE.values():
        same[warning_var] = same[critical_var]
    same["prometheus_alert_host_disk_warning_percent"] = same["prometheus_alert_host_disk_critical_percent"]
    for alertname, found in _by_alertname(_rules(same)).items():
        if len(found) == 1:
            continue
        assert len(found) == 2, alertname
        warning, critical = sorted(found, key=lambda rule: rule["labels"]["severity"] != "warning")
        assert warning["expr"] == critical["expr"], alertname
        assert warning["for"] == critical["for"], alertname
        assert {**warning["labels"], "severity": "x"} == {**critical["labels"], "severity": "x"}, alertname
        assert (warning["labels"]["severity"], critical["labels"]["severity"]) == ("warning", "critical")


def test_every_rule_is_complete(rules, variables):
    for_values = {str(value) for name, value in variables.items() if name.endswith("_for")}
    base = variables["prometheus_alert_runbook_base_url"]
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert str(rule["for"]) in for_values, f"{name}: `for` not from a prometheus_alert_*_for variable"
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"{base}#{name.lower()}", name
        if name not in NO_VALUE_ANNOTATION:
            assert "$value" in annotations["description"], f"{name}: the description does not show the value"


def test_beyond_the_guide_alerts_exist(rules):
    expected = {
        "MatcraftTargetDown", "MatcraftWorkerHealthProbeFailed", "MatcraftWorkerDown", "MatcraftWorkerJobUnacknowledged",
        "MatcraftDatabaseWalArchivingFailing", "MatcraftDatabaseWalArchiveStale",
        "MatcraftBackupFullTooOld", "MatcraftBackupMetricMissing", "MatcraftDatabaseReplicaLagHigh",
        "MatcraftTlsCertificateExpiringSoon", "MatcraftHostDiskUsageHigh", "MatcraftHostMemoryLow",
    }
    assert expected <= set(_by_alertname(rules))


def test_every_default_is_used(defaults):
    templates = REPO / "roles" / "prometheus" / "templates"
    used_in = [(templates / name).read_text(encoding="utf-8") for name in (RULES_TEMPLATE, MTAIL_TEMPLATE)]
    used_in += [value for value in defaults.values() if isinstance(value, str)]  # one default using another
    text = "\n".join(used_in)
    for name in (n for n in defaults if n.startswith("prometheus_alert_")):
        assert re.search(rf"\b{name}\b", text), f"{name} is defined but no template uses it"


def test_latency_thresholds_are_histogram_buckets(variables):
    buckets = [float(bucket) for bucket in variables["prometheus_alert_api_latency_buckets"]]
    assert buckets == sorted(buckets)
    for variable in ("prometheus_alert_api_latency_p95_warning_ms", "prometheus_alert_api_latency_p95_critical_ms"):
        assert variables[variable] / 1000 in buckets, f"{variable} is no bucket bound of the mtail histogram"
    program = render.render_template(MTAIL_TEMPLATE, variables)
    declaration = re.search(r"^histogram matcraft_http_request_duration_seconds buckets (.+)$", program, re.M)
    assert declaration, program
    assert [float(bucket) for bucket in declaration.group(1).split(",")] == buckets


def test_render_resolves_templated_defaults(variables):
    assert variables["prometheus_alert_wal_archive_max_age_seconds"] == 2 * int(
        variables["prometheus_alert_wal_archive_timeout_seconds"]
    )
    assert variables["prometheus_alert_backup_metric_missing_for"] == (
        f"{variables['prometheus_alert_backup_full_max_age_hours']}h"
    )
