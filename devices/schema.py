"""OpenAPI description of device-token authentication (drf-spectacular)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "devices.auth.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A device token from POST /api/v1/devices."}


ERROR_RESPONSES = {
    "400": "Bad input (`fields` says which).",
    "401": "No or invalid device token.",
    "403": "Authenticated but not allowed (e.g. a handset-only action).",
    "404": "Not found, including objects of other users.",
    "409": "The state forbids it (e.g. `already_answered`).",
    "429": "Rate limited; see `Retry-After`.",
}


def add_error_responses(result, generator, request, public):
    """Document the one error envelope, and the codes any endpoint may return, on every operation
    (drf-spectacular postprocessing hook), so the schema is true to the responses."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "fields"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "fields": {"type": "object"}}}}}
    ref = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in ERROR_RESPONSES.items():
                operation["responses"].setdefault(code, {"description": description,
                                                         "content": {"application/json": {"schema": ref}}})
    return result
