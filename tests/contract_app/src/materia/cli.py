"""The ``materia`` command line.

``materia db upgrade``   apply pending migrations (idempotent, safe to run concurrently)
``materia db current``   print the current revision (``0002 (head)``), or ``none``
``materia db counts``    print row counts of MatCraft's tables as JSON
``materia db seed``      insert a small, deterministic data set (for backup tests)

Only ``DATABASE_URL`` is read from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence

import psycopg

from materia import __version__, db, migrations
from materia.config import mask_credentials

#: Tables whose rows ``materia db counts`` reports (MatCraft's tables plus ``jobs``).
TABLES: tuple[str, ...] = (
    "materials",
    "campaigns",
    "iterations",
    "candidates",
    "measurements",
    "surrogate_checkpoints",
    "jobs",
)


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise SystemExit("materia: error: DATABASE_URL is not set")
    return url


def cmd_upgrade(_: argparse.Namespace) -> int:
    """Apply pending migrations and report what was done."""
    with db.connect(_database_url(), application_name="materia-migrate") as conn:
        applied = migrations.upgrade(conn)
    if applied:
        print(f"Applied revision(s) {', '.join(applied)}; database is at {migrations.HEAD} (head)")
    else:
        print(f"Database already at {migrations.HEAD} (head); nothing to do")
    return 0


def cmd_current(_: argparse.Namespace) -> int:
    """Print the current revision, marked ``(head)`` when it is the newest this version knows."""
    with db.connect(_database_url(), application_name="materia-migrate") as conn:
        revision = migrations.current(conn)
    if revision is None:
        print("none")
    else:
        print(f"{revision} (head)" if revision == migrations.HEAD else revision)
    return 0


def cmd_counts(_: argparse.Namespace) -> int:
    """Print ``{"table": rows, ...}`` for every table in :data:`TABLES`."""
    with db.connect(_database_url(), application_name="materia-cli") as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]  # noqa: S608 - fixed names
            for table in TABLES
        }
    print(json.dumps(counts, sort_keys=True))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    """Insert campaigns with iterations, candidates, measurements and checkpoints in one transaction."""
    rng = random.Random(args.random_seed)
    added = dict.fromkeys(
        ("materials", "campaigns", "iterations", "candidates", "measurements", "surrogate_checkpoints"), 0
    )
    with db.connect(_database_url(), application_name="materia-cli") as conn, conn.transaction():
        for c in range(args.campaigns):
            campaign = conn.execute(
                "INSERT INTO campaigns (name, status) VALUES (%s, 'running') RETURNING id", (f"seed campaign {c + 1}",)
            ).fetchone()["id"]
            added["campaigns"] += 1
            for number in range(1, args.iterations + 1):
                iteration = conn.execute(
                    "INSERT INTO iterations (campaign_id, number) VALUES (%s, %s) RETURNING id", (campaign, number)
                ).fetchone()["id"]
                added["iterations"] += 1
                for _ in range(args.candidates):
                    material = conn.execute(
                        "INSERT INTO materials (formula) VALUES (%s) RETURNING id",
                        (f"Fe{rng.randint(1, 4)}O{rng.randint(1, 6)}",),
                    ).fetchone()["id"]
                    candidate = conn.execute(
                        "INSERT INTO candidates (iteration_id, material_id, score) VALUES (%s, %s, %s) RETURNING id",
                        (iteration, material, rng.random()),
                    ).fetchone()["id"]
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO measurements (candidate_id, name, value) VALUES (%s, %s, %s)",
                            [(candidate, "band_gap_ev", rng.uniform(0, 5)) for _ in range(args.measurements)],
                        )
                    added["materials"] += 1
                    added["candidates"] += 1
                    added["measurements"] += args.measurements
                conn.execute(
                    "INSERT INTO surrogate_checkpoints (campaign_id, iteration_id, data) VALUES (%s, %s, %s)",
                    (campaign, iteration, rng.randbytes(args.checkpoint_kib * 1024)),
                )
                added["surrogate_checkpoints"] += 1
    print(json.dumps(added, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``materia`` command."""
    parser = argparse.ArgumentParser(prog="materia", description="MatCraft contract application command line.")
    parser.add_argument("--version", action="version", version=f"materia {__version__} (matcraft-contract)")
    commands = parser.add_subparsers(dest="command", required=True)
    database = commands.add_parser("db", help="database schema commands").add_subparsers(
        dest="db_command", required=True
    )
    database.add_parser("upgrade", help="apply pending migrations").set_defaults(func=cmd_upgrade)
    database.add_parser("current", help="print the current revision").set_defaults(func=cmd_current)
    database.add_parser("counts", help="print row counts as JSON").set_defaults(func=cmd_counts)
    seed = database.add_parser("seed", help="insert a deterministic sample data set")
    seed.add_argument("--campaigns", type=int, default=2)
    seed.add_argument("--iterations", type=int, default=2, help="per campaign")
    seed.add_argument("--candidates", type=int, default=5, help="per iteration")
    seed.add_argument("--measurements", type=int, default=10, help="per candidate")
    seed.add_argument("--checkpoint-kib", type=int, default=64, help="size of each iteration's checkpoint")
    seed.add_argument("--random-seed", type=int, default=1)
    seed.set_defaults(func=cmd_seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``materia`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (psycopg.Error, migrations.MigrationError) as exc:
        print(f"materia: error: {mask_credentials(str(exc)).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
