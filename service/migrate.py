"""Schema migrations with yoyo: plain SQL files in service/migrations, applied in order."""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from yoyo import get_backend, read_migrations

from service.config import Settings

# yoyo's own bookkeeping table: one row per applied migration.
MIGRATION_TABLE = "_yoyo_migration"


def migrations_dir() -> str:
    return str(resources.files("service") / "migrations")


def expected_versions() -> set[str]:
    """Return the ids of every migration shipped with this version of the code."""
    return {migration.id for migration in read_migrations(migrations_dir())}


def _backend(settings: Settings):  # type: ignore[no-untyped-def]
    uri = "mysql://{user}:{password}@{host}:{port}/{database}".format(
        user=quote(settings.mysql_user, safe=""),
        password=quote(settings.mysql_password.get_secret_value(), safe=""),
        host=settings.mysql_host,
        port=settings.mysql_port,
        database=settings.mysql_database,
    )
    return get_backend(uri, migration_table=MIGRATION_TABLE)


def apply_migrations(settings: Settings) -> list[str]:
    """Apply every pending migration under yoyo's lock; return the ids applied."""
    backend = _backend(settings)
    migrations = read_migrations(migrations_dir())
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]


def pending_versions(applied: set[str]) -> set[str]:
    """Return the shipped migrations missing from the applied set."""
    return expected_versions() - applied
