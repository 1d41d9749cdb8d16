"""3GPP TS 22.030 supplementary-service codes for call forwarding on busy (SC 67)."""

CFB_SERVICE_CODE = "67"


def cfb_register(server_number: str) -> str:
    return f"**{CFB_SERVICE_CODE}*{server_number}#"


def cfb_interrogate() -> str:
    return f"*#{CFB_SERVICE_CODE}#"


def cfb_erase() -> str:
    return f"##{CFB_SERVICE_CODE}#"
