"""notifications.httpclient, the push senders' HTTP/1.1 requests (FCM, Web Push): what a
request returns or raises against real sockets, the proxy the environment names, and no
private API of aiohttp."""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from notifications import httpclient
from tests.notifications.test_fcm_transport import _private_uses


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            return
        if self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = b"echo:" + body + b":" + self.headers["X-Test"].encode() + b":" + self.path.encode()
        self.send_response(201)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _run(work):
    async def main():
        pool = httpclient.Pool(4)
        try:
            return await work(pool)
        finally:
            await pool.close()
    return asyncio.run(main())


def test_a_post_returns_the_status_the_headers_and_the_whole_body(server):
    reply = _run(lambda pool: pool.post(httpclient.parse(server + "/v1/send"), b"hello", {"X-Test": "yes"}))

    assert reply.status == 201
    assert reply.body == b"echo:hello:yes:/v1/send"
    assert reply.headers.get("retry-after") == "7"  # case-insensitive


def test_connections_are_reused_and_redirects_followed_only_when_asked(server):
    async def work(pool):
        first = await pool.post(server + "/a", b"1", {"X-Test": "a"})
        moved = await pool.post(server + "/moved", b"2", {"X-Test": "b"}, follow_redirects=False)
        return first, moved, pool.session
    first, moved, session = _run(work)

    assert first.status == 201 and moved.status == 301
    assert moved.headers["Location"] == "/elsewhere"
    assert session is not None


def test_a_refused_connection_is_unreachable():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(httpclient.Unreachable):
        _run(lambda pool: pool.post(f"http://127.0.0.1:{port}/", b"", {}))


def test_an_answer_that_is_not_http_is_a_bad_reply(server):
    with pytest.raises(httpclient.BadReply):
        _run(lambda pool: pool.post(server + "/garbage", b"x", {"X-Test": "x"}))


@pytest.mark.parametrize(("environ", "url", "proxy"), [
    ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, "https://fcm.googleapis.com/v1/x", "http://proxy.invalid:3128"),
    ({"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "fcm.googleapis.com"}, "https://fcm.googleapis.com",
     None),
    ({"HTTP_PROXY": "http://proxy.invalid:3128"}, "https://fcm.googleapis.com", None),
    ({"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "fcm.googleapis.com"},
     "https://updates.push.services.mozilla.com/wpush/v2/abc", "http://proxy.invalid:3128"),
    ({"ALL_PROXY": "http://all.invalid:8080"}, "https://web.push.apple.com/QGx", "http://all.invalid:8080"),
])
def test_the_proxy_is_the_one_the_environment_names_for_the_origin(monkeypatch, environ, url, proxy):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    httpclient.forget_proxies()
    try:
        assert httpclient.proxy_for(url) == proxy
    finally:
        httpclient.forget_proxies()


def test_the_client_uses_no_private_api_of_any_library():
    assert _private_uses(Path(httpclient.__file__).read_text()) == []
