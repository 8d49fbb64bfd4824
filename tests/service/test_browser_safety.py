"""Browsers: no CORS unless configured, cross-origin writes refused, a Host allow-list against DNS rebinding."""

from __future__ import annotations


def test_unknown_host_is_refused(client):
    for host in ("attacker.example:8000", "attacker.example@localhost", "localhost:80@evil", "localhost:x", ""):
        response = client.get("/collections", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json()["code"] == "bad_host", host
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/collections", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_are_configurable(make_client):
    client = make_client(allowed_hosts="photos.example.org")
    assert client.get("/healthz", headers={"Host": "photos.example.org"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400


def test_cross_origin_writes_are_refused_and_no_cors_by_default(client):
    evil = {"Origin": "http://attacker.example"}
    refused = client.post("/collections", json={"name": "x"}, headers=evil)
    assert refused.status_code == 403
    assert refused.json()["code"] == "cross_origin"
    assert client.get("/collections").json() == []  # nothing was created
    # A multipart POST (no preflight in a browser) is refused the same way.
    upload = client.post("/collections/1/images", files={"files": ("a.png", b"x")}, headers=evil)
    assert upload.status_code == 403
    # Reads carry no CORS header, so a foreign page cannot read them.
    read = client.get("/collections", headers=evil)
    assert "access-control-allow-origin" not in read.headers
    preflight = client.options("/collections", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    # The server's own pages (same origin) may write.
    assert client.post("/collections", json={"name": "mine"}, headers={"Origin": "http://localhost"}).status_code == 201


def test_configured_cors_origins(make_client):
    client = make_client(cors_origins="https://app.example.org")
    ok = {"Origin": "https://app.example.org"}
    preflight = client.options("/collections", headers={**ok, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
    created = client.post("/collections", json={"name": "x"}, headers=ok)
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == "https://app.example.org"
    assert client.post("/collections", json={"name": "y"}, headers={"Origin": "https://other.example"}).status_code == 403
