"""An ASGI stand-in on a port of its own, served by uvicorn in a thread of this process (tests,
benchmarks) or in the foreground (its management command): the local FCM (simulators.fcm)
and the local Web Push service (simulators.webpush) both run this way.

The socket is bound when the object is made, so `port` is known (port 0: any free one) before
the server starts, and a test can hand the URL out first.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class ThreadedServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, name: str, **config):
        self.app = app
        self.host = host
        self.name = name
        self.config = {"lifespan": "off", "log_level": "warning", "access_log": False, **config}
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _make_server(self) -> uvicorn.Server:
        self.server = uvicorn.Server(uvicorn.Config(self.app, **self.config))
        return self.server

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a daemon thread; return once uvicorn listens (RuntimeError if it did not)."""
        server = self._make_server()
        self.thread = threading.Thread(target=server.run, kwargs={"sockets": [self.socket]},
                                       name=f"{self.name}:{self.port}", daemon=True)
        self.thread.start()
        limit = time.monotonic() + timeout
        while not server.started:
            if not self.thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)

    def serve_forever(self) -> None:
        self._make_server().run(sockets=[self.socket])

    def stop(self, timeout: float = 5.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None
        self.socket.close()
