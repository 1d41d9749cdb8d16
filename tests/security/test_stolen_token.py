"""A stolen device token, end to end over real HTTP and WebSocket against a running server
(issue 12): it cannot replace the transfer guard, redirect the user's other devices, put
its own calls on a SIP host of its choosing or make itself a handset; what the owner
changes is announced to all her devices and written to the audit log.

And the client's address, which rate limits and the audit log key on, cannot be spoofed
with X-Forwarded-For unless the request comes through a trusted proxy.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest

from tests.callpull.test_serve import ServeProcess
from tests.e2e.support import (
    PASSWORD,
    Environment,
    call,
    error_code,
    eventually,
    hello,
    sign_up,
    unique,
    wait_for_frame,
    ws_connect,
)

pytestmark = pytest.mark.e2e

PREMIUM = "+19005550100"


def test_a_stolen_tablet_token_changes_nothing_that_matters_and_the_owners_changes_are_seen(
        ring_server, fake_fcm):
    server = ring_server
    ana = sign_up(server, "ana")
    desk_fcm = unique("fcm-desk")
    desktop = ana.register("desktop", name="Desktop", connect={"type": "client", "address": unique("desk")},
                           fcm_token=desk_fcm)
    handset = ana.register("handset", name="Pixel")
    stolen = ana.register("tablet", name="Tablet")  # the attacker holds this token

    with ws_connect(server, desktop.token) as desk_ws:
        hello(desk_ws)

        # The transfer guard: no new PIN or allow-list without the password or the current PIN.
        response = call(server, "PATCH", "/api/v1/account", token=stolen.token,
                        json={"transfer_pin": "0000", "transfer_allowlist": [PREMIUM]})
        assert response.status_code == 403 and error_code(response) == "reauthentication_required"
        account = call(server, "GET", "/api/v1/account", token=handset.token).json()
        assert account["transfer_pin_set"] is False and account["transfer_allowlist"] == []

        # Another device's target, phone number and push token are that device's own.
        for change in ({"connect": {"type": "number", "address": PREMIUM}}, {"phone_number": PREMIUM},
                       {"fcm_token": "attacker"}):
            response = call(server, "PATCH", f"/api/v1/devices/{desktop.id}", token=stolen.token, json=change)
            assert response.status_code == 403 and error_code(response) == "own_device_only", change
        seen = call(server, "GET", f"/api/v1/devices/{desktop.id}", token=handset.token).json()
        assert seen["connect"]["type"] == "client" and seen["connect"]["verified"] is True
        assert seen["phone_number"] == "" and seen["fcm_registered"] is True

        # Its own calls cannot go to a SIP host of the attacker's choosing, password or not.
        response = call(server, "PATCH", "/api/v1/devices/me", token=stolen.token,
                        json={"connect": {"type": "sip", "address": "sip:bob@attacker.example"},
                              "password": PASSWORD})
        assert response.status_code == 400 and error_code(response) == "sip_domain_not_allowed"
        # Nor to a number without the secret.
        response = call(server, "PATCH", "/api/v1/devices/me", token=stolen.token,
                        json={"connect": {"type": "number", "address": PREMIUM}})
        assert response.status_code == 403 and error_code(response) == "reauthentication_required"

        # It cannot make itself a handset (rings and forwarding reports) with a pairing code.
        code = call(server, "POST", "/api/v1/pairing-codes", token=stolen.token)
        assert code.status_code == 201
        response = call(server, "POST", "/api/v1/devices", json={
            "pairing_code": code.json()["code"], "device": {"name": "Fake", "kind": "handset", "platform": "android"}})
        assert response.status_code == 403 and error_code(response) == "handset_requires_password"

        # Ana changes her PIN with her password, on her handset: the desktop hears of it at once.
        before = time.time()
        response = call(server, "PATCH", "/api/v1/account", token=handset.token,
                        json={"transfer_pin": "2468", "password": PASSWORD})
        assert response.status_code == 200 and response.json()["transfer_pin_set"] is True
        assert "password" not in response.json()
        frame = wait_for_frame(desk_ws, lambda f: f.get("type") == "account.changed")
        assert frame["change"]["action"] == "transfer_pin_changed"
        assert frame["change"]["device"] == {"id": handset.id, "name": "Pixel", "kind": "handset"}

    # … and over FCM too.
    def pushed():
        pushes = [m.message["data"] for m in fake_fcm.messages(desk_fcm) if m.received_at >= before - 1]
        assert any(data.get("type") == "account.changed" and data.get("action") == "transfer_pin_changed"
                   for data in pushes), pushes
    eventually(pushed, timeout=10)

    # The audit log shows the change, the device and the address; nothing the attacker was refused.
    log = call(server, "GET", "/api/v1/account/audit-log", token=desktop.token)
    assert log.status_code == 200
    entries = log.json()
    assert [entry["action"] for entry in entries] == ["transfer_pin_changed"] + ["device_registered"] * 3
    assert entries[0]["device"] == {"id": handset.id, "name": "Pixel", "kind": "handset"}
    assert entries[0]["client_ip"] == "127.0.0.1"
    assert entries[0]["id"] == frame["change"]["id"]
    # As a value anywhere in the log (the digits alone can occur in a timestamp's microseconds).
    values = json.dumps(log.json())
    assert '"2468"' not in values and PASSWORD not in log.text


# X-Forwarded-For --------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_from_a_client_and_believed_from_a_trusted_proxy(tmp_path_factory):
    """Through `manage.py serve` (uvicorn would otherwise believe the header from any client
    on loopback). A spoofed address must neither dodge the per-address login limit nor show
    in the audit log; a trusted proxy's header is the client's address."""
    env_of_run = Environment(tmp_path_factory.mktemp("xff"))
    with ExitStack() as stack:
        stack.callback(env_of_run.drop_template)  # last: after the database copied from it
        database = env_of_run.database(stack)

        def serve(**settings):
            env = env_of_run.server_env(database, RATE_LIMIT_LOGIN="1", RATE_LIMIT_LOGIN_ADDRESS="1", **settings)
            server = ServeProcess(name=unique("xff"), env=env, log_path=env_of_run.tmp_dir / f"{unique('xff')}.log",
                                  options=[])
            stack.callback(server.stop)
            return server.start()

        def wrong_login(server, spoofed):
            return call(server, "POST", "/api/v1/devices", headers={"X-Forwarded-For": spoofed}, json={
                "username": unique("nobody"), "password": "guess",
                "device": {"name": "x", "kind": "tablet", "platform": "web"}})

        def registered_from(server, spoofed):
            account = sign_up(server, "xff")
            response = call(server, "POST", "/api/v1/devices", headers={"X-Forwarded-For": spoofed}, json={
                "username": account.username, "password": account.password,
                "device": {"name": "x", "kind": "tablet", "platform": "web"}})
            assert response.status_code == 201, response.text
            entries = call(server, "GET", "/api/v1/account/audit-log", token=response.json()["token"]).json()
            return entries[0]["client_ip"]

        direct = serve()
        assert registered_from(direct, "203.0.113.3") == "127.0.0.1"
        assert wrong_login(direct, "203.0.113.1").status_code == 401
        # Another "address", the same client: its one failure per address is used up.
        limited = wrong_login(direct, "203.0.113.2")
        assert limited.status_code == 429 and error_code(limited) == "rate_limited"
        direct.stop()

        proxied = serve(TRUSTED_PROXIES="127.0.0.1")
        assert registered_from(proxied, "6.6.6.6, 203.0.113.13") == "203.0.113.13"  # the right-most untrusted
        assert wrong_login(proxied, "203.0.113.11").status_code == 401
        assert wrong_login(proxied, "203.0.113.12").status_code == 401  # a different client behind the proxy
        limited = wrong_login(proxied, "203.0.113.12")
        assert limited.status_code == 429 and error_code(limited) == "rate_limited"
