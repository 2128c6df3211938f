"""The systemd_reset_failed module's decisions, against a recorded systemctl.

The module is exercised against real systemd units in the app scenario
(`test_the_run_with_the_fix_starts_units_left_at_their_start_limit`); these
tests pin what it does with each answer systemctl can give.
"""

import importlib.util
import os

import pytest

from conftest import ROOT

_SPEC = importlib.util.spec_from_file_location(
    "systemd_reset_failed", os.path.join(ROOT, "plugins", "modules", "systemd_reset_failed.py"))
MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(MODULE)


class Failed(Exception):
    pass


class FakeModule:
    """Answers run_command from a table {argv tuple: (rc, out, err)} and records the calls."""

    def __init__(self, answers, check_mode=False):
        self.answers = answers
        self.check_mode = check_mode
        self.calls = []

    def run_command(self, argv):
        self.calls.append(tuple(argv))
        return self.answers[tuple(argv)]

    def fail_json(self, **kwargs):
        raise Failed(kwargs)


def is_failed(unit, rc):
    return ("systemctl", "is-failed", "--quiet", unit), (rc, "", "")


def reset(unit, rc=0, err=""):
    return ("systemctl", "reset-failed", unit), (rc, "", err)


def test_only_failed_units_are_reset():
    module = FakeModule(dict([is_failed("a.service", 0), reset("a.service"), is_failed("b.service", 1)]))
    assert MODULE.reset_units(module, "systemctl", ["a.service", "b.service"]) == (["a.service"], [])
    assert ("systemctl", "reset-failed", "b.service") not in module.calls


def test_a_healthy_host_is_not_changed():
    module = FakeModule(dict([is_failed("a.service", 1), is_failed("b.service", 3)]))
    assert MODULE.reset_units(module, "systemctl", ["a.service", "b.service"]) == ([], [])
    assert all(call[1] == "is-failed" for call in module.calls)


def test_check_mode_reports_without_resetting():
    module = FakeModule(dict([is_failed("a.service", 0)]), check_mode=True)
    assert MODULE.reset_units(module, "systemctl", ["a.service"]) == (["a.service"], [])
    assert module.calls == [("systemctl", "is-failed", "--quiet", "a.service")]


def test_a_unit_unloaded_in_between_is_not_an_error():
    module = FakeModule(dict([is_failed("a.service", 0),
                              reset("a.service", 1, "Failed to reset failed state of unit a.service: "
                                                    "Unit a.service not loaded.")]))
    assert MODULE.reset_units(module, "systemctl", ["a.service"]) == ([], ["a.service"])


def test_any_other_error_fails_and_names_the_unit():
    module = FakeModule(dict([is_failed("a.service", 0), reset("a.service", 1, "Access denied")]))
    with pytest.raises(Failed) as error:
        MODULE.reset_units(module, "systemctl", ["a.service"])
    assert "a.service" in error.value.args[0]["msg"] and "Access denied" in error.value.args[0]["msg"]
