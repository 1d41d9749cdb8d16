"""Twilio Access Tokens, checked as Twilio checks the one a voice SDK registers with
(https://www.twilio.com/docs/iam/access-tokens): a JWT whose header says `alg: HS256`,
`typ: JWT` and `cty: twilio-fpa;v=1`, issued (`iss`) by an API key of the account
(`sub`), signed with that key's secret, within its lifetime (`nbf` .. `exp`, at most
24 hours), and granting Voice incoming calls to the identity that registers.

A refusal carries Twilio's own error code for it (https://www.twilio.com/docs/api/errors/<code>):
20101 invalid token, 20102 invalid header, 20103 invalid issuer/subject, 20104 expired or
expiration invalid (past, missing, or more than 24 hours away), 20105 not yet valid,
20106 invalid grants, 20107 invalid signature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

MAX_LIFETIME_SECONDS = 86400  # Twilio: "Access Token lifetimes are configurable up to 24 hours"

INVALID, HEADER, ISSUER, EXPIRED, NOT_YET_VALID, GRANTS, SIGNATURE = 20101, 20102, 20103, 20104, 20105, 20106, 20107
MESSAGES = {
    INVALID: "Invalid Access Token",
    HEADER: "Invalid Access Token header",
    ISSUER: "Invalid Access Token issuer/subject",
    EXPIRED: "Access Token expired or expiration date invalid",
    NOT_YET_VALID: "Access Token not yet valid",
    GRANTS: "Invalid Access Token grants",
    SIGNATURE: "Invalid Access Token signature",
}


class TokenRefused(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(f"{MESSAGES[code]}: {detail}")
        self.code = code


@dataclass(frozen=True)
class Registration:
    """What a valid token registered: the identity, and until when (epoch seconds)."""

    identity: str
    expires_at: int


def verify(token: str, *, account_sid: str, api_keys: dict[str, str], identity: str,
           now: float | None = None) -> Registration:
    """The registration `token` allows for `identity`, or TokenRefused with Twilio's code."""
    now = time.time() if now is None else now
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenRefused(INVALID, "not a JWT")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise TokenRefused(INVALID, str(exc)) from None
    if header.get("alg") != "HS256" or header.get("typ", "JWT") != "JWT" or header.get("cty") != "twilio-fpa;v=1":
        raise TokenRefused(HEADER, "the header must say alg HS256, typ JWT, cty twilio-fpa;v=1")
    secret = api_keys.get(claims.get("iss"))
    if secret is None or claims.get("sub") != account_sid:
        raise TokenRefused(ISSUER, "iss must be an API key of the account named by sub")
    try:
        jwt.decode(token, secret, algorithms=["HS256"],
                   options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False})
    except jwt.InvalidSignatureError:
        raise TokenRefused(SIGNATURE, "not signed with the API key's secret") from None
    except jwt.InvalidTokenError as exc:
        raise TokenRefused(INVALID, str(exc)) from None
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now or exp - now > MAX_LIFETIME_SECONDS:
        raise TokenRefused(EXPIRED, "exp is missing, past, or more than 24 hours away")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or nbf > now):
        raise TokenRefused(NOT_YET_VALID, "nbf is in the future")
    grants = claims.get("grants")
    voice = grants.get("voice") if isinstance(grants, dict) else None
    incoming = voice.get("incoming") if isinstance(voice, dict) else None
    if not (isinstance(incoming, dict) and incoming.get("allow") is True):
        raise TokenRefused(GRANTS, "no Voice grant allowing incoming calls")
    if grants.get("identity") != identity:
        raise TokenRefused(GRANTS, f"the grant's identity is not {identity!r}")
    return Registration(identity=identity, expires_at=exp)
