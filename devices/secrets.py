"""Making and hashing the random secrets devices hold."""

import hashlib
import secrets

# No 0/O, 1/I/L: pairing codes are read off a screen and typed.
PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 8


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_device_token() -> str:
    return "cpd_" + secrets.token_urlsafe(32)


def new_ws_ticket() -> str:
    return "cpt_" + secrets.token_urlsafe(24)


def new_pairing_code() -> str:
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def normalize_pairing_code(code: str) -> str:
    """Accept what a person types: lower case, spaces and dashes."""
    return "".join(ch for ch in code.upper() if ch.isalnum())
