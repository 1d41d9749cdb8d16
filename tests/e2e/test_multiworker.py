"""Several workers behind one deployment: presence and events cross processes.

Two uvicorn processes on two ports share one database and one Redis channel
layer, as two workers of one deployment would.
"""

import json
import os
import random
import signal
import threading
import time
import uuid

import pytest

from tests.e2e.support import (
    Servers,
    assert_online,
    call,
    close_code,
    eventually,
    hello,
    presence_of,
    reply,
    sign_up,
    wait_for_frame,
    ws_connect,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL", "").strip(),
                       reason="several workers need the Redis channel layer: set REDIS_URL"),
]


@pytest.fixture(scope="module")
def workers(environment):
    owner = Servers(environment, "pair")
    try:
        database = owner.database()
        yield owner.start(database, name="worker-a"), owner.start(database, name="worker-b")
    finally:
        owner.close()


def test_a_tablet_connected_to_one_worker_is_online_on_the_other(workers):
    worker_a, worker_b = workers
    account = sign_up(worker_a, "pair")
    tablet = account.register("tablet")
    handset = account.register("handset", via=worker_b)
    assert_online(worker_b, handset.token, tablet.id, False)
    with ws_connect(worker_a, tablet.token) as ws:
        hello(ws)
        assert_online(worker_b, handset.token, tablet.id, True)
        assert_online(worker_a, handset.token, tablet.id, True)
    eventually(lambda: assert_online(worker_b, handset.token, tablet.id, False))
    assert_online(worker_a, handset.token, tablet.id, False)


def test_a_receipt_on_one_worker_answers_the_ring_report_on_the_other(workers):
    """The report waits on worker A for the first ack; the tablet's socket and its
    ack are on worker B. The receipt crosses the channel layer in time for the
    report's answer to be `reject`."""
    worker_a, worker_b = workers
    account = sign_up(worker_a, "pair")
    handset = account.register("handset")
    tablet = account.register("tablet")
    number = f"+1555{random.randrange(10**6, 10**7)}"
    line = call(worker_a, "POST", "/api/v1/lines", token=handset.token, json={"number": number}).json()
    assert call(worker_a, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                json={"state": "active", "target": line["server_number"]}).status_code == 200
    assert call(worker_b, "PATCH", f"/api/v1/lines/{line['id']}", token=handset.token,
                json={"policy": "immediate"}).json()["policy"] == "immediate"
    with ws_connect(worker_b, tablet.token) as ws:
        hello(ws)
        acked = []

        def app():
            ringing = wait_for_frame(ws, lambda frame: frame["type"] == "call.ringing", timeout=10)
            ws.send(json.dumps({"type": "ack", "id": ringing["id"]}))
            acked.append(ringing)

        reader = threading.Thread(target=app, daemon=True)
        reader.start()
        response = call(worker_a, "POST", "/api/v1/calls", token=handset.token,
                        json={"report_id": str(uuid.uuid4()), "line": number, "caller": "+15550001111"})
        reader.join(10)
        assert response.status_code == 201, response.text
        assert acked and acked[0]["call"]["id"] == response.json()["call"]["id"]
        assert response.json()["instruction"] == {"action": "reject"}


def test_a_desktop_on_one_worker_hears_a_tablet_come_and_go_on_the_other(workers):
    worker_a, worker_b = workers
    account = sign_up(worker_b, "pair")
    tablet = account.register("tablet")
    desktop = account.register("desktop", platform="other")
    with ws_connect(worker_b, desktop.token) as desktop_ws:
        hello(desktop_ws)
        with ws_connect(worker_a, tablet.token) as tablet_ws:
            hello(tablet_ws)
            frame = wait_for_frame(desktop_ws, presence_of(tablet, True))
            assert frame["device"]["kind"] == "tablet"
            # and the desktop on B is online as seen through A
            assert_online(worker_a, tablet.token, desktop.id, True)
        wait_for_frame(desktop_ws, presence_of(tablet, False))
        for worker in workers:
            assert_online(worker, desktop.token, tablet.id, False)
        desktop_ws.send('{"type": "ping"}')
        assert reply(desktop_ws)["type"] == "pong"


def test_an_idle_socket_outlives_the_channel_layers_five_second_poll(workers):
    # channels_redis polls Redis with a 5 s blocking read; a client socket that
    # is quiet for longer must still be open and served afterwards.
    worker_a, _ = workers
    tablet = sign_up(worker_a, "idle").register("tablet")
    with ws_connect(worker_a, tablet.token) as ws:
        hello(ws)
        time.sleep(6.5)
        ws.send('{"type": "ping"}')
        assert reply(ws)["type"] == "pong"


def test_deleting_a_device_on_one_worker_closes_its_socket_on_the_other(workers):
    worker_a, worker_b = workers
    account = sign_up(worker_a, "pair")
    tablet = account.register("tablet")
    handset = account.register("handset")
    with ws_connect(worker_a, tablet.token) as ws:
        hello(ws)
        response = call(worker_b, "DELETE", f"/api/v1/devices/{tablet.id}", token=handset.token)
        assert response.status_code == 204, response.text
        assert close_code(ws)[0] == 4401


def test_a_killed_workers_connections_are_pruned_by_the_survivor(servers):
    # What the product promises (notifications/presence.py): every worker refreshes its own
    # connection rows and, on the same beat, drops every row nobody refreshed for
    # PRESENCE_STALE_SECONDS, announcing those devices offline; a beat comes every
    # PRESENCE_HEARTBEAT_SECONDS after the last one ended. A killed worker's rows were refreshed
    # at the latest when it died, so the survivor says so within STALE + HEARTBEAT seconds of
    # the kill, plus a beat's own database work. The heartbeat is the shortest the settings
    # allow; STALE leaves a live worker two seconds for a slow beat before its own rows would
    # look stale to the other (docs/RELIABILITY.md).
    heartbeat, stale = 1, 3
    database = servers.database()
    fast = {"PRESENCE_HEARTBEAT_SECONDS": heartbeat, "PRESENCE_STALE_SECONDS": stale}
    doomed = servers.start(database, name="doomed", **fast)
    survivor = servers.start(database, name="survivor", **fast)
    account = sign_up(survivor, "crash")
    tablet = account.register("tablet")
    desktop = account.register("desktop", platform="other")

    with ws_connect(survivor, desktop.token) as desktop_ws:
        # `hello` comes after the socket joined its user's group: only from then on does it hear
        # the user's presence broadcasts (the tablet's would otherwise race it).
        hello(desktop_ws)
        with ws_connect(doomed, tablet.token) as tablet_ws:
            hello(tablet_ws)
            wait_for_frame(desktop_ws, presence_of(tablet, True))
            assert_online(survivor, desktop.token, tablet.id, True)

            doomed.kill()  # SIGKILL: no shutdown, its connection rows stay behind
            assert close_code(tablet_ws)[0] is None  # dropped, no close frame

        # Bounded by the promise above, with room for a loaded machine's slow beats.
        wait_for_frame(desktop_ws, presence_of(tablet, False), timeout=stale + heartbeat + 10)
        assert_online(survivor, desktop.token, tablet.id, False)
        # The survivor's own live connection was kept.
        assert_online(survivor, tablet.token, desktop.id, True)
        desktop_ws.send('{"type": "ping"}')
        assert reply(desktop_ws)["type"] == "pong"


def test_a_worker_that_refused_a_socket_still_shuts_down_promptly(workers, servers):
    # A refused socket's consumer ends within milliseconds of starting, while its
    # channel-layer receive is still setting up; that receive must end with it,
    # not poll Redis on until the shutdown timeout cancels it.
    worker = servers.start(workers[0].database_url)
    with ws_connect(worker) as ws:
        assert close_code(ws) == (4401, [])
    started = time.monotonic()
    assert worker.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert time.monotonic() - started < 3
    log = worker.log_tail(20)
    assert "Application shutdown complete" in log
    assert "graceful shutdown exceeded" not in log
