"""Django's SQLite backend, with one idle connection per database file held open
for the life of the process.

SQLite checkpoints the write-ahead log into the database (with an fsync) and
deletes the log whenever the *last* connection to the file closes. Django opens
a connection for each database call of the WebSocket side (and, under Django's
own ASGI handler, for each HTTP request, each in a thread of its own; callpull.http
keeps one per pool thread instead), and closes it after: with nothing else
holding the file open, each of them paid for a checkpoint and a new log (about
0.6 ms of CPU and 2 ms of waiting per connection, measured in
bench/results/profile.md). The held connection only keeps the log open; SQLite
still checkpoints on its own schedule (every 1,000 pages written).
"""

import sqlite3
import threading

from django.db.backends.sqlite3 import base

_held: dict[str, sqlite3.Connection] = {}
_lock = threading.Lock()


def _hold(conn_params: dict) -> None:
    database = conn_params["database"]
    if database in _held:
        return
    with _lock:
        if database in _held:
            return
        keeper = sqlite3.connect(database, uri=conn_params.get("uri", False), check_same_thread=False,
                                 isolation_level=None)
        # A read attaches the connection to the log (its shared-memory index); it then
        # holds no lock, so it never blocks a writer or a checkpoint.
        keeper.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        _held[database] = keeper


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if not self.is_in_memory_db():
            _hold(conn_params)
        return connection
