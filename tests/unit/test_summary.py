"""tests/testbed/summary.py: the last lines of `make test` count every test and name every skip."""

import importlib.util
import os

from conftest import ROOT

_SPEC = importlib.util.spec_from_file_location("summary", os.path.join(ROOT, "tests", "testbed", "summary.py"))
SUMMARY = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(SUMMARY)

XML = """<testsuites><testsuite>
<testcase classname="tests.test_site" name="test_a"/>
<testcase classname="tests.test_site" name="test_b"><failure message="boom"/></testcase>
<testcase classname="tests.test_site" name="test_grafana"><skipped message="Grafana package: NOT RUN"/></testcase>
</testsuite></testsuites>"""


def test_counts_names_failures_and_skips_and_scenarios_that_never_reached_their_tests(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SUMMARY, "RESULTS", str(tmp_path))
    (tmp_path / "scenario-site.xml").write_text(XML)
    (tmp_path / "unit.xml").write_text('<testsuite><testcase classname="u" name="t"/></testsuite>')
    status = SUMMARY.main(["--unit", str(tmp_path / "unit.xml"), "site=1", "app=2"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert lines[-1] == "2 passed, 3 failed, 1 skipped"
    assert "failed: scenario site: tests.test_site::test_b" in lines
    assert "failed: scenario app: failed before its tests ran (exit 2; see its log)" in lines
    assert "skipped: scenario site: tests.test_site::test_grafana: Grafana package: NOT RUN" in lines


def test_all_passed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SUMMARY, "RESULTS", str(tmp_path))
    (tmp_path / "scenario-pki.xml").write_text('<testsuite><testcase classname="p" name="t"/></testsuite>')
    assert SUMMARY.main(["pki=0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed, 0 skipped"


def test_a_scenario_left_out_is_named_not_run_and_never_counted_as_passed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SUMMARY, "RESULTS", str(tmp_path))
    (tmp_path / "scenario-pki.xml").write_text('<testsuite><testcase classname="p" name="t"/></testsuite>')
    assert SUMMARY.main(["--not-run", "medium", "pki=0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 passed, 0 failed, 0 skipped, 1 scenario NOT RUN"
    assert lines[-2].startswith("NOT RUN: scenario medium: left out of this run")
