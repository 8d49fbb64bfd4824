"""Domain errors: defined below the API, mapped to HTTP in one place, the same JSON shape everywhere."""

import service.errors as domain
from service.api.errors import STATUS, status_of


def test_every_kind_of_domain_error_has_one_http_status():
    kinds = {value for value in vars(domain).values()
             if isinstance(value, type) and issubclass(value, domain.DomainError) and value is not domain.DomainError}
    assert kinds == set(STATUS)
    assert status_of(domain.NotFound("not_found", "x")) == 404
    assert status_of(domain.Invalid("bad", "x")) == 422


def test_a_domain_error_becomes_the_json_error_shape(client, collection):
    response = client.get("/collections/999/images")
    assert response.status_code == 404
    assert response.json() == {"detail": "collection 999 not found", "code": "not_found"}


def test_extra_fields_travel_with_the_error(client, collection):
    response = client.post(f"/collections/{collection['id']}/tuning-jobs", json={})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "too_few_pairs"
    assert body["captioned"] == 0
    assert body["minimum"] >= 12
