"""PostgreSQL access with psycopg 3.

``DATABASE_URL`` is passed to libpq unchanged, so ``sslmode``,
``sslrootcert`` and any other libpq parameter in its query string apply.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

#: Seconds libpq waits for a connection (libpq's minimum is 2).
CONNECT_TIMEOUT = 2
#: Seconds the health check's fresh connection may take (TCP, TLS, SCRAM and
#: the server's new backend): as long as a request waits for a pooled one, so
#: that a host busy for a moment is not reported down.
HEALTH_CONNECT_TIMEOUT = 5
#: Milliseconds a health-check query may run.
HEALTH_STATEMENT_TIMEOUT_MS = 2000
#: Seconds a request waits for a pooled connection before failing.
POOL_TIMEOUT = 5.0


def connect(url: str, *, application_name: str = "materia", autocommit: bool = False) -> psycopg.Connection:
    """Open one connection to *url* with a short connect timeout and dict rows."""
    return psycopg.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name,
        autocommit=autocommit,
        row_factory=dict_row,
    )


def check(url: str) -> None:
    """Run ``SELECT 1`` on a fresh connection; raise :class:`psycopg.Error` if it fails.

    A fresh connection (not a pooled one) proves that the server accepts new
    connections, credentials and TLS included, which is what a load balancer
    needs to know.
    """
    with psycopg.connect(
        url,
        connect_timeout=HEALTH_CONNECT_TIMEOUT,
        application_name="materia-health",
        autocommit=True,
        options=f"-c statement_timeout={HEALTH_STATEMENT_TIMEOUT_MS}",
    ) as conn:
        conn.execute("SELECT 1").fetchone()


def make_pool(url: str, *, name: str, max_size: int) -> ConnectionPool:
    """Create (without opening) a connection pool that validates connections on checkout.

    Validation on checkout makes the pool recover transparently after a
    database restart or a fail-over instead of handing out dead connections.
    """
    return ConnectionPool(
        url,
        name=name,
        min_size=1,
        max_size=max_size,
        timeout=POOL_TIMEOUT,
        open=False,
        check=ConnectionPool.check_connection,
        kwargs={
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": f"materia-{name}",
            "row_factory": dict_row,
        },
    )
