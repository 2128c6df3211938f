"""Versioned schema migrations, applied by ``materia db upgrade``.

MatCraft uses Alembic; this stand-in keeps the same operator-facing
behaviour with a few lines of its own: an ordered list of revisions, a
version table (``materia_schema_migrations``) and a PostgreSQL advisory lock
so that several hosts may run ``materia db upgrade`` at the same time. The
whole upgrade runs in one transaction: it either applies every pending
revision or none. Functions here expect connections from
:func:`materia.db.connect` (dict rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

#: Key of the transaction-level advisory lock that serialises upgrades ("materia" in ASCII).
ADVISORY_LOCK_KEY = 0x6D61746572696100

VERSION_TABLE = "materia_schema_migrations"


class MigrationError(RuntimeError):
    """The database is in a state this version cannot upgrade."""


@dataclass(frozen=True)
class Migration:
    """One schema revision."""

    revision: str
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        revision="0001",
        description="domain tables",
        statements=(
            """
            CREATE TABLE materials (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                formula text NOT NULL,
                name text,
                properties jsonb NOT NULL DEFAULT '{}'::jsonb,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE campaigns (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                name text NOT NULL,
                status text NOT NULL DEFAULT 'draft',
                config jsonb NOT NULL DEFAULT '{}'::jsonb,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE iterations (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
                number integer NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (campaign_id, number)
            )
            """,
            """
            CREATE TABLE candidates (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                iteration_id bigint NOT NULL REFERENCES iterations (id) ON DELETE CASCADE,
                material_id bigint REFERENCES materials (id),
                parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
                score double precision,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE measurements (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                candidate_id bigint NOT NULL REFERENCES candidates (id) ON DELETE CASCADE,
                name text NOT NULL,
                value double precision NOT NULL,
                measured_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE surrogate_checkpoints (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
                iteration_id bigint REFERENCES iterations (id) ON DELETE SET NULL,
                data bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ),
    ),
    Migration(
        revision="0002",
        description="background jobs and indexes",
        statements=(
            """
            CREATE TABLE jobs (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                queue text NOT NULL DEFAULT 'default',
                seconds double precision NOT NULL DEFAULT 0,
                state text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed')),
                result jsonb,
                error text,
                worker text,
                worker_node text,
                attempts integer NOT NULL DEFAULT 0,
                created_at timestamptz NOT NULL DEFAULT now(),
                started_at timestamptz,
                finished_at timestamptz
            )
            """,
            "CREATE INDEX candidates_iteration_id_idx ON candidates (iteration_id)",
            "CREATE INDEX measurements_candidate_id_idx ON measurements (candidate_id)",
            "ALTER TABLE campaigns ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()",
        ),
    ),
)

HEAD = MIGRATIONS[-1].revision


def _applied(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(f"SELECT revision FROM {VERSION_TABLE} ORDER BY revision").fetchall()
    return [row["revision"] for row in rows]


def _version_table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (VERSION_TABLE,)).fetchone()
    return bool(row["present"])


def current(conn: psycopg.Connection) -> str | None:
    """Return the newest applied revision, or ``None`` for an empty database."""
    if not _version_table_exists(conn):
        return None
    applied = _applied(conn)
    return applied[-1] if applied else None


def upgrade(conn: psycopg.Connection) -> list[str]:
    """Apply every pending migration; return the revisions applied (empty when up to date).

    Safe to run concurrently from several hosts: the advisory lock makes a
    second run wait for the first and then find nothing to do.
    """
    known = [migration.revision for migration in MIGRATIONS]
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                revision text PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """)
        applied = _applied(conn)
        unknown = [revision for revision in applied if revision not in known]
        if unknown:
            raise MigrationError(
                f"database has revision(s) {', '.join(unknown)} unknown to this version (head {HEAD}); "
                "it was migrated by a newer release"
            )
        done: list[str] = []
        for migration in MIGRATIONS:
            if migration.revision in applied:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {VERSION_TABLE} (revision, description) VALUES (%s, %s)",
                (migration.revision, migration.description),
            )
            done.append(migration.revision)
    return done
