"""Services raise `ServiceError(code, …)` without HTTP; one table in the API layer gives each
code its status. Every code the product raises must be in that table (else it answers 500)."""

import ast
import pathlib

from rest_framework.test import APIRequestFactory

from callpull.api.errors import STATUS_FOR_CODE, exception_handler
from devices.errors import ServiceError, not_found

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRODUCT = ("callpull", "devices", "notifications")


def raised_codes() -> dict[str, str]:
    """Every literal first argument of a `ServiceError(...)` call in the product: code -> where."""
    found = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ServiceError"
                        and node.args and isinstance(node.args[0], ast.Constant)):
                    found.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_scan_finds_the_codes_it_should():
    codes = raised_codes()
    assert {"not_found", "already_answered", "rate_limited", "wrong_pin", "reauthentication_required"} <= set(codes)


def test_every_code_the_product_raises_has_a_status():
    missing = {code: where for code, where in raised_codes().items() if code not in STATUS_FOR_CODE}
    assert not missing, f"add these codes to callpull.api.errors.STATUS_FOR_CODE: {missing}"


def test_no_code_in_the_table_is_dead():
    raised = set(raised_codes()) | {"request_too_large", "service_unavailable"}  # built by the API layer itself
    assert set(STATUS_FOR_CODE) - raised == set()


def test_the_domain_error_knows_nothing_of_http():
    error = not_found("call")
    assert not hasattr(error, "status_code") and error.code == "not_found"


def test_a_service_error_leaves_in_the_envelope_with_its_status_and_retry_after():
    request = APIRequestFactory().get("/api/v1/x")
    response = exception_handler(ServiceError("rate_limited", "Slow down.", retry_after=7), {"request": request})
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert response.data == {"error": {"code": "rate_limited", "message": "Slow down.", "fields": {}}}


def test_an_unknown_code_is_a_server_error_not_a_guess(caplog):
    request = APIRequestFactory().get("/api/v1/x")
    response = exception_handler(ServiceError("no_such_code", "?"), {"request": request})
    assert response.status_code == 500 and "no_such_code" in caplog.text
