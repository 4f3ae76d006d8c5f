"""Schema migrations with yoyo: plain SQL files in service/migrations, applied in order.

yoyo (with sqlparse) is imported only by the functions that apply migrations, so the
workers, which only compare versions, do not load it: about 3 MiB each.
"""

from __future__ import annotations

from importlib import resources

from service.config import Settings

# yoyo's own bookkeeping table: one row per applied migration.
MIGRATION_TABLE = "_yoyo_migration"


def migrations_dir() -> str:
    return str(resources.files("service") / "migrations")


def expected_versions() -> set[str]:
    """Return the ids of every migration shipped with this version of the code.

    yoyo names a SQL migration by its file name without .sql, and reads the
    NAME.rollback.sql files as the rollback steps of NAME.
    """
    files = resources.files("service") / "migrations"
    return {entry.name.removesuffix(".sql") for entry in files.iterdir()
            if entry.name.endswith(".sql") and not entry.name.endswith(".rollback.sql")}


def _backend(settings: Settings):  # type: ignore[no-untyped-def]
    from yoyo.backends.core.mysql import MySQLBackend
    from yoyo.connections import DatabaseURI

    from service.database import connect
    from service.mysql_tls import tls_connect_args

    class GatehouseMySQLBackend(MySQLBackend):
        """yoyo's MySQL backend, connecting with the settings, TLS included.

        yoyo 9 passes a URI's query options to pymysql as strings, which cannot carry an
        SSLContext, so the connection is opened here. yoyo copies a backend by its class,
        which keeps the settings.
        """

        def connect(self, dburi):  # type: ignore[no-untyped-def]
            return connect(host=settings.mysql_host, port=settings.mysql_port, user=settings.mysql_user,
                           password=settings.mysql_password.get_secret_value(), database=settings.mysql_database,
                           **tls_connect_args(settings))

    # yoyo reads the database name from the URI and keys a cache by it. The password
    # stays out of it, because connect() above takes the password from the settings.
    uri = DatabaseURI(scheme="mysql", username=settings.mysql_user, password=None, hostname=settings.mysql_host,
                      port=settings.mysql_port, database=settings.mysql_database, args={})
    # What yoyo.get_backend does once it has found the backend class for the URI's scheme.
    backend = GatehouseMySQLBackend(uri, MIGRATION_TABLE)
    backend.init_database()
    return backend


def apply_migrations(settings: Settings) -> list[str]:
    """Apply every pending migration under yoyo's lock; return the ids applied."""
    from yoyo import read_migrations

    backend = _backend(settings)
    migrations = read_migrations(migrations_dir())
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]


def pending_versions(applied: set[str]) -> set[str]:
    """Return the shipped migrations missing from the applied set."""
    return expected_versions() - applied
