"""Celery application ``materia.tasks`` with MatCraft's documented settings.

Run a worker with ``celery -A materia.tasks worker --loglevel=info``
(optionally ``-Q default,gpu_training -n default@%h``). The broker is
``REDIS_URL`` on database 0 and results go to the same Redis on database 1.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from celery import Celery
from celery.signals import worker_ready
from celery.utils.log import get_task_logger
from kombu import Queue
from psycopg.types.json import Jsonb

from materia import __version__, db
from materia.config import QUEUES, Settings, mask_credentials, redis_url_with_db

logger = get_task_logger(__name__)

#: Length of one sleep step of :func:`run_job`.
STEP_SECONDS = 0.1
#: Seconds between two progress messages published by :func:`run_job`.
PROGRESS_INTERVAL = 0.5

settings = Settings.from_env()


def _tls_options(url: str) -> dict[str, Any] | None:
    """Return Celery TLS options for a ``rediss://`` URL that sets none itself.

    Kombu falls back to *unverified* TLS when a ``rediss://`` URL carries no
    ``ssl_cert_reqs``; require a verified certificate instead (the system trust
    store, which holds the internal CA, is used unless ``ssl_ca_certs`` is given).
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    if any(key.startswith("ssl_") for key, _ in parse_qsl(parts.query)):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def _transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options: the visibility timeout and, when set, the restore sweep period.

    Kombu sweeps for unacknowledged messages whose visibility timeout has
    passed (those of a killed worker) only every ``unacked_restore_interval``
    x ``unacked_restore_throttle`` seconds (about 100 s by default). With
    ``CELERY_UNACKED_RESTORE_INTERVAL`` set, every tick of that many seconds
    sweeps (throttle 1). Older kombu versions ignore options they do not know.
    """
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.unacked_restore_interval:
        options["unacked_restore_interval"] = settings.unacked_restore_interval
        options["unacked_restore_throttle"] = 1
    return options


app = Celery("materia")
app.conf.update(
    broker_url=redis_url_with_db(settings.redis_url, 0),
    result_backend=redis_url_with_db(settings.redis_url, 1),
    broker_use_ssl=_tls_options(settings.redis_url),
    redis_backend_use_ssl=_tls_options(settings.redis_url),
    broker_connection_retry_on_startup=True,
    broker_transport_options=_transport_options(settings),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_time_limit=3600,
    task_soft_time_limit=3000,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_queues=[Queue(name, routing_key=name) for name in QUEUES],
    task_default_queue="default",
    task_default_routing_key="default",
    timezone="UTC",
    enable_utc=True,
)


@worker_ready.connect
def _log_settings(**_: Any) -> None:
    """Log the (masked) settings once when a worker starts."""
    log = logging.getLogger("materia.worker")  # not the task logger, whose format expects a task
    log.info("materia %s worker: %s", __version__, settings.describe())
    if settings.sentry_dsn_set:
        log.info("SENTRY_DSN is set (the contract app does not report errors to it)")


_redis_lock = threading.Lock()
_redis_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """Return this process's Redis client for Pub/Sub (created lazily, after a fork)."""
    global _redis_client
    with _redis_lock:
        if _redis_client is None:
            _redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return _redis_client


def publish_progress(job_id: int, payload: dict[str, Any]) -> None:
    """Publish *payload* as JSON on ``campaign:job-{job_id}``; a Redis error is logged, not raised."""
    try:
        _redis().publish(f"campaign:job-{job_id}", json.dumps(payload))
    except redis.RedisError as exc:
        logger.warning("job %s: could not publish progress: %s", job_id, mask_credentials(str(exc)))


def _mark_failed(job_id: int, error: BaseException) -> None:
    try:
        with db.connect(settings.database_url, application_name="materia-worker") as conn:
            conn.execute(
                "UPDATE jobs SET state = 'failed', error = %s, finished_at = now() WHERE id = %s AND state <> 'done'",
                (f"{type(error).__name__}: {error}", job_id),
            )
    except Exception as exc:  # the original error is re-raised by the caller; this one is only logged
        logger.error("job %s: could not record failure: %s", job_id, mask_credentials(str(exc)))


@app.task(name="materia.tasks.run_job", bind=True)
def run_job(self: Any, job_id: int, seconds: float = 1.0) -> dict[str, Any]:
    """Run job *job_id*: mark it running, sleep *seconds* in small steps, mark it done.

    Idempotent: a job that is already ``done`` (a re-delivery after its
    worker died between finishing and acknowledging) is returned unchanged; a
    job left ``running`` by a killed worker is simply run again to completion.
    """
    node = self.request.hostname or socket.gethostname()
    host = socket.gethostname()
    with db.connect(settings.database_url, application_name="materia-worker") as conn:
        row = conn.execute(
            """
            UPDATE jobs
               SET state = 'running', worker = %s, worker_node = %s, error = NULL,
                   attempts = attempts + 1, started_at = now()
             WHERE id = %s AND state <> 'done'
            RETURNING attempts
            """,
            (host, node, job_id),
        ).fetchone()
        if row is None:
            existing = conn.execute("SELECT state, result FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if existing is None:
                logger.warning("job %s: no such job in the database; nothing to do", job_id)
                return {"job_id": job_id, "skipped": "unknown job"}
            logger.info("job %s: already done; re-delivery acknowledged", job_id)
            return existing["result"] or {}
    logger.info("job %s: running on %s (attempt %s, %.1f s)", job_id, node, row["attempts"], seconds)

    try:
        started = time.monotonic()
        deadline = started + max(0.0, float(seconds))
        next_progress = started
        publish_progress(job_id, {"job_id": job_id, "state": "running", "progress": 0.0, "worker": node})
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(STEP_SECONDS, remaining))
            now = time.monotonic()
            if now >= next_progress + PROGRESS_INTERVAL:
                next_progress = now
                fraction = min(1.0, (now - started) / seconds) if seconds else 1.0
                publish_progress(
                    job_id, {"job_id": job_id, "state": "running", "progress": round(fraction, 3), "worker": node}
                )
        result = {"job_id": job_id, "seconds": seconds, "worker": host, "node": node}
        with db.connect(settings.database_url, application_name="materia-worker") as conn:
            conn.execute(
                "UPDATE jobs SET state = 'done', result = %s, finished_at = now() WHERE id = %s",
                (Jsonb(result), job_id),
            )
    except Exception as exc:
        _mark_failed(job_id, exc)
        raise
    publish_progress(job_id, {"job_id": job_id, "state": "done", "progress": 1.0, "worker": node})
    logger.info("job %s: done", job_id)
    return result
