#!/usr/bin/env python3
"""HTTP health endpoint for MatCraft's Celery workers (``celery inspect ping`` as a sidecar).

MatCraft's production guide: "Celery workers report health via ``celery
inspect ping``; set up a sidecar that exposes this as an HTTP endpoint."
This program is that sidecar. It runs inside the application's virtualenv
(standard library plus ``celery``) next to the workers of one host.

``GET /health``
    200 when the broker answers, every expected node (``--node``) replies
    to a broadcast ping, and every expected queue (``--queue``) has at least
    one consumer among the replying nodes; 503 otherwise. The JSON body names
    the failed checks: ``broker``, ``node:NAME``, ``queue:NAME``. A check
    never takes longer than ``--timeout`` seconds, even when the broker hangs.
``GET /metrics``
    Prometheus text format (``matcraft_worker_*``).
``GET /``
    Name and version.

Results are cached for ``--cache-ttl`` seconds and at most one check runs
at a time, so a flood of probes costs the broker at most one broadcast pair
per cache period. Every option can also be set in the environment
(``MATCRAFT_WORKER_HEALTH_LISTEN``, ``..._NODES``, ``..._QUEUES``,
``..._TIMEOUT``, ``..._CACHE_TTL``, ``..._APP``, ``..._LOG_LEVEL``). Example::

    matcraft_worker_health.py --app materia.tasks --listen 0.0.0.0:8001 \\
        --node default@worker1 --node gpu@worker1 --queue default --queue gpu_training
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

__version__ = "1.0.0"

LOG = logging.getLogger("matcraft_worker_health")

ENV_PREFIX = "MATCRAFT_WORKER_HEALTH_"
DEFAULT_LISTEN = "127.0.0.1:8001"
DEFAULT_TIMEOUT = 3.0
DEFAULT_CACHE_TTL = 2.0
#: Share of the timeout given to the ping broadcast; the queue query gets the rest.
PING_SHARE = 0.5
#: Share of the timeout kept free at the end so a check finishes before its deadline.
SAFETY_SHARE = 0.1

_URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")
_QUERY_SECRET_RE = re.compile(r"(?P<key>(?:password|passwd|pwd)=)[^&\s]+", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """Return *text* with the password of every URL and every ``password=`` value replaced by ``***``."""
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m['key']}***", text)


def _describe_error(exc: BaseException) -> str:
    return mask_credentials(f"{type(exc).__name__}: {exc}".strip().rstrip(":"))


# --------------------------------------------------------------------------- inspection


class Inspector(Protocol):
    """What the checker needs from Celery; the production one is :class:`CeleryInspector`.

    Both methods return ``{node_name: reply}`` (or ``None`` for no replies),
    like ``celery.app.control.Inspect``, and raise when the broker cannot be used.
    """

    def ping(self, destination: Sequence[str], timeout: float) -> Mapping[str, Any] | None:
        """Broadcast ``ping`` to *destination*; wait at most *timeout* seconds for the replies."""

    def active_queues(self, destination: Sequence[str], timeout: float) -> Mapping[str, Any] | None:
        """Broadcast ``active_queues`` to *destination*; wait at most *timeout* seconds for the replies."""


class CeleryInspector:
    """:class:`Inspector` backed by a Celery app: one short-lived broker connection per broadcast.

    The Redis transport waits for replies in whole seconds (a 1.2 s wait
    lasts 2 s), so the reply wait is rounded *down* to whole seconds, at least
    one, to end within the time asked for. A broadcast returns as soon as every
    destination has replied; only missing replies cost the full wait.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def _broadcast(self, method: str, destination: Sequence[str], timeout: float) -> Mapping[str, Any] | None:
        wait = max(1, math.floor(timeout))
        options = dict(self.app.conf.broker_transport_options or {})
        # Bound every socket operation, so a hung broker cannot block this thread for long.
        options.update(socket_timeout=wait + 1, socket_connect_timeout=wait)
        with self.app.connection_for_read(connect_timeout=wait, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=wait)
            inspect = self.app.control.inspect(destination=list(destination), timeout=wait, connection=conn)
            return getattr(inspect, method)()

    def ping(self, destination: Sequence[str], timeout: float) -> Mapping[str, Any] | None:
        """``celery inspect ping`` restricted to *destination*."""
        return self._broadcast("ping", destination, timeout)

    def active_queues(self, destination: Sequence[str], timeout: float) -> Mapping[str, Any] | None:
        """``celery inspect active_queues`` restricted to *destination*."""
        return self._broadcast("active_queues", destination, timeout)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one health check."""

    broker: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    queues: dict[str, dict[str, Any]]
    failed: tuple[str, ...]
    duration: float
    checked_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /health``."""
        return {
            "status": "ok" if self.ok else "fail",
            "checks": {"broker": self.broker, "nodes": self.nodes, "queues": self.queues},
            "failed": list(self.failed),
            "duration_seconds": round(self.duration, 4),
            "checked_at": datetime.fromtimestamp(self.checked_at, timezone.utc).isoformat(timespec="seconds"),
        }


def broker_failure(nodes: Sequence[str], queues: Sequence[str], error: str, duration: float) -> CheckResult:
    """A result for a check that could not use the broker: nodes and queues are unknown."""
    unknown = {"ok": False, "error": "not checked: broker unavailable"}
    return CheckResult(
        broker={"ok": False, "error": error},
        nodes={node: dict(unknown) for node in nodes},
        queues={queue: dict(unknown, consumers=[]) for queue in queues},
        failed=("broker",),
        duration=duration,
    )


class HealthChecker:
    """Runs one check (ping, then active queues) against an :class:`Inspector`, within *timeout*."""

    def __init__(
        self,
        inspector: Inspector,
        nodes: Sequence[str],
        queues: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not nodes:
            raise ValueError("at least one node name is required")
        self.inspector = inspector
        self.nodes = list(dict.fromkeys(nodes))
        self.queues = list(dict.fromkeys(queues))
        self.timeout = timeout
        self.clock = clock

    def run(self) -> CheckResult:
        """Check the broker, the nodes and the queues; never raises for a broker or worker failure."""
        started = self.clock()
        deadline = started + self.timeout * (1 - SAFETY_SHARE)
        try:
            replies = self.inspector.ping(self.nodes, timeout=self.timeout * PING_SHARE) or {}
        except Exception as exc:  # any transport error means the broker is unusable
            return broker_failure(self.nodes, self.queues, _describe_error(exc), self.clock() - started)

        nodes: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            reply = replies.get(node)
            if isinstance(reply, Mapping) and reply.get("ok") == "pong":
                nodes[node] = {"ok": True}
            elif reply is None:
                nodes[node] = {"ok": False, "error": "no reply to ping"}
            else:
                nodes[node] = {"ok": False, "error": f"unexpected reply {reply!r}"[:200]}
        alive = [node for node in self.nodes if nodes[node]["ok"]]

        queue_replies: Mapping[str, Any] = {}
        if self.queues and alive:
            try:
                queue_replies = self.inspector.active_queues(alive, timeout=max(0.05, deadline - self.clock())) or {}
            except Exception as exc:  # the broker failed between the two broadcasts
                return broker_failure(self.nodes, self.queues, _describe_error(exc), self.clock() - started)

        queues: dict[str, dict[str, Any]] = {}
        for queue in self.queues:
            consumers = sorted(
                node
                for node, active in queue_replies.items()
                if node in alive and any(isinstance(q, Mapping) and q.get("name") == queue for q in active or ())
            )
            queues[queue] = {"ok": bool(consumers), "consumers": consumers}
            if not consumers:
                queues[queue]["error"] = "no consumer among the replying nodes"

        failed = [f"node:{node}" for node in self.nodes if not nodes[node]["ok"]]
        failed += [f"queue:{queue}" for queue in self.queues if not queues[queue]["ok"]]
        return CheckResult(
            broker={"ok": True}, nodes=nodes, queues=queues, failed=tuple(failed), duration=self.clock() - started
        )


# --------------------------------------------------------------------------- caching, deadline, metrics


@dataclass
class _Flight:
    """A check running in its own thread."""

    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: CheckResult | None = None
    abandoned: bool = False


class HealthMonitor:
    """Serves cached check results, runs at most one check at a time, and enforces the deadline.

    A check runs in a daemon thread. Callers wait for it until *deadline*
    seconds after it started; past that they get a ``broker`` failure (a
    broker that accepts connections but does not answer). While such a check
    is still stuck, no second one starts.
    """

    def __init__(
        self,
        checker: HealthChecker,
        deadline: float | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checker = checker
        self.deadline = checker.timeout if deadline is None else deadline
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._cached: CheckResult | None = None
        self._cached_at = 0.0
        self._last_state: tuple[bool, tuple[str, ...]] | None = None
        self.checks_total = {"ok": 0, "fail": 0}

    def current(self) -> CheckResult:
        """Return a result no older than the cache TTL, running a check if needed."""
        with self._lock:
            if self._cached is not None and self.clock() - self._cached_at < self.cache_ttl:
                return self._cached
            if self._flight is None:
                self._flight = _Flight(started=self.clock())
                threading.Thread(target=self._run, args=(self._flight,), name="health-check", daemon=True).start()
            flight = self._flight
        flight.done.wait(max(0.0, flight.started + self.deadline - self.clock()))
        with self._lock:
            if flight.result is not None:
                return flight.result
            if not flight.abandoned:  # the first caller past the deadline records the time-out
                flight.abandoned = True
                self._record(
                    broker_failure(
                        self.checker.nodes,
                        self.checker.queues,
                        f"no answer from the broker within {self.deadline:g} s",
                        self.clock() - flight.started,
                    )
                )
            assert self._cached is not None
            return self._cached

    def _run(self, flight: _Flight) -> None:
        try:
            result = self.checker.run()
        except Exception as exc:  # a bug or an unexpected library error: report it, keep serving
            LOG.exception("health check raised")
            result = broker_failure(self.checker.nodes, self.checker.queues, _describe_error(exc), 0.0)
        with self._lock:
            if not flight.abandoned:
                flight.result = result
                self._record(result)
            self._flight = None
        flight.done.set()

    def _record(self, result: CheckResult) -> None:
        """Cache *result*, count it, and log a line if the state changed (lock held)."""
        self._cached, self._cached_at = result, self.clock()
        self.checks_total["ok" if result.ok else "fail"] += 1
        state = (result.ok, result.failed)
        if state != self._last_state:
            previous = "unknown" if self._last_state is None else ("ok" if self._last_state[0] else "fail")
            if result.ok:
                LOG.info("worker health: %s -> ok", previous)
            else:
                details = "; ".join(f"{name}: {error}" for name, error in _failure_details(result))
                LOG.warning("worker health: %s -> fail (%s)", previous, details)
            self._last_state = state

    def metrics(self) -> str:
        """Prometheus text exposition of the current result and the counters."""
        result = self.current()
        with self._lock:
            totals = dict(self.checks_total)
        return render_metrics(result, totals)


def _failure_details(result: CheckResult) -> list[tuple[str, str]]:
    """``(check name, error)`` for every failed check of *result*."""
    details = []
    for name in result.failed:
        kind, _, key = name.partition(":")
        if kind == "broker":
            check = result.broker
        elif kind == "node":
            check = result.nodes[key]
        else:
            check = result.queues[key]
        details.append((name, str(check.get("error", "failed"))))
    return details


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(result: CheckResult, totals: Mapping[str, int]) -> str:
    """Render *result* and the check counters in the Prometheus text format (version 0.0.4)."""
    lines = [
        "# HELP matcraft_worker_broker_up Whether the Celery broker answered the last check.",
        "# TYPE matcraft_worker_broker_up gauge",
        f"matcraft_worker_broker_up {int(bool(result.broker.get('ok')))}",
        "# HELP matcraft_worker_up Whether the Celery node replied to the last ping.",
        "# TYPE matcraft_worker_up gauge",
        *(f'matcraft_worker_up{{node="{_label(node)}"}} {int(check["ok"])}' for node, check in result.nodes.items()),
        "# HELP matcraft_worker_queue_consumers Replying nodes that consume the queue.",
        "# TYPE matcraft_worker_queue_consumers gauge",
        *(
            f'matcraft_worker_queue_consumers{{queue="{_label(queue)}"}} {len(check.get("consumers", []))}'
            for queue, check in result.queues.items()
        ),
        "# HELP matcraft_worker_health_check_duration_seconds Duration of the last health check.",
        "# TYPE matcraft_worker_health_check_duration_seconds gauge",
        f"matcraft_worker_health_check_duration_seconds {result.duration:.6f}",
        "# HELP matcraft_worker_health_checks_total Health checks run, by result.",
        "# TYPE matcraft_worker_health_checks_total counter",
        *(f'matcraft_worker_health_checks_total{{result="{key}"}} {totals.get(key, 0)}' for key in ("ok", "fail")),
        "# HELP matcraft_worker_health_info Version of the health sidecar.",
        "# TYPE matcraft_worker_health_info gauge",
        f'matcraft_worker_health_info{{version="{__version__}"}} 1',
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTTP


def health_response(result: CheckResult) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of ``GET /health`` for *result*."""
    return (200 if result.ok else 503), result.to_json()


class HealthRequestHandler(BaseHTTPRequestHandler):
    """``GET /health``, ``GET /metrics`` and ``GET /``; HEAD is answered like GET without a body."""

    server_version = f"matcraft-worker-health/{__version__}"
    monitor: HealthMonitor  # set on the subclass made by make_server()

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """Route a GET request."""
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send_json(*health_response(self.monitor.current()))
        elif path == "/metrics":
            self._send(200, self.monitor.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/":
            self._send_json(200, {"name": "matcraft-worker-health", "version": __version__})
        else:
            self._send_json(404, {"error": "not found"})

    def do_HEAD(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """Answer HEAD like GET, without the body."""
        self.do_GET()

    def _send_json(self, status: int, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body, sort_keys=True).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Log requests at debug level only; state changes are what matters in the journal."""
        LOG.debug("%s %s", self.address_string(), format % args)


class HealthHTTPServer(ThreadingHTTPServer):
    """Threading HTTP server whose handler threads do not block shutdown."""

    daemon_threads = True
    allow_reuse_address = True


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::]:8001`` for IPv6) into a host and a port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def make_server(listen: tuple[str, int], monitor: HealthMonitor) -> HealthHTTPServer:
    """Bind an HTTP server for *monitor* on *listen* (port 0 picks a free port)."""
    handler = type("BoundHealthRequestHandler", (HealthRequestHandler,), {"monitor": monitor})
    server_class = HealthHTTPServer
    if ":" in listen[0]:
        server_class = type("HealthHTTPServer6", (HealthHTTPServer,), {"address_family": socket.AF_INET6})
    return server_class(listen, handler)


# --------------------------------------------------------------------------- Celery app and command line


def expand_node_name(name: str, hostname: str | None = None) -> str:
    """Expand Celery's ``%h`` (host name), ``%n`` (its first label) and ``%d`` (domain) in *name*."""
    host = hostname or socket.gethostname()
    short, _, domain = host.partition(".")
    return name.replace("%h", host).replace("%n", short).replace("%d", domain)


#: Seconds (ten years): see load_celery_app.
BARE_APP_VISIBILITY_TIMEOUT = 10 * 365 * 86400


def _rediss_tls_options(url: str) -> dict[str, Any] | None:
    """Verified TLS for a ``rediss://`` URL without ``ssl_*`` parameters (kombu would not verify)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or any(key.startswith("ssl_") for key, _ in parse_qsl(parts.query)):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def load_celery_app(app_path: str | None, broker_url: str | None) -> Any:
    """Import the Celery app at *app_path* (``module`` or ``module:attr``) or build one for *broker_url*."""
    from celery import Celery  # imported here: the checker and the unit tests do not need Celery

    if broker_url:
        app = Celery("matcraft_worker_health", broker=broker_url, set_as_current=False)
        app.conf.update(
            broker_use_ssl=_rediss_tls_options(broker_url),
            accept_content=["json"],
            task_serializer="json",
            broker_connection_retry_on_startup=False,
            # kombu's Redis transport lets every consumer (here: the reply queue of the
            # broadcasts) put back the workers' unacknowledged tasks once they are older
            # than the visibility timeout. The sidecar must never touch the task queues
            # (its Redis user may not): with a timeout of ten years it only ever finds
            # nothing to restore; the workers restore their own tasks.
            broker_transport_options={"visibility_timeout": BARE_APP_VISIBILITY_TIMEOUT},
        )
        return app
    module_name, _, attribute = (app_path or "").partition(":")
    module = importlib.import_module(module_name)
    for name in [attribute] if attribute else ["app", "celery"]:
        app = getattr(module, name, None)
        if isinstance(app, Celery):
            return app
    raise ValueError(f"no Celery app found in {app_path!r} (looked for {attribute or 'app, celery'})")


def _env_list(name: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", os.environ.get(ENV_PREFIX + name, "")) if item]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults come from ``MATCRAFT_WORKER_HEALTH_*`` variables."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="matcraft_worker_health",
        description="Expose Celery worker health (inspect ping, active queues) over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--listen", default=env(ENV_PREFIX + "LISTEN", DEFAULT_LISTEN), help="HOST:PORT to listen on")
    parser.add_argument(
        "--node", dest="nodes", action="append", help="expected Celery node name (repeat); %%h expands to the host name"
    )
    parser.add_argument("--queue", dest="queues", action="append", help="queue that needs a consumer (repeat)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(env(ENV_PREFIX + "TIMEOUT", DEFAULT_TIMEOUT)),
        help="hard check deadline (s)",
    )
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=float(env(ENV_PREFIX + "CACHE_TTL", DEFAULT_CACHE_TTL)),
        help="seconds a result is served from cache",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--app", default=env(ENV_PREFIX + "APP"), help="Celery app to import, e.g. materia.tasks")
    source.add_argument("--broker-from-env", action="store_true", help="use a bare Celery app on $REDIS_URL")
    parser.add_argument("--log-level", default=env(ENV_PREFIX + "LOG_LEVEL", "INFO"), help="logging level")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.nodes = [expand_node_name(n) for n in (args.nodes or _env_list("NODES"))]
    args.queues = args.queues or _env_list("QUEUES")
    if not args.nodes:
        parser.error("at least one --node (or MATCRAFT_WORKER_HEALTH_NODES) is required")
    if args.broker_from_env:
        args.app = None
        if urlsplit(os.environ.get("REDIS_URL", "")).scheme not in ("redis", "rediss"):
            parser.error("--broker-from-env needs REDIS_URL (redis:// or rediss://) in the environment")
    elif not args.app:
        parser.error("one of --app (or MATCRAFT_WORKER_HEALTH_APP) or --broker-from-env is required")
    if args.timeout < 2 or args.cache_ttl < 0:
        parser.error("--timeout must be at least 2 (replies are awaited in whole seconds); --cache-ttl not negative")
    try:
        args.listen = parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sidecar until SIGTERM or SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        app = load_celery_app(args.app, os.environ["REDIS_URL"] if args.broker_from_env else None)
    except Exception as exc:  # import errors, bad settings: report without a traceback full of secrets
        LOG.error("cannot load the Celery app: %s", _describe_error(exc))
        return 2

    monitor = HealthMonitor(
        HealthChecker(CeleryInspector(app), args.nodes, args.queues, timeout=args.timeout),
        cache_ttl=args.cache_ttl,
    )
    server = make_server(args.listen, monitor)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    LOG.info(
        "matcraft-worker-health %s listening on %s:%s (broker %s; nodes %s; queues %s; timeout %g s; cache %g s)",
        __version__,
        host,
        port,
        mask_credentials(str(app.conf.broker_url or "default")),
        ", ".join(args.nodes),
        ", ".join(args.queues) or "none",
        args.timeout,
        args.cache_ttl,
    )
    stop.wait()
    LOG.info("stopping")
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
