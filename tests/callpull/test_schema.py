"""The OpenAPI schema and the browsable docs, served with local assets only."""

import re

import pytest
import yaml
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db


def test_the_schema_is_valid_openapi_3_and_lists_the_contract(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)  # against the OpenAPI 3 JSON schema drf-spectacular ships
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/accounts", "/api/v1/devices", "/api/v1/lines/{line_id}/forwarding", "/api/v1/calls",
                 "/api/v1/calls/{call_id}/answer", "/api/v1/calls/{call_id}/pull", "/api/v1/pulls/{pull_id}/approve",
                 "/api/v1/calls/{call_id}/transfer", "/api/v1/ws-tickets", "/api/v1/pairing-codes"):
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["deviceToken"]["scheme"] == "bearer"


def test_the_docs_page_loads_every_asset_from_this_server(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.content.decode())
    assert assets and all(asset.startswith("/static/") for asset in assets), assets
