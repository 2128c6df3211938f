"""pytest hooks for every Molecule scenario: on failure, show failed units and journals.

This directory is on sys.path for the scenarios' tests: `from helpers import ...`.
"""

from __future__ import annotations

import pytest

from helpers import journal


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach failed units and their journals from the test host."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    host = item.funcargs.get("host") if hasattr(item, "funcargs") else None
    if host is None:
        return
    try:
        failed = host.run("systemctl --failed --no-legend --plain").stdout
        units = [line.split()[0] for line in failed.splitlines() if line.strip()]
        text = "failed units:\n%s\n" % (failed or "(none)")
        for unit in units[:5]:
            text += "\n--- journal of %s ---\n%s" % (unit, journal(host, unit, 40))
        report.sections.append(("systemd on %s" % host.backend.get_hostname(), text))
    except Exception as exc:  # noqa: BLE001 - diagnostics must never mask the failure
        report.sections.append(("systemd diagnostics", "unavailable: %s" % exc))
