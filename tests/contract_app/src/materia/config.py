"""Settings read from the environment, exactly as MatCraft documents them.

Required: ``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY`` (at least 32 random
bytes as hex, i.e. 64 hex characters) and ``MATCRAFT_ENV``. Optional:
``DATABASE_REPLICA_URL``, ``CORS_ORIGINS``, ``LOG_LEVEL``, ``SENTRY_DSN``,
``CELERY_VISIBILITY_TIMEOUT``, ``CELERY_UNACKED_RESTORE_INTERVAL``, ``DATABASE_POOL_SIZE`` and
``MATCRAFT_CONTRACT_FAULTS`` (contract-app only: enables fault injection).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

#: The queues MatCraft declares; ``default`` is the default queue.
QUEUES: tuple[str, ...] = ("default", "gpu_training", "high_priority", "low_priority")

REQUIRED_VARIABLES: tuple[str, ...] = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MATCRAFT_ENV")

_SECRET_KEY_RE = re.compile(r"^[0-9a-fA-F]{64,}$")
_URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")
_QUERY_SECRET_RE = re.compile(r"(?P<key>(?:password|passwd|pwd)=)[^&\s]+", re.IGNORECASE)


class ConfigError(RuntimeError):
    """Raised when the environment does not satisfy MatCraft's contract."""


def mask_credentials(text: str) -> str:
    """Return *text* with passwords in URLs and ``password=`` parameters replaced by ``***``."""
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m['key']}***", text)


def redis_url_with_db(url: str, db: int) -> str:
    """Return the Redis URL *url* pointing at database number *db*.

    The database number lives in the URL path (``redis://host:6379/0``); a
    ``db=`` query parameter, which would take precedence, is dropped.
    Credentials and other query parameters (TLS options) are kept.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"REDIS_URL must use redis:// or rediss://, got {parts.scheme or 'no'} scheme")
    query = "&".join(item for item in parts.query.split("&") if item and not item.startswith("db="))
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", query, parts.fragment))


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Validated runtime settings shared by the API, the workers and the CLI."""

    database_url: str
    redis_url: str
    secret_key: str
    environment: str
    database_replica_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    sentry_dsn_set: bool = False
    faults_enabled: bool = False
    visibility_timeout: int = 3600
    unacked_restore_interval: int | None = None
    database_pool_size: int = 10

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from *environ* (default ``os.environ``); raise :class:`ConfigError` if invalid."""
        env = os.environ if environ is None else environ
        missing = [name for name in REQUIRED_VARIABLES if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(f"missing required environment variable(s): {', '.join(missing)}")

        secret_key = env["SECRET_KEY"].strip()
        if not _SECRET_KEY_RE.match(secret_key):
            raise ConfigError("SECRET_KEY must be at least 64 hexadecimal characters (32 random bytes as hex)")

        database_url = env["DATABASE_URL"].strip()
        replica_url = env.get("DATABASE_REPLICA_URL", "").strip() or None
        for name, url in (("DATABASE_URL", database_url), ("DATABASE_REPLICA_URL", replica_url)):
            if url is not None and urlsplit(url).scheme not in ("postgresql", "postgres"):
                raise ConfigError(f"{name} must be a postgresql:// URL")

        redis_url = env["REDIS_URL"].strip()
        redis_url_with_db(redis_url, 0)  # validates the scheme

        log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
        if not isinstance(logging.getLevelName(log_level), int):
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {log_level!r}")

        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            secret_key=secret_key,
            environment=env["MATCRAFT_ENV"].strip(),
            database_replica_url=replica_url,
            cors_origins=origins,
            log_level=log_level,
            sentry_dsn_set=bool(env.get("SENTRY_DSN", "").strip()),
            faults_enabled=env.get("MATCRAFT_CONTRACT_FAULTS", "").strip() == "1",
            visibility_timeout=_positive_int(env, "CELERY_VISIBILITY_TIMEOUT", 3600),
            unacked_restore_interval=_positive_int(env, "CELERY_UNACKED_RESTORE_INTERVAL", 0) or None,
            database_pool_size=_positive_int(env, "DATABASE_POOL_SIZE", 10),
        )

    def describe(self) -> str:
        """One log-safe line summarising the settings (credentials masked)."""
        replica = mask_credentials(self.database_replica_url) if self.database_replica_url else "none"
        return (
            f"env={self.environment} database={mask_credentials(self.database_url)} replica={replica} "
            f"redis={mask_credentials(self.redis_url)} cors_origins={','.join(self.cors_origins) or 'none'} "
            f"faults={'on' if self.faults_enabled else 'off'}"
        )


def configure_logging(level: str) -> None:
    """Send ``materia`` log records to stderr at *level* unless logging is already configured."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("materia").setLevel(level)
