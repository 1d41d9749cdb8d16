"""A path nobody serves: the API's envelope under /api/, a plain page elsewhere (DEBUG off);
never Django's debug page with the URL patterns."""

import pytest


@pytest.mark.parametrize("path", ["/no-such-page", "/telephony/nothing", "/admin-typo/"])
def test_a_page_nobody_serves_is_a_plain_404(client, settings, path):
    settings.DEBUG = False
    response = client.get(path)
    body = response.content.decode()
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
    assert "Not Found" in body and "URLconf" not in body and "urlpatterns" not in body and len(body) < 500


def test_an_api_path_nobody_serves_is_the_envelope(client, settings):
    settings.DEBUG = False
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No such endpoint.", "fields": {}}}
