"""The page's WebSocket: a single-use ticket per connection, an ack for every event, a ping
at the heartbeat from `hello`, and reconnection with exponential backoff and jitter, with
the state visible to the user.

The socket is watched (and cut) from the test through Playwright's WebSocket routing: the
page still talks to the real server, every frame passes through the test."""

import json
import re
import threading
import time

import pytest
from playwright.sync_api import expect

from tests.web.support import household

pytestmark = pytest.mark.e2e


class Sockets:
    """Every socket the page opens: its URL, the frames each way, and the means to cut it.
    While `refuse` is set, new sockets are closed at once instead of reaching the server."""

    def __init__(self):
        self.links: list[dict] = []
        self.refuse = False
        self.lock = threading.Lock()

    def route(self, ws) -> None:
        link = {"page": ws, "server": None, "url": ws.url, "up": [], "down": [], "at": time.monotonic()}
        with self.lock:
            self.links.append(link)
        if self.refuse:
            ws.close(code=1011, reason="refused by the test")
            return
        server = ws.connect_to_server()
        link["server"] = server

        def up(message):
            link["up"].append(json.loads(message))
            server.send(message)

        def down(message):
            link["down"].append(json.loads(message))
            ws.send(message)

        ws.on_message(up)
        server.on_message(down)

    def cut(self, link: dict) -> None:
        link["page"].close(code=4000, reason="cut by the test")
        link["server"].close()


def until(page, check, timeout: float = 5.0):
    """Like `eventually`, but waiting inside Playwright: the sync API delivers the routed
    frames to the handlers above only while the test is in a Playwright call."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        page.wait_for_timeout(50)


def test_the_socket_acks_every_event_pings_and_reconnects_with_backoff(open_page, web_server):
    home = household(web_server)
    companion = open_page()
    page = companion.page
    sockets = Sockets()
    page.route_web_socket(re.compile(r"/ws/v1/"), sockets.route)
    companion.join(home)
    status = page.locator("#connection")

    first = sockets.links[0]
    assert re.search(r"/ws/v1/\?ticket=[\w-]+$", first["url"]), first["url"]
    hello = first["down"][0]
    assert hello["type"] == "hello" and hello["heartbeat"] == 2, hello

    # Every event frame is acked with its id; pings follow the heartbeat.
    ring = home.ring()
    expect(companion.incoming(ring.id)).to_be_visible()

    def all_acked():
        ids = {frame["id"] for frame in first["down"] if frame.get("id")}
        acked = {frame["id"] for frame in first["up"] if frame.get("type") == "ack"}
        assert ids and ids <= acked, (ids - acked, [frame["type"] for frame in first["down"]])
        assert "call.ringing" in {frame["type"] for frame in first["down"]}
    until(page, all_acked)
    until(page, lambda: assert_pinged(first))

    # The connection drops: the state says so, with the countdown, and the page comes back
    # on a new ticket; the server offers the still-ringing call again on connect.
    sockets.cut(first)
    expect(status).to_have_attribute("data-state", "offline")
    expect(status).to_have_text(re.compile(r"Offline — retrying in \d+ s"))
    expect(page.get_by_role("button", name="Retry now")).to_be_visible()
    companion.shot("connection-offline")
    companion.expect_online()
    second = sockets.links[1]
    assert second["url"] != first["url"], "a ticket is used once"
    until(page, lambda: assert_offered_again(second, ring.id))
    expect(companion.incoming(ring.id).get_by_role("button", name="Answer")).to_be_visible()

    # While the server cannot be reached, each retry waits about twice as long as the last.
    sockets.refuse = True
    sockets.cut(second)
    until(page, lambda: assert_count(sockets, 4), timeout=6)
    cut_at, first_retry, second_retry = (link["at"] for link in sockets.links[1:4])
    gap_one, gap_two = first_retry - cut_at, second_retry - first_retry
    assert 0.45 <= gap_one <= 1.6, gap_one    # 0.5–1 s
    assert 0.95 <= gap_two <= 2.6, gap_two    # 1–2 s
    expect(status).to_have_text(re.compile(r"Offline — retrying in [1-4] s"))
    # "Retry now" does not wait for the next turn (2–4 s away).
    sockets.refuse = False
    clicked = time.monotonic()
    page.get_by_role("button", name="Retry now").click()
    companion.expect_online()
    assert time.monotonic() - clicked < 2, "reconnected at once, not after the backoff"

    # The backoff itself: equal jitter over a doubling step, capped at 30 s.
    bounds = page.evaluate("""async () => {
        const { backoffDelay } = await import("/static/callpull/web/socket.js");
        return [0, 1, 2, 3, 4, 5, 6, 10].map((n) => [backoffDelay(n, () => 0), backoffDelay(n, () => 1)]);
    }""")
    assert bounds == [[500, 1000], [1000, 2000], [2000, 4000], [4000, 8000], [8000, 16000], [15000, 30000],
                      [15000, 30000], [15000, 30000]]


def assert_pinged(link: dict) -> None:
    assert {"type": "ping"} in link["up"], link["up"]
    assert {"type": "pong"} in link["down"]


def assert_offered_again(link: dict, call_id: str) -> None:
    offered = [frame for frame in link["down"] if frame.get("type") == "call.ringing"]
    assert offered and offered[0]["call"]["id"] == call_id, [frame["type"] for frame in link["down"]]
    assert any(frame.get("type") == "ack" and frame["id"] == offered[0]["id"] for frame in link["up"])


def assert_count(sockets: Sockets, count: int) -> None:
    assert len(sockets.links) >= count, len(sockets.links)
