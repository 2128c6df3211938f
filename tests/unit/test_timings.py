"""tests/testbed/timings.py: the table of where each scenario's time goes."""

import importlib.util
import io
import os

from conftest import ROOT

_SPEC = importlib.util.spec_from_file_location("timings", os.path.join(ROOT, "tests", "testbed", "timings.py"))
TIMINGS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(TIMINGS)


def test_stamp_keeps_actions_and_tasks_without_colours(tmp_path, monkeypatch):
    out = tmp_path / "x.times"
    text = ("\x1b[36mINFO \x1b[0m \x1b[32mx\x1b[0m ➜ \x1b[33mconverge\x1b[0m: \x1b[36mExecuting\x1b[0m\n"
            "  │ TASK [Install the packages]\nok: [x-api1]\n"
            "\x1b[36mINFO \x1b[0m x ➜ converge: Executed: Successful\n"
            "INFO     [x > idempotence] Executing\n  │ TASK [Start the API]\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    TIMINGS.stamp(str(out))
    assert [line.split(" ", 1)[1] for line in out.read_text().splitlines()] == [
        "action converge", "task Install the packages", "action idempotence", "task Start the API"]


def test_spans_give_each_action_its_time_and_count_install_tasks(tmp_path):
    times = tmp_path / "x.times"
    times.write_text("100 action create\n100 task Create the hosts\n130 action prepare\n130 task Install apt packages\n"
                     "190 task Wait for systemd\n200 action converge\n200 task Install the release (pip)\n"
                     "500 task Start the API\n560 action idempotence\n600 action verify\n700 action destroy\n")
    actions, installs = TIMINGS.spans(str(times))
    assert {name: actions[name] for name in ("create", "prepare", "converge", "idempotence", "verify")} == {
        "create": 30, "prepare": 70, "converge": 360, "idempotence": 40, "verify": 100}
    assert installs == 60 + 300


def test_table_adds_controller_and_host_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(TIMINGS, "LOGS", str(tmp_path))
    (tmp_path / "edge.times").write_text("0 action create\n10 action converge\n50 action verify\n60 action destroy\n")
    (tmp_path / "edge.time").write_text("61.20 20.50 4.50\n")
    (tmp_path / "edge.cpu").write_text("edge-api1 30.0\nedge-edge1 15.5\n")
    TIMINGS.table(["edge", "replica"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| edge | 61 | 70 (25 + 46) | 10 | 0 | 40 | 0 | 0 | 10 |"
    assert rows[3] == "| replica | not run | | | | | | | |"
    assert rows[4] == "| all | 61 | 70 | | | | | | |"
