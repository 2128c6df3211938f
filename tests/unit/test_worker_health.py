"""Unit tests for the worker health sidecar (roles/worker/files/matcraft_worker_health.py).

The module is loaded by path and exercised with fake inspectors, so these
tests need neither Celery nor a broker.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

MODULE_PATH = Path(__file__).resolve().parents[2] / "roles" / "worker" / "files" / "matcraft_worker_health.py"
NODES = ["default@worker1", "gpu@worker1"]
QUEUES = ["default", "gpu_training"]


def _load_module() -> Any:
    spec = importlib.util.spec_from_file_location("matcraft_worker_health", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


wh = _load_module()


class FakeInspector:
    """Answers like ``celery.app.control.Inspect``; can fail, hang, and counts concurrent calls."""

    def __init__(
        self,
        alive: Sequence[str] = tuple(NODES),
        consumes: dict[str, list[str]] | None = None,
        error: Exception | None = None,
        hang: float = 0.0,
        delay: float = 0.0,
    ) -> None:
        self.alive = list(alive)
        self.consumes = (
            consumes if consumes is not None else {"default@worker1": ["default"], "gpu@worker1": ["gpu_training"]}
        )
        self.error = error
        self.hang = hang
        self.delay = delay
        self.release = threading.Event()
        self.ping_calls = 0
        self.queue_calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        if self.hang:
            self.release.wait(self.hang)
        if self.delay:
            time.sleep(self.delay)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def ping(self, destination: Sequence[str], timeout: float) -> dict[str, Any] | None:
        self.ping_calls += 1
        self._enter()
        try:
            if self.error:
                raise self.error
            return {node: {"ok": "pong"} for node in destination if node in self.alive} or None
        finally:
            self._leave()

    def active_queues(self, destination: Sequence[str], timeout: float) -> dict[str, Any] | None:
        self.queue_calls += 1
        return {
            node: [{"name": queue, "routing_key": queue} for queue in self.consumes.get(node, [])]
            for node in destination
            if node in self.alive
        }


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_monitor(inspector: FakeInspector, timeout: float = 3.0, cache_ttl: float = 0.0, **kwargs: Any) -> Any:
    checker = wh.HealthChecker(inspector, NODES, QUEUES, timeout=timeout, **kwargs)
    return wh.HealthMonitor(checker, cache_ttl=cache_ttl, **kwargs)


@pytest.fixture
def hanging_inspector() -> Iterator[FakeInspector]:
    inspector = FakeInspector(hang=5.0)
    yield inspector
    inspector.release.set()  # let the abandoned check thread finish


# --------------------------------------------------------------------------- check logic


def test_module_imports_without_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # any "import celery" now raises ImportError
    spec = importlib.util.spec_from_file_location("matcraft_worker_health_nocelery", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.HealthChecker(FakeInspector(), NODES, QUEUES).run().ok


def test_all_nodes_and_queues_ok_is_200() -> None:
    status, body = wh.health_response(make_monitor(FakeInspector()).current())
    assert status == 200
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert body["checks"]["broker"] == {"ok": True}
    assert all(check["ok"] for check in body["checks"]["nodes"].values())
    assert body["checks"]["queues"]["gpu_training"]["consumers"] == ["gpu@worker1"]


def test_missing_node_is_503_naming_the_node() -> None:
    inspector = FakeInspector(alive=["default@worker1"], consumes={"default@worker1": ["default", "gpu_training"]})
    status, body = wh.health_response(make_monitor(inspector).current())
    assert status == 503
    assert body["status"] == "fail"
    assert body["failed"] == ["node:gpu@worker1"]
    assert body["checks"]["nodes"]["gpu@worker1"]["ok"] is False


def test_queue_without_consumer_is_503_naming_the_queue() -> None:
    inspector = FakeInspector(consumes={"default@worker1": ["default"], "gpu@worker1": ["low_priority"]})
    status, body = wh.health_response(make_monitor(inspector).current())
    assert status == 503
    assert body["failed"] == ["queue:gpu_training"]
    assert body["checks"]["queues"]["gpu_training"] == {
        "ok": False,
        "consumers": [],
        "error": "no consumer among the replying nodes",
    }


def test_dead_node_also_fails_the_queue_only_it_consumes() -> None:
    status, body = wh.health_response(make_monitor(FakeInspector(alive=["default@worker1"])).current())
    assert status == 503
    assert body["failed"] == ["node:gpu@worker1", "queue:gpu_training"]


def test_broker_down_is_503_broker_with_masked_error() -> None:
    error = ConnectionError("Error 111 connecting to redis://matcraft:s3cr3t@10.0.0.5:6379/0. Connection refused.")
    status, body = wh.health_response(make_monitor(FakeInspector(error=error)).current())
    assert status == 503
    assert body["failed"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False
    assert "Connection refused" in body["checks"]["broker"]["error"]
    assert "s3cr3t" not in json.dumps(body)
    assert all(not check["ok"] for check in body["checks"]["nodes"].values())


def test_broker_failing_between_broadcasts_is_503_broker() -> None:
    inspector = FakeInspector()

    def broken_active_queues(destination: Sequence[str], timeout: float) -> None:
        raise OSError("connection reset")

    inspector.active_queues = broken_active_queues  # type: ignore[method-assign]
    status, body = wh.health_response(make_monitor(inspector).current())
    assert status == 503
    assert body["failed"] == ["broker"]


def test_unexpected_ping_reply_fails_the_node() -> None:
    inspector = FakeInspector()
    replies = {"default@worker1": {"ok": "pong"}, "gpu@worker1": {"error": "x"}}
    inspector.ping = lambda destination, timeout: replies  # type: ignore[method-assign]
    result = wh.HealthChecker(inspector, NODES, []).run()
    assert result.failed == ("node:gpu@worker1",)


def test_hanging_broker_answers_503_within_the_deadline(hanging_inspector: FakeInspector) -> None:
    monitor = make_monitor(hanging_inspector, timeout=0.3)
    started = time.monotonic()
    status, body = wh.health_response(monitor.current())
    elapsed = time.monotonic() - started
    assert status == 503
    assert body["failed"] == ["broker"]
    assert "no answer from the broker within 0.3 s" in body["checks"]["broker"]["error"]
    assert 0.25 <= elapsed < 0.3 + 0.4


def test_no_second_check_while_a_hung_one_runs(hanging_inspector: FakeInspector) -> None:
    monitor = make_monitor(hanging_inspector, timeout=0.2)
    monitor.current()
    started = time.monotonic()
    result = monitor.current()  # cache TTL is 0: a new check would be due, but the hung one still runs
    assert time.monotonic() - started < 0.2
    assert result.failed == ("broker",)
    assert hanging_inspector.ping_calls == 1
    hanging_inspector.release.set()
    deadline = time.monotonic() + 1
    while monitor._flight is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    hanging_inspector.hang = 0.0
    assert monitor.current().ok
    assert hanging_inspector.ping_calls == 2


def test_result_is_cached_for_the_ttl() -> None:
    clock = FakeClock()
    inspector = FakeInspector()
    monitor = make_monitor(inspector, cache_ttl=2.0, clock=clock)
    first = monitor.current()
    clock.now += 1.9
    assert monitor.current() is first
    assert inspector.ping_calls == 1
    clock.now += 0.2
    assert monitor.current() is not first
    assert inspector.ping_calls == 2


def test_concurrent_probes_share_one_check() -> None:
    inspector = FakeInspector(delay=0.2)
    monitor = make_monitor(inspector, cache_ttl=2.0)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(monitor.current())) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2)
    assert len(results) == 20
    assert inspector.ping_calls == 1
    assert inspector.max_active == 1
    assert all(result is results[0] for result in results)


def test_state_changes_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    inspector = FakeInspector()
    monitor = make_monitor(inspector)
    with caplog.at_level(logging.INFO, logger="matcraft_worker_health"):
        monitor.current()
        monitor.current()
        inspector.alive = ["default@worker1"]
        monitor.current()
        monitor.current()
        inspector.alive = list(NODES)
        monitor.current()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0] == "worker health: unknown -> ok"
    assert messages[1].startswith("worker health: ok -> fail (node:gpu@worker1: no reply to ping")
    assert messages[2] == "worker health: fail -> ok"


# --------------------------------------------------------------------------- metrics

_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the Prometheus text format strictly enough to catch format errors."""
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"gauge", "counter"}
            typed.add(name)
            continue
        match = _SAMPLE_RE.match(line)
        assert match, f"bad sample line: {line!r}"
        assert match["name"] in typed, f"sample before its TYPE line: {line!r}"
        labels = tuple(_LABEL_RE.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def test_metrics_text_format_parses() -> None:
    inspector = FakeInspector(alive=["default@worker1"])
    monitor = make_monitor(inspector)
    monitor.current()
    samples = parse_metrics(monitor.metrics())
    assert samples[("matcraft_worker_broker_up", ())] == 1
    assert samples[("matcraft_worker_up", (("node", "default@worker1"),))] == 1
    assert samples[("matcraft_worker_up", (("node", "gpu@worker1"),))] == 0
    assert samples[("matcraft_worker_queue_consumers", (("queue", "default"),))] == 1
    assert samples[("matcraft_worker_queue_consumers", (("queue", "gpu_training"),))] == 0
    assert samples[("matcraft_worker_health_checks_total", (("result", "fail"),))] == 2
    assert samples[("matcraft_worker_health_checks_total", (("result", "ok"),))] == 0
    assert samples[("matcraft_worker_health_check_duration_seconds", ())] >= 0


def test_metrics_when_broker_down_and_label_escaping() -> None:
    result = wh.broker_failure(['we"ird\\node'], ["default"], "down", 0.01)
    samples = parse_metrics(wh.render_metrics(result, {"ok": 1, "fail": 2}))
    assert samples[("matcraft_worker_broker_up", ())] == 0
    assert samples[("matcraft_worker_up", (("node", 'we\\"ird\\\\node'),))] == 0
    assert samples[("matcraft_worker_queue_consumers", (("queue", "default"),))] == 0


# --------------------------------------------------------------------------- helpers and command line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://matcraft:s3cr3t@redis1:6379/0", "redis://matcraft:***@redis1:6379/0"),
        ("rediss://:s3cr3t@redis1:6380/0?ssl_cert_reqs=required", "rediss://:***@redis1:6380/0?ssl_cert_reqs=required"),
        ("error at postgresql://u:p%40ss@db/x today", "error at postgresql://u:***@db/x today"),
        ("sentinel://h:26379/0?password=s3cr3t&db=0", "sentinel://h:26379/0?password=***&db=0"),
        ("redis://redis1:6379/0", "redis://redis1:6379/0"),
        ("no url here", "no url here"),
    ],
)
def test_mask_credentials(text: str, expected: str) -> None:
    assert wh.mask_credentials(text) == expected


def test_parse_listen() -> None:
    assert wh.parse_listen("0.0.0.0:8001") == ("0.0.0.0", 8001)
    assert wh.parse_listen("[::]:8001") == ("::", 8001)
    assert wh.parse_listen(":9000") == ("0.0.0.0", 9000)
    with pytest.raises(ValueError):
        wh.parse_listen("8001")


def test_expand_node_name() -> None:
    assert wh.expand_node_name("gpu@%h", "worker1.example.org") == "gpu@worker1.example.org"
    assert wh.expand_node_name("gpu@%n", "worker1.example.org") == "gpu@worker1"
    assert wh.expand_node_name("%n.%d", "worker1.example.org") == "worker1.example.org"


def test_arguments_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCRAFT_WORKER_HEALTH_NODES", "default@w1, gpu@w1")
    monkeypatch.setenv("MATCRAFT_WORKER_HEALTH_QUEUES", "default gpu_training")
    monkeypatch.setenv("MATCRAFT_WORKER_HEALTH_LISTEN", "0.0.0.0:9101")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@r1:6379/0")
    args = wh.parse_args(["--broker-from-env", "--timeout", "4"])
    assert args.nodes == ["default@w1", "gpu@w1"]
    assert args.queues == ["default", "gpu_training"]
    assert args.listen == ("0.0.0.0", 9101)
    assert args.timeout == 4 and args.cache_ttl == 2.0 and args.app is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--app", "materia.tasks"],  # no node
        ["--node", "a@b"],  # neither --app nor --broker-from-env
        ["--app", "materia.tasks", "--node", "a@b", "--timeout", "1"],
        ["--broker-from-env", "--node", "a@b"],  # REDIS_URL unset
    ],
)
def test_invalid_arguments_are_rejected(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MATCRAFT_WORKER_HEALTH_NODES", "MATCRAFT_WORKER_HEALTH_APP", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        wh.parse_args(argv)


# --------------------------------------------------------------------------- real HTTP


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_http_server_on_an_ephemeral_port() -> None:
    inspector = FakeInspector()
    server = wh.make_server(("127.0.0.1", 0), make_monitor(inspector, cache_ttl=0.0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, headers, body = _get(f"{base}/health")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["status"] == "ok"

        inspector.alive = ["default@worker1"]
        status, _, body = _get(f"{base}/health")
        assert status == 503
        assert json.loads(body)["failed"] == ["node:gpu@worker1", "queue:gpu_training"]

        status, headers, body = _get(f"{base}/health", method="HEAD")
        assert status == 503 and body == b""

        status, headers, body = _get(f"{base}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert parse_metrics(body.decode())[("matcraft_worker_up", (("node", "gpu@worker1"),))] == 0

        status, _, body = _get(f"{base}/")
        assert status == 200 and json.loads(body) == {"name": "matcraft-worker-health", "version": wh.__version__}

        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


_CHILD = """
import importlib.util, sys, types
spec = importlib.util.spec_from_file_location("matcraft_worker_health", sys.argv[1])
wh = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = wh
spec.loader.exec_module(wh)

class Inspector:
    def __init__(self, app):
        pass
    def ping(self, destination, timeout):
        return {node: {"ok": "pong"} for node in destination}
    def active_queues(self, destination, timeout):
        return {node: [{"name": "default"}] for node in destination}

wh.load_celery_app = lambda *_: types.SimpleNamespace(conf=types.SimpleNamespace(broker_url=sys.argv[2]))
wh.CeleryInspector = Inspector
sys.exit(wh.main(["--app", "materia.tasks", "--node", "default@w1", "--queue", "default", "--listen", "127.0.0.1:0"]))
"""


def test_process_serves_and_exits_cleanly_on_sigterm() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(MODULE_PATH), "redis://matcraft:s3cr3t@redis1:6379/0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stderr is not None
        first_line = child.stderr.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", first_line)
        assert port, first_line
        assert _get(f"http://127.0.0.1:{port[1]}/health")[0] == 200
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=3) == 0
        log = first_line + child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "redis://matcraft:***@redis1:6379/0" in log
    assert "s3cr3t" not in log
    assert "worker health: unknown -> ok" in log
    assert "stopping" in log
