"""callpull.sqlite3: Django's SQLite backend holding one idle connection per file."""

import pytest
from django.conf import settings
from django.db import connection

from callpull.sqlite3.base import DatabaseWrapper

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite pass only")


def test_the_default_sqlite_database_uses_it():
    assert settings.DATABASES["default"]["ENGINE"] == "callpull.sqlite3"


@pytest.mark.django_db  # lets connections open (the probe's own file, not the test database)
def test_closing_the_last_request_connection_keeps_the_write_ahead_log(tmp_path):
    """SQLite checkpoints and deletes the log when the last connection to the file
    closes; with the held connection, closing Django's leaves it in place."""
    path = tmp_path / "probe.sqlite3"
    wrapper = DatabaseWrapper({**connection.settings_dict, "NAME": str(path)}, alias="probe")
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TABLE note (body TEXT)")
        cursor.execute("INSERT INTO note VALUES ('ring')")
    wrapper.close()
    assert path.with_name("probe.sqlite3-wal").exists()

    again = DatabaseWrapper({**connection.settings_dict, "NAME": str(path)}, alias="probe")
    with again.cursor() as cursor:
        cursor.execute("SELECT body FROM note")
        assert cursor.fetchall() == [("ring",)]
    again.close()
