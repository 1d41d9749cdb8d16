"""What the browser tests drive: the companion page (a user at the keyboard and mouse),
and the rest of the household over HTTP (the handset app, a tablet), with the
carrier and the voice provider played by the server's embedded simulator.

Assertions are about what the user sees on the page, and about what the server
then says through its API.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field

import httpx
from playwright.sync_api import Page, expect

from tests.e2e.support import ROOT, SERVER_NUMBER, Account, Device, Server, call, eventually, sign_up

SCREENSHOTS = ROOT / "test-output" / "web"


def ok(response: httpx.Response, status: int = 200):
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def sim(server: Server, method: str, path: str, status: int = 200, **kwargs):
    """The simulator's control API (the carrier and the voice provider)."""
    return ok(call(server, method, "/simulator" + path, **kwargs), status)


def phone_number() -> str:
    return "+1555" + "".join(random.choices("0123456789", k=7))


@dataclass
class Ring:
    id: str
    carrier_id: str
    caller: str
    caller_name: str | None


@dataclass
class Household:
    """A user with a handset whose line forwards on busy to the server number, as the
    handset app would have set it up: the MMI code dialled on the (simulated) carrier,
    and the interrogation's answer reported with POST /lines/{id}/forwarding."""

    server: Server
    account: Account
    handset: Device
    line: dict
    addresses: dict = field(default_factory=dict)

    @property
    def number(self) -> str:
        return self.line["number"]

    def tablet(self, name: str = "Kitchen tablet") -> Device:
        address = "tab-" + uuid.uuid4().hex[:12]
        device = self.account.register("tablet", name=name, connect={"type": "client", "address": address})
        self.addresses[device.id] = address
        return device

    def ring(self, *, caller: str | None = None, caller_name: str | None = "Ada Lovelace") -> Ring:
        """The line rings (the carrier) and the handset app reports the call."""
        caller = caller or phone_number()
        carrier = sim(self.server, "POST", "/carrier/calls", 201,
                      json={"line": self.number, "caller": caller, "caller_name": caller_name})
        body = ok(call(self.server, "POST", "/api/v1/calls", token=self.handset.token, json={
            "report_id": str(uuid.uuid4()), "line": self.number, "caller": caller, "caller_name": caller_name}), 201)
        return Ring(id=body["call"]["id"], carrier_id=carrier["id"], caller=caller, caller_name=caller_name)

    def handset_rejects(self, ring: Ring) -> None:
        """What the handset app does on call.reject: reject on the carrier (which forwards
        the call on busy to the server number) and tell the backend."""
        forwarded = sim(self.server, "POST", f"/carrier/calls/{ring.carrier_id}/reject")
        assert forwarded["state"] == "forwarded", forwarded
        ok(call(self.server, "POST", f"/api/v1/calls/{ring.id}/handset-events", token=self.handset.token,
                json={"event": "rejected"}))

    def caller_hangs_up(self, ring: Ring) -> None:
        sim(self.server, "POST", f"/carrier/calls/{ring.carrier_id}/hangup")

    def get_call(self, call_id: str) -> dict:
        return ok(call(self.server, "GET", f"/api/v1/calls/{call_id}", token=self.handset.token))

    def wait_state(self, call_id: str, state: str, *, timeout: float = 8.0) -> dict:
        def check():
            current = self.get_call(call_id)
            assert current["state"] == state, (
                f"call is {current['state']}, waiting for {state}: {[e['event'] for e in current['timeline']]}")
            return current
        return eventually(check, timeout=timeout)

    def devices(self) -> dict[str, dict]:
        return {d["id"]: d for d in ok(call(self.server, "GET", "/api/v1/devices", token=self.handset.token))}

    def set_account(self, **fields) -> dict:
        return ok(call(self.server, "PATCH", "/api/v1/account", token=self.handset.token, json=fields))

    def pairing_code(self) -> str:
        return ok(call(self.server, "POST", "/api/v1/pairing-codes", token=self.handset.token), 201)["code"]


def household(server: Server) -> Household:
    account = sign_up(server, "web")
    handset = account.register("handset", name="Pixel 9")
    line = ok(call(server, "POST", "/api/v1/lines", token=handset.token, json={"number": phone_number()}), 201)
    registered = sim(server, "POST", "/carrier/mmi", json={"line": line["number"], "code": line["mmi"]["register"]})
    assert registered["active"] and registered["target"] == SERVER_NUMBER, registered
    line = ok(call(server, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                   json={"state": "active", "target": line["server_number"]}))
    assert line["forwarding"]["state"] == "active", line
    return Household(server=server, account=account, handset=handset, line=line)


@dataclass
class CompanionPage:
    """The companion in one browser context, and the console errors it reported."""

    page: Page
    server: Server
    errors: list = field(default_factory=list)

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    # Signing in -----------------------------------------------------------------

    def sign_in(self, account: Account, *, password: str | None = None, name: str = "Work laptop") -> None:
        form = self.page.locator("#password-form")
        form.get_by_label("Username").fill(account.username)
        form.get_by_label("Password").fill(password if password is not None else account.password)
        form.get_by_label("Name this browser").fill(name)
        form.get_by_role("button", name="Sign in").click()

    def pair(self, code: str, *, name: str = "Work laptop") -> None:
        form = self.page.locator("#pairing-form")
        form.get_by_label("Pairing code").fill(code)
        form.get_by_label("Name this browser").fill(name)
        form.get_by_role("button", name="Join with code").click()

    def join(self, home: Household, *, name: str = "Work laptop") -> Device:
        """Sign this page in with a pairing code from the handset and wait until it is online."""
        self.pair(home.pairing_code(), name=name)
        self.expect_online()
        stored = self.session()
        return Device(id=stored["device"]["id"], token=stored["token"], name=name, kind="web")

    def session(self) -> dict:
        stored = self.page.evaluate("() => localStorage.getItem('callpull.session')")
        assert stored, "no session in localStorage"
        return json.loads(stored)

    def expect_online(self, timeout: float = 8000) -> None:
        expect(self.page.locator("#connection")).to_have_attribute("data-state", "online", timeout=timeout)
        expect(self.page.locator("#connection")).to_contain_text("Online")

    # What is on the page ---------------------------------------------------------

    def incoming(self, call_id: str):
        return self.page.locator(f'.incoming-card[data-call-id="{call_id}"]')

    def live(self, call_id: str):
        return self.page.locator(f'.live-card[data-call-id="{call_id}"]')

    def device_row(self, device_id: str):
        return self.page.locator(f'.device[data-device-id="{device_id}"]')


def shown(number: str) -> str:
    """A North American number as the page shows it: +1 555 123 4567."""
    return f"{number[:2]} {number[2:5]} {number[5:8]} {number[8:]}"
