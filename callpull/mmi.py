"""The codes a user dials to make the carrier forward a line's calls to its server number,
per forwarding kind and carrier profile. The table and its sources: docs/FORWARDING.md.

`3gpp` is 3GPP TS 22.030 (Annex B service codes; §6.5.2 procedures: `**SC*DN*BS*T#`
registers, `*#SC#` interrogates, `##SC#` erases): 67 busy, 61 no reply (with the timer T,
5 to 30 s), 62 not reachable, 21 unconditional, 004 all conditional (busy + no reply + not
reachable at once). Other profiles are carriers with their own star codes; a kind a
profile cannot set from the handset is None, as is an interrogation a profile has none of.
"""

from dataclasses import dataclass

from callpull.models import ForwardingKind

CFB_SERVICE_CODE = "67"
DEFAULT_NO_ANSWER_TIMER = 20
# `conditional` is no kind of its own: it sets busy, no_answer and unreachable together.
CONDITIONAL = "conditional"
CONDITIONAL_KINDS = (ForwardingKind.BUSY, ForwardingKind.NO_ANSWER, ForwardingKind.UNREACHABLE)
CODE_KINDS = (*(str(kind) for kind in ForwardingKind.values), CONDITIONAL)

DEFAULT_PROFILE = "3gpp"


@dataclass(frozen=True)
class StarCodes:
    """A carrier's own codes for one kind: `register` + the number, `erase`."""

    register: str
    erase: str
    interrogate: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    star: dict | None = None  # kind -> StarCodes; None: 3GPP TS 22.030 codes


_GSM_SERVICE_CODES = {ForwardingKind.BUSY: "67", ForwardingKind.NO_ANSWER: "61",
                      ForwardingKind.UNREACHABLE: "62", ForwardingKind.ALWAYS: "21", CONDITIONAL: "004"}

PROFILES: dict[str, Profile] = {
    "3gpp": Profile("3gpp", "3GPP TS 22.030 codes (GSM, UMTS and LTE carriers)"),
    # North American vertical service codes of wireline switches: *72/*73 all calls,
    # *90/*91 busy, *92/*93 no answer (the ring count is set by the carrier).
    "nanp_vsc": Profile("nanp_vsc", "North American landline star codes (*72, *90, *92)", star={
        ForwardingKind.ALWAYS: StarCodes("*72", "*73"),
        ForwardingKind.BUSY: StarCodes("*90", "*91"),
        ForwardingKind.NO_ANSWER: StarCodes("*92", "*93"),
    }),
    # Verizon Wireless: *72 forwards all calls; *73 turns forwarding off.
    "verizon_wireless": Profile("verizon_wireless", "Verizon Wireless (*72 / *73)", star={
        ForwardingKind.ALWAYS: StarCodes("*72", "*73"),
    }),
}


def profile_known(name: str) -> bool:
    return name in PROFILES


def _digits(number: str) -> str:
    """A number as star codes take it: 3GPP codes take E.164 with its `+`; the NANP star
    codes take the ten digits a caller dials in North America."""
    return number[2:] if number.startswith("+1") and len(number) == 12 else number.lstrip("+")


def _gsm(kind: str, server_number: str, timer: int | None) -> dict:
    code = _GSM_SERVICE_CODES[kind]
    register = f"**{code}*{server_number}#"
    if kind in (ForwardingKind.NO_ANSWER, CONDITIONAL):  # DN, an empty BS group, then T
        register = f"**{code}*{server_number}**{timer or DEFAULT_NO_ANSWER_TIMER}#"
    return {"register": register, "interrogate": f"*#{code}#", "erase": f"##{code}#"}


def codes(server_number: str, *, profile: str = DEFAULT_PROFILE, timer: int | None = None) -> dict:
    """{kind: {register, interrogate, erase} or None} for every kind and `conditional`:
    what the user dials for `server_number` on `profile` (an unknown one: 3GPP)."""
    found = PROFILES.get(profile) or PROFILES[DEFAULT_PROFILE]
    if found.star is None:
        return {kind: _gsm(kind, server_number, timer) for kind in CODE_KINDS}
    out = {}
    for kind in CODE_KINDS:
        star = found.star.get(kind)
        out[kind] = None if star is None else {"register": f"{star.register}{_digits(server_number)}",
                                               "interrogate": star.interrogate, "erase": star.erase}
    return out


def cfb_register(server_number: str) -> str:
    return f"**{CFB_SERVICE_CODE}*{server_number}#"


def cfb_interrogate() -> str:
    return f"*#{CFB_SERVICE_CODE}#"


def cfb_erase() -> str:
    return f"##{CFB_SERVICE_CODE}#"
