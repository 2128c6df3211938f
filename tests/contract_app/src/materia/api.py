"""ASGI application ``materia.api:app`` (FastAPI).

Run with ``uvicorn materia.api:app --port 8000`` or
``gunicorn -k uvicorn_worker.UvicornWorker materia.api:app``. See the
README next to ``pyproject.toml`` for the endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal, get_args

import psycopg
import redis.asyncio as aioredis
from fastapi import Body, FastAPI, HTTPException, Request, Response, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from materia import __version__, db
from materia.config import QUEUES, Settings, configure_logging, mask_credentials
from materia.tasks import run_job

logger = logging.getLogger("materia.api")

#: Redis key that holds an injected fault (HTTP status) while it lasts.
FAULT_KEY = "materia:contract:fault"

QueueName = Literal["default", "gpu_training", "high_priority", "low_priority"]
assert set(get_args(QueueName)) == set(QUEUES), "QueueName must list materia.config.QUEUES"


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``."""

    seconds: float = Field(default=1.0, ge=0, le=3600, description="How long the job sleeps on the worker.")
    queue: QueueName = Field(default="default", description="Celery queue the job is sent to.")


class CampaignRequest(BaseModel):
    """Body of ``POST /v1/campaigns``."""

    name: str = Field(min_length=1, max_length=200)


class FaultRequest(BaseModel):
    """Body of ``POST /v1/admin/fault``."""

    status: int = Field(default=500, ge=400, le=599)
    seconds: float = Field(ge=0, le=3600, description="How long the fault lasts; 0 clears it.")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def _error_text(exc: BaseException) -> str:
    return mask_credentials(f"{type(exc).__name__}: {exc}".strip())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application for *settings* (default: from the environment)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("materia %s API starting: %s", __version__, settings.describe())
        if settings.sentry_dsn_set:
            logger.info("SENTRY_DSN is set (the contract app does not report errors to it)")
        primary = db.make_pool(settings.database_url, name="api", max_size=settings.database_pool_size)
        primary.open(wait=False)
        replica: ConnectionPool | None = None
        if settings.database_replica_url:
            replica = db.make_pool(settings.database_replica_url, name="replica", max_size=settings.database_pool_size)
            replica.open(wait=False)
        app.state.pool = primary
        app.state.replica_pool = replica
        app.state.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            for pool in (primary, replica):
                if pool is not None:
                    await asyncio.to_thread(pool.close)

    app = FastAPI(title="MatCraft contract app", version=__version__, lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", _error_text(exc))
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    if settings.faults_enabled:
        _add_fault_injection(app)

    @app.get("/")
    def root() -> dict[str, str]:
        """Name and version of the application."""
        return {"name": "materia", "distribution": "matcraft-contract", "version": __version__}

    @app.api_route("/health", methods=["GET", "HEAD"])
    def health() -> JSONResponse:
        """200 when ``SELECT 1`` succeeds on a fresh database connection, else 503."""
        try:
            db.check(settings.database_url)
        except psycopg.Error as exc:
            logger.warning("health check failed: %s", _error_text(exc))
            return JSONResponse({"status": "fail", "failed": ["database"], "error": _error_text(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.post("/v1/jobs", status_code=202)
    def create_job(response: Response, body: JobRequest | None = Body(default=None)) -> dict[str, Any]:
        """Insert a queued job and send ``materia.tasks.run_job`` to its queue."""
        request = body or JobRequest()
        with app.state.pool.connection() as conn:
            job = conn.execute(
                "INSERT INTO jobs (queue, seconds) VALUES (%s, %s) RETURNING id, state, queue, seconds",
                (request.queue, request.seconds),
            ).fetchone()
        try:
            run_job.apply_async(args=[job["id"], request.seconds], queue=request.queue, task_id=f"job-{job['id']}")
        except Exception as exc:  # kombu raises transport-specific errors; all mean "not enqueued"
            logger.error("job %s: could not enqueue: %s", job["id"], _error_text(exc))
            with app.state.pool.connection() as conn:
                conn.execute(
                    "UPDATE jobs SET state = 'failed', error = %s WHERE id = %s", ("broker unavailable", job["id"])
                )
            raise HTTPException(status_code=503, detail="broker unavailable") from exc
        response.headers["Location"] = f"/v1/jobs/{job['id']}"
        return job

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: int) -> dict[str, Any]:
        """The job row as stored in the database."""
        with app.state.pool.connection() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise HTTPException(status_code=404, detail="job not found")
        return _jsonable(row)

    @app.get("/v1/campaigns")
    def list_campaigns(response: Response) -> list[dict[str, Any]]:
        """Up to 50 campaigns, read from the replica when ``DATABASE_REPLICA_URL`` is set."""
        pool = app.state.replica_pool or app.state.pool
        response.headers["X-Materia-Read-Source"] = "replica" if app.state.replica_pool else "primary"
        with pool.connection() as conn:
            rows = conn.execute("SELECT id, name, status, created_at FROM campaigns ORDER BY id LIMIT 50").fetchall()
        return [_jsonable(row) for row in rows]

    @app.post("/v1/campaigns", status_code=201)
    def create_campaign(body: CampaignRequest) -> dict[str, Any]:
        """Create a campaign (on the primary database)."""
        with app.state.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO campaigns (name) VALUES (%s) RETURNING id, name, status, created_at", (body.name,)
            ).fetchone()
        return _jsonable(row)

    @app.websocket("/ws/campaigns/{campaign_id}")
    async def campaign_progress(websocket: WebSocket, campaign_id: str) -> None:
        """Relay every message published on Redis channel ``campaign:{campaign_id}``.

        The first frame is ``{"type": "subscribed", "channel": ...}`` once the
        subscription is active; every later frame is a published message's text.
        """
        await websocket.accept()
        channel = f"campaign:{campaign_id}"
        pubsub = app.state.redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            await websocket.send_json({"type": "subscribed", "channel": channel})
            await _relay(websocket, pubsub)
        except RedisError as exc:
            logger.warning("websocket %s: Redis error: %s", channel, _error_text(exc))
            await websocket.close(code=1011, reason="pub/sub unavailable")
        except WebSocketDisconnect:
            pass
        finally:
            await pubsub.aclose()

    return app


async def _relay(websocket: WebSocket, pubsub: aioredis.client.PubSub) -> None:
    """Forward Pub/Sub messages to *websocket* until the client leaves or Redis fails."""

    async def forward() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                data = message["data"]
                await websocket.send_text(data.decode() if isinstance(data, bytes) else str(data))

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.create_task(forward()), asyncio.create_task(until_disconnect())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # re-raise a Redis error so the caller closes with 1011


def _add_fault_injection(app: FastAPI) -> None:
    """Enable ``POST /v1/admin/fault`` and the middleware that serves injected faults.

    The fault lives in Redis with an expiry, so it applies to every worker
    process and every API host at once, and ends by itself.
    """

    @app.middleware("http")
    async def serve_fault(request: Request, call_next: Any) -> Response:
        if request.method == "GET" and request.url.path.startswith("/v1/"):
            try:
                status = await app.state.redis.get(FAULT_KEY)
            except RedisError as exc:
                logger.warning("fault injection: cannot read %s: %s", FAULT_KEY, _error_text(exc))
                status = None
            if status is not None:
                return JSONResponse({"detail": "injected fault"}, status_code=int(status))
        return await call_next(request)

    @app.post("/v1/admin/fault")
    async def inject_fault(body: FaultRequest) -> dict[str, Any]:
        """Make every ``GET /v1/...`` answer *status* for *seconds* (0 clears the fault)."""
        if body.seconds == 0:
            await app.state.redis.delete(FAULT_KEY)
        else:
            await app.state.redis.set(FAULT_KEY, body.status, px=max(1, int(body.seconds * 1000)))
        logger.warning("fault injection: GET /v1/* answers %s for %s s", body.status, body.seconds)
        return {"status": body.status, "seconds": body.seconds}


app = create_app()
