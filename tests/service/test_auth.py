"""API keys over real HTTP: the CLI creates them, every route (from the app's route table) checks them."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import iter_route_contexts

from service.auth import PUBLIC_PATHS, PUBLIC_PREFIXES, ExposureRefused
from service.cli import main
from service.models import TuningJob
from tests.support import png_bytes, upload

UNKNOWN = "987654321"  # an id nothing has


def cli_key(capsys, data_dir, database_url, *args) -> str:
    extra = ["--database-url", database_url] if database_url else []
    assert main(["keys", "create", "--data-dir", str(data_dir), *extra, *args]) == 0
    return capsys.readouterr().out.strip()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def every_route(app):
    """(method, path template) of every route the app serves, so new routes are covered automatically."""
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                yield method, route.path


def concrete(path: str, ids: dict) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: str(ids[m.group(1)]), path)


@pytest.fixture
def keyed(make_client, tmp_path, capsys, database_url):
    """A server with two collections (A with an image and a job, B), then keys of every kind."""
    client = make_client()
    a = client.post("/collections", json={"name": "A"}).json()["id"]
    b = client.post("/collections", json={"name": "B"}).json()["id"]
    image = upload(client, a, [("a.png", png_bytes(1))]).json()["accepted"][0]["id"]
    mark = client.post(f"/collections/{a}/feedback", json={"query": {"text": "a"}, "image_id": image, "relevant": True})
    ctx = client.app.state.context
    with ctx.session() as session:
        job = TuningJob(collection_id=a, state="cancelled", config={}, split={}, progress={})
        session.add(job)
        session.commit()
        job_id = job.id
    data_dir = tmp_path / "data"
    keys = {
        "read": cli_key(capsys, data_dir, database_url, "--name", "reader", "--scope", "read"),
        "write": cli_key(capsys, data_dir, database_url, "--name", "writer", "--scope", "write"),
        "admin": cli_key(capsys, data_dir, database_url, "--name", "root", "--scope", "admin"),
        "other": cli_key(capsys, data_dir, database_url, "--name", "b-only", "--scope", "admin",
                         "--collection", str(b)),
    }
    real = {"collection_id": a, "image_id": image, "job_id": job_id, "version": "v1", "name": "app.js",
            "feedback_id": mark.json()["id"]}
    return client, keys, real, {"a": a, "b": b, "image": image}


def test_auth_matrix_over_every_route(keyed):
    client, keys, real, ids = keyed
    unknown = {"collection_id": UNKNOWN, "image_id": UNKNOWN, "job_id": UNKNOWN, "version": "v1", "name": "absent.js",
               "feedback_id": UNKNOWN}
    routes = list(every_route(client.app))
    assert len(routes) >= 20
    for method, path in routes:
        target = concrete(path, real)
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            # Health, the page's shell and static files, the API description: no data, no key needed.
            for headers in ({}, bearer("wrong"), bearer(keys["read"])):
                response = client.request(method, target, headers=headers)
                assert response.status_code not in (401, 403), (method, path, response.text)
            continue
        needs = ("read" if method == "GET" or path.endswith(("/search", "/search/image"))
                 else "admin" if path in ("/collections", "/collections/{collection_id}") else "write")
        for headers, why in (({}, "no key"), (bearer("pas_not-a-real-key"), "wrong key"),
                             ({"Authorization": "Basic Zm9vOmJhcg=="}, "not bearer")):
            response = client.request(method, target, headers=headers)
            assert response.status_code == 401, (method, path, why, response.text)
            assert response.json()["code"] == "unauthorized"
        for scope in ("read", "write"):
            allowed = ("read", "write", "admin").index(scope) >= ("read", "write", "admin").index(needs)
            # Allowed calls go to ids nothing has, so that no call of the matrix changes anything.
            response = client.request(method, concrete(path, unknown if allowed else real),
                                      headers=bearer(keys[scope]))
            if allowed:
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                assert response.json()["code"] == "forbidden"
        if "{collection_id}" in path or "{job_id}" in path:
            response = client.request(method, target, headers=bearer(keys["other"]))
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["code"] == "not_found"  # the same answer as for a collection that is absent
    # Nothing the refused calls aimed at was touched.
    admin = bearer(keys["admin"])
    assert client.get(f"/collections/{ids['a']}", headers=admin).json()["image_count"] == 1
    assert client.get(f"/collections/{ids['a']}/images/{ids['image']}", headers=admin).status_code == 200
    assert client.get(f"/collections/{ids['a']}/feedback", headers=admin).json()["total"] == 1


def test_limited_key_sees_only_its_collections(keyed):
    client, keys, _, ids = keyed
    listed = client.get("/collections", headers=bearer(keys["other"])).json()
    assert [c["id"] for c in listed] == [ids["b"]]
    assert {c["id"] for c in client.get("/collections", headers=bearer(keys["read"])).json()} == {ids["a"], ids["b"]}
    absent = client.get(f"/collections/{UNKNOWN}", headers=bearer(keys["admin"])).json()
    hidden = client.get(f"/collections/{ids['a']}", headers=bearer(keys["other"])).json()
    assert hidden["code"] == absent["code"] == "not_found"
    assert client.get(f"/collections/{ids['b']}/images", headers=bearer(keys["other"])).status_code == 200


def test_revoked_key_is_refused_and_keys_are_stored_hashed(keyed, tmp_path, capsys, database_url):
    client, keys, _, _ = keyed
    extra = ["--database-url", database_url] if database_url else []
    common = ["--data-dir", str(tmp_path / "data"), *extra]
    assert main(["keys", "list", *common]) == 0
    listing = capsys.readouterr().out
    assert "reader" in listing
    assert "b-only" in listing
    assert not any(key in listing for key in keys.values())
    with client.app.state.context.session() as session:
        from service.api_keys import ApiKey

        stored = " ".join(f"{r.key_hash} {r.hint} {r.name}" for r in session.query(ApiKey))
    assert not any(key in stored for key in keys.values())

    reader_id = next(line.split("\t")[0] for line in listing.splitlines() if "\treader\t" in line)
    assert client.get("/collections", headers=bearer(keys["read"])).status_code == 200
    assert main(["keys", "revoke", reader_id, *common]) == 0
    refused = client.get("/collections", headers=bearer(keys["read"]))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert main(["keys", "revoke", UNKNOWN, *common]) == 2


def test_revoking_every_key_does_not_open_the_server(keyed, tmp_path, capsys, database_url):
    client, _, _, _ = keyed
    extra = ["--database-url", database_url] if database_url else []
    for key_id in range(1, 5):
        assert main(["keys", "revoke", str(key_id), "--data-dir", str(tmp_path / "data"), *extra]) == 0
    assert client.get("/collections").status_code == 401


def test_open_on_loopback_without_keys(client):
    assert client.get("/collections").status_code == 200


def test_non_loopback_without_key_is_refused_unless_auth_is_off(make_client, tmp_path, capsys):
    with pytest.raises(ExposureRefused, match="API key"):
        make_client(host="0.0.0.0")
    assert make_client(host="0.0.0.0", auth_disabled=True, data_dir=tmp_path / "open").get("/collections").status_code == 200

    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to serve on 0.0.0.0 without an API key")
    assert "\n" not in err


def test_non_loopback_with_a_key_starts(make_client, tmp_path, capsys, database_url):
    data_dir = tmp_path / "exposed"
    key = cli_key(capsys, data_dir, database_url, "--name", "n", "--scope", "read")
    client = make_client(host="0.0.0.0", data_dir=data_dir)
    assert client.get("/collections").status_code == 401
    assert client.get("/collections", headers=bearer(key)).json() == []


def test_key_create_refuses_bad_input(tmp_path, capsys):
    common = ["--data-dir", str(tmp_path / "d")]
    assert main(["keys", "create", "--name", "bad\x00name", "--scope", "read", *common]) == 2
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "x", "--scope", "root", *common])
