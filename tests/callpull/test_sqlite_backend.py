"""SQLite runs on Django's own backend with persistent connections (CONN_MAX_AGE=None):
each thread that uses the database (an HTTP pool thread, the WebSocket side's database
thread) keeps its connection, so no request or socket event pays to open one, and no
last connection closing checkpoints and deletes the write-ahead log (what a custom
backend, callpull/sqlite3, once held an idle connection open for)."""

from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite pass only")


def test_the_default_sqlite_database_is_djangos_backend_with_persistent_connections():
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert settings.DATABASES["default"]["CONN_MAX_AGE"] is None


@pytest.mark.django_db(transaction=True)  # autocommit, as outside tests: a connection may be closed
def test_socket_side_database_calls_keep_their_connection_and_the_write_ahead_log():
    """database_sync_to_async closes obsolete connections before and after each call,
    as request_started/request_finished do for a request."""
    connection.close()  # opened afresh by the first call, with the settings' CONN_MAX_AGE
    seen = []

    def use():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        seen.append(connection.connection)

    async def twice():
        await database_sync_to_async(use)()
        await database_sync_to_async(use)()

    async_to_sync(twice)()
    assert seen[0] is not None and seen[0] is seen[1] is connection.connection
    assert Path(f"{connection.settings_dict['NAME']}-wal").exists()
