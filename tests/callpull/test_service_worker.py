"""The companion's service worker (Web Push, docs/WEB.md) is served from the origin's root so
that its scope is the whole site, never cached without asking, under a policy of its own; the
page's policy allows workers from its own origin only."""

from callpull import web


def test_the_service_worker_is_served_at_the_root_uncached_with_its_own_policy(client):
    response = client.get("/sw.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert response["Cache-Control"] == "no-cache"
    assert response["Content-Security-Policy"] == "default-src 'none'; connect-src 'self'"
    assert response.content == web.SERVICE_WORKER.read_bytes()
    assert b'addEventListener("push"' in response.content
    assert b'addEventListener("notificationclick"' in response.content
    assert client.post("/sw.js").status_code == 405


def test_the_page_allows_its_own_service_worker_only(client):
    policy = client.get("/")["Content-Security-Policy"].split("; ")
    assert "worker-src 'self'" in policy
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
