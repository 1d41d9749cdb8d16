"""The carrier's call forwarding codes (3GPP TS 22.030 / 22.082): 21, 67, 61 with its timer, 62,
and the groups 004 and 002, in each procedure; bad codes are refused with the envelope."""

import pytest

from tests.simulator.support import LINE, SERVER_NUMBER

OTHER = "+15555550199"


def mmi(sim, code, line=LINE):
    return sim.http.post("/simulator/carrier/mmi", json={"line": line, "code": code})


def dial(sim, code, line=LINE):
    response = mmi(sim, code, line)
    assert response.status_code == 200, response.text
    return response.json()


def line(sim, number=LINE):
    return sim.http.get(f"/simulator/carrier/lines/{number}").json()


def states(sim):
    return {kind: (entry["active"], entry["target"]) for kind, entry in line(sim)["forwarding"].items()}


@pytest.mark.parametrize(("code", "kind", "service"), [
    ("21", "always", "cfu"), ("67", "busy", "cfb"), ("61", "no_answer", "cfnry"), ("62", "unreachable", "cfnrc")])
def test_each_kind_is_registered_interrogated_deactivated_activated_and_erased(sim, code, kind, service):
    registered = dial(sim, f"**{code}*{SERVER_NUMBER}#")
    assert (registered["operation"], registered["service"], registered["active"], registered["target"]) == \
           ("registration", service, True, SERVER_NUMBER)
    others = {other: (False, None) for other in ("always", "busy", "no_answer", "unreachable") if other != kind}
    assert states(sim) == {kind: (True, SERVER_NUMBER), **others}

    interrogated = dial(sim, f"*#{code}#")
    assert (interrogated["operation"], interrogated["active"], interrogated["target"]) == \
           ("interrogation", True, SERVER_NUMBER)
    assert dial(sim, f"#{code}#")["active"] is False
    assert states(sim)[kind] == (False, SERVER_NUMBER)  # the number is kept
    assert dial(sim, f"*{code}#")["active"] is True
    erased = dial(sim, f"##{code}#")
    assert (erased["operation"], erased["active"], erased["target"]) == ("erasure", False, None)
    assert mmi(sim, f"*{code}#").json()["error"]["code"] == "no_forwarding_number"


@pytest.mark.parametrize(("code", "timer"), [
    (f"**61*{SERVER_NUMBER}#", 20),  # T absent: 20 s
    (f"**61*{SERVER_NUMBER}**5#", 5),  # BS absent, T given
    (f"**61*{SERVER_NUMBER}*11*30#", 30),  # BS 11 = telephony
    (f"*61*{SERVER_NUMBER}**15#", 15),  # activation with a number registers
])
def test_no_reply_takes_its_timer(sim, code, timer):
    registered = dial(sim, code)
    assert (registered["service"], registered["timer"], registered["target"]) == ("cfnry", timer, SERVER_NUMBER)
    assert dial(sim, "*#61#")["timer"] == timer
    assert line(sim)["forwarding"]["no_answer"]["timer"] == timer
    assert "timer" not in dial(sim, "*#67#")  # only no reply has one


def test_the_conditional_group_sets_busy_no_reply_and_not_reachable_at_once(sim):
    dial(sim, f"**21*{OTHER}#")
    answer = dial(sim, f"**004*{SERVER_NUMBER}**10#")
    assert (answer["operation"], answer["service"]) == ("registration", "all_conditional")
    assert [(entry["service"], entry["active"]) for entry in answer["services"]] == \
           [("cfb", True), ("cfnry", True), ("cfnrc", True)]
    assert states(sim) == {"always": (True, OTHER), "busy": (True, SERVER_NUMBER),
                           "no_answer": (True, SERVER_NUMBER), "unreachable": (True, SERVER_NUMBER)}
    assert line(sim)["forwarding"]["no_answer"]["timer"] == 10

    assert [entry["active"] for entry in dial(sim, "#004#")["services"]] == [False, False, False]
    assert states(sim)["always"] == (True, OTHER)  # 004 leaves unconditional alone
    assert [entry["active"] for entry in dial(sim, "*004#")["services"]] == [True, True, True]
    assert [entry["target"] for entry in dial(sim, "*#004#")["services"]] == [SERVER_NUMBER] * 3
    dial(sim, "##004#")
    assert states(sim) == {"always": (True, OTHER), "busy": (False, None), "no_answer": (False, None),
                           "unreachable": (False, None)}


def test_the_all_group_covers_unconditional_too(sim):
    dial(sim, f"**002*{SERVER_NUMBER}#")
    assert set(states(sim).values()) == {(True, SERVER_NUMBER)}
    assert line(sim)["forwarding"]["no_answer"]["timer"] == 20
    assert [entry["service"] for entry in dial(sim, "##002#")["services"]] == ["cfu", "cfb", "cfnry", "cfnrc"]
    assert set(states(sim).values()) == {(False, None)}


def test_activating_a_group_activates_only_the_kinds_with_a_number(sim):
    dial(sim, f"**62*{SERVER_NUMBER}#")
    dial(sim, "#62#")
    assert [entry["active"] for entry in dial(sim, "*004#")["services"]] == [False, False, True]


def test_lines_are_independent_and_the_line_shows_handset_and_simultaneous_ring(sim):
    dial(sim, f"**61*{SERVER_NUMBER}#")
    assert states(sim)["no_answer"] == (True, SERVER_NUMBER)
    other = line(sim, "+15550005555")
    assert {kind: entry["active"] for kind, entry in other["forwarding"].items()} == {
        "always": False, "busy": False, "no_answer": False, "unreachable": False}
    assert (other["handset"], other["simultaneous_ring"]) == ("on", None)


@pytest.mark.parametrize(("code", "error"), [
    ("**61*+15555550100**7#", "invalid_timer"),  # T in steps of 5
    ("**61*+15555550100**35#", "invalid_timer"),  # at most 30
    ("**61*+15555550100**0#", "invalid_timer"),
    ("**61*+15555550100**x#", "invalid_timer"),
    ("**67*+15555550100**20#", "invalid_mmi"),  # only no reply takes a timer
    ("**21*+15555550100**20#", "invalid_mmi"),
    ("*#61***20#", "invalid_mmi"),  # only a registration does
    ("**61*+15555550100*13#", "unsupported_basic_service"),  # fax: no telephony
    ("**61*+15555550100*11*20*9#", "invalid_mmi"),  # too many fields
    ("**62*#", "invalid_mmi"),
    ("**62*5550100#", "invalid_phone_number"),
    ("##62*+15555550100#", "invalid_mmi"),
    ("#21*+15555550100#", "invalid_mmi"),
    ("*#003#", "unsupported_service"),
    ("*#33#", "unsupported_service"),  # call barring
    ("*004#", "no_forwarding_number"),
    ("*#62", "invalid_mmi"),
])
def test_bad_codes_are_refused_with_the_envelope(sim, code, error):
    response = mmi(sim, code)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == error, body


def test_a_refused_code_changes_nothing(sim):
    dial(sim, f"**61*{SERVER_NUMBER}**25#")
    assert mmi(sim, f"**61*{OTHER}**7#").status_code == 400
    assert (states(sim)["no_answer"], line(sim)["forwarding"]["no_answer"]["timer"]) == ((True, SERVER_NUMBER), 25)
