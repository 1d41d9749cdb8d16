"""The lines panel shows each forwarding kind of a line (its state, the no-answer timer) and the
codes to dial for each on the line's carrier profile: exactly the codes the API gives."""

import pytest
from playwright.sync_api import expect

from tests.e2e.support import SERVER_NUMBER, call
from tests.web.support import household, ok, sim

pytestmark = pytest.mark.e2e

SHOWN = """(panel) => Object.fromEntries([...panel.querySelectorAll(".kind")].map((row) => [row.dataset.kind,
    row.querySelector(".no-code") ? null
        : Object.fromEntries([...row.querySelectorAll("code[data-code]")].map((code) => [code.dataset.code,
                                                                                        code.textContent]))]))"""
STATES = """(panel) => Object.fromEntries([...panel.querySelectorAll(".kind")].map((row) => [row.dataset.kind,
    row.querySelector(".badge")?.dataset.state ?? null]))"""


def _line(home) -> dict:
    lines = ok(call(home.server, "GET", "/api/v1/lines", token=home.handset.token))
    return next(line for line in lines if line["id"] == home.line["id"])


def _report(home, **body) -> dict:
    return ok(call(home.server, "POST", f"/api/v1/lines/{home.line['id']}/forwarding", token=home.handset.token,
                   json=body))


def _expected_codes(line: dict) -> dict:
    """The API's codes as the page should show them (an absent interrogation is not shown)."""
    return {kind: None if codes is None else {action: code for action, code in codes.items() if code}
            for kind, codes in line["codes"].items()}


def test_the_lines_panel_shows_every_kind_and_its_codes_for_the_carrier_profile(open_page, web_server):
    home = household(web_server)  # busy: registered on the carrier and reported active
    # The user turns on forwarding when not answered, after 15 s, with the code the app shows for it.
    dialled = sim(web_server, "POST", "/carrier/mmi",
                  json={"line": home.number, "code": f"**61*{SERVER_NUMBER}**15#"})
    assert (dialled["active"], dialled["timer"]) == (True, 15), dialled
    _report(home, kind="no_answer", state="active", target=SERVER_NUMBER, timer=15)
    _report(home, kind="always", state="inactive")
    line = _line(home)
    assert line["codes"]["no_answer"]["register"] == f"**61*{SERVER_NUMBER}**15#", line["codes"]

    companion = open_page()
    companion.join(home)
    page = companion.page
    panel = page.locator(f'.line[data-line-id="{line["id"]}"] .forwarding-kinds')
    expect(panel.locator('.kind[data-kind="conditional"]')).to_be_visible()

    assert panel.evaluate(SHOWN) == _expected_codes(line)
    assert panel.evaluate(STATES) == {**{kind: entry["state"] for kind, entry in line["forwarding_kinds"].items()},
                                      "conditional": None}
    assert panel.evaluate(STATES)["busy"] == "active" and panel.evaluate(STATES)["unreachable"] == "unverified"
    no_answer = panel.locator('.kind[data-kind="no_answer"]')
    expect(no_answer).to_contain_text("Active after 15 s")
    expect(panel.locator('.kind[data-kind="always"] .badge')).to_have_text("Off")
    expect(panel.locator(".forwarding-profile")).to_contain_text("GSM codes (3GPP)")
    companion.shot("forwarding-3gpp")

    # Another carrier profile: its own star codes, and no code where it has none.
    chosen = "nanp_vsc"  # North American landline star codes: none for unreachable
    updated = ok(call(web_server, "PATCH", f"/api/v1/lines/{line['id']}", token=home.handset.token,
                      json={"carrier_profile": chosen}))
    assert updated["carrier_profile"] == chosen
    assert any(codes is None for codes in updated["codes"].values()), updated["codes"]
    page.reload()
    companion.expect_online()
    expect(panel.locator(f'[data-profile="{chosen}"]')).to_be_visible()
    assert panel.evaluate(SHOWN) == _expected_codes(updated)
    for kind, codes in updated["codes"].items():
        if codes is None:
            expect(panel.locator(f'.kind[data-kind="{kind}"] .no-code')).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1100


def test_the_codes_fit_a_phone_sized_window(open_page, web_server):
    home = household(web_server)
    companion = open_page(width=360, height=740)
    companion.join(home)
    page = companion.page
    panel = page.locator(f'.line[data-line-id="{home.line["id"]}"] .forwarding-kinds')
    expect(panel.locator('.kind[data-kind="no_answer"] code[data-code="register"]')).to_be_visible()
    assert panel.evaluate(SHOWN) == _expected_codes(_line(home))
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
