"""The prometheus_targets module's judgement and its bounded wait, against recorded API answers.

The module runs against the real Prometheus in the site scenario (the monitoring
layer's wait, and verify right after site); these tests pin what it does with
each answer.
"""

import importlib.util
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import ROOT

_SPEC = importlib.util.spec_from_file_location(
    "prometheus_targets", os.path.join(ROOT, "plugins", "modules", "prometheus_targets.py"))
MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(MODULE)


def target(job, health, host=None, instance="10.0.0.7:9100"):
    labels = {"job": job, "instance": instance}
    if host:
        labels["matcraft_host"] = host
    return {"labels": labels, "health": health, "lastError": "" if health == "up" else "refused",
            "lastScrape": "2026-12-06T19:00:00Z"}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_summarize_sorts_by_health_and_names_the_host():
    _, down, unscraped = MODULE.summarize([target("node", "up", "db1"), target("node", "down", "w1"),
                                           target("alertmanager", "unknown")])
    assert down == ["job=node host=w1 instance=10.0.0.7:9100"]
    assert unscraped == ["job=alertmanager instance=10.0.0.7:9100"]


@pytest.mark.parametrize("wait,answers,reads,timed_out", [
    # Fresh deploy: a target scraped before its service started is down, then up.
    ("up", [[target("node", "down")], [target("node", "down")], [target("node", "up")]], 3, False),
    # Genuinely down: waits until the time is up, then reports it (no failure).
    ("up", [[target("node", "down")]] * 100, 31, True),
    # 'scraped' does not wait for a down target, only for never-scraped ones.
    ("scraped", [[target("node", "unknown")], [target("node", "down")]], 2, False),
    ("none", [[target("node", "unknown")]], 1, False),
])
def test_poll_waits_for_the_state_asked_for_within_the_bound(wait, answers, reads, timed_out):
    clock, calls = FakeClock(), []

    def reader():
        calls.append(1)
        return answers[min(len(calls), len(answers)) - 1]

    _, _, _, waited, out = MODULE.poll(reader, wait, 90, 3, clock=clock, sleep=clock.sleep)
    assert (len(calls), out) == (reads, timed_out)
    assert waited <= 90


def test_poll_retries_an_unreachable_prometheus_then_raises():
    clock = FakeClock()

    def reader():
        raise OSError("connection refused")

    with pytest.raises(OSError):
        MODULE.poll(reader, "none", 10, 3, clock=clock, sleep=clock.sleep)
    assert 9 <= clock.now <= 10


def test_read_targets_sends_the_login_and_reads_the_api():
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            seen["path"], seen["auth"] = self.path, self.headers.get("Authorization")
            body = json.dumps({"status": "success", "data": {"activeTargets": [target("node", "up")]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        active = MODULE.read_targets("http://127.0.0.1:%d/" % server.server_port, "matcraft", "pw", None, 5)
    finally:
        thread.join(5)
        server.server_close()
    assert active[0]["health"] == "up"
    assert seen == {"path": "/api/v1/targets?state=active", "auth": "Basic bWF0Y3JhZnQ6cHc="}
