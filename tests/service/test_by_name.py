"""Collections addressed by name, over real HTTP, with key-limited visibility."""

import pytest

from service.api_keys import create_key


def test_by_name_answers_like_by_id(client):
    created = client.post("/collections", json={"name": "Holiday 2024 / Alps"}).json()
    client.post("/collections", json={"name": "images"}).raise_for_status()
    by_id = client.get(f"/collections/{created['id']}").json()
    response = client.get("/collections/by-name/Holiday%202024%20%2F%20Alps")
    assert response.status_code == 200, response.text
    assert response.json() == by_id
    # A name that is also a word of the API still means the collection.
    assert client.get("/collections/by-name/images").json()["name"] == "images"


@pytest.mark.parametrize("name", ["absent", "holiday 2024 / alps", "%00"])
def test_an_absent_name_is_404(client, name):
    client.post("/collections", json={"name": "Holiday 2024 / Alps"}).raise_for_status()
    response = client.get(f"/collections/by-name/{name}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_limited_key_sees_by_name_only_what_it_sees_by_id(make_client):
    client = make_client()
    mine = client.post("/collections", json={"name": "mine"}).json()["id"]
    theirs = client.post("/collections", json={"name": "theirs"}).json()["id"]
    ctx = client.app.state.context
    with ctx.session() as session:
        _, key = create_key(session, "limited", "read", [mine])
        session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/collections/by-name/mine", headers=headers).json()["id"] == mine
    hidden = client.get("/collections/by-name/theirs", headers=headers)
    by_id = client.get(f"/collections/{theirs}", headers=headers)
    assert hidden.status_code == by_id.status_code == 404
    assert hidden.json()["code"] == by_id.json()["code"] == "not_found"
    assert hidden.json()["detail"] == client.get("/collections/by-name/absent", headers=headers).json()["detail"] \
        .replace("absent", "theirs")
